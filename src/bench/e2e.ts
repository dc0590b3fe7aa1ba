// `npm run bench:e2e` (on a GPU): decode latency per token of a whole Llama-2-7B-shaped model on
// WebGPU (random f16 weights generated on the GPU: values do not change the speed) at contexts 4K..32K,
// dense vs Quest. The context's keys and values are random too (no prefill; decode speed does not depend
// on them). Each step is one submission: all layers' kernels, then a readback of the greedy token
// (argmax on the GPU) or, for comparison, of the whole logits. The headline numbers are greedy decoding
// as `generate` runs it, with up to three steps in flight (the CPU records the next steps while the GPU runs this one);
// one step at a time (submit, wait, read back) is shown beside it. With --peer FILE, the numbers of
// bench/peers/torch_static.py (a plain PyTorch decoder: static KV cache, SDPA, decode in a CUDA graph;
// prefill and decode) or of bench/peers/hf_decode.py (transformers + SDPA, decode) join the table and
// the plot. --shape 8b: the Llama-3-8B shape (GQA).
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { getGpu, lastGpuError, matrixConfig } from '../backend/webgpu/device.js';
import { GpuModel } from '../backend/webgpu/model.js';
import type { GpuWeightType } from '../backend/webgpu/kernels.js';
import { GpuRunner, GpuSession } from '../engine/gpu-session.js';
import { gpuShape } from './gpu-shapes.js';
import { lineChart } from '../eval/plot.js';
import { measureBandwidth } from './gpu-bandwidth.js';

const arg = (name: string, def: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : def; };
const CONTEXTS = arg('contexts', '4096,8192,16384,32768').split(',').map(Number);
const BUDGET = Number(arg('budget', '2048'));
const STEPS = Number(arg('steps', '24'));
const OUT = arg('out', 'results');
// --weights q4_0 | q8_0: quantised products (the paper's end-to-end figure also reports 4-bit weights)
const WEIGHTS = arg('weights', 'f16') as GpuWeightType;
const TAG = WEIGHTS === 'f16' ? '' : `-${WEIGHTS}`;
// --prefill 4096,32768: also time a dense prefill of that many prompt tokens (as generate runs it: chunks of
// up to 256 tokens, tiled products and flash-style attention), from an empty cache; 0 to skip
const PREFILL = arg('prefill', '4096').split(',').map(Number).filter((n) => n > 0);

const SHAPE = arg('shape', '7b');
// --prefill-runs N: each prefill timed N times (GPU machines differ run to run: the spread is printed)
const PREFILL_RUNS = Number(arg('prefill-runs', '3'));

const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

/** Median wall time per decode step (ms); with timestamp queries also the median GPU time of the
 *  step's compute pass and the CPU time spent encoding it. */
async function decodeMs(s: GpuSession, argmax: boolean): Promise<{ wall: number; gpu: number; encode: number }> {
  const wall: number[] = [], gpu: number[] = [], encode: number[] = [];
  let tok = 1;
  for (let i = 0; i < STEPS + 2; i++) {
    const t0 = performance.now();
    const out = await s.forward([tok], { argmax });
    if (i >= 2) { wall.push(performance.now() - t0); gpu.push(s.lastGpuMs); encode.push(s.lastEncodeMs); } // two warm-up steps (pipelines, bind groups)
    tok = argmax ? out[0] : 1 + (i % 100);
  }
  return { wall: median(wall), gpu: median(gpu), encode: median(encode) };
}

/** Greedy decoding with steps in flight: mean wall time per token after two warm-up steps, and the
 *  median GPU time per step. */
async function pipelinedMs(s: GpuSession): Promise<{ wall: number; gpu: number }> {
  const times: number[] = [], gpu: number[] = [];
  for await (const _tok of s.greedy(1, STEPS + 2)) { times.push(performance.now()); gpu.push(s.lastGpuMs); }
  // (times[0] is the given first token; steps' tokens follow)
  return { wall: (times[times.length - 1] - times[2]) / (times.length - 3), gpu: median(gpu.slice(3)) };
}

async function main() {
  if (!['f16', 'q8_0', 'q4_0', 'q4_1', 'q8_16'].includes(WEIGHTS)) throw new Error(`--weights must be f16, q8_0, q4_0, q4_1 (Q4_K) or q8_16 (Q6_K and the others), got ${WEIGHTS}`);
  const gpu = await getGpu();
  if (!gpu) { console.log(`no WebGPU adapter: ${lastGpuError}`); return; }
  const bw = await measureBandwidth(gpu.device, SHAPE === 'small' ? 1 << 24 : 1 << 30);
  const mc = matrixConfig(gpu.device);
  console.log(`device: ${gpu.adapterName}; shader read bandwidth ${bw.shaderReadGBs.toFixed(0)} GB/s; prefill products on ${mc ? `tensor cores (subgroup matrices, f16 ${mc.M}x${mc.N}x${mc.K})` : 'the fallback tiled kernel (no subgroup matrices)'}`);
  const { config: c, name: shapeName } = gpuShape(SHAPE, Math.max(...CONTEXTS, ...PREFILL) + 256);
  const m = GpuModel.random(gpu.device, c, 1, WEIGHTS);
  const runner = new GpuRunner(m, 16);
  await gpu.device.queue.onSubmittedWorkDone();
  console.log(`${shapeName}, random ${WEIGHTS} weights (${(m.weightBytes / 1e9).toFixed(2)} GB${WEIGHTS === 'f16' ? '' : ', f16 embeddings'}): weights' values do not change speed`);
  console.log(`decode: one token per step, median of ${STEPS} steps; Quest budget ${BUDGET} tokens (page 16, first 2 layers dense)`);
  if (gpu.hasTimestamps) runner.enableTiming();
  type Row = { context: number; dense: number; quest: number; denseSerial: number; questSerial: number; denseLogits: number; denseGpu: number; questGpu: number; denseEncode: number; questEncode: number };
  const rows: Row[] = [];
  {
    // warm-up: the GPU's clocks ramp up under load; a few seconds of decode steps before any timing
    const w = new GpuSession(runner, { policy: 'dense' });
    await w.fillRandomContext(CONTEXTS[0]);
    // (for about 3 s, or until the warm-up sequence is full)
    for (const t0 = performance.now(); performance.now() - t0 < 3000 && w.length < c.maxSeqLen - 1;) await w.forward([1], { argmax: true });
    w.dispose();
  }
  for (const L of CONTEXTS) {
    const dense = new GpuSession(runner, { policy: 'dense' });
    await dense.fillRandomContext(L);
    const quest = dense.fork({ policy: 'quest', budget: BUDGET });
    const d = await decodeMs(dense, true);
    const dl = await decodeMs(dense, false);
    const dp = await pipelinedMs(dense);
    dense.dispose();
    const q = await decodeMs(quest, true);
    const qp = await pipelinedMs(quest);
    quest.dispose();
    rows.push({ context: L, dense: dp.wall, quest: qp.wall, denseSerial: d.wall, questSerial: q.wall, denseLogits: dl.wall, denseGpu: dp.gpu, questGpu: qp.gpu, denseEncode: d.encode, questEncode: q.encode });
    console.error(`context ${L}: dense ${dp.wall.toFixed(2)} ms, quest ${qp.wall.toFixed(2)} ms`);
  }
  // prefill throughput (the wait before the first token of a long prompt)
  const prefill: { tokens: number; seconds: number; runs: number[] }[] = [];
  for (const n of PREFILL) {
    const s = new GpuSession(runner, { policy: 'dense' });
    const ids = Array.from({ length: n }, (_, i) => 1 + (i % 1000));
    await s.forward(ids.slice(0, runner.chunk), { logits: 'none' }); // (pipelines compiled, clocks up)
    s.dispose();
    const runs: number[] = [];
    for (let i = 0; i < PREFILL_RUNS; i++) {
      const t = new GpuSession(runner, { policy: 'dense' });
      const t0 = performance.now();
      await t.forward(ids, { logits: 'last' });
      runs.push((performance.now() - t0) / 1000);
      t.dispose();
    }
    prefill.push({ tokens: n, seconds: median(runs), runs });
    console.error(`prefill ${n}: ${runs.map((x) => x.toFixed(2)).join(' / ')} s`);
  }
  // --peer FILE: bench/peers/torch_static.py's JSON (per shape: prefill and decode) or hf_decode.py's (decode)
  const peerFile = arg('peer', '');
  const peerJson = peerFile && existsSync(peerFile) ? JSON.parse(readFileSync(peerFile, 'utf8')) : null;
  const peerShape = peerJson?.shapes?.[SHAPE];
  const peer: { context: number; ms: number }[] = peerShape ? peerShape.decode : peerJson?.results ?? [];
  const peerPrefill: { tokens: number; seconds: number; runs?: number[] }[] = peerShape?.prefill ?? [];
  const peerInfo = peerJson?.info ?? '';
  if (peerInfo) console.log(`peer: ${peerInfo}`);
  const kvGB = (L: number) => (2 * L * c.nLayers * c.nKVHeads * c.headDim * 2) / 1e9;
  console.log('| context | dense ms/token | quest ms/token | quest speedup | dense GB/s (weights + KV) | one step at a time: dense / quest (speedup) | dense, logits read back | PyTorch SDPA ms/token | quest vs PyTorch | GPU ms dense / quest | encode ms dense / quest |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    const p = peer.find((x) => x.context === r.context);
    const gbs = (m.weightBytes / 1e9 + kvGB(r.context)) / (r.dense / 1000);
    console.log(`| ${r.context} | ${r.dense.toFixed(2)} | ${r.quest.toFixed(2)} | ${(r.dense / r.quest).toFixed(2)}x | ${gbs.toFixed(0)} | ${r.denseSerial.toFixed(2)} / ${r.questSerial.toFixed(2)} (${(r.denseSerial / r.questSerial).toFixed(2)}x) | ${r.denseLogits.toFixed(2)} | ${p ? p.ms.toFixed(2) : '-'} | ${p ? `${(p.ms / r.quest).toFixed(2)}x` : '-'} | ${r.denseGpu.toFixed(2)} / ${r.questGpu.toFixed(2)} | ${r.denseEncode.toFixed(2)} / ${r.questEncode.toFixed(2)} |`);
  }
  for (const p of prefill) {
    // (2 flops per weight per token, plus causal attention: 2 x 2 x L^2 / 2 x heads x head dim per layer)
    const tflops = (2 * (m.weightBytes / (WEIGHTS === 'f16' ? 2 : WEIGHTS === 'q8_0' ? 34 / 32 : 18 / 32)) * p.tokens + 2 * p.tokens * p.tokens * c.nLayers * c.nHeads * c.headDim) / p.seconds / 1e12;
    const spread = p.runs.length > 1 ? ` (runs ${p.runs.map((x) => x.toFixed(2)).join(' / ')} s)` : '';
    const pp = peerPrefill.find((x) => x.tokens === p.tokens);
    const vsPeer = pp ? `; PyTorch peer ${pp.seconds.toFixed(2)} s = ${(p.tokens / pp.seconds).toFixed(0)} tokens/s: ours = ${(100 * pp.seconds / p.seconds).toFixed(0)}% of its tokens/s` : '';
    console.log(`prefill of ${p.tokens} tokens (dense, from an empty cache, chunks of ${runner.chunk}): ${p.seconds.toFixed(2)} s${spread} = ${(p.tokens / p.seconds).toFixed(0)} tokens/s (~${tflops.toFixed(1)} TFLOP/s)${vsPeer}`);
  }
  console.log('(ms/token: greedy decoding with three steps in flight, wall time per token; one step at a time: submit, wait, read back; GPU: timestamp queries around a step\'s compute pass; encode: CPU time recording a step)');
  mkdirSync(OUT, { recursive: true });
  const series = [
    { name: 'ours dense (WebGPU)', points: rows.map((r) => ({ x: r.context, y: r.dense })) },
    { name: `ours Quest ${BUDGET} (WebGPU)`, points: rows.map((r) => ({ x: r.context, y: r.quest })) },
  ];
  if (peer.length) series.push({ name: peerShape ? 'PyTorch static cache + CUDA graph' : 'transformers + PyTorch SDPA', points: peer.filter((p) => CONTEXTS.includes(p.context)).map((p) => ({ x: p.context, y: p.ms })) });
  const ys = series.flatMap((s) => s.points.map((p) => p.y));
  const stem = `${OUT}/bench-e2e${SHAPE === '7b' ? '' : `-${SHAPE}`}${TAG}`;
  writeFileSync(`${stem}.svg`, lineChart(`Decode latency per token, ${shapeName.split(' (')[0]} (${WEIGHTS} weights)`, 'context (tokens)', 'ms per token', series, 0, Math.max(...ys) * 1.1));
  writeFileSync(`${stem}.json`, JSON.stringify({ device: gpu.adapterName, shape: SHAPE, weights: WEIGHTS, budget: BUDGET, rows, prefill, peerPrefill, peer, peerInfo }, null, 1));
  runner.dispose(); m.dispose();
  gpu.device.destroy();
  process.exit(0);
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
