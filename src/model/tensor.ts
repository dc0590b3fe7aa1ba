// Weight matrices kept in their file format (f32, f16, bf16 or one of llama.cpp's quantised formats) and
// dequantised one row at a time, so a model is never held twice in memory: the matrix bytes are a view
// into the loaded file.
import { F16_TABLE, f32ToF16, f32ToBf16 } from './half.js';
import { dequantise, QUANT_FORMATS, type QuantType } from './quants.js';
import { quantise } from './quantise.js';

export type DType = 'f32' | 'f16' | 'bf16' | QuantType;

export const QK = 32; // elements per Q8_0 / Q4_0 block

/** Bytes one row of `cols` elements takes in `dtype`. */
export function rowBytes(dtype: DType, cols: number): number {
  switch (dtype) {
    case 'f32': return cols * 4;
    case 'f16': case 'bf16': return cols * 2;
    default: {
      const f = QUANT_FORMATS[dtype];
      if (cols % f.elems !== 0) throw new Error(`${f.name} rows need a multiple of ${f.elems} elements, got ${cols}`);
      return (cols / f.elems) * f.bytes;
    }
  }
}

export { F16_TABLE, f32ToF16, bf16ToF32, f32ToBf16 } from './half.js';

/** A row-major matrix [rows x cols] stored in `dtype`; `bytes` is a view, never a copy. */
export class Matrix {
  readonly rowBytes: number;
  private readonly f32?: Float32Array;
  private readonly u16?: Uint16Array;

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
      default:
        dequantise(this.dtype, this.bytes, r * this.rowBytes, out, 0, n);
        return out;
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
    default: return quantise(values, dtype);
  }
}

/** The arrays one after another in one array (a single one is returned as is). */
export function concatF32(parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
  let o = 0; for (const p of parts) { out.set(p, o); o += p.length; }
  return out;
}
