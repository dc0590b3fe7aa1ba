// Random weights in the GPU layouts of backend/webgpu/kernels.ts for the product tests.
import * as K from '../backend/webgpu/kernels.js';

/** Random quantised weights in a GPU layout of kernels.ts, and their values in float64: q8_0 int8 codes
 *  and a scale per 32; q4_0 codes 0..15 (value code - 8) and a scale per 32; q4_1 codes 0..15 and a
 *  (scale, min) per 32; q8_16 int8 codes and a (scale, min) per 16. */
export function gpuWeights(type: Exclude<K.GpuWeightType, 'f16'>, n: number, g: () => number, u: () => number) {
  const group = type === 'q8_16' ? 16 : 32, four = type === 'q4_0' || type === 'q4_1';
  const codes = Int8Array.from({ length: n }, () => (four ? Math.floor(u() * 16) : Math.floor(u() * 255) - 127));
  const pairs = K.hasMins(type), groups = n / group;
  const scales = Float32Array.from({ length: pairs ? 2 * groups : groups }, (_, i) => (pairs && i % 2 ? (g() - 0.5) * 0.2 : 0.01 + Math.abs(g()) * (four ? 0.05 : 0.003)));
  const value = (i: number) => {
    const b = Math.floor(i / group);
    return pairs ? codes[i] * scales[2 * b] + scales[2 * b + 1] : (type === 'q4_0' ? codes[i] - 8 : codes[i]) * scales[b];
  };
  let data: Uint32Array;
  if (four) { data = new Uint32Array(n / 8); codes.forEach((v, i) => { data[i >> 3] |= v << (4 * (i & 7)); }); } else data = new Uint32Array(codes.buffer);
  return { data, scales, value };
}

