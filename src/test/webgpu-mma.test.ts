// The tensor-core prefill product (mma-kernels.ts: WGSL subgroup matrices, f16 operands, f32
// accumulation) against float64: y = x W^T for f16, Q8_0 and Q4_0 weights, with the residual add and
// the bias, every tile shape, at awkward sizes (1 token, token counts that are not multiples of 16,
// N = 576 as in SmolLM2, K = 96 and 11008). The reference rounds x, and each dequantised weight, to f16
// as the kernel does. Skipped with the reason on adapters without subgroup matrices (SwiftShader, CI):
// there the fallback tiled kernel runs and keeps its own tests (webgpu-engine.test.ts).
import { test } from 'node:test';
import { gpuWeights } from './gpu-weights.js';
import assert from 'node:assert/strict';
import { gpu, skipGpu } from './gpu.js';
import { matrixConfig, throwDeviceError } from '../backend/webgpu/device.js';
import { readBuffer } from '../backend/webgpu/decode-attention.js';
import { linearMmaWgsl, linearSkinnyMmaWgsl, mmaTileFor, MMA_TILES, skinnyBlocks, skinnyGrid, skinnyTileFor, SKINNY_TILES, toHalfGrid, toHalfWgsl, type MmaTile, type SkinnyTile } from '../backend/webgpu/mma-kernels.js';
import { attentionTune, CARRY_GAP, LAZY_RESCALE, mmaAttentionFits, mmaAttentionRows, prefillAttentionWgslFor, tuneFits, type AttentionTune } from '../backend/webgpu/mma-attention.js';
import type { GpuWeightType, LinearSpec } from '../backend/webgpu/kernels.js';
import { F16_TABLE, f32ToF16 } from '../model/tensor.js';
import { gaussian } from './fixtures.js';
import { rng } from '../engine/sampler.js';

const cfg = gpu ? matrixConfig(gpu.device) : null;
const skip = skipGpu || (cfg ? false : 'this adapter has no f16 subgroup matrices (shader-f16 + chromium-experimental-subgroup-matrix)');
const f16 = (v: number) => F16_TABLE[f32ToF16(v)];

/** A GPU buffer holding `a` (sizes rounded up to 16 bytes). */
function buf(a: ArrayBufferView & { byteLength: number }, usage = GPUBufferUsage.STORAGE): GPUBuffer {
  const b = gpu!.device.createBuffer({ size: Math.max(16, Math.ceil(a.byteLength / 16) * 16), usage: usage | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  gpu!.device.queue.writeBuffer(b, 0, a.buffer, a.byteOffset, a.byteLength);
  return b;
}

/** A compute pipeline of `code`, its compile errors (with line numbers) a test failure. */
async function pipelineOf(code: string): Promise<GPUComputePipeline> {
  const module = gpu!.device.createShaderModule({ code });
  const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
  assert.equal(errors.length, 0, errors.map((e) => `${e.lineNum}: ${e.message}`).join('\n'));
  return gpu!.device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
}

/** Random weights in the GPU layout of kernels.ts, and their values as the kernel sees them (f16). */
function weights(type: GpuWeightType, N: number, Kd: number, seed: number) {
  const g = gaussian(seed), u = rng(seed), n = N * Kd;
  const values = new Float64Array(n);
  if (type === 'f16') {
    const h = Uint16Array.from({ length: n }, () => f32ToF16(g() * 0.2));
    h.forEach((b, i) => { values[i] = F16_TABLE[b]; });
    return { values, data: new Uint32Array(h.buffer), scales: null };
  }
  if (type === 'q4_1' || type === 'q8_16') {
    // codes with a (scale, min) per group (Q4_K-style 4-bit / any type as int8)
    const q = gpuWeights(type, n, g, u);
    for (let i = 0; i < n; i++) values[i] = f16(q.value(i));
    return { values, data: q.data, scales: q.scales };
  }
  const scales = Float32Array.from({ length: n / 32 }, () => 0.002 + Math.abs(g()) * 0.01);
  if (type === 'q8_0') {
    const q = Int8Array.from({ length: n }, () => Math.floor(u() * 255) - 127);
    q.forEach((v, i) => { values[i] = f16(v * scales[i >> 5]); });
    return { values, data: new Uint32Array(q.buffer), scales };
  }
  const codes = Uint8Array.from({ length: n }, () => Math.floor(u() * 16));
  const data = new Uint32Array(n / 8);
  codes.forEach((v, i) => { data[i >> 3] |= v << (4 * (i & 7)); values[i] = f16((v - 8) * scales[i >> 5]); });
  return { values, data, scales };
}

async function product(type: GpuWeightType, tokens: number, N: number, Kd: number, tile: MmaTile, o: { add?: boolean; bias?: boolean; xHalf?: boolean }) {
  const { device } = gpu!, g = gaussian(tokens + N + Kd), seed = 3 + N;
  const rows = Math.ceil(tokens / tile.BM) * tile.BM; // activation buffers are padded to the tile
  const w = weights(type, N, Kd, seed);
  const x = Float32Array.from({ length: rows * Kd }, () => g());
  const y0 = Float32Array.from({ length: rows * N }, () => (o.add ? g() : 0));
  const bias = Float32Array.from({ length: N }, () => g());
  const want = new Float64Array(tokens * N);
  for (let t = 0; t < tokens; t++) for (let r = 0; r < N; r++) {
    let s = o.add ? y0[t * N + r] : o.bias ? bias[r] : 0;
    for (let k = 0; k < Kd; k++) s += f16(x[t * Kd + k]) * w.values[r * Kd + k];
    want[t * N + r] = s;
  }
  const spec: LinearSpec = { type, N, K: Kd, add: !!o.add, bias: !!o.bias, ...(o.xHalf ? { xHalf: true } : {}) };
  const pipe = await pipelineOf(linearMmaWgsl(spec, cfg!, tile));
  const y = buf(y0);
  const entries: [number, GPUBuffer][] = [[0, buf(o.xHalf ? Uint16Array.from(x, f32ToF16) : x)], [1, y], [2, buf(w.data)]];
  if (w.scales) entries.push([3, buf(w.scales)]);
  if (o.bias) entries.push([4, buf(bias)]);
  const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: entries.map(([binding, buffer]) => ({ binding, resource: { buffer } })) }));
  pass.dispatchWorkgroups(N / tile.BN, rows / tile.BM);
  pass.end();
  device.queue.submit([enc.finish()]);
  const got = new Float32Array(await readBuffer(device, y, tokens * N * 4));
  throwDeviceError();
  return { got, want };
}

const check = (got: Float32Array, want: Float64Array, what: string) => {
  let scale = 0; for (const v of want) scale = Math.max(scale, Math.abs(v));
  want.forEach((w, i) => assert.ok(Math.abs(got[i] - w) <= 2e-5 * scale + 1e-5, `${what}: element ${i}: ${got[i]} vs ${w} (scale ${scale})`));
};

const cases: { type: GpuWeightType; tokens: number; N: number; K: number; add?: boolean; bias?: boolean }[] = [
  { type: 'f16', tokens: 1, N: 128, K: 96 }, { type: 'f16', tokens: 77, N: 576, K: 576, add: true },
  { type: 'f16', tokens: 130, N: 384, K: 256, bias: true }, { type: 'f16', tokens: 19, N: 256, K: 11008, add: true },
  { type: 'q8_0', tokens: 45, N: 640, K: 768 }, { type: 'q4_0', tokens: 200, N: 256, K: 4096, add: true },
  { type: 'q4_1', tokens: 70, N: 256, K: 1024, bias: true }, { type: 'q8_16', tokens: 33, N: 384, K: 768, add: true },
];
for (const c of cases) {
  test(`WebGPU tensor-core product (${c.type}, ${c.tokens} tokens × ${c.N} × ${c.K}${c.add ? ', residual add' : ''}${c.bias ? ', bias' : ''}) matches float64`, { skip }, async () => {
    const tile = mmaTileFor(c.N, c.K, cfg!, gpu!.device.limits.maxComputeWorkgroupStorageSize);
    assert.ok(tile, `no tile for ${c.N} x ${c.K}`);
    const { got, want } = await product(c.type, c.tokens, c.N, c.K, tile, c);
    check(got, want, `${c.type} ${JSON.stringify(tile)}`);
  });
}

test('WebGPU tensor-core product: every tile shape gives the same answer', { skip }, async () => {
  for (const tile of MMA_TILES) {
    if (!mmaTileFor(256, 128, cfg!, gpu!.device.limits.maxComputeWorkgroupStorageSize, [tile])) continue;
    const { got, want } = await product('f16', 150, 256, 128, tile, { add: true });
    check(got, want, JSON.stringify(tile));
  }
});

// workgroups in grouped order (groups of 2, 3 and the default tile's 8 over 5 token tiles: a partial last group) and x stored as f16
test('WebGPU tensor-core product: grouped workgroup order and f16 x give the same answer', { skip }, async () => {
  const base = mmaTileFor(384, 256, cfg!, gpu!.device.limits.maxComputeWorkgroupStorageSize)!;
  for (const [group, xHalf] of [[2, false], [3, true], [undefined, true]] as const) {
    const tile = { ...base, ...(group ? { group } : {}) };
    const { got, want } = await product('q8_0', 5 * tile.BM - 7, 384, 256, tile, { bias: true, xHalf });
    check(got, want, `${JSON.stringify(tile)} x f16 ${xHalf}`);
  }
});

// The few-token product of batched decode steps (linearSkinnyMmaWgsl, after toHalfWgsl splits x into two
// f16 parts): only the step's tokens are written (the rows after them keep their values), every layout, up
// to SKINNY_BLOCKS token blocks per workgroup and more tokens than that (a second row of workgroups). The
// reference takes x as it is (f32): the split keeps ~22 bits of it, where x as one f16 (11 bits) was off
// by ~1e-4 of the output's scale, five times the tolerance.
async function skinnyProduct(type: GpuWeightType, tokens: number, N: number, Kd: number, tile: SkinnyTile, o: { add?: boolean; bias?: boolean }) {
  const { device } = gpu!, g = gaussian(tokens * 7 + N + Kd), w = weights(type, N, Kd, 5 + N);
  const blocks = skinnyBlocks(tokens, cfg!), [gx, gy] = skinnyGrid(N, tokens, tile, cfg!), rows = gy * blocks * cfg!.M + 8;
  const x = Float32Array.from({ length: rows * Kd }, () => g());
  const y0 = Float32Array.from({ length: rows * N }, () => g());
  const bias = Float32Array.from({ length: N }, () => g());
  const want = Float64Array.from(y0);
  for (let t = 0; t < tokens; t++) for (let r = 0; r < N; r++) {
    let s = (o.add ? y0[t * N + r] : 0) + (o.bias ? bias[r] : 0);
    for (let k = 0; k < Kd; k++) s += x[t * Kd + k] * w.values[r * Kd + k];
    want[t * N + r] = s;
  }
  const spec: LinearSpec = { type, N, K: Kd, add: !!o.add, bias: !!o.bias };
  const [half, pipe] = await Promise.all([pipelineOf(toHalfWgsl(Kd)), pipelineOf(linearSkinnyMmaWgsl(spec, cfg!, tile, blocks))]);
  const step = buf(new Uint32Array([0, tokens, 0, 0]), GPUBufferUsage.UNIFORM);
  const xh = device.createBuffer({ size: rows * Kd * 4, usage: GPUBufferUsage.STORAGE }), y = buf(y0);
  const group = (p: GPUComputePipeline, entries: [number, GPUBuffer][]) => device.createBindGroup({ layout: p.getBindGroupLayout(0), entries: entries.map(([binding, buffer]) => ({ binding, resource: { buffer } })) });
  const entries: [number, GPUBuffer][] = [[0, xh], [1, y], [2, buf(w.data)], [6, step]];
  if (w.scales && tile.stage) entries.push([3, buf(w.scales)]);
  if (o.bias) entries.push([4, buf(bias)]);
  const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
  pass.setPipeline(half); pass.setBindGroup(0, group(half, [[0, buf(x)], [1, xh], [6, step]])); pass.dispatchWorkgroups(...toHalfGrid(tokens, Kd));
  pass.setPipeline(pipe); pass.setBindGroup(0, group(pipe, entries)); pass.dispatchWorkgroups(gx, gy);
  pass.end();
  device.queue.submit([enc.finish()]);
  const got = new Float32Array(await readBuffer(device, y, rows * N * 4));
  throwDeviceError();
  return { got, want };
}

const skinnyCases: { type: GpuWeightType; tokens: number; N: number; K: number; add?: boolean; bias?: boolean }[] = [
  { type: 'f16', tokens: 2, N: 128, K: 256 }, { type: 'f16', tokens: 16, N: 576, K: 576, add: true },
  { type: 'f16', tokens: 37, N: 384, K: 1024, bias: true }, { type: 'f16', tokens: 64, N: 256, K: 11008, add: true },
  { type: 'f16', tokens: 70, N: 256, K: 512, add: true, bias: true },
  { type: 'q8_0', tokens: 9, N: 640, K: 768 }, { type: 'q4_0', tokens: 33, N: 256, K: 4096, add: true },
  { type: 'q4_1', tokens: 20, N: 256, K: 1024, bias: true }, { type: 'q8_16', tokens: 48, N: 384, K: 768, add: true },
];
for (const c of skinnyCases) {
  test(`WebGPU tensor-core few-token product (${c.type}, ${c.tokens} tokens × ${c.N} × ${c.K}${c.add ? ', residual add' : ''}${c.bias ? ', bias' : ''}), every layout, matches float64`, { skip }, async () => {
    let ran = 0;
    for (const tile of SKINNY_TILES) {
      if (!skinnyTileFor(c.type, c.N, c.K, c.tokens, cfg!, gpu!.device.limits.maxComputeWorkgroupStorageSize, [tile])) continue;
      const { got, want } = await skinnyProduct(c.type, c.tokens, c.N, c.K, tile, c);
      check(got, want, `${c.type} ${JSON.stringify(tile)}`);
      ran++;
    }
    assert.ok(ran > 0, 'no layout fits this product');
  });
}

// Prefill attention on tensor cores, alone: a chunk of n queries at positions start.. over a paged f16
// cache holding start + n keys, against float64 causal softmax attention. q is rounded to f16 by the
// kernel and P too (below 256 by construction), hence the tolerance (relative to the output's scale).
async function attention(o: { nH: number; nKV: number; hd: number; start: number; n: number; P?: number; qs?: number }, tune: AttentionTune) {
  const { device } = gpu!, g = gaussian(o.hd + o.n + o.start), P = o.P ?? 16;
  const total = o.start + o.n, pages = Math.ceil(total / P), rowsOut = Math.ceil(o.n / mmaAttentionRows(tune)) * mmaAttentionRows(tune);
  const QKV = (o.nH + 2 * o.nKV) * o.hd;
  const qkv = Float32Array.from({ length: rowsOut * QKV }, () => g() * (o.qs ?? 1.5));
  // (room for a whole tile of keys past the last page; the page table maps those too)
  const kh = Uint16Array.from({ length: (pages + Math.ceil(tune.keys / P)) * o.nKV * P * o.hd }, () => f32ToF16(g())), vh = Uint16Array.from({ length: kh.length }, () => f32ToF16(g()));
  const at = (t: number, kv: number) => (((Math.floor(t / P) * o.nKV + kv) * P + (t % P)) * o.hd);
  const want = new Float64Array(o.n * o.nH * o.hd);
  for (let i = 0; i < o.n; i++) for (let h = 0; h < o.nH; h++) {
    const kv = Math.floor(h / (o.nH / o.nKV)), pos = o.start + i;
    const s = Array.from({ length: pos + 1 }, (_, t) => { let d = 0; for (let c = 0; c < o.hd; c++) d += qkv[i * QKV + h * o.hd + c] * F16_TABLE[kh[at(t, kv) + c]]; return d / Math.sqrt(o.hd); });
    const m = Math.max(...s), e = s.map((z) => Math.exp(z - m)), sum = e.reduce((a, b) => a + b, 0);
    for (let t = 0; t <= pos; t++) for (let c = 0; c < o.hd; c++) want[(i * o.nH + h) * o.hd + c] += (e[t] / sum) * F16_TABLE[vh[at(t, kv) + c]];
  }
  const out = buf(new Float32Array(rowsOut * o.nH * o.hd)), step = buf(new Uint32Array([o.start, o.n, total, 0]), GPUBufferUsage.UNIFORM);
  const pipe = await pipelineOf(prefillAttentionWgslFor({ nHeads: o.nH, nKV: o.nKV, headDim: o.hd, pageSize: P }, cfg!, tune));
  const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [buf(qkv), buf(kh), buf(vh), out, step, null, buf(Uint32Array.from({ length: pages + Math.ceil(tune.keys / P) + 1 }, (_, i) => i))]
    .flatMap((buffer, binding) => (buffer ? [{ binding, resource: { buffer } }] : [])) }));
  pass.dispatchWorkgroups(rowsOut / mmaAttentionRows(tune), o.nH);
  pass.end();
  device.queue.submit([enc.finish()]);
  const got = new Float32Array(await readBuffer(device, out, o.n * o.nH * o.hd * 4));
  throwDeviceError();
  return { got, want };
}

const attCases = [
  { nH: 4, nKV: 4, hd: 64, start: 0, n: 1 }, { nH: 4, nKV: 1, hd: 80, start: 0, n: 37 },
  { nH: 8, nKV: 2, hd: 128, start: 100, n: 77 }, { nH: 8, nKV: 1, hd: 128, start: 0, n: 300 },
  { nH: 2, nKV: 2, hd: 256, start: 33, n: 50 }, { nH: 4, nKV: 4, hd: 64, start: 0, n: 200, P: 32 },
  // many key tiles, and scores spread wide (std ~8): the running maximum moves and the output is rescaled
  { nH: 4, nKV: 1, hd: 128, start: 1500, n: 130, qs: 8 }, { nH: 16, nKV: 2, hd: 64, start: 700, n: 17, qs: 8 },
];
/** got against want, within `tol` of the output's scale */
function assertClose(got: Float32Array, want: Float64Array, c: { nH: number; hd: number }, tol = 4e-3) {
  let scale = 0; for (const v of want) scale = Math.max(scale, Math.abs(v));
  want.forEach((w, i) => assert.ok(Math.abs(got[i] - w) <= tol * scale, `row ${Math.floor(i / (c.nH * c.hd))} head ${Math.floor(i / c.hd) % c.nH}: ${got[i]} vs ${w} (scale ${scale})`));
}
for (const c of attCases) {
  test(`WebGPU tensor-core prefill attention (${c.nH}/${c.nKV} heads, head dim ${c.hd}, ${c.n} queries after ${c.start}${c.P ? `, pages of ${c.P}` : ''}${c.qs ? `, q x ${c.qs}` : ''}) matches float64`, { skip }, async () => {
    const tune = mmaAttentionFits({ headDim: c.hd, pageSize: c.P ?? 16 }, cfg!, gpu!.device.limits.maxComputeWorkgroupStorageSize);
    assert.ok(tune);
    const { got, want } = await attention(c, tune);
    assertClose(got, want, c);
  });
}
// the carried kernel (one reference maximum per subgroup, accumulators in matrices): at its gap, where
// blocks with rows far below their subgroup's maximum (few keys, wide scores) take the exact pass; with the
// exact pass forced (gap -1) and never taken (a gap no block reaches, on rows that all see 300+ keys)
// (with the reference maximum moved every tile, and lazily: at the default threshold and a small one)
const carriedOptions: Partial<AttentionTune>[] = [{}, { lazy: LAZY_RESCALE }, { lazy: 1 }];
for (const sg of [2, 4]) for (const opt of carriedOptions) {
  test(`WebGPU tensor-core prefill attention, carried (${sg} subgroups${Object.keys(opt).length ? `, ${JSON.stringify(opt)}` : ''}): every case matches float64, exact pass forced and never taken too`, { skip }, async () => {
    const limit = gpu!.device.limits.maxComputeWorkgroupStorageSize;
    let ran = 0;
    for (const c of attCases) {
      const tune: AttentionTune = { sg, keys: 32, stage: true, qShared: false, carry: CARRY_GAP, ...opt };
      if (!tuneFits(c.hd, tune, limit) || (c.P ?? 16) % 16 !== 0) continue;
      for (const carry of [CARRY_GAP, -1]) {
        const { got, want } = await attention(c, { ...tune, carry });
        assertClose(got, want, c);
      }
      ran++;
    }
    assert.ok(ran >= 4, `only ${ran} cases fit`);
    const c = { nH: 4, nKV: 2, hd: 128, start: 300, n: 70 };
    const { got, want } = await attention(c, { sg, keys: 32, stage: true, qShared: false, carry: 1e9, ...opt });
    assertClose(got, want, c);
  });
}
// the other layouts (the per-row kernel the carried one replaced as the default among them; benchmarks compare
// them, QUEST_MMA_ATTENTION_TUNE picks one) compute the same
test('WebGPU tensor-core prefill attention: every layout matches float64', { skip }, async () => {
  const limit = gpu!.device.limits.maxComputeWorkgroupStorageSize;
  for (const t of ['2,32,1,0', '1,32,0,0', '1,128,0,0', '2,64,0,1', '1,64,1,0', '2,32,1,1', '1,16,0,1']) {
    const tune = attentionTune(128, limit, t)!;
    for (const c of [{ nH: 4, nKV: 2, hd: 128, start: 300, n: 70, qs: 4 }, { nH: 2, nKV: 1, hd: 64, start: 0, n: 33 }]) {
      const { got, want } = await attention(c, tune);
      assertClose(got, want, c);
    }
  }
});
