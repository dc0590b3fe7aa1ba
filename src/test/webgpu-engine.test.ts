// The whole decoder on WebGPU against the float64 reference forward pass (random GGUF models in each
// weight type the GPU reads, GQA, a Qwen2 model with biases and neox RoPE) and against the CPU engine
// on the default model (prefill, decode steps, greedy generation, Quest). Covers every kernel: embedding,
// RMSNorm, RoPE, fused q/k/v and gate/up products (matrix-vector and tiled), KV append + page min/max,
// prefill and decode attention (and their sliding windows), SwiGLU / GeGLU, post-norms, residual adds, argmax. Skips where no adapter exists.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gpu, skipGpu } from './gpu.js';
import { loadModelFiles, type LoadedModel } from '../model/load.js';
import { GpuModel } from '../backend/webgpu/model.js';
import { readBuffer } from '../backend/webgpu/decode-attention.js';
import { PassProfiler } from '../backend/webgpu/pass-profiler.js';
import { hasIntDot4, matrixConfig } from '../backend/webgpu/device.js';
import { GpuRunner, GpuSession } from '../engine/gpu-session.js';
import { makeModel, Session } from '../engine/session.js';
import { argmax, rng } from '../engine/sampler.js';
import { loadModel } from '../engine/llm.js';
import { refForward, refWeights, argmax64 } from './reference.js';
import { randomGGUF, tempFile } from './fixtures.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { createServer } from '../server/server.js';

const promptOf = (n: number, vocab: number, seed = 7) => { const r = rng(seed); return Array.from({ length: n }, () => Math.floor(r() * vocab)); };

/** Whether decode steps of this weight type quantise x to int8 (Q4_0 where integer dot products exist). */
const q4Int = (dtype: string) => dtype === 'q4_0' && hasIntDot4(gpu!.device);

function runnerFor(m: LoadedModel): GpuRunner {
  return new GpuRunner(GpuModel.upload(gpu!.device, m.config, m.weights), 16);
}

/** Max |Δ| over all logits; top-1 must agree wherever the reference's top two are further apart than tol. */
function compare(got: Float32Array, ref: Float64Array[], V: number, tol: number, what: string): number {
  let maxDiff = 0;
  ref.forEach((r, i) => {
    for (let j = 0; j < V; j++) maxDiff = Math.max(maxDiff, Math.abs(got[i * V + j] - r[j]));
    const sorted = Array.from(r).sort((a, b) => b - a);
    if (sorted[0] - sorted[1] > 2 * tol) assert.equal(argmax(got, i * V, V), argmax64(r), `${what}: top-1 differs at position ${i}`);
  });
  assert.ok(maxDiff < tol, `${what}: max |Δlogit| ${maxDiff} over ${tol}`);
  return maxDiff;
}

for (const dtype of ['f16', 'q8_0', 'q4_0', 'f32'] as const) {
  test(`WebGPU decoder on a random ${dtype} GGUF (GQA 8/2, vocab 100) matches float64: prefill chunks and decode steps`, { skip: skipGpu }, async (t) => {
    const m = loadModelFiles(tempFile('m.gguf', randomGGUF({ vocab: 100, dim: 64, hidden: 128, layers: 2, heads: 8, kvHeads: 2, dtype, seed: 3 })));
    const runner = runnerFor(m), V = m.config.vocabSize;
    const tokens = promptOf(45, V);
    // (decode steps' Q4_0 products quantise x to int8 where the GPU has integer dot products)
    const ref = refForward(m.config, refWeights(m.weights), tokens, { quantiseX: (pos) => pos >= 40 && q4Int(dtype) });
    // prefill in chunks of 17, 17, 11 tokens (tiled products, prefill attention across chunk borders)
    const all = await new GpuSession(runner).forward(tokens.slice(0, 40), { logits: 'all', chunk: 17 });
    // f16 KV cache (and f16 weights for the f32 model) on the GPU: a few 1e-3 of drift; int8 x of the
    // Q4_0 decode products rounds upstream drift to whole quantisation steps (the product itself is
    // checked tightly in webgpu-products.test.ts)
    const tol = dtype === 'f32' ? 3e-2 : 1e-2, stepTol = q4Int(dtype) ? 1e-1 : tol;
    const d1 = compare(all, ref.slice(0, 40), V, tol, 'prefill');
    // decode steps: matrix-vector products and decode attention
    const s = new GpuSession(runner);
    await s.forward(tokens.slice(0, 40), { logits: 'none' });
    const steps: Float32Array[] = [];
    for (const tok of tokens.slice(40)) steps.push(await s.forward([tok]));
    const d2 = compare(Float32Array.from(steps.flatMap((x) => Array.from(x))), ref.slice(40), V, stepTol, 'decode');
    // greedy by argmax on the GPU equals argmax of the read-back logits
    const s2 = s.fork();
    const best = await s2.forward([tokens[0]], { argmax: true });
    const full = await s.forward([tokens[0]]);
    assert.equal(best[0], argmax(full));
    t.diagnostic(`max |Δlogit| prefill ${d1.toExponential(2)}, decode ${d2.toExponential(2)}`);
    runner.dispose(); runner.m.dispose();
  });
}

// The KV buffers outlive the last sequence (a later request does not create them again): a sequence on
// buffers an earlier, longer one filled computes exactly what it computes on a fresh runner (dense prefill,
// then Quest decode steps that read the pages' key min/max), the store neither grows nor is replaced, and
// releaseKV frees it only while no sequence holds it.
// (The prompt also goes in chunks of 32, four of them queued while the one before runs, against one chunk.)
test('WebGPU KV buffers kept between sequences: a later sequence on reused pages gives a fresh runner\'s logits; releaseKV frees them when idle', { skip: skipGpu }, async () => {
  const m = loadModelFiles(tempFile('m.gguf', randomGGUF({ vocab: 100, dim: 64, hidden: 128, layers: 3, heads: 8, kvHeads: 2, dtype: 'f16', seed: 5 })));
  const V = m.config.vocabSize, quest = { policy: 'quest' as const, budget: 48 };
  const run = async (r: GpuRunner, chunk?: number) => {
    const s = new GpuSession(r, quest);
    const out = [await s.forward(promptOf(130, V, 11), { chunk })];
    for (const tok of promptOf(6, V, 12)) out.push(await s.forward([tok]));
    s.dispose();
    return out;
  };
  // (where the prefill runs on tensor cores, the two chunkings group the query rows into different
  // workgroups, and a workgroup whose rows' maxima lie far apart takes the exact pass: P rounded to f16
  // differently, within the float64 tests' tolerance; elsewhere both run the same f32 arithmetic)
  const chunkTol = matrixConfig(gpu!.device) ? 1e-2 : 1e-4;
  const fresh = runnerFor(m), want = await run(fresh, 32), whole = await run(fresh);
  whole.forEach((w, i) => compare(want[i], [Float64Array.from(w)], V, chunkTol, `step ${i}, chunks of 32 against one chunk`));
  fresh.dispose();
  const reused = runnerFor(m);
  const first = new GpuSession(reused);
  await first.forward(promptOf(300, V, 13), { logits: 'none' });
  first.dispose();
  const capacity = reused.store.capacity, generation = reused.store.generation;
  assert.ok(capacity >= 300 / 16, `kept ${capacity} pages`);
  const got = await run(reused, 32);
  assert.equal(reused.store.generation, generation, 'the store was not replaced');
  got.forEach((g, i) => assert.deepEqual(Array.from(g), Array.from(want[i]), `step ${i}: logits differ from a fresh runner's`));
  const live = new GpuSession(reused);
  await live.forward([1, 2, 3], { logits: 'none' });
  assert.equal(reused.releaseKV(), false, 'a live sequence keeps the buffers');
  live.dispose();
  assert.equal(reused.releaseKV(), true);
  assert.equal(reused.store.capacity, 0);
  reused.dispose(); reused.m.dispose();
});

// Model families and the llama.cpp tensor types beyond Q8_0 / Q4_0: Qwen3's per-head query/key RMSNorm
// (a kernel before RoPE), YaRN, Phi-3, and K-quant / IQ4 files (as q4_1 / q8_16 GPU weights), prefill
// chunks, decode steps and a batched step against the float64 reference.
for (const [label, shape] of [
  ['Qwen3 (q/k norms, head size 16 with dim 64)', { arch: 'qwen3', vocab: 100, dim: 64, hidden: 128, layers: 2, heads: 8, kvHeads: 2, headDim: 16, seed: 8 }],
  ['YaRN RoPE scaling', { vocab: 100, dim: 64, hidden: 128, layers: 2, heads: 4, kvHeads: 2, yarn: { factor: 4, ctx: 16 }, seed: 11 }],
  ['Phi-3 (fused matrices, LongRoPE, 3/4 of each head rotated)', { arch: 'phi3', vocab: 100, dim: 64, hidden: 128, layers: 2, heads: 4, kvHeads: 2, ropeDims: 12, longrope: { ctx: 16, attnFactor: 1.2 }, seed: 12 }],
  ['Q4_K (4-bit codes with a scale and min per 32 on the GPU)', { vocab: 100, dim: 256, hidden: 512, layers: 2, heads: 8, kvHeads: 2, dtype: 'q4_k', seed: 9 }],
  ['Q4_K_M mix (Q4_K, Q6_K, and q/k/v of both fused as int8 codes per 16)', { vocab: 100, dim: 256, hidden: 512, layers: 2, heads: 8, kvHeads: 2, dtype: 'q4_k_m', seed: 16 }],
  ['IQ4_XS', { vocab: 100, dim: 256, hidden: 512, layers: 2, heads: 8, kvHeads: 2, dtype: 'iq4_xs', seed: 10 }],
] as const) {
  test(`WebGPU decoder on a random ${label} GGUF matches float64: prefill chunks, decode steps, a batched step`, { skip: skipGpu }, async (t) => {
    const m = loadModelFiles(tempFile('m.gguf', randomGGUF(shape)));
    const runner = runnerFor(m), V = m.config.vocabSize, tokens = promptOf(45, V);
    const ref = refForward(m.config, refWeights(m.weights), tokens);
    if ('dtype' in shape) assert.ok(runner.m.layers[0].gateUp.type !== 'f16', 'quantised weights keep a quantised GPU form');
    // (f16 KV cache; f16 tiles in tensor-core prefill products)
    const d1 = compare(await new GpuSession(runner).forward(tokens.slice(0, 40), { logits: 'all', chunk: 17 }), ref.slice(0, 40), V, 3e-2, 'prefill');
    const s = new GpuSession(runner);
    await s.forward(tokens.slice(0, 40), { logits: 'none' });
    const steps: Float32Array[] = [];
    for (const tok of tokens.slice(40)) steps.push(await s.forward([tok]));
    // (quantised GPU weights: decode steps quantise x to int8 where the adapter has integer dot products, which
    // rounds upstream drift to whole steps; the products themselves are checked in webgpu-products.test.ts)
    const stepTol = ['q4_1', 'q8_16'].includes(runner.m.layers[0].gateUp.type) && hasIntDot4(gpu!.device) ? 1e-1 : 3e-2;
    const d2 = compare(Float32Array.from(steps.flatMap((x) => Array.from(x))), ref.slice(40), V, stepTol, 'decode');
    // a batched step: sequences of 30 and 38 tokens take their next token together
    const a = new GpuSession(runner), b = new GpuSession(runner);
    await a.forward(tokens.slice(0, 30), { logits: 'none' }); await b.forward(tokens.slice(0, 38), { logits: 'none' });
    const [la, lb] = await GpuSession.decodeBatch([{ seq: a, token: tokens[30] }, { seq: b, token: tokens[38] }]);
    const d3 = Math.max(compare(la, [ref[30]], V, stepTol, 'batched row 0'), compare(lb, [ref[38]], V, stepTol, 'batched row 1'));
    t.diagnostic(`max |Δlogit| prefill ${d1.toExponential(2)}, decode ${d2.toExponential(2)}, batched ${d3.toExponential(2)}`);
    runner.dispose(); runner.m.dispose();
  });
}

// Gemma 3 (scaled embeddings, q/k norms, GeGLU, post-norms, windowed layers with their own RoPE base; an
// attention scale other than 1/sqrt(head dim), which the GPU folds into the query norm) and a Llama
// model with a window in every layer (Mistral 7B v0.1): windows of 10 / 12 tokens over 45, so prefill
// chunks, decode steps and a batched step all cross them, against the float64 reference.
for (const [label, shape, setup] of [
  ['Gemma 3 (two windowed layers of 10 tokens, then a global one; attention scale 0.3)',
    { arch: 'gemma3', vocab: 80, dim: 64, hidden: 96, layers: 3, heads: 4, kvHeads: 2, window: 10, pattern: 3, seed: 15 }, (m: LoadedModel) => { m.config.attnScale = 0.3; }],
  ['Llama with a 12-token window in every layer', { vocab: 80, dim: 64, hidden: 96, layers: 2, heads: 4, kvHeads: 2, seed: 14 }, (m: LoadedModel) => { m.config.slidingWindow = 12; }],
] as const) {
  test(`WebGPU decoder on a random ${label} GGUF matches float64: prefill chunks, decode steps, a batched step`, { skip: skipGpu }, async (t) => {
    const m = loadModelFiles(tempFile('w.gguf', randomGGUF(shape)));
    setup(m);
    const runner = runnerFor(m), V = m.config.vocabSize, tokens = promptOf(45, V);
    const ref = refForward(m.config, refWeights(m.weights), tokens);
    const d1 = compare(await new GpuSession(runner).forward(tokens.slice(0, 40), { logits: 'all', chunk: 17 }), ref.slice(0, 40), V, 1e-2, 'prefill');
    const s = new GpuSession(runner);
    await s.forward(tokens.slice(0, 40), { logits: 'none' });
    const steps: Float32Array[] = [];
    for (const tok of tokens.slice(40)) steps.push(await s.forward([tok]));
    const d2 = compare(Float32Array.from(steps.flatMap((x) => Array.from(x))), ref.slice(40), V, 1e-2, 'decode');
    const a = new GpuSession(runner), b = new GpuSession(runner);
    await a.forward(tokens.slice(0, 8), { logits: 'none' }); await b.forward(tokens.slice(0, 38), { logits: 'none' });
    const [la, lb] = await GpuSession.decodeBatch([{ seq: a, token: tokens[8] }, { seq: b, token: tokens[38] }]);
    const d3 = Math.max(compare(la, [ref[8]], V, 1e-2, 'batched row 0'), compare(lb, [ref[38]], V, 1e-2, 'batched row 1'));
    t.diagnostic(`max |Δlogit| prefill ${d1.toExponential(2)}, decode ${d2.toExponential(2)}, batched ${d3.toExponential(2)}`);
    runner.dispose(); runner.m.dispose();
  });
}

// Quest and the baselines on Gemma 3 act on the global layers only (the windowed ones attend to their
// window): decode steps at a 3-page budget over 7 pages, on WebGPU and on the CPU engine, agree, and
// differ from dense. (Random weights give near-tied page scores at some seeds, where f16 keys on the GPU
// may pick another page than the CPU's f32 keys: seed 1 has none.)
test('WebGPU Quest, H2O and StreamingLLM on a random Gemma 3 GGUF agree with the CPU engine (windowed layers dense over their window)', { skip: skipGpu }, async (t) => {
  const m = loadModelFiles(tempFile('g3.gguf', randomGGUF({ arch: 'gemma3', vocab: 80, dim: 64, hidden: 96, layers: 4, heads: 4, kvHeads: 2, window: 20, pattern: 2, seed: 1 })));
  const runner = runnerFor(m), V = m.config.vocabSize, tokens = promptOf(110, V, 9);
  for (const policy of ['quest', 'h2o', 'streaming'] as const) {
    const attention = { policy, budget: 48, denseLayers: 0 };
    const cpu = new Session(makeModel(m.config, m.weights), attention), gs = new GpuSession(runner, attention), gd = new GpuSession(runner);
    for (const s of [cpu, gs, gd]) await s.forward(tokens.slice(0, 100), { logits: 'none' });
    let worst = 0, fromDense = 0;
    for (const tok of tokens.slice(100)) {
      const want = await cpu.forward([tok]), got = await gs.forward([tok]), dense = await gd.forward([tok]);
      for (let j = 0; j < V; j++) { worst = Math.max(worst, Math.abs(got[j] - want[j])); fromDense = Math.max(fromDense, Math.abs(got[j] - dense[j])); }
      assert.equal(argmax(got), argmax(want), `${policy}: top-1 of a decode step`);
    }
    assert.ok(worst < 1e-2, `${policy}: max |Δlogit| ${worst}`);
    assert.ok(fromDense > 5 * worst, `${policy} changed little from dense (${fromDense}): is it selecting?`);
    t.diagnostic(`${policy}, 3 of 7 pages: max |Δlogit| GPU vs CPU ${worst.toExponential(2)} (vs dense ${fromDense.toExponential(2)})`);
    for (const s of [gs, gd]) s.dispose();
  }
  runner.dispose(); runner.m.dispose();
});

// Products whose K splits evenly over the thread sets of the x-stationary kernel (16-byte units: 8 f16,
// 16 int8, 32 nibbles), the other branch of that kernel than the small models above take
for (const dtype of ['f16', 'q8_0', 'q4_0'] as const) {
  test(`WebGPU decode steps on a wide random ${dtype} GGUF (hidden 1024, intermediate 2048) match float64`, { skip: skipGpu }, async () => {
    const m = loadModelFiles(tempFile('w.gguf', randomGGUF({ vocab: 64, dim: 1024, hidden: 2048, layers: 1, heads: 8, kvHeads: 2, dtype, seed: 9 })));
    const runner = runnerFor(m), V = m.config.vocabSize, tokens = promptOf(6, V);
    // (every step here runs the matrix-vector kernel: up to 4 tokens per forward)
    const ref = refForward(m.config, refWeights(m.weights), tokens, { quantiseX: () => q4Int(dtype) });
    const s = new GpuSession(runner);
    await s.forward(tokens.slice(0, 3), { logits: 'none' });
    for (let i = 3; i < 6; i++) compare(await s.forward([tokens[i]]), [ref[i]], V, q4Int(dtype) ? 1e-1 : 1e-2, `decode ${i}`);
    runner.dispose(); runner.m.dispose();
  });
}

// Prefill attention splits a head's channels over 1, 2, 4 or 8 threads per query row (prefillLayout):
// head dims 80 (2 threads x 5 units), 128 (8 x 2) and 256 (8 x 4), GQA, chunks that cross 16-token
// tiles, 64-token tiles of the products and 128-row weight tiles (N = 72, 192, 320: not multiples of 128)
for (const [dim, heads, kvHeads] of [[160, 2, 1], [256, 2, 1], [512, 2, 1]] as const) {
  test(`WebGPU prefill at head dim ${dim / heads} (${heads}/${kvHeads} heads) matches float64`, { skip: skipGpu }, async () => {
    const m = loadModelFiles(tempFile('p.gguf', randomGGUF({ vocab: 72, dim, hidden: 96, layers: 1, heads, kvHeads, dtype: 'f16', seed: 21 })));
    const runner = runnerFor(m), V = m.config.vocabSize, tokens = promptOf(90, V, 4);
    const ref = refForward(m.config, refWeights(m.weights), tokens);
    const all = await new GpuSession(runner).forward(tokens, { logits: 'all', chunk: 70 });
    compare(all, ref, V, 1e-2, `prefill (head dim ${dim / heads})`);
    runner.dispose(); runner.m.dispose();
  });
}

test('WebGPU decoder on a random Qwen2 GGUF (q/k/v biases, neox RoPE, 4/1 heads) matches float64', { skip: skipGpu }, async () => {
  const m = loadModelFiles(tempFile('q.gguf', randomGGUF({ arch: 'qwen2', vocab: 80, dim: 64, hidden: 96, layers: 2, heads: 4, kvHeads: 1, seed: 5, dtype: 'f16' })));
  const runner = runnerFor(m), V = m.config.vocabSize, tokens = promptOf(30, V);
  const ref = refForward(m.config, refWeights(m.weights), tokens);
  const s = new GpuSession(runner);
  const pre = await s.forward(tokens.slice(0, 27), { logits: 'all' });
  compare(pre, ref.slice(0, 27), V, 1e-2, 'prefill');
  for (let i = 27; i < 30; i++) compare(await s.forward([tokens[i]]), [ref[i]], V, 1e-2, `decode ${i}`);
  runner.dispose(); runner.m.dispose();
});

test('WebGPU engine agrees with the CPU engine on the default model (dense and Quest), greedy text equal', { skip: skipGpu }, async (t) => {
  const cpu = await loadModel(DEFAULT_MODEL);
  const gpuLlm = await loadModel(DEFAULT_MODEL, { device: 'webgpu' });
  assert.equal(gpuLlm.device, 'webgpu');
  const text = 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. '.repeat(6);
  const ids = cpu.encode(text), V = cpu.config.vocabSize;
  // dense: last logits after the prefill and after 5 decode steps (SwiftShader: ~1 s a step of this model)
  const c = new Session(cpu.model), g = gpuLlm.session() as GpuSession;
  let lc = c.forward(ids), lg = await g.forward(ids);
  let maxDiff = 0;
  for (let i = 0; i < 5; i++) {
    for (let j = 0; j < V; j++) maxDiff = Math.max(maxDiff, Math.abs(lc[j] - lg[j]));
    assert.equal(argmax(lg), argmax(lc), `top-1 differs at step ${i}`);
    const tok = argmax(lc);
    lc = c.forward([tok]); lg = await g.forward([tok]);
  }
  assert.ok(maxDiff < 5e-2, `max |Δlogit| ${maxDiff}`);
  // greedy generation through the library on both devices
  const prompt = 'The pass key is 51422. Remember it. 51422 is the pass key. The grass is green. The sky is blue. '.repeat(6) + 'What is the pass key? The pass key is';
  const want = await cpu.complete(prompt, { temperature: 0, maxTokens: 8 });
  const got = await gpuLlm.complete(prompt, { temperature: 0, maxTokens: 8 });
  assert.equal(got.text, want.text);
  // Quest with a small budget, question decoded token by token (so the GPU page selection decides)
  const q = { policy: 'quest' as const, budget: 48 };
  const wantQ = await cpu.complete(prompt, { temperature: 0, maxTokens: 8, decodeTail: 12, attention: q });
  const gotQ = await gpuLlm.complete(prompt, { temperature: 0, maxTokens: 8, decodeTail: 12, attention: q });
  assert.equal(gotQ.text, wantQ.text);
  assert.match(gotQ.text, /51422/);
  t.diagnostic(`dense max |Δlogit| ${maxDiff.toExponential(2)}; quest answer ${JSON.stringify(gotQ.text)}`);
  // clear errors for what the GPU does not run
  assert.throws(() => gpuLlm.session({ policy: 'quest', gqa: 'head' }), /group-sum/);
  // the host copy of the weights was freed after the upload, unless asked to keep it
  assert.throws(() => gpuLlm.cpuSession(), /live on the GPU only/);
  const kept = await loadModel(DEFAULT_MODEL, { device: 'webgpu', keepHostWeights: true });
  assert.deepEqual(Array.from(kept.cpuSession().forward(ids.slice(0, 20))), Array.from(new Session(cpu.model).forward(ids.slice(0, 20))));
  kept.dispose();
  await assert.rejects(gpuLlm.complete('x', { stats: true }), /CPU only/);
  // the server on a WebGPU model answers Quest and baseline requests
  const app = createServer(gpuLlm, { modelId: 'm', concurrency: 1, queueLimit: 4 });
  const h2o = await app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'm', prompt, max_tokens: 4, temperature: 0, quest: { policy: 'h2o', budget: 48 } } });
  assert.equal(h2o.statusCode, 200);
  assert.equal(h2o.json().choices[0].text, (await cpu.complete(prompt, { temperature: 0, maxTokens: 4, attention: { policy: 'h2o', budget: 48 }, cache: false })).text);
  const good = await app.inject({ method: 'POST', url: '/v1/completions', payload: { model: 'm', prompt, max_tokens: 8, temperature: 0, quest: { policy: 'quest', budget: 48 } } });
  assert.equal(good.statusCode, 200);
  assert.match(good.json().choices[0].text, /51422/);
  await app.close();
  gpuLlm.dispose(); cpu.dispose();
});

test('WebGPU greedy decoding with steps in flight: same tokens as one step at a time; an early stop undoes the steps in flight', { skip: skipGpu }, async () => {
  const m = loadModelFiles(tempFile('g.gguf', randomGGUF({ vocab: 100, dim: 64, hidden: 128, layers: 2, heads: 8, kvHeads: 2, dtype: 'f16', seed: 11 })));
  const runner = runnerFor(m);
  // Quest in every layer with 3 of 6+ pages: the page min/max decide what each step sees
  const a = new GpuSession(runner, { policy: 'quest', budget: 48, denseLayers: 0 });
  const first = (await a.forward(promptOf(90, 100, 3), { argmax: true }))[0];
  const serial = [first], b = a.fork();
  for (let i = 0; i < 20; i++) serial.push((await b.forward([serial[i]], { argmax: true }))[0]);
  // (another session of the same model runs a forward between the steps: it shares the runner's buffers)
  const piped: number[] = [], other = a.fork();
  for await (const tok of a.fork().greedy(first, 20)) { piped.push(tok); await other.forward([(tok + 1) % 100], { argmax: true }); }
  assert.deepEqual(piped, serial);
  // stop after 5 tokens (4 steps) while more are in flight (GREEDY_DEPTH 3: tokens 94..96 of pages 5 and
  // 6): the session must be exactly as if those 4 steps had run one at a time (length, keys, page
  // min/max, including the page the undone steps began), so the next steps' logits are equal
  const d = a.fork(), e = a.fork(), taken: number[] = [];
  for await (const tok of d.greedy(first, 20)) { taken.push(tok); if (taken.length === 5) break; }
  assert.deepEqual(taken, serial.slice(0, 5));
  assert.equal(d.length, a.length + 4);
  for (let i = 0; i < 4; i++) await e.forward([serial[i]]);
  const meta = async (s: GpuSession) => {
    const kv = (s as unknown as { kv: { meta: GPUBuffer }[] }).kv; // (white box: the page key min/max of every layer)
    return Promise.all(kv.map(async (l) => new Uint32Array(await readBuffer(gpu!.device, l.meta, l.meta.size))));
  };
  assert.deepEqual(await meta(d), await meta(e), 'page min/max after the early stop differ from serial decoding');
  for (let i = 4; i < 24; i++) {
    const tok = i < serial.length ? serial[i] : 7;
    assert.deepEqual(await d.forward([tok]), await e.forward([tok]), `logits differ ${i - 4} steps after the early stop`);
  }
  runner.dispose(); runner.m.dispose();
});

// The per-dispatch profiler (bench/gpu-profile) replays each dispatch in a timed pass of its own: the
// forward must compute what it computes unprofiled (pipelines and bind groups carried into every pass),
// and every dispatch be named by its kernel.
test('WebGPU per-dispatch profiling: same logits as an unprofiled forward, every dispatch named and timed', { skip: skipGpu || !gpu?.hasTimestamps }, async () => {
  const m = loadModelFiles(tempFile('prof.gguf', randomGGUF({ vocab: 100, dim: 64, hidden: 128, layers: 2, heads: 8, kvHeads: 2, dtype: 'f16', seed: 21 })));
  const runner = runnerFor(m), tokens = promptOf(100, 100); // (7 pages: Quest keeps 3)
  const plain = new GpuSession(runner, { policy: 'quest', budget: 16, denseLayers: 1 });
  await plain.forward(tokens, { logits: 'none' });
  const prof = new PassProfiler(gpu!.device);
  const want = await plain.forward([5]);
  const profiledFull = new GpuSession(runner, { policy: 'quest', budget: 16, denseLayers: 1 });
  await profiledFull.forward(tokens, { logits: 'none' });
  runner.profiler = prof;
  const got = await profiledFull.forward([5]);
  runner.profiler = null;
  const times = await prof.times();
  for (let i = 0; i < want.length; i++) assert.equal(got[i], want[i], `logit ${i}`);
  assert.ok(times.length >= 2 * 6, `${times.length} dispatches profiled`);
  for (const t of times) { assert.notEqual(t.name, '(unnamed)'); assert.ok(t.ms >= 0 && Number.isFinite(t.ms), `${t.name}: ${t.ms} ms`); }
  assert.ok(times.some((t) => t.name.startsWith('attention top-k')), 'the Quest layer\'s kernels are named');
  for (const s of [plain, profiledFull]) s.dispose();
  prof.destroy(); runner.dispose(); runner.m.dispose();
});
