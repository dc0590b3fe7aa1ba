// `npm run bench:kernels` (on a GPU): dense vs Quest decode attention for a Llama-2-7B attention shape
// (32 query / 32 KV heads, head dim 128, f16 KV) and a GQA shape (32 / 8), sequence lengths 4K..128K,
// budgets 64..4096: time per call (median of repeated batches of many calls in one compute pass),
// achieved GB/s against the read bandwidth measured in the same run, and the speedup; SVG plot.
import { writeFileSync, mkdirSync } from 'node:fs';
import { getGpu, lastGpuError } from '../backend/webgpu/device.js';
import { DecodeAttention, identityPageTable, type AttnShape } from '../backend/webgpu/decode-attention.js';
import { f32ToF16 } from '../model/tensor.js';
import { lineChart } from '../eval/plot.js';
import { measureBandwidth, medianDispatchSeconds } from './gpu-bandwidth.js';
import { hasIntDot4, hasSubgroups32, int8MatrixConfig } from '../backend/webgpu/device.js';
import * as K from '../backend/webgpu/kernels.js';
import { matrixConfig } from '../backend/webgpu/device.js';
import { linearMmaWgsl, linearSkinnyMmaWgsl, mmaTileFor, MMA_TILES, skinnyBlocks, skinnyGrid, skinnyTileFor, SKINNY_TILES, parseSkinnyTiles, toHalfGrid, toHalfWgsl } from '../backend/webgpu/mma-kernels.js';
import { attentionTune, mmaAttentionRows, prefillAttentionWgslFor } from '../backend/webgpu/mma-attention.js';
import { prefillAttentionInputs } from './prefill-inputs.js';
import { int8BatchGrid, int8BatchTypes, linearBatchInt8Wgsl, parseInt8Batch } from '../backend/webgpu/int8-batch.js';
import { INT8_MMA_LAYOUT, int8MmaFits, int8MmaGrid, linearInt8MmaWgsl, parseInt8MmaLayout } from '../backend/webgpu/int8-mma-batch.js';

const P = 16;
const arg = (name: string, def: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : def; };
const LENGTHS = arg('lengths', '4096,8192,16384,32768,65536,131072').split(',').map(Number);
const BUDGETS = arg('budgets', '64,256,1024,2048,4096').split(',').map(Number);
const ONLY = arg('only', 'all'); // attention | matvec | prefill | prefill-attention | batch-products | all
const SHAPES = arg('shapes', '32/32,32/8').split(',').map((x) => x.split('/').map(Number)); // query/KV heads

async function main() {
  const gpu = await getGpu();
  if (!gpu) { console.log(`no WebGPU adapter: ${lastGpuError}`); return; }
  const { device } = gpu;
  // (the first submission warms up)
  const timeIt = (encode: (pass: GPUComputePassEncoder) => void, calls: number, reps = 5): Promise<number> => medianDispatchSeconds(device, encode, calls, reps);

  const bw = await measureBandwidth(device);
  const readGBs = bw.shaderReadGBs;
  console.log(`device: ${gpu.adapterName}`);
  console.log(`bandwidth: shader read ${bw.shaderReadGBs.toFixed(0)} GB/s, shader copy ${bw.shaderCopyGBs.toFixed(0)} GB/s, copy engine ${bw.copyEngineGBs.toFixed(0)} GB/s (read + written)`);
  if (ONLY === 'all' || ONLY === 'prefill') await benchPrefillProducts(device, timeIt);
  if (ONLY === 'all' || ONLY === 'prefill-attention') await benchPrefillAttention(device, timeIt);
  if (ONLY === 'all' || ONLY === 'batch-products') await benchBatchProducts(device, timeIt, readGBs);
  if (ONLY === 'prefill' || ONLY === 'prefill-attention' || ONLY === 'batch-products') { device.destroy(); process.exit(0); }
  if (ONLY !== 'attention') await benchMatvec(device, timeIt, readGBs);
  if (ONLY === 'matvec') { device.destroy(); process.exit(0); }
  const rows: string[] = [];
  const breakdown: string[] = [];
  const plotSeries: { name: string; points: { x: number; y: number }[] }[] = [];
  // random f16 data (values do not change speed): a 64 MiB pattern tiled over the buffers
  const pattern = new Uint16Array(32 << 20); for (let i = 0; i < pattern.length; i++) pattern[i] = f32ToF16((Math.random() - 0.5) * 4);
  const fill = (n: number) => {
    const buf = device.createBuffer({ size: n, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    for (let o = 0; o < n; o += pattern.byteLength) device.queue.writeBuffer(buf, o, pattern.buffer, 0, Math.min(pattern.byteLength, n - o));
    return buf;
  };
  const shapeOf = (nH: number, nKV: number): AttnShape => ({ nHeads: nH, nKV, headDim: 128, pageSize: P, maxPages: Math.ceil(Math.max(...LENGTHS) / P) });
  // Several layers' caches per length, used in turn, so that short sequences are read from memory, not the
  // L2 cache (at least two, so that repeated Quest calls do not find their pages in the L2 cache either).
  // Made just before a length is measured and freed after it; --alloc once: every length's made before the
  // first measurement, as an engine allocates its cache (session 22 saw the second shape measured swing,
  // as if in memory the first one's buffers left fragmented; once is the way to test that, not yet run).
  const cachesFor = (shape: AttnShape, L: number) => {
    const np = Math.ceil(L / P), bytes = DecodeAttention.layerBytes(shape, np);
    const copies = Math.min(8, Math.max(2, Math.ceil((512 << 20) / (2 * bytes.kv))));
    const table = identityPageTable(device, np);
    return Array.from({ length: copies }, () => ({ k: fill(bytes.kv), v: fill(bytes.kv), meta: fill(bytes.meta), table }));
  };
  const allocEach = arg('alloc', 'each') === 'each';
  const caches = new Map<string, ReturnType<typeof cachesFor>>();
  if (!allocEach) for (const [nH, nKV] of SHAPES) for (const L of LENGTHS) caches.set(`${nH}/${nKV}/${L}`, cachesFor(shapeOf(nH, nKV), L));
  for (const [nH, nKV] of SHAPES) {
    const shape = shapeOf(nH, nKV);
    const att = new DecodeAttention(device, shape, Math.max(...BUDGETS) / P);
    device.queue.writeBuffer(att.q, 0, new Float32Array(nH * 128).map(() => Math.random() - 0.5));
    const label = `${nH}q/${nKV}kv heads`;
    const denseSeries = { name: `${label} dense`, points: [] as { x: number; y: number }[] };
    for (const L of LENGTHS) {
      const np = Math.ceil(L / P);
      const layers = caches.get(`${nH}/${nKV}/${L}`) ?? cachesFor(shape, L), copies = layers.length;
      await device.queue.onSubmittedWorkDone();
      let turn = 0;
      const next = () => layers[turn++ % copies];
      const calls = L >= 65536 ? 48 : 200;
      att.resetBatch();
      const dense = await timeIt((pass) => att.encode(pass, next(), L, 0), calls);
      const denseBytes = 2 * L * nKV * 128 * 2;
      rows.push(`| ${label} | ${L} | dense | ${(dense * 1e6).toFixed(1)} | ${(denseBytes / dense / 1e9).toFixed(0)} | ${((denseBytes / dense / 1e9) / readGBs * 100).toFixed(0)}% | 1.00 |`);
      denseSeries.points.push({ x: L, y: dense * 1e6 });
      for (const budget of BUDGETS) {
        const k = Math.max(3, Math.ceil(budget / P));
        if (k >= np) continue;
        att.resetBatch();
        const t = await timeIt((pass) => att.encode(pass, next(), L, k), calls);
        const qBytes = np * nKV * 128 * 2 * 2 + 2 * k * P * nKV * 128 * 2; // metadata pass + selected K/V
        rows.push(`| ${label} | ${L} | quest ${budget} | ${(t * 1e6).toFixed(1)} | ${(qBytes / t / 1e9).toFixed(0)} | ${((qBytes / t / 1e9) / readGBs * 100).toFixed(0)}% | ${(dense / t).toFixed(2)} |`);
        if (L === 32768 && budget === 2048) {
          // where the time of a Quest call goes: each stage timed alone
          const stage = async (st: 'scores' | 'topk' | 'partial' | 'reduce') => { att.resetBatch(); return timeIt((pass) => att.encode(pass, next(), L, k, st), calls); };
          const parts = { scores: await stage('scores'), topk: await stage('topk'), partial: await stage('partial'), reduce: await stage('reduce') };
          const metaBytes = np * nKV * 128 * 2 * 2, kvBytes = 2 * k * P * nKV * 128 * 2;
          // the top-k kernel's workgroup size, and the floor: an empty kernel in the same serial chain
          const topk: string[] = [];
          for (const threads of [64, 128, 256]) {
            const alt = new DecodeAttention(device, shape, Math.max(...BUDGETS) / P, undefined, threads);
            alt.resetBatch();
            topk.push(`${threads}: ${(await timeIt((pass) => alt.encode(pass, next(), L, k, 'topk'), calls) * 1e6).toFixed(1)}`);
          }
          // the floor of any 4-stage Quest call: four dependent dispatches that do nothing, plus its bytes
          // read at the measured bandwidth; dense over that floor is the most Quest could gain here
          const empty = await emptyDispatch(device, timeIt), floor = 4 * empty + qBytes / (readGBs * 1e9);
          breakdown.push(`| ${label} | ${(parts.scores * 1e6).toFixed(1)} (${(metaBytes / parts.scores / 1e9).toFixed(0)} GB/s) | ${(parts.topk * 1e6).toFixed(1)} (${topk.join(', ')}) | ${(parts.partial * 1e6).toFixed(1)} (${(kvBytes / parts.partial / 1e9).toFixed(0)} GB/s) | ${(parts.reduce * 1e6).toFixed(1)} | ${(empty * 1e6).toFixed(1)} | ${(t * 1e6).toFixed(1)} | ${(floor * 1e6).toFixed(1)} (${(dense / floor).toFixed(2)}x) |`);
        }
        let s = plotSeries.find((x) => x.name === `${label} quest ${budget}`);
        if (!s) { s = { name: `${label} quest ${budget}`, points: [] }; plotSeries.push(s); }
        s.points.push({ x: L, y: t * 1e6 });
      }
      console.error(`${label} ${L} done`);
      for (const l of layers) for (const buf of Object.values(l)) buf.destroy();
    }
    plotSeries.push(denseSeries);
  }
  console.log('| shape | sequence | attention | µs / call | GB/s | of read bandwidth | speedup vs dense |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(r);
  console.log('\nQuest at 32K, budget 2048: µs per stage, each timed alone (the sum exceeds the call: stages overlap their ramps)');
  console.log('| shape | page scores | top-k (by threads per workgroup) | sparse attention | reduction | empty kernel | whole call | floor: 4 empty kernels + bytes at read bandwidth (dense / floor) |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of breakdown) console.log(r);
  mkdirSync(arg('out', 'results'), { recursive: true });
  const ys = plotSeries.flatMap((s) => s.points.map((p) => p.y));
  writeFileSync(`${arg('out', 'results')}/bench-kernels.svg`, lineChart('Decode attention latency (WebGPU)', 'sequence length (tokens)', 'µs per call', plotSeries.filter((s) => s.name.startsWith('32q/8kv')), 0, Math.max(...ys) * 1.05));
  device.destroy();
  process.exit(0); // some drivers keep the process alive after the device is gone
}

/** Time per dispatch of a kernel that does nothing but write one word: the cost of one more kernel in
 *  a chain of dependent dispatches (launch and the barrier between them). */
async function emptyDispatch(device: GPUDevice, timeIt: TimeIt): Promise<number> {
  const pipe = device.createComputePipeline({ layout: 'auto', compute: { entryPoint: 'main', module: device.createShaderModule({ code: `
@group(0) @binding(0) var<storage, read_write> o: array<u32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) { if (id.x == 0u) { o[0] += 1u; } }` }) } });
  const buf = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE });
  const group = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: buf } }] });
  const t = await timeIt((pass) => { pass.setPipeline(pipe); pass.setBindGroup(0, group); pass.dispatchWorkgroups(32); }, 200);
  buf.destroy();
  return t;
}

type TimeIt = (encode: (pass: GPUComputePassEncoder) => void, calls: number, reps?: number) => Promise<number>;

/** Prefill products (many tokens at once) of the Llama-2-7B and Llama-3-8B shapes: the fallback tiled
 *  kernel and the tensor-core kernel at each tile shape, in TFLOP/s. */
async function benchPrefillProducts(device: GPUDevice, timeIt: TimeIt) {
  const T = Number(arg('tokens', '2048')), cfg = matrixConfig(device);
  const shapes: [string, K.GpuWeightType, number, number][] = [
    ['7B qkv', 'f16', 12288, 4096], ['7B wo', 'f16', 4096, 4096], ['7B gate+up', 'f16', 22016, 4096], ['7B down', 'f16', 4096, 11008],
    ['8B gate+up', 'f16', 28672, 4096], ['8B down', 'f16', 4096, 14336], ['7B gate+up', 'q8_0', 22016, 4096], ['7B gate+up', 'q4_0', 22016, 4096],
  ].filter(([name, type]) => `${name} ${type}`.includes(arg('matrices', ''))) as [string, K.GpuWeightType, number, number][]; // (--matrices: those whose name and type contain it)
  const variants: { name: string; code: (s: K.LinearSpec) => string | null; tile: { BM: number; BN: number } }[] = [
    { name: 'fallback 64x128', code: (s) => K.linearMatWgsl(s), tile: { BM: K.MAT_TILE.tokens, BN: K.MAT_TILE.rows } },
    ...(cfg ? MMA_TILES.slice(0, Number(arg('tiles', String(MMA_TILES.length)))).map((t) => ({ name: `mma ${t.BM}x${t.BN} (${t.WM}x${t.WN}) k${t.BK}${t.prefetch ? ' prefetch' : ''}${t.double ? ' double' : ''}${t.group ? ` group ${t.group}` : ''}`, tile: t, code: (s: K.LinearSpec) => (mmaTileFor(s.N, s.K, cfg, device.limits.maxComputeWorkgroupStorageSize, [t]) ? linearMmaWgsl({ ...s, xHalf: true }, cfg, t) : null) })) : []),
  ];
  console.log(`\nprefill products, ${T} tokens (TFLOP/s; subgroup matrices: ${cfg ? `f16 ${cfg.M}x${cfg.N}x${cfg.K}` : 'none on this adapter'}; the tensor-core tiles take x as f16, as a prefill does)`);
  console.log(`| matrix | type | N x K | ${variants.map((v) => v.name).join(' | ')} |`);
  console.log(`| --- | --- | --- | ${variants.map(() => '---').join(' | ')} |`);
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  for (const [name, type, N, Kd] of shapes) {
    const data = device.createBuffer({ size: N * Kd * (type === 'f16' ? 2 : type === 'q8_0' ? 1 : 0.5), usage });
    const scales = device.createBuffer({ size: Math.max(16, (N * Kd) / 32 * 4), usage });
    const x = device.createBuffer({ size: T * Kd * 4, usage }), y = device.createBuffer({ size: T * N * 4, usage });
    const cells: string[] = [];
    for (const v of variants) {
      const code = v.code({ type, N, K: Kd, add: false, bias: false });
      if (!code) { cells.push('—'); continue; }
      const module = device.createShaderModule({ code });
      const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
      if (errors.length) { cells.push(`compile error: ${errors[0].lineNum}: ${errors[0].message.slice(0, 200)}`); continue; }
      const pipe = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      const group = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [x, y, data, ...(type === 'f16' ? [] : [scales])].map((buffer, i) => ({ binding: i, resource: { buffer } })) });
      const t = await timeIt((pass) => { pass.setPipeline(pipe); pass.setBindGroup(0, group); pass.dispatchWorkgroups(Math.ceil(N / v.tile.BN), Math.ceil(T / v.tile.BM)); }, 5, 3);
      cells.push(`${(t * 1e3).toFixed(2)} ms ${(2 * T * N * Kd / t / 1e12).toFixed(0)}`);
    }
    console.log(`| ${name} | ${type} | ${N} x ${Kd} | ${cells.join(' | ')} |`);
    data.destroy(); scales.destroy(); x.destroy(); y.destroy();
  }
}

/** Causal prefill attention of one chunk of queries (the last `tokens` of a `context`-token prompt, whose
 *  keys are all in the paged f16 cache) for the Llama-2-7B (32/32 heads) and Llama-3-8B (32/8) shapes:
 *  the fallback kernel and the tensor-core one, ms and TFLOP/s (Q Kᵀ and P V over the causal triangle). */
async function benchPrefillAttention(device: GPUDevice, timeIt: TimeIt) {
  const T = Number(arg('tokens', '2048')), cfg = matrixConfig(device);
  const contexts = arg('contexts', '4096,32768').split(',').map(Number);
  console.log(`\nprefill attention, chunks of ${T} queries (ms, TFLOP/s; subgroup matrices: ${cfg ? `f16 ${cfg.M}x${cfg.N}x${cfg.K}` : 'none on this adapter'}; workgroup memory ${device.limits.maxComputeWorkgroupStorageSize} bytes)`);
  // layouts of the tensor-core kernel to compare (--tunes sg,keys,stage,qShared[,carry[,lazy]];...), else the default one
  const limit = device.limits.maxComputeWorkgroupStorageSize;
  const tunes = arg('tunes', '') ? arg('tunes', '').split(';').map((x) => attentionTune(128, limit, x)!) : cfg ? [attentionTune(128, limit)].filter((t) => t !== null) : [];
  console.log(['| heads | context (chunk at) | fallback |', ...tunes.map((t) => ` tensor cores sg ${t.sg} keys ${t.keys}${t.stage ? ' staged' : ''}${t.qShared ? ' q re-read' : ''}${t.carry !== undefined ? ` carried (gap ${t.carry}${t.lazy !== undefined ? `, lazy ${t.lazy}` : ''})` : ''} |`)].join(''));
  console.log(['| --- | --- | --- |', ...tunes.map(() => ' --- |')].join(''));
  for (const [nH, nKV] of SHAPES) {
    for (const ctx of contexts) {
      const HD = 128, hs = { nHeads: nH, nKV, headDim: HD, pageSize: P, ropeDims: HD };
      const { entries, flop, start, destroy } = prefillAttentionInputs(device, { nH, nKV, headDim: HD, pageSize: P, tokens: T, context: ctx });
      const variants = [
        { code: K.prefillAttentionWgsl(hs, hasSubgroups32(device)), rows: K.prefillLayout(HD).queries },
        ...(cfg ? tunes.map((t) => ({ code: prefillAttentionWgslFor(hs, cfg, t), rows: mmaAttentionRows(t) })) : []),
      ];
      const cells: string[] = [];
      for (const v of variants) {
        const module = device.createShaderModule({ code: v.code });
        const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
        if (errors.length) { cells.push(`compile error: ${errors[0].lineNum}: ${errors[0].message.slice(0, 300)}`); continue; }
        // (a layout this device cannot run, e.g. more workgroup memory than it has, is reported, not timed)
        device.pushErrorScope('validation');
        const pipe = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
        const invalid = await device.popErrorScope();
        if (invalid) { cells.push(`invalid: ${invalid.message.split('\n')[0].slice(0, 120)}`); continue; }
        const group = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: entries.map(([binding, buffer]) => ({ binding, resource: { buffer } })) });
        const t = await timeIt((pass) => { pass.setPipeline(pipe); pass.setBindGroup(0, group); pass.dispatchWorkgroups(Math.ceil(T / v.rows), nH); }, 3, 3);
        cells.push(`${(t * 1e3).toFixed(2)} ms ${(flop / t / 1e12).toFixed(1)}`);
      }
      console.log(`| ${nH}/${nKV} | ${ctx} (${start}) | ${cells.join(' | ')} |`);
      destroy();
    }
  }
}

/** Enough copies of an N x K weight matrix of `type` (codes and scales, contents left as they are) to
 *  rotate through past the L2 cache, and its bytes (codes plus the scale, and min, per group). */
function weightCopies(device: GPUDevice, type: K.GpuWeightType, N: number, Kd: number) {
  const codeBytes = type === 'f16' ? 2 : type === 'q8_0' || type === 'q8_16' ? 1 : 0.5;
  const scaleWords = type === 'f16' ? 0 : type === 'q8_16' ? 2 / 16 : type === 'q4_1' ? 2 / 32 : 1 / 32;
  const bytes = N * Kd * (codeBytes + 4 * scaleWords), usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const copies = Math.max(2, Math.ceil((512 << 20) / bytes));
  const mats = Array.from({ length: copies }, () => ({
    data: device.createBuffer({ size: Math.ceil((N * Kd * codeBytes) / 16) * 16, usage }),
    scales: device.createBuffer({ size: Math.max(16, N * Kd * scaleWords * 4), usage }),
  }));
  return { bytes, copies, mats };
}

/** The weight products of a batched decode step (a few tokens: 8-64) of the Llama-2-7B shape: the
 *  batched matrix-vector kernel (SIMT) and the few-token tensor-core kernel at each layout (with the
 *  conversion of x to f16 it needs, in the same timing); µs and the weights' bytes per second as a share
 *  of the read bandwidth. */
async function benchBatchProducts(device: GPUDevice, timeIt: TimeIt, readGBs: number) {
  const cfg = matrixConfig(device), sub = hasSubgroups32(device), limit = device.limits.maxComputeWorkgroupStorageSize;
  const tokensList = arg('tokens', '8,16,32,64').split(',').map(Number);
  const shapes: [string, K.GpuWeightType, number, number][] = [
    ['qkv', 'f16', 12288, 4096], ['wo', 'f16', 4096, 4096], ['gate+up', 'f16', 22016, 4096], ['down', 'f16', 4096, 11008],
    ['gate+up', 'q8_0', 22016, 4096], ['qkv', 'q4_0', 12288, 4096], ['wo', 'q4_0', 4096, 4096], ['gate+up', 'q4_0', 22016, 4096], ['down', 'q4_0', 4096, 11008],
    ['gate+up', 'q4_1', 22016, 4096], ['gate+up', 'q8_16', 22016, 4096],
  ];
  const tiles = cfg ? parseSkinnyTiles(arg('skinny', '')) ?? SKINNY_TILES : []; // (--skinny 'WN,SG,CK,stage[,xa];...')
  // 4-bit products with x quantised to int8 (quantiseXWgsl timed with them): the matrix-vector kernel a
  // workgroup per token, and the batched kernel at each layout (--int8 'R,TB[,spread];...')
  const dot4 = hasIntDot4(device), int8Lays = dot4 ? (arg('int8', '') ? arg('int8', '').split(';').map((v) => parseInt8Batch(v)!) : [{ R: 2, TB: 8 }, { R: 4, TB: 8 }, { R: 2, TB: 16 }, ...[[2, 8], [4, 8], [8, 8], [4, 16], [8, 16]].map(([R, TB]) => ({ R, TB, spread: true }))]) : [];
  // the same on 8-bit tensor cores where the adapter has them (--int8-mma 'SG,BPI,WN;...')
  const i8cfg = int8MatrixConfig(device), i8Lays = i8cfg ? (arg('int8-mma', '') ? arg('int8-mma', '').split(';').map((v) => parseInt8MmaLayout(v)!) : [INT8_MMA_LAYOUT, { SG: 2, BPI: 4, WN: 32 }, { SG: 2, BPI: 2, WN: 32 }, { SG: 1, BPI: 4, WN: 32 }]) : [];
  const names = ['batched SIMT', ...tiles.map((t) => `mma ${t.WN} rows sg ${t.SG} k${t.CK}${t.stage ? ' staged' : ''}${t.xAhead ? ' x ahead' : ''}${t.xStage ? ' x staged' : ''}`),
    ...(dot4 ? ['int8 x, a workgroup per token', ...int8Lays.map((l) => `int8 x batched R${l.R} TB${l.TB}${l.spread ? ' spread' : ''}`)] : []),
    ...i8Lays.map((l) => `int8 tensor cores SG${l.SG} BPI${l.BPI}`)];
  console.log(`\nbatched decode products (µs, share of read bandwidth; subgroup matrices: ${cfg ? `f16 ${cfg.M}x${cfg.N}x${cfg.K}` : 'none on this adapter'})`);
  console.log(`| matrix | type | N x K | tokens | ${names.join(' | ')} |`);
  console.log(`| --- | --- | --- | --- | ${names.map(() => '---').join(' | ')} |`);
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const step = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  const pipeOf = (code: string) => device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
  const shrink = Number(arg('shrink', '1')); // (divides N: a quick run on a software adapter)
  const types = arg('types', ''); // (e.g. --types q4_0,q4_1: only these weight types)
  for (const [name, type, N0, Kd] of shapes) {
    if (types && !types.split(',').includes(type)) continue;
    const N = Math.ceil(N0 / shrink / 64) * 64;
    const { bytes, copies, mats } = weightCopies(device, type, N, Kd);
    const maxT = Math.max(...tokensList);
    const x = device.createBuffer({ size: maxT * Kd * 4, usage }), y = device.createBuffer({ size: maxT * N * 4, usage });
    const xh = device.createBuffer({ size: (maxT + 64) * Kd * 4, usage }); // (two f16 parts a value; the last token block is read whole)
    device.queue.writeBuffer(x, 0, new Float32Array(maxT * Kd).map(() => Math.random() - 0.5));
    const xq = device.createBuffer({ size: maxT * K.quantisedXWords(Kd) * 16, usage }), quant = pipeOf(K.quantiseXWgsl(Kd));
    const quantGroup = device.createBindGroup({ layout: quant.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: x } }, { binding: 1, resource: { buffer: xq } }] });
    // (f16 x for the tensor-core kernels: only where the adapter has them)
    const half = cfg ? pipeOf(toHalfWgsl(Kd)) : null;
    const halfGroup = half && device.createBindGroup({ layout: half.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: x } }, { binding: 1, resource: { buffer: xh } }, { binding: 6, resource: { buffer: step } }] });
    for (const T of tokensList) {
      device.queue.writeBuffer(step, 0, new Uint32Array([0, T, 0, 0]));
      const spec: K.LinearSpec = { type, N, K: Kd, add: false, bias: false };
      const cells: string[] = [];
      const time = async (pipe: GPUComputePipeline, input: GPUBuffer, grid: [number, number], before: 'half' | 'quantise' | null, usesStep = true) => {
        const groups = mats.map((m) => device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [
          { binding: 0, resource: { buffer: input } }, { binding: 1, resource: { buffer: y } }, { binding: 2, resource: { buffer: m.data } },
          ...(type === 'f16' ? [] : [{ binding: 3, resource: { buffer: m.scales } }]), ...(usesStep ? [{ binding: 6, resource: { buffer: step } }] : [])] }));
        let turn = 0;
        const t = await timeIt((pass) => {
          if (before === 'half') { pass.setPipeline(half!); pass.setBindGroup(0, halfGroup!); pass.dispatchWorkgroups(...toHalfGrid(T, Kd)); }
          if (before === 'quantise') { pass.setPipeline(quant); pass.setBindGroup(0, quantGroup); pass.dispatchWorkgroups(...K.quantiseXGrid(Kd, T)); }
          pass.setPipeline(pipe); pass.setBindGroup(0, groups[turn++ % copies]); pass.dispatchWorkgroups(...grid);
        }, 50);
        return `${(t * 1e6).toFixed(1)} (${((bytes / t / 1e9) / readGBs * 100).toFixed(0)}%)`;
      };
      cells.push(await time(pipeOf(K.linearBatchWgsl(spec, sub)), x, K.batchGrid(N, Kd, type, T), null));
      for (const t of tiles) {
        if (!skinnyTileFor(type, N, Kd, T, cfg!, limit, [t])) { cells.push('—'); continue; }
        const pipe = pipeOf(linearSkinnyMmaWgsl(spec, cfg!, t, skinnyBlocks(T, cfg!)));
        cells.push(await time(pipe, xh, skinnyGrid(N, T, t, cfg!), 'half'));
      }
      if (dot4 && !int8BatchTypes(type)) cells.push(...['', ...int8Lays].map(() => '—'));
      else if (dot4) {
        const R = K.linearRowsFor(type, true), blocks = Math.ceil(N / K.rowsLayout(Kd, R, type).rowsPerGroup);
        cells.push(await time(pipeOf(K.linearRowsWgsl(spec, { subgroups: sub, rows: R, xq: true, tokensFirst: true })), xq, [T, blocks], 'quantise', false));
        for (const l of int8Lays) cells.push(await time(pipeOf(linearBatchInt8Wgsl(spec, l, sub)), xq, int8BatchGrid(N, T, l), 'quantise'));
      }
      for (const l of i8Lays) cells.push(int8MmaFits(spec, l, limit) ? await time(pipeOf(linearInt8MmaWgsl(spec, i8cfg!, l)), xq, int8MmaGrid(N, T, l), 'quantise') : '—');
      console.log(`| ${name} | ${type} | ${N} x ${Kd} | ${T} | ${cells.join(' | ')} |`);
    }
    for (const m of mats) { m.data.destroy(); m.scales.destroy(); }
    x.destroy(); xh.destroy(); xq.destroy(); y.destroy();
  }
  step.destroy();
}

/** Matrix-vector products of a Llama-2-7B decode step (one token), every kernel variant: µs and GB/s. */
async function benchMatvec(device: GPUDevice, timeIt: TimeIt, readGBs: number) {
  const sub = hasSubgroups32(device);
  const shapes: [string, K.GpuWeightType, number, number][] = [
    ['qkv', 'f16', 12288, 4096], ['wo', 'f16', 4096, 4096], ['gate+up', 'f16', 22016, 4096], ['down', 'f16', 4096, 11008],
    ['output', 'f16', 32000, 4096], ['gate+up', 'q8_0', 22016, 4096],
    ['qkv', 'q4_0', 12288, 4096], ['wo', 'q4_0', 4096, 4096], ['gate+up', 'q4_0', 22016, 4096], ['down', 'q4_0', 4096, 11008], ['output', 'q4_0', 32000, 4096],
    // the GPU forms of llama.cpp's other types: Q4_K (4-bit codes, scale and min per 32), Q6_K and the rest (int8 codes, scale and min per 16)
    ['gate+up', 'q4_1', 22016, 4096], ['down', 'q4_1', 4096, 11008], ['gate+up', 'q8_16', 22016, 4096], ['down', 'q8_16', 4096, 11008],
  ];
  const dot4 = hasIntDot4(device);
  const rowsVariant = (name: string, o: K.RowsOptions, only?: K.GpuWeightType) => ({
    name, only, quantise: o.xq, code: (s: K.LinearSpec) => K.linearRowsWgsl(s, { subgroups: sub, ...o }), rowsPerGroup: (k: number, t: K.GpuWeightType) => K.rowsLayout(k, o.rows, t).rowsPerGroup,
  });
  const variants: { name: string; code: (s: K.LinearSpec) => string; rowsPerGroup: (k: number, t: K.GpuWeightType) => number; only?: K.GpuWeightType; quantise?: boolean }[] = [
    { name: 'warp per row', code: (s) => K.linearVecWgsl(s, sub), rowsPerGroup: () => 8 },
    ...[2, 4, 8].map((R) => rowsVariant(`x-stationary R=${R}`, { rows: R })),
    // Q4_0 with x quantised to int8 by a kernel of its own (timed with the product) and integer dot
    // products: the default where the adapter has them
    ...(dot4 ? [1, 2, 4, 8].map((R) => rowsVariant(`int8 x R=${R}`, { rows: R, xq: true }, 'q4_0')) : []),
    ...(dot4 ? [1, 2, 4].map((R) => rowsVariant(`int8 x R=${R}`, { rows: R, xq: true }, 'q4_1')) : []),
    ...(dot4 ? [2, 4].map((R) => rowsVariant(`int8 x R=${R}`, { rows: R, xq: true }, 'q8_16')) : []),
  ];
  console.log(`\nmatrix-vector products (decode, one token), subgroups: ${sub}`);
  console.log(`| matrix | type | N x K | ${variants.map((v) => v.name).join(' | ')} |`);
  console.log(`| --- | --- | --- | ${variants.map(() => '---').join(' | ')} |`);
  const shrink = Number(arg('shrink', '1')); // (divides N: a quick run on a software adapter)
  for (const [name, type, N0, Kd] of shapes) {
    const N = Math.ceil(N0 / shrink);
    const { bytes, copies, mats } = weightCopies(device, type, N, Kd);
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
    const x = device.createBuffer({ size: Kd * 4, usage }), y = device.createBuffer({ size: N * 4, usage: usage | GPUBufferUsage.COPY_SRC });
    const xq = device.createBuffer({ size: K.quantisedXWords(Kd) * 16, usage });
    device.queue.writeBuffer(x, 0, new Float32Array(Kd).map(() => Math.random() - 0.5));
    const cells: string[] = [];
    for (const v of variants) {
      if (v.only && v.only !== type) { cells.push('—'); continue; }
      const spec: K.LinearSpec = { type, N, K: Kd, add: false, bias: false };
      const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: v.code(spec) }), entryPoint: 'main' } });
      const xin = v.quantise ? xq : x;
      const groups = mats.map((m) => device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [xin, y, m.data, ...(type === 'f16' ? [] : [m.scales])].map((buffer, i) => ({ binding: i, resource: { buffer } })) }));
      const quant = v.quantise ? device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: K.quantiseXWgsl(Kd, undefined, type === 'q8_16') }), entryPoint: 'main' } }) : null;
      const quantGroup = quant && device.createBindGroup({ layout: quant.getBindGroupLayout(0), entries: [x, xq].map((buffer, i) => ({ binding: i, resource: { buffer } })) });
      let turn = 0;
      const t = await timeIt((pass) => {
        if (quant) { pass.setPipeline(quant); pass.setBindGroup(0, quantGroup!); pass.dispatchWorkgroups(...K.quantiseXGrid(Kd, 1)); }
        pass.setPipeline(pipe); pass.setBindGroup(0, groups[turn++ % copies]); pass.dispatchWorkgroups(Math.ceil(N / v.rowsPerGroup(Kd, type)));
      }, 100);
      cells.push(`${(t * 1e6).toFixed(1)} µs ${(bytes / t / 1e9).toFixed(0)} GB/s (${((bytes / t / 1e9) / readGBs * 100).toFixed(0)}%)`);
    }
    console.log(`| ${name} | ${type} | ${N} x ${Kd} | ${cells.join(' | ')} |`);
    for (const m of mats) { m.data.destroy(); m.scales.destroy(); }
    x.destroy(); y.destroy(); xq.destroy();
  }
  console.log('');
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
