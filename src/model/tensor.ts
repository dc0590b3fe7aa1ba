// Weight matrices kept in their file format (f32, f16, bf16, Q8_0, Q4_0) and dequantised one row at a
// time, so a model is never held twice in memory: the matrix bytes are a view into the loaded file.

export type DType = 'f32' | 'f16' | 'bf16' | 'q8_0' | 'q4_0';

export const QK = 32; // elements per Q8_0 / Q4_0 block

/** Bytes one row of `cols` elements takes in `dtype`. */
export function rowBytes(dtype: DType, cols: number): number {
  switch (dtype) {
    case 'f32': return cols * 4;
    case 'f16': case 'bf16': return cols * 2;
    case 'q8_0': checkBlocks(cols); return (cols / QK) * 34;
    case 'q4_0': checkBlocks(cols); return (cols / QK) * 18;
  }
}

function checkBlocks(cols: number): void {
  if (cols % QK !== 0) throw new Error(`quantised rows need a multiple of ${QK} elements, got ${cols}`);
}

// f16 -> f32 through a 64K-entry table: one lookup per element in the hot loops.
export const F16_TABLE: Float32Array = (() => {
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) t[h] = f16ToF32Exact(h);
  return t;
})();

function f16ToF32Exact(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** Round-to-nearest-even f32 -> f16 bits. */
export function f32ToF16(v: number): number {
  f32buf[0] = v;
  const x = u32buf[0];
  const sign = (x >>> 16) & 0x8000;
  let e = (x >>> 23) & 0xff;
  let m = x & 0x7fffff;
  if (e === 0xff) return sign | 0x7c00 | (m ? 0x200 : 0);
  e = e - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    m |= 0x800000;
    const shift = 14 - e;
    let r = m >>> shift;
    const rem = m & ((1 << shift) - 1), half = 1 << (shift - 1);
    if (rem > half || (rem === half && (r & 1))) r++;
    return sign | r;
  }
  let r = (e << 10) | (m >>> 13);
  const rem = m & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1))) r++;
  return sign | r;
}

export function bf16ToF32(h: number): number {
  u32buf[0] = h << 16;
  return f32buf[0];
}

export function f32ToBf16(v: number): number {
  f32buf[0] = v;
  const x = u32buf[0];
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** A row-major matrix [rows x cols] stored in `dtype`; `bytes` is a view, never a copy. */
export class Matrix {
  readonly rowBytes: number;
  private readonly f32?: Float32Array;
  private readonly u16?: Uint16Array;
  private readonly i8?: Int8Array;

  constructor(readonly rows: number, readonly cols: number, readonly dtype: DType, readonly bytes: Uint8Array) {
    this.rowBytes = rowBytes(dtype, cols);
    const need = this.rowBytes * rows;
    if (bytes.byteLength < need) {
      throw new Error(`tensor data too short: ${rows}x${cols} ${dtype} needs ${need} bytes, got ${bytes.byteLength}`);
    }
    const aligned = (n: number) => bytes.byteOffset % n === 0;
    const own = (n: number) => (aligned(n) ? bytes : bytes.slice(0, need)); // realign only if the file is odd
    if (dtype === 'f32') { const b = own(4); this.f32 = new Float32Array(b.buffer, b.byteOffset, rows * cols); }
    if (dtype === 'f16' || dtype === 'bf16') { const b = own(2); this.u16 = new Uint16Array(b.buffer, b.byteOffset, rows * cols); }
    if (dtype === 'q8_0') this.i8 = new Int8Array(bytes.buffer, bytes.byteOffset, need);
  }

  /** Row r as f32: a view for f32 matrices (no copy), else dequantised into `out`. */
  row(r: number, out: Float32Array): Float32Array {
    const n = this.cols;
    switch (this.dtype) {
      case 'f32': return this.f32!.subarray(r * n, r * n + n);
      case 'f16': {
        const u = this.u16!, t = F16_TABLE, o = r * n;
        for (let i = 0; i < n; i++) out[i] = t[u[o + i]];
        return out;
      }
      case 'bf16': {
        const u = this.u16!, o = r * n;
        const ou = new Uint32Array(out.buffer, out.byteOffset, n);
        for (let i = 0; i < n; i++) ou[i] = u[o + i] << 16;
        return out;
      }
      case 'q8_0': {
        const b = this.bytes, q = this.i8!, t = F16_TABLE;
        let p = r * this.rowBytes;
        for (let blk = 0; blk < n; blk += QK) {
          const d = t[b[p] | (b[p + 1] << 8)];
          p += 2;
          for (let j = 0; j < QK; j++) out[blk + j] = q[p + j] * d;
          p += QK;
        }
        return out;
      }
      case 'q4_0': {
        const b = this.bytes, t = F16_TABLE;
        let p = r * this.rowBytes;
        for (let blk = 0; blk < n; blk += QK) {
          const d = t[b[p] | (b[p + 1] << 8)];
          p += 2;
          for (let j = 0; j < QK / 2; j++) {
            const x = b[p + j];
            out[blk + j] = ((x & 0x0f) - 8) * d;
            out[blk + j + QK / 2] = ((x >> 4) - 8) * d;
          }
          p += QK / 2;
        }
        return out;
      }
    }
  }

  /** The whole matrix as f32 (tests and small tensors such as norms). */
  toF32(): Float32Array {
    const out = new Float32Array(this.rows * this.cols);
    const tmp = new Float32Array(this.cols);
    for (let r = 0; r < this.rows; r++) out.set(this.row(r, tmp), r * this.cols);
    return out;
  }
}

/** Quantise f32 values into `dtype` bytes (the GGUF writer and tests use it). */
export function encodeTensor(values: Float32Array, dtype: DType): Uint8Array {
  const n = values.length;
  switch (dtype) {
    case 'f32': return new Uint8Array(values.slice().buffer);
    case 'f16': { const u = new Uint16Array(n); for (let i = 0; i < n; i++) u[i] = f32ToF16(values[i]); return new Uint8Array(u.buffer); }
    case 'bf16': { const u = new Uint16Array(n); for (let i = 0; i < n; i++) u[i] = f32ToBf16(values[i]); return new Uint8Array(u.buffer); }
    case 'q8_0': {
      checkBlocks(n);
      const out = new Uint8Array((n / QK) * 34);
      const dv = new DataView(out.buffer);
      for (let b = 0; b < n / QK; b++) {
        let amax = 0;
        for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(values[b * QK + j]));
        const d = amax / 127, id = d ? 1 / d : 0;
        dv.setUint16(b * 34, f32ToF16(d), true);
        for (let j = 0; j < QK; j++) dv.setInt8(b * 34 + 2 + j, Math.round(values[b * QK + j] * id));
      }
      return out;
    }
    case 'q4_0': {
      checkBlocks(n);
      const out = new Uint8Array((n / QK) * 18);
      const dv = new DataView(out.buffer);
      for (let b = 0; b < n / QK; b++) {
        // as ggml: the value of largest magnitude maps to -8
        let amax = 0, max = 0;
        for (let j = 0; j < QK; j++) { const v = values[b * QK + j]; if (Math.abs(v) > amax) { amax = Math.abs(v); max = v; } }
        const d = max / -8, id = d ? 1 / d : 0;
        dv.setUint16(b * 18, f32ToF16(d), true);
        for (let j = 0; j < QK / 2; j++) {
          const x0 = Math.min(15, Math.floor(values[b * QK + j] * id + 8.5));
          const x1 = Math.min(15, Math.floor(values[b * QK + j + QK / 2] * id + 8.5));
          out[b * 18 + 2 + j] = x0 | (x1 << 4);
        }
      }
      return out;
    }
  }
}

/** The arrays one after another in one array (a single one is returned as is). */
export function concatF32(parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0; for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
