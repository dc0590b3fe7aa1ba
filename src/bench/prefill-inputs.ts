// Inputs of the prefill kernels' benchmarks (bench/kernels.ts, bench/kernel-ablation.ts): random buffers,
// and one chunk of queries over a paged cache that already holds its keys.
import { f32ToF16 } from '../model/tensor.js';

/** A storage buffer of uniform values in (-1, 1), f32 or f16 (a 1M-value pattern tiled over it). */
export function randomBuffer(device: GPUDevice, bytes: number, f32: boolean): GPUBuffer {
  const b = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  const chunk = f32 ? new Float32Array(1 << 20).map(() => (Math.random() - 0.5) * 2) : new Uint16Array(1 << 20).map(() => f32ToF16((Math.random() - 0.5) * 2));
  for (let o = 0; o < bytes; o += chunk.byteLength) device.queue.writeBuffer(b, o, chunk, 0, Math.min(chunk.length, (bytes - o) / chunk.BYTES_PER_ELEMENT));
  return b;
}

/** The causal prefill attention's bindings for the last `tokens` queries of a `context`-token prompt (f16
 *  cache behind an identity page table, f32 q/k/v rows: scores of std ~0.3), and its FLOPs (Q Kᵀ and P V
 *  over the causal triangle). */
export function prefillAttentionInputs(device: GPUDevice, o: { nH: number; nKV: number; headDim: number; pageSize: number; tokens: number; context: number }) {
  const { nH, nKV, headDim: HD, pageSize: P, tokens: T, context } = o, start = context - T, pages = context / P + 8;
  const kc = randomBuffer(device, pages * nKV * P * HD * 2, false), vc = randomBuffer(device, pages * nKV * P * HD * 2, false);
  const qkv = randomBuffer(device, T * (nH + 2 * nKV) * HD * 4, true);
  const out = device.createBuffer({ size: T * nH * HD * 4, usage: GPUBufferUsage.STORAGE });
  const step = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(step, 0, new Uint32Array([start, T, context, 0]));
  const table = device.createBuffer({ size: pages * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(table, 0, Uint32Array.from({ length: pages }, (_, i) => i));
  let flop = 0; for (let i = 0; i < T; i++) flop += 4 * HD * (start + i + 1) * nH;
  const entries: [number, GPUBuffer][] = [[0, qkv], [1, kc], [2, vc], [3, out], [4, step], [6, table]];
  return { entries, flop, start, destroy: () => { for (const [, b] of entries) b.destroy(); } };
}
