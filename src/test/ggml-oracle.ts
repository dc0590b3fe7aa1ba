// llama.cpp's own quantisation code as a test oracle: node-llama-cpp ships ggml's shared library for
// this platform, and koffi (a foreign-function interface) calls its dequantize_row_* and
// quantize_row_*_ref directly on our bytes. Null (tests skip) where either is missing.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { QUANT_FORMATS, type QuantType } from '../model/quants.js';
import { F16_TABLE } from '../model/half.js';

const halfToFloat = (h: number) => F16_TABLE[h];

export interface GgmlOracle {
  /** llama.cpp's decoder of n elements of `type` */
  dequantise(type: QuantType, bytes: Uint8Array, n: number): Float32Array;
  /** llama.cpp's reference quantiser */
  quantise(type: QuantType, values: Float32Array): Uint8Array;
  /** x as llama.cpp's products take it: quantize_row_q8_0_ref / _q8_1_ref / _q8_K_ref, read back as q·d */
  activations(format: 'q8_0' | 'q8_1' | 'q8_k', x: Float32Array): Float32Array;
}

function ggmlLibrary(): string | null {
  const root = fileURLToPath(new URL('../../node_modules/@node-llama-cpp/', import.meta.url));
  const dir = join(root, `${process.platform}-${process.arch}`, 'bins');
  if (!existsSync(dir)) return null;
  for (const sub of readdirSync(dir)) {
    const lib = join(dir, sub, process.platform === 'darwin' ? 'libggml-base.dylib' : 'libggml-base.so');
    if (existsSync(lib)) return lib;
  }
  return null;
}

/** The oracle, or a reason it is unavailable. */
export async function ggmlOracle(): Promise<GgmlOracle | string> {
  const path = ggmlLibrary();
  if (!path) return `no ggml library from node-llama-cpp for ${process.platform}-${process.arch}`;
  let koffi: typeof import('koffi');
  try { koffi = (await import('koffi')).default as unknown as typeof import('koffi'); } catch { return 'koffi (the FFI used to call ggml) is not installed'; }
  const lib = koffi.load(path);
  // ggml's function names spell the K-quants with a capital K
  const cname = (t: QuantType) => t.replace(/_k$/, '_K');
  const deq = new Map<QuantType, (x: Uint8Array, y: Float32Array, k: number) => void>();
  const q = new Map<QuantType, (x: Float32Array, y: Uint8Array, k: number) => void>();
  for (const t of Object.keys(QUANT_FORMATS) as QuantType[]) {
    deq.set(t, lib.func(`void dequantize_row_${cname(t)}(const void *x, _Out_ float *y, int64_t k)`));
    q.set(t, lib.func(`void quantize_row_${cname(t)}_ref(const float *x, _Out_ void *y, int64_t k)`));
  }
  const act = {
    q8_0: { fn: lib.func('void quantize_row_q8_0_ref(const float *x, _Out_ void *y, int64_t k)'), elems: 32, bytes: 34, qs: 2 },
    q8_1: { fn: lib.func('void quantize_row_q8_1_ref(const float *x, _Out_ void *y, int64_t k)'), elems: 32, bytes: 36, qs: 4 },
    q8_k: { fn: lib.func('void quantize_row_q8_K_ref(const float *x, _Out_ void *y, int64_t k)'), elems: 256, bytes: 292, qs: 4 },
  };
  return {
    activations(format, x) {
      // block layouts (ggml-common.h): q8_0 {f16 d; i8 qs[32]}, q8_1 {f16 d, s; i8 qs[32]}, q8_K {f32 d; i8 qs[256]; i16 bsums[16]}
      const a = act[format], nb = x.length / a.elems, y = new Uint8Array(nb * a.bytes), out = new Float32Array(x.length);
      a.fn(x, y, x.length);
      const v = new DataView(y.buffer);
      for (let b = 0; b < nb; b++) {
        const d = format === 'q8_k' ? v.getFloat32(b * a.bytes, true) : halfToFloat(v.getUint16(b * a.bytes, true));
        for (let j = 0; j < a.elems; j++) out[b * a.elems + j] = d * v.getInt8(b * a.bytes + a.qs + j);
      }
      return out;
    },
    dequantise(type, bytes, n) { const y = new Float32Array(n); deq.get(type)!(bytes, y, n); return y; },
    quantise(type, values) {
      const f = QUANT_FORMATS[type], y = new Uint8Array((values.length / f.elems) * f.bytes);
      q.get(type)!(values, y, values.length);
      return y;
    },
  };
}
