// llama.cpp's own quantisation code as a test oracle: node-llama-cpp ships ggml's shared library for
// this platform, and koffi (a foreign-function interface) calls its dequantize_row_* and
// quantize_row_*_ref directly on our bytes. Null (tests skip) where either is missing.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { QUANT_FORMATS, type QuantType } from '../model/quants.js';

export interface GgmlOracle {
  /** llama.cpp's decoder of n elements of `type` */
  dequantise(type: QuantType, bytes: Uint8Array, n: number): Float32Array;
  /** llama.cpp's reference quantiser */
  quantise(type: QuantType, values: Float32Array): Uint8Array;
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
  return {
    dequantise(type, bytes, n) { const y = new Float32Array(n); deq.get(type)!(bytes, y, n); return y; },
    quantise(type, values) {
      const f = QUANT_FORMATS[type], y = new Uint8Array((values.length / f.elems) * f.bytes);
      q.get(type)!(values, y, values.length);
      return y;
    },
  };
}
