// The WebGPU matrix-vector products of decode steps, alone, against float64 (every weight type; the
// thread-per-row kernel that CPU adapters run too): the float kernel against the exact product; the int8
// path (a kernel quantises x, after the prologue, to int8 per 32-column block as llama.cpp does, then the
// product by integer dot products) against the product with x quantised the same way in float64. Awkward shapes: K
// that does not split evenly over the thread sets (96, 11008 = Llama-2-7B's down projection, two units
// per thread), rows past a workgroup's, and the RMSNorm / SwiGLU / GeGLU (Gemma's tanh GELU) prologues.
import { test } from 'node:test';
import { gpuWeights } from './gpu-weights.js';
import { int8BatchGrid, int8BatchLayout, linearBatchInt8Wgsl } from '../backend/webgpu/int8-batch.js';
import { INT8_MMA_LAYOUT, int8MmaFits, int8MmaGrid, linearInt8MmaWgsl } from '../backend/webgpu/int8-mma-batch.js';
import assert from 'node:assert/strict';
import { gpu, skipGpu } from './gpu.js';
import { hasIntDot4, hasSubgroups32, int8MatrixConfig, throwDeviceError } from '../backend/webgpu/device.js';
import { readBuffer } from '../backend/webgpu/decode-attention.js';
import * as K from '../backend/webgpu/kernels.js';
import { refQuantiseX } from './reference.js';
import { gaussian } from './fixtures.js';
import { rng } from '../engine/sampler.js';
import { f32ToF16, F16_TABLE } from '../model/tensor.js';

interface Case { N: number; K: number; prologue?: 'rmsnorm' | 'swiglu' | 'geglu' }
/** GELU in its tanh form, float64 (the formula as written, not the kernel's sigmoid form) */
const geluTanh = (v: number) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));

/** Random weights of `type` in the GPU layout of kernels.ts (f16 pairs; codes and block scales, and mins) and their values. */
function weightsOf(type: K.GpuWeightType, n: number, g: () => number, u: () => number) {
  if (type !== 'f16') return gpuWeights(type, n, g, u);
  const h = Uint16Array.from({ length: n }, () => f32ToF16(g() * 0.1));
  return { data: new Uint32Array(h.buffer), scales: new Float32Array(4), value: (i: number) => F16_TABLE[h[i]] };
}

/** The product of one token's x by the kernel of decode steps: x-stationary (`rows`, the default) or a
 *  thread per row (`thread`: CPU adapters; no prologue). */
async function product(c: Case, intDot: boolean, seed: number, type: K.GpuWeightType = 'q4_0', kernel: 'rows' | 'thread' = 'rows') {
  // (int8 x: column order for int8 weights, even / odd columns for 4-bit ones)
  const { device } = gpu!, g = gaussian(seed), u = rng(seed), eps = 1e-5;
  // weights: random codes and block scales (and mins), in the GPU layout of kernels.ts
  const { data: packed, scales, value } = weightsOf(type, c.N * c.K, g, u);
  const glu = c.prologue === 'swiglu' || c.prologue === 'geglu';
  const x = Float32Array.from({ length: glu ? 2 * c.K : c.K }, () => g() * 2);
  const nw = Float32Array.from({ length: c.K }, () => 0.5 + Math.abs(g()));
  // the product's input after the prologue, in float64
  let xin: Float64Array = Float64Array.from(x.subarray(0, c.K));
  if (c.prologue === 'rmsnorm') { let ss = 0; for (const v of xin) ss += v * v; const s = 1 / Math.sqrt(ss / c.K + eps); xin = xin.map((v, i) => v * s * nw[i]); }
  if (c.prologue === 'swiglu') xin = xin.map((v, i) => (v / (1 + Math.exp(-v))) * x[c.K + i]);
  if (c.prologue === 'geglu') xin = xin.map((v, i) => geluTanh(v) * x[c.K + i]);
  if (intDot) xin = refQuantiseX(xin);
  const want = Float64Array.from({ length: c.N }, (_, r) => {
    let s = 0; for (let k = 0; k < c.K; k++) s += value(r * c.K + k) * xin[k]; return s;
  });

  const pro: K.LinearSpec['prologue'] = c.prologue === 'rmsnorm' ? { kind: 'rmsnorm', eps } : glu ? { kind: 'glu', act: c.prologue === 'geglu' ? 'gelu' : 'silu' } : undefined;
  // float x: the prologue inside the product; int8 x: the quantising kernel computes it, then the product
  const spec: K.LinearSpec = { type, N: c.N, K: c.K, add: false, bias: false, ...(pro && !intDot ? { prologue: pro } : {}) };
  const R = K.linearRowsFor(type, intDot);
  const pipeOf = (code: string) => device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
  const buf = (a: ArrayBufferView & { byteLength: number }) => {
    const b = device.createBuffer({ size: Math.max(16, a.byteLength), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(b, 0, a.buffer, a.byteOffset, a.byteLength);
    return b;
  };
  const dispatch = (pass: GPUComputePassEncoder, pipe: GPUComputePipeline, bufs: [number, GPUBuffer][], groups: number) => {
    pass.setPipeline(pipe);
    pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: bufs.map(([binding, buffer]) => ({ binding, resource: { buffer } })) }));
    pass.dispatchWorkgroups(groups);
  };
  const y = buf(new Float32Array(c.N)), xBuf = buf(x), nwBuf = buf(nw), xq = buf(new Uint32Array(K.quantisedXWords(c.K) * 4));
  const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
  if (intDot) dispatch(pass, pipeOf(K.quantiseXWgsl(c.K, pro, type === 'q8_16')), [[0, xBuf], [1, xq], ...(c.prologue === 'rmsnorm' ? [[2, nwBuf] as [number, GPUBuffer]] : [])], K.quantiseXGrid(c.K, 1)[0]);
  if (kernel === 'thread') dispatch(pass, pipeOf(K.linearThreadWgsl(spec)), [[0, xBuf], [1, y], [2, buf(packed)], ...(type === 'f16' ? [] : [[3, buf(scales)] as [number, GPUBuffer]])], Math.ceil(c.N / K.THREAD_ROWS));
  else {
    dispatch(pass, pipeOf(K.linearRowsWgsl(spec, { subgroups: hasSubgroups32(device), rows: R, xq: intDot })),
      [[0, intDot ? xq : xBuf], [1, y], [2, buf(packed)], ...(type === 'f16' ? [] : [[3, buf(scales)] as [number, GPUBuffer]]), ...(c.prologue === 'rmsnorm' && !intDot ? [[5, nwBuf] as [number, GPUBuffer]] : [])],
      Math.ceil(c.N / K.rowsLayout(c.K, R, type).rowsPerGroup));
  }
  pass.end();
  device.queue.submit([enc.finish()]);
  const got = new Float32Array(await readBuffer(device, y, c.N * 4));
  throwDeviceError();
  return { got, want };
}

const cases: Case[] = [
  { N: 37, K: 96 }, { N: 20, K: 1024, prologue: 'rmsnorm' }, { N: 9, K: 11008, prologue: 'swiglu' }, { N: 70, K: 4096 }, { N: 13, K: 2048, prologue: 'geglu' },
  { N: 11, K: 4160, prologue: 'rmsnorm' }, // (RMSNorm over a row that is not a whole number of quantiseXWgsl's workgroups)
];
// Q4_K / Q4_1 (q4_1) and the other llama.cpp types (q8_16): codes with a scale and a min per group; f16
// and Q8_0 (the engine's default-model tests on a CPU adapter run the thread-per-row kernel, so the
// x-stationary kernel that browsers without subgroups run is tested here)
for (const type of ['q4_1', 'q8_16', 'f16', 'q8_0'] as const) {
  for (const c of cases) {
    test(`WebGPU ${type} decode product (${c.N} × ${c.K}${c.prologue ? `, ${c.prologue}` : ''}) matches float64`, { skip: skipGpu }, async () => {
      const { got, want } = await product(c, false, 17 + c.K, type);
      let scale = 0; for (const v of want) scale = Math.max(scale, Math.abs(v));
      want.forEach((w, r) => assert.ok(Math.abs(got[r] - w) <= 1e-5 * scale + 1e-6, `row ${r}: ${got[r]} vs ${w} (scale ${scale})`));
    });
  }
}

for (const c of cases) {
  for (const [type, intDot] of [['q4_0', false], ['q4_0', true], ['q4_1', true], ['q8_16', true]] as const) {
    test(`WebGPU ${type} product (${intDot ? 'int8 x, integer dot products' : 'float x'}; ${c.N} × ${c.K}${c.prologue ? `, ${c.prologue}` : ''}) matches float64`, {
      skip: skipGpu || (intDot && !hasIntDot4(gpu!.device) ? 'no packed 4x8 integer dot products on this adapter' : false),
    }, async () => {
      const { got, want } = await product(c, intDot, 11 + c.K, type);
      let scale = 0; for (const v of want) scale = Math.max(scale, Math.abs(v));
      want.forEach((w, r) => assert.ok(Math.abs(got[r] - w) <= 1e-5 * scale + 1e-6, `row ${r}: ${got[r]} vs ${w} (scale ${scale})`));
      if (intDot) {
        // and the quantisation is real: the exact product differs by more than the tolerance above
        const exact = await product(c, false, 11 + c.K, type);
        const diff = Math.max(...Array.from(exact.got, (v, r) => Math.abs(v - got[r])));
        assert.ok(diff > 1e-4 * scale, `int8 x changed nothing (${diff})`);
      }
    });
  }
}

// The thread-per-row product (what CPU adapters run for decode steps), every weight type, rows past a
// workgroup's, K of 8 units and of many
for (const type of ['f16', 'q8_0', 'q4_0', 'q4_1', 'q8_16'] as const) {
  test(`WebGPU thread-per-row decode product (${type}) matches float64`, { skip: skipGpu }, async () => {
    for (const c of [{ N: 70, K: 96 }, { N: 9, K: 2048 }]) {
      const { got, want } = await product(c, false, 5 + c.K, type, 'thread');
      let scale = 0; for (const v of want) scale = Math.max(scale, Math.abs(v));
      want.forEach((w, r) => assert.ok(Math.abs(got[r] - w) <= 1e-5 * scale + 1e-6, `${c.N} x ${c.K} row ${r}: ${got[r]} vs ${w} (scale ${scale})`));
    }
  });
}

// The batched matrix-vector product of batched decode steps (weights read once per 8 tokens), every
// weight type, against float64: 11 tokens (two token groups, the second partly filled), += into y and
// a bias, K that splits evenly over the thread sets and K that does not.
for (const type of ['f16', 'q8_0', 'q4_0', 'q4_1', 'q8_16'] as const) {
  for (const [N, Kd] of [[37, 96], [70, 4096], [9, 11008]]) {
    test(`WebGPU batched product (${type}, ${N} × ${Kd}, 11 tokens, += with bias) matches float64`, { skip: skipGpu }, async () => {
      const { device } = gpu!, g = gaussian(N + Kd), u = rng(Kd), T = 11;
      // weights in the GPU layout: f16 pairs; int8 codes and one scale per 32; nibbles (code - 8) and one scale per 32
      const q = weightsOf(type, N * Kd, g, u), data = q.data, scales = type === 'f16' ? null : q.scales;
      const w = Float64Array.from({ length: N * Kd }, (_, i) => q.value(i));
      const x = Float32Array.from({ length: T * Kd }, () => g()), y0 = Float32Array.from({ length: T * N }, () => g()), bias = Float32Array.from({ length: N }, () => g());
      const buf = (a: ArrayBufferView & { byteLength: number }, usage = GPUBufferUsage.STORAGE) => {
        const b = device.createBuffer({ size: Math.max(16, a.byteLength), usage: usage | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
        device.queue.writeBuffer(b, 0, a.buffer, a.byteOffset, a.byteLength);
        return b;
      };
      const y = buf(y0), step = buf(new Uint32Array([0, T, 0, 0]), GPUBufferUsage.UNIFORM);
      const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: K.linearBatchWgsl({ type, N, K: Kd, add: true, bias: true }, hasSubgroups32(device)) }), entryPoint: 'main' } });
      const entries: [number, GPUBuffer][] = [[0, buf(x)], [1, y], [2, buf(data)], [4, buf(bias)], [6, step], ...(scales ? [[3, buf(scales)] as [number, GPUBuffer]] : [])];
      const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
      pass.setPipeline(pipe);
      pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: entries.map(([binding, buffer]) => ({ binding, resource: { buffer } })) }));
      pass.dispatchWorkgroups(...K.batchGrid(N, Kd, type, T));
      pass.end();
      device.queue.submit([enc.finish()]);
      const got = new Float32Array(await readBuffer(device, y, T * N * 4));
      throwDeviceError();
      for (let t = 0; t < T; t++) for (let r = 0; r < N; r++) {
        let s = y0[t * N + r] + bias[r];
        for (let k = 0; k < Kd; k++) s += w[r * Kd + k] * x[t * Kd + k];
        assert.ok(Math.abs(got[t * N + r] - s) <= 1e-4 * Math.sqrt(Kd) + 1e-5, `token ${t} row ${r}: ${got[t * N + r]} vs ${s}`);
      }
    });
  }
}

// A batched step's tokens through the x-stationary kernel on both grids: (row blocks, tokens) and
// (tokens, row blocks) — the order a batch uses so that the workgroups reading one weight block for
// different tokens run side by side. Each token's row against float64 (x quantised to int8 where the
// adapter has integer dot products), and the two grids bit for bit.
test('WebGPU x-stationary product of a batch of tokens: both grid orders match float64 and each other', { skip: skipGpu }, async () => {
  const { device } = gpu!, intDot = hasIntDot4(device), type = 'q4_0' as const, N = 70, Kd = 1024, T = 3, g = gaussian(91), u = rng(91);
  const { data: packed, scales, value } = weightsOf(type, N * Kd, g, u);
  const x = Float32Array.from({ length: T * Kd }, () => g() * 2);
  const R = K.linearRowsFor(type, intDot), spec: K.LinearSpec = { type, N, K: Kd, add: false, bias: false };
  const buf = (a: ArrayBufferView & { byteLength: number }) => {
    const b = device.createBuffer({ size: Math.max(16, a.byteLength), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(b, 0, a.buffer, a.byteOffset, a.byteLength);
    return b;
  };
  const xBuf = buf(x), xq = buf(new Uint32Array(T * K.quantisedXWords(Kd) * 4)), w = buf(packed), sc = buf(scales);
  const run = async (tokensFirst: boolean) => {
    const pipe = (code: string) => device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
    const y = buf(new Float32Array(T * N)), enc = device.createCommandEncoder(), pass = enc.beginComputePass();
    if (intDot) {
      const q = pipe(K.quantiseXWgsl(Kd, undefined, false));
      pass.setPipeline(q); pass.setBindGroup(0, device.createBindGroup({ layout: q.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: xBuf } }, { binding: 1, resource: { buffer: xq } }] }));
      pass.dispatchWorkgroups(...K.quantiseXGrid(Kd, T));
    }
    const p = pipe(K.linearRowsWgsl(spec, { subgroups: hasSubgroups32(device), rows: R, xq: intDot, tokensFirst }));
    pass.setPipeline(p);
    pass.setBindGroup(0, device.createBindGroup({ layout: p.getBindGroupLayout(0), entries: [[0, intDot ? xq : xBuf], [1, y], [2, w], [3, sc]].map(([binding, buffer]) => ({ binding: binding as number, resource: { buffer: buffer as GPUBuffer } })) }));
    const blocks = Math.ceil(N / K.rowsLayout(Kd, R, type).rowsPerGroup);
    if (tokensFirst) pass.dispatchWorkgroups(T, blocks); else pass.dispatchWorkgroups(blocks, T);
    pass.end(); device.queue.submit([enc.finish()]);
    const out = new Float32Array(await readBuffer(device, y, T * N * 4));
    throwDeviceError();
    return out;
  };
  const byBlocks = await run(false), byTokens = await run(true);
  assert.deepEqual(byTokens, byBlocks, 'the two grid orders differ');
  for (let t = 0; t < T; t++) {
    let xin: Float64Array = Float64Array.from(x.subarray(t * Kd, (t + 1) * Kd));
    if (intDot) xin = refQuantiseX(xin);
    const want = Float64Array.from({ length: N }, (_, r) => { let s = 0; for (let k = 0; k < Kd; k++) s += value(r * Kd + k) * xin[k]; return s; });
    let scale = 0; for (const v of want) scale = Math.max(scale, Math.abs(v));
    want.forEach((wv, r) => assert.ok(Math.abs(byTokens[t * N + r] - wv) <= 1e-5 * scale + 1e-6, `token ${t} row ${r}: ${byTokens[t * N + r]} vs ${wv}`));
  }
});

/** The int8-x product tests' buffers (storage unless `usage` says; copied to and from) and pipelines. */
const int8Buf = (a: ArrayBufferView & { byteLength: number }, usage: number = GPUBufferUsage.STORAGE) => {
  const { device } = gpu!, b = device.createBuffer({ size: Math.max(16, a.byteLength), usage: usage | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(b, 0, a.buffer, a.byteOffset, a.byteLength);
  return b;
};
const int8Pipe = (code: string) => gpu!.device.createComputePipeline({ layout: 'auto', compute: { module: gpu!.device.createShaderModule({ code }), entryPoint: 'main' } });

// The 4-bit products of batched decode steps with int8 x (each weight block applied to a workgroup's
// tokens in registers) against float64 of the same int8 x: the default layouts (2 and 4 rows a set) and
// others, rows past the last row set (N = 70), K whose blocks do not fill the last round of 32 threads
// (1056 = 33 blocks, 11008 = 344), tokens past a workgroup's (11 and 9 with TB 8, 3 with TB 16), += with a
// bias; the spread layouts (a lane per token); both reductions (subgroup adds where subgroups are 32
// wide, and the workgroup-memory one every adapter has).
for (const type of ['q4_0', 'q4_1'] as const) {
  test(`WebGPU batched int8-x product (${type}) matches float64`, {
    skip: skipGpu || (!hasIntDot4(gpu!.device) ? 'no packed 4x8 integer dot products on this adapter' : false),
  }, async () => {
    const { device } = gpu!;
    const buf = int8Buf, pipeOf = int8Pipe;
    const reductions = hasSubgroups32(device) ? [true, false] : [false];
    for (const [N, Kd, T, lay] of [[70, 1056, 11, int8BatchLayout(1056)], [70, 11008, 9, int8BatchLayout(11008)], [37, 4096, 3, { R: 3, TB: 16 }], [9, 256, 5, { R: 1, TB: 2 }],
      [70, 1056, 11, { R: 2, TB: 8, spread: true }], [37, 4096, 19, { R: 3, TB: 16, spread: true }]] as const) {
      const g = gaussian(N + Kd), u = rng(Kd), q = gpuWeights(type, N * Kd, g, u);
      const x = Float32Array.from({ length: T * Kd }, () => g() * 2), y0 = Float32Array.from({ length: T * N }, () => g()), bias = Float32Array.from({ length: N }, () => g());
      const want = new Float64Array(T * N);
      for (let t = 0; t < T; t++) {
        const xin = refQuantiseX(Float64Array.from(x.subarray(t * Kd, (t + 1) * Kd)));
        for (let r = 0; r < N; r++) { let s = y0[t * N + r] + bias[r]; for (let k = 0; k < Kd; k++) s += q.value(r * Kd + k) * xin[k]; want[t * N + r] = s; }
      }
      let scale = 0; for (const v of want) scale = Math.max(scale, Math.abs(v));
      for (const sub of reductions) {
        const xBuf = buf(x), xq = buf(new Uint32Array(T * K.quantisedXWords(Kd) * 4)), y = buf(y0), step = buf(new Uint32Array([0, T, 0, 0]), GPUBufferUsage.UNIFORM);
        const quant = pipeOf(K.quantiseXWgsl(Kd)), prod = pipeOf(linearBatchInt8Wgsl({ type, N, K: Kd, add: true, bias: true }, lay, sub));
        const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
        const bind = (pipe: GPUComputePipeline, entries: [number, GPUBuffer][]) => {
          pass.setPipeline(pipe);
          pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: entries.map(([binding, buffer]) => ({ binding, resource: { buffer } })) }));
        };
        bind(quant, [[0, xBuf], [1, xq]]); pass.dispatchWorkgroups(...K.quantiseXGrid(Kd, T));
        bind(prod, [[0, xq], [1, y], [2, buf(q.data)], [3, buf(q.scales)], [4, buf(bias)], [6, step]]); pass.dispatchWorkgroups(...int8BatchGrid(N, T, lay));
        pass.end(); device.queue.submit([enc.finish()]);
        const got = new Float32Array(await readBuffer(device, y, T * N * 4));
        throwDeviceError();
        want.forEach((w, i) => assert.ok(Math.abs(got[i] - w) <= 1e-5 * scale + 1e-6,
          `${N} x ${Kd}, R ${lay.R} TB ${lay.TB}${lay.spread ? ' spread' : ''}, ${sub ? 'subgroup' : 'workgroup'} sums: token ${Math.floor(i / N)} row ${i % N}: ${got[i]} vs ${w}`));
      }
    }
  });
}

// The same Q4_0 products on 8-bit tensor cores (int8-mma-batch.ts), where the adapter has i8 subgroup
// matrices: against float64 of the same int8 x, and against the integer-dot-product kernel (the same integer
// sums, so equal up to the order of the f32 sums); tokens within one block of 16 and past it (a second
// row of workgroups), rows of two and more tiles, K of one iteration and many (11008 = 344 blocks), =
// and += with a bias, every layout the kernel takes here.
test('WebGPU batched int8-x product on 8-bit tensor cores (q4_0) matches float64 and the integer-dot kernel', {
  skip: skipGpu || (!int8MatrixConfig(gpu!.device) ? 'no 8-bit subgroup matrices in use (QUEST_INT8_MMA=1, on an adapter that has them)' : false),
}, async () => {
  const { device } = gpu!, cfg = int8MatrixConfig(device)!;
  const buf = int8Buf, pipeOf = int8Pipe;
  let ran = 0;
  for (const [N, Kd, T, add] of [[64, 256, 16, false], [96, 4096, 5, true], [32, 11008, 19, true], [128, 1024, 32, false]] as const) {
    const g = gaussian(N + Kd + T), u = rng(Kd + 1), q = gpuWeights('q4_0', N * Kd, g, u);
    const x = Float32Array.from({ length: T * Kd }, () => g() * 2), y0 = Float32Array.from({ length: T * N }, () => g()), bias = Float32Array.from({ length: N }, () => g());
    const want = new Float64Array(T * N);
    for (let t = 0; t < T; t++) {
      const xin = refQuantiseX(Float64Array.from(x.subarray(t * Kd, (t + 1) * Kd)));
      for (let r = 0; r < N; r++) { let s = (add ? y0[t * N + r] : 0) + bias[r]; for (let k = 0; k < Kd; k++) s += q.value(r * Kd + k) * xin[k]; want[t * N + r] = s; }
    }
    let scale = 0; for (const v of want) scale = Math.max(scale, Math.abs(v));
    const spec = { type: 'q4_0' as const, N, K: Kd, add, bias: true };
    const run = async (prod: GPUComputePipeline, grid: [number, number]) => {
      const xq = buf(new Uint32Array(T * K.quantisedXWords(Kd) * 4)), y = buf(y0), step = buf(new Uint32Array([0, T, 0, 0]), GPUBufferUsage.UNIFORM);
      const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
      const bind = (pipe: GPUComputePipeline, entries: [number, GPUBuffer][]) => {
        pass.setPipeline(pipe);
        pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: entries.map(([binding, buffer]) => ({ binding, resource: { buffer } })) }));
      };
      bind(pipeOf(K.quantiseXWgsl(Kd)), [[0, buf(x)], [1, xq]]); pass.dispatchWorkgroups(...K.quantiseXGrid(Kd, T));
      bind(prod, [[0, xq], [1, y], [2, buf(q.data)], [3, buf(q.scales)], [4, buf(bias)], [6, step]]); pass.dispatchWorkgroups(...grid);
      pass.end(); device.queue.submit([enc.finish()]);
      const got = new Float32Array(await readBuffer(device, y, T * N * 4));
      throwDeviceError();
      return got;
    };
    const lay = int8BatchLayout(Kd);
    const simt = await run(pipeOf(linearBatchInt8Wgsl(spec, lay, hasSubgroups32(device))), int8BatchGrid(N, T, lay));
    for (const m of [INT8_MMA_LAYOUT, { SG: 2, BPI: 4, WN: 32 }, { SG: 2, BPI: 2, WN: 32 }]) {
      if (!int8MmaFits(spec, m, device.limits.maxComputeWorkgroupStorageSize)) continue;
      const got = await run(pipeOf(linearInt8MmaWgsl(spec, cfg, m)), int8MmaGrid(N, T, m));
      const what = `${N} x ${Kd}, ${T} tokens, SG ${m.SG} BPI ${m.BPI}`;
      want.forEach((w, i) => assert.ok(Math.abs(got[i] - w) <= 1e-5 * scale + 1e-6, `${what}: token ${Math.floor(i / N)} row ${i % N}: ${got[i]} vs ${w}`));
      simt.forEach((v, i) => assert.ok(Math.abs(got[i] - v) <= 2e-6 * scale, `${what} against the integer-dot kernel: token ${Math.floor(i / N)} row ${i % N}: ${got[i]} vs ${v}`));
      ran++;
    }
  }
  assert.ok(ran >= 12, `the kernel fitted only ${ran} of 12 cases`);
});
