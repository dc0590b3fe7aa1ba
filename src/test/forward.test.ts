// The engine's logits against the independent float64 forward pass, for every model the repo ships or
// the tests make: random-weight GGUF files in each tensor type (incl. GQA and Qwen2 biases), the
// default model (Hugging Face format), and the real llama2.c checkpoint in ../shared when present.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { loadModelFiles, type LoadedModel } from '../model/load.js';
import { causalRowSplit, makeModel, Session } from '../engine/session.js';
import { argmax } from '../engine/sampler.js';
import { refForward, refRoundActivations, refWeights, argmax64 } from './reference.js';
import { matmul, productRoundsX, setIntegerActivations } from '../backend/cpu/kernels.js';
import { wasm } from '../backend/wasm/runtime.js';
import { workerPool } from '../backend/wasm/pool.js';
import { randomGGUF, tempFile } from './fixtures.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { rng } from '../engine/sampler.js';
import { QUANT_FORMATS, type QuantType } from '../model/quants.js';
import { fromBf16, toBf16 } from '../kv/paged-cache.js';

const STORIES = new URL('../../../shared/models/stories260K/model.bin', import.meta.url).pathname;

function promptOf(n: number, vocab: number, seed = 7): number[] {
  const r = rng(seed); return Array.from({ length: n }, () => Math.floor(r() * vocab));
}

/** Top-1 equal at every position and max |Δlogit| under `tol`; greedy continuation equal. With f32
 *  activations (setIntegerActivations(false)), so only float rounding separates the two. */
function checkAgainstReference(m: LoadedModel, tokens: number[], tol: number, greedySteps: number): void {
  setIntegerActivations(false);
  try {
    const model = makeModel(m.config, m.weights);
    const V = m.config.vocabSize;
    const ours = new Session(model).forward(tokens, { logits: 'all', chunk: 17 }); // odd chunk: exercises chunked prefill
    const ref = refForward(m.config, refWeights(m.weights), tokens);
    let maxDiff = 0;
    tokens.forEach((_, i) => {
      for (let j = 0; j < V; j++) maxDiff = Math.max(maxDiff, Math.abs(ours[i * V + j] - ref[i][j]));
      assert.equal(argmax(ours, i * V, V), argmax64(ref[i]), `top-1 differs at position ${i}`);
    });
    assert.ok(maxDiff < tol, `max |Δlogit| ${maxDiff} over the stated bound ${tol}`);
    if (greedySteps > 0) {
      const s = new Session(model);
      let logits = s.forward(tokens);
      const seq = [...tokens], mine: number[] = [];
      for (let i = 0; i < greedySteps; i++) { const t = argmax(logits); mine.push(t); seq.push(t); logits = s.forward([t]); }
      const refLogits = refForward(m.config, refWeights(m.weights), seq.slice(0, -1));
      const refGreedy = refLogits.slice(tokens.length - 1).map((l) => argmax64(l));
      assert.deepEqual(mine, refGreedy, 'greedy continuation differs from the float64 reference');
    }
  } finally { setIntegerActivations(true); }
}

/** With 8-bit activations (the default for quantised weights: each product's input rounded to the
 *  format llama.cpp multiplies that type by): the reference rounds each product's input the same way.
 *  Our x is f32 and the reference's f64, so an element within rounding of a quantisation tie may land one
 *  step apart (measured: one such element moves the logits by 2.8e-2); hence a looser bound, and top-1
 *  compared where the reference's margin exceeds it. */
function checkIntegerActivations(m: LoadedModel, tokens: number[], tol: number): void {
  const W = m.weights.layers[0].wq, format = productRoundsX(W);
  assert.ok(format, `${W.dtype} products round their input`);
  const V = m.config.vocabSize;
  // a prefill in chunks of 17, then decode steps (one token each) for the last 8 positions
  const s = new Session(makeModel(m.config, m.weights));
  const ours = [s.forward(tokens.slice(0, -8), { logits: 'all', chunk: 17 })];
  for (const t of tokens.slice(-8)) ours.push(s.forward([t]));
  const flat = new Float32Array(tokens.length * V); let o = 0;
  for (const l of ours) { flat.set(l, o); o += l.length; }
  const ref = refForward(m.config, refWeights(m.weights), tokens, { quantiseX: () => format });
  let maxDiff = 0, compared = 0;
  tokens.forEach((_, i) => {
    for (let j = 0; j < V; j++) maxDiff = Math.max(maxDiff, Math.abs(flat[i * V + j] - ref[i][j]));
    const sorted = Array.from(ref[i]).sort((a, b) => b - a);
    if (sorted[0] - sorted[1] > tol) { compared++; assert.equal(argmax(flat, i * V, V), argmax64(ref[i]), `top-1 differs at position ${i}`); }
  });
  assert.ok(maxDiff < tol, `max |Δlogit| ${maxDiff} over the stated bound ${tol}`);
  assert.ok(compared >= tokens.length / 2, `top-1 compared at ${compared} of ${tokens.length} positions only`);
}

for (const dtype of ['f32', 'f16', 'bf16', 'q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'iq4_nl', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k', 'iq4_xs'] as const) {
  test(`random GGUF (${dtype}, GQA 8/2) matches the float64 reference`, () => {
    const wide = QUANT_FORMATS[dtype as QuantType]?.elems === 256; // rows of whole 256-element blocks
    const path = tempFile('m.gguf', randomGGUF({ vocab: 96, dim: wide ? 256 : 64, hidden: wide ? 512 : 128, layers: 2, heads: 8, kvHeads: 2, dtype, seed: 3 }));
    const m = loadModelFiles(path);
    assert.equal(m.config.nKVHeads, 2);
    // the reference uses the same dequantised weights, so only arithmetic differs: f32 rounding
    checkAgainstReference(m, promptOf(64, 96), 1e-3, 32);
    if (QUANT_FORMATS[dtype as QuantType]) checkIntegerActivations(m, promptOf(64, 96), 0.1);
  });
}

test('Q8_0, Q4_0 and Q5_0 products (x quantised to Q8_0 on the SIMD path: decode steps in place, Q8_0 / Q4_0 prefill through row quads) match float64', () => {
  for (const dtype of ['q8_0', 'q4_0', 'q5_0'] as const) {
  const m = loadModelFiles(tempFile('q8.gguf', randomGGUF({ vocab: 96, dim: 64, hidden: 132, layers: 1, heads: 8, kvHeads: 2, dtype, seed: 5 })));
  const W = m.weights.layers[0].wGate, g = rng(9); // (132 rows: blocks of row quads end short)
  for (const n of [1, 3, 4, 5, 11]) {
    const x = Float32Array.from({ length: n * W.cols }, () => (g() - 0.5) * 4);
    const out = new Float32Array(n * W.rows);
    matmul(W, x, n, out);
    const row = new Float32Array(W.cols);
    for (let t = 0; t < n; t++) {
      const xt = Float64Array.from(x.subarray(t * W.cols, (t + 1) * W.cols)), format = productRoundsX(W), xr = format ? refRoundActivations(xt, format) : xt;
      for (let r = 0; r < W.rows; r++) {
        W.row(r, row);
        let want = 0; for (let i = 0; i < W.cols; i++) want += row[i] * xr[i];
        assert.ok(Math.abs(out[t * W.rows + r] - want) < 1e-4 * (1 + Math.abs(want)), `${dtype} n ${n} token ${t} row ${r}: ${out[t * W.rows + r]} vs ${want}`);
      }
    }
  }
  }
  assert.equal(productRoundsX(loadModelFiles(tempFile('q8.gguf', randomGGUF({ vocab: 96, dim: 64, hidden: 132, layers: 1, heads: 8, kvHeads: 2, dtype: 'q8_0', seed: 5 }))).weights.layers[0].wGate), 'q8_0', 'x was quantised');
});

test('random Qwen2 GGUF (q/k/v biases, neox RoPE, untied) matches the float64 reference', () => {
  const path = tempFile('q.gguf', randomGGUF({ arch: 'qwen2', vocab: 80, dim: 64, hidden: 96, layers: 2, heads: 4, kvHeads: 1, seed: 5 }));
  const m = loadModelFiles(path);
  assert.equal(m.config.ropeStyle, 'neox');
  assert.ok(m.weights.layers[0].bq);
  checkAgainstReference(m, promptOf(64, 80), 1e-3, 8);
});

test('random Qwen3 GGUF (per-head query/key RMSNorm, head size != dim / heads, GQA 8/2) matches the float64 reference', () => {
  const path = tempFile('q3.gguf', randomGGUF({ arch: 'qwen3', vocab: 80, dim: 64, hidden: 96, layers: 2, heads: 8, kvHeads: 2, headDim: 16, seed: 6 }));
  const m = loadModelFiles(path);
  assert.equal(m.config.ropeStyle, 'neox');
  assert.equal(m.config.headDim, 16);
  assert.ok(m.weights.layers[0].qNorm && m.weights.layers[0].kNorm);
  checkAgainstReference(m, promptOf(64, 80), 1e-3, 8);
});

test('random GGUF with YaRN RoPE scaling (factor 4 over 32 original positions, decoded past them) matches the float64 reference', () => {
  const m = loadModelFiles(tempFile('y.gguf', randomGGUF({ vocab: 80, dim: 64, hidden: 96, layers: 2, heads: 4, kvHeads: 2, yarn: { factor: 4, ctx: 32 }, seed: 12 })));
  assert.equal(m.config.ropeScaling.type, 'yarn');
  checkAgainstReference(m, promptOf(64, 80), 1e-3, 16);
});

test('random Phi-3 GGUF (fused qkv and gate/up, LongRoPE long factors, 3/4 of each head rotated) matches the float64 reference', () => {
  const m = loadModelFiles(tempFile('phi.gguf', randomGGUF({ arch: 'phi3', vocab: 80, dim: 64, hidden: 96, layers: 2, heads: 4, kvHeads: 2, longrope: { ctx: 32, attnFactor: 1.2 }, ropeDims: 12, seed: 13 })));
  assert.equal(m.config.ropeScaling.type, 'longrope');
  assert.equal(m.config.ropeDims, 12);
  assert.equal(m.weights.layers[1].wUp.rows, 96);
  checkAgainstReference(m, promptOf(64, 80), 1e-3, 16);
});

test('sliding-window attention in every layer (Mistral 7B v0.1 style): prefill chunks and decode steps past the window match float64', () => {
  // (GGUF llama files keep llama.cpp's reading, no window; Hugging Face Mistral folders set one)
  const m = loadModelFiles(tempFile('w.gguf', randomGGUF({ vocab: 80, dim: 64, hidden: 96, layers: 2, heads: 4, kvHeads: 2, window: 12, seed: 14 })));
  assert.equal(m.config.slidingWindow, undefined);
  m.config.slidingWindow = 12;
  checkAgainstReference(m, promptOf(64, 80), 1e-3, 16);
});

test('random Gemma 3 GGUF (windowed and global layers with their own RoPE bases, q/k norms, post-norms, GeGLU, scaled embedding) matches the float64 reference', () => {
  const m = loadModelFiles(tempFile('g3.gguf', randomGGUF({ arch: 'gemma3', vocab: 80, dim: 64, hidden: 96, layers: 3, heads: 4, kvHeads: 2, headDim: 32, window: 10, pattern: 3, ropeTheta: 1e6, seed: 15 })));
  assert.deepEqual(m.config.windowLayers, [true, true, false]);
  assert.equal(m.config.ffnAct, 'gelu');
  checkAgainstReference(m, promptOf(64, 80), 1e-3, 16);
});

test('the default model (quest-tiny-8k, Hugging Face folder, f16) matches the float64 reference', () => {
  const m = loadModelFiles(DEFAULT_MODEL);
  assert.equal(m.format, 'hf');
  assert.ok(m.config.nKVHeads < m.config.nHeads, 'the default model uses grouped-query attention');
  checkAgainstReference(m, promptOf(64, m.config.vocabSize, 11), 2e-3, 32);
});

test('llama2.c stories260K matches the float64 reference', { skip: existsSync(STORIES) ? false : 'no ../shared/models/stories260K (fresh clone without ../shared)' }, () => {
  const m = loadModelFiles(STORIES);
  assert.equal(m.format, 'llama2c');
  assert.equal(m.config.nKVHeads, 4);
  checkAgainstReference(m, [1, ...promptOf(63, 512, 3)], 1e-3, 32);
});

test('a bf16 KV cache (SIMD kernels with hd 16, TypeScript loops with hd 14): prefill, dense and Quest decode steps match a float64 reference whose keys and values are rounded to bf16', () => {
  const bf16 = (x: number) => fromBf16(toBf16(x));
  for (const dim of [96, 84]) {
    const m = loadModelFiles(tempFile(`bf16-${dim}.gguf`, randomGGUF({ vocab: 80, dim, hidden: 64, layers: 3, heads: 6, kvHeads: 2, seed: 12 })));
    const tokens = promptOf(150, 80, 5), from = 120, V = m.config.vocabSize;
    const quest = { budget: 48, pageSize: 8, denseLayers: 1 };
    for (const policy of ['dense', 'quest'] as const) {
      const s = new Session(makeModel(m.config, m.weights, 'bf16'), { policy, ...quest });
      const prefill = s.forward(tokens.slice(0, from));
      const opts = { kvStore: bf16, ...(policy === 'quest' ? { quest: { from, ...quest } } : {}) };
      const ref = refForward(m.config, refWeights(m.weights), tokens, opts), unrounded = refForward(m.config, refWeights(m.weights), tokens, { ...opts, kvStore: undefined });
      let maxDiff = 0, roundingDiff = 0;
      const check = (ours: Float32Array, o: number, pos: number) => {
        for (let j = 0; j < V; j++) { maxDiff = Math.max(maxDiff, Math.abs(ours[o + j] - ref[pos][j])); roundingDiff = Math.max(roundingDiff, Math.abs(unrounded[pos][j] - ref[pos][j])); }
        assert.equal(argmax(ours.subarray(o, o + V)), argmax64(ref[pos]), `hd ${dim / 6} ${policy}: top-1 differs at position ${pos}`);
      };
      check(prefill, 0, from - 1);
      for (let pos = from; pos < tokens.length; pos++) check(s.forward([tokens[pos]]), 0, pos);
      assert.ok(maxDiff < 1e-3, `hd ${dim / 6} ${policy}: max |Δlogit| vs the bf16 float64 reference ${maxDiff}`);
      assert.ok(roundingDiff > 10 * maxDiff, `hd ${dim / 6} ${policy}: the rounding matters (${roundingDiff}) more than our error (${maxDiff})`);
    }
  }
});

test('Quest decode steps over a bf16 cache of 270 pages (page scores split across the worker threads) match the float64 Quest reference', () => {
  const m = loadModelFiles(tempFile('bf16-long.gguf', randomGGUF({ vocab: 80, dim: 96, hidden: 64, layers: 2, heads: 6, kvHeads: 2, seed: 13 })));
  const tokens = promptOf(548, 80, 7), from = 540, V = m.config.vocabSize, bf16 = (x: number) => fromBf16(toBf16(x));
  const quest = { budget: 64, pageSize: 2, denseLayers: 1 }; // (270 pages x 2 KV heads: enough to split)
  const s = new Session(makeModel(m.config, m.weights, 'bf16'), { policy: 'quest', ...quest });
  s.forward(tokens.slice(0, from));
  const ref = refForward(m.config, refWeights(m.weights), tokens, { kvStore: bf16, quest: { from, ...quest } });
  let maxDiff = 0;
  for (let pos = from; pos < tokens.length; pos++) {
    const ours = s.forward([tokens[pos]]);
    for (let j = 0; j < V; j++) maxDiff = Math.max(maxDiff, Math.abs(ours[j] - ref[pos][j]));
    assert.equal(argmax(ours), argmax64(ref[pos]), `top-1 differs at position ${pos}`);
  }
  assert.ok(maxDiff < 1e-3, `max |Δlogit| vs the float64 Quest reference ${maxDiff}`);
});

test('Quest decode steps (SIMD path: page scores and grouped sparse attention across threads; and the TypeScript path) match a float64 Quest reference', () => {
  // hd 16 takes the WebAssembly kernels, hd 14 the TypeScript loops; 3 query heads per KV head
  for (const dim of [96, 84]) {
    const m = loadModelFiles(tempFile(`quest-${dim}.gguf`, randomGGUF({ vocab: 80, dim, hidden: 64, layers: 3, heads: 6, kvHeads: 2, seed: 11 })));
    const tokens = promptOf(150, 80, 3), from = 120, V = m.config.vocabSize;
    const quest = { budget: 48, pageSize: 8, denseLayers: 1 };
    const s = new Session(makeModel(m.config, m.weights), { policy: 'quest', ...quest });
    s.forward(tokens.slice(0, from));
    const ref = refForward(m.config, refWeights(m.weights), tokens, { quest: { from, ...quest } });
    const dense = refForward(m.config, refWeights(m.weights), tokens);
    let maxDiff = 0, sparseDiff = 0;
    for (let pos = from; pos < tokens.length; pos++) {
      const ours = s.forward([tokens[pos]]);
      for (let j = 0; j < V; j++) { maxDiff = Math.max(maxDiff, Math.abs(ours[j] - ref[pos][j])); sparseDiff = Math.max(sparseDiff, Math.abs(dense[pos][j] - ref[pos][j])); }
      assert.equal(argmax(ours), argmax64(ref[pos]), `hd ${dim / 6}: top-1 differs at position ${pos}`);
    }
    assert.ok(maxDiff < 1e-3, `hd ${dim / 6}: max |Δlogit| vs the float64 Quest reference ${maxDiff}`);
    assert.ok(sparseDiff > 1e-2, `hd ${dim / 6}: the selection is sparse (Quest differs from dense by ${sparseDiff})`);
  }
});

test('decode steps over more than 1024 tokens (attention split by tokens across the threads, parts merged by their softmax statistics): dense and Quest, f32 and bf16 caches, match float64', (t) => {
  const rt = wasm();
  if (!rt || !workerPool(rt)) { t.skip('no worker threads (or no WebAssembly): nothing to split'); return; }
  // 6 query heads over 2 KV heads (3 a group: heads do not divide evenly across two threads)
  const m = loadModelFiles(tempFile('token-split.gguf', randomGGUF({ vocab: 80, dim: 96, hidden: 64, layers: 2, heads: 6, kvHeads: 2, seed: 17 })));
  const tokens = promptOf(1106, 80, 9), from = 1100, V = m.config.vocabSize, bf16 = (x: number) => fromBf16(toBf16(x));
  const quest = { budget: 1040, pageSize: 16, denseLayers: 1 }; // (65 of 70 pages: lists long enough to split)
  for (const kv of ['f32', 'bf16'] as const) for (const policy of ['dense', 'quest'] as const) {
    const s = new Session(makeModel(m.config, m.weights, kv), policy === 'quest' ? { policy, ...quest } : { policy });
    s.forward(tokens.slice(0, from));
    const ref = refForward(m.config, refWeights(m.weights), tokens, { ...(kv === 'bf16' ? { kvStore: bf16 } : {}), ...(policy === 'quest' ? { quest: { from, ...quest } } : {}) });
    let maxDiff = 0;
    for (let pos = from; pos < tokens.length; pos++) {
      const ours = s.forward([tokens[pos]]);
      for (let j = 0; j < V; j++) maxDiff = Math.max(maxDiff, Math.abs(ours[j] - ref[pos][j]));
      assert.equal(argmax(ours), argmax64(ref[pos]), `${kv} ${policy}: top-1 differs at position ${pos}`);
    }
    assert.ok(maxDiff < 1e-3, `${kv} ${policy}: max |Δlogit| vs float64 ${maxDiff}`);
  }
});

test('a prefill chunk\'s rows split by causal work (causalRowSplit): contiguous runs covering every row once, at multiples of 4, each within a block of rows of an even share', () => {
  for (const [n, start, parts] of [[256, 0, 2], [256, 3840, 2], [256, 0, 3], [5, 0, 2], [1, 9, 2], [37, 100, 4], [512, 31000, 8]]) {
    const cuts = Array.from({ length: parts + 1 }, (_, s) => causalRowSplit(n, start, parts, s));
    assert.equal(cuts[0], 0); assert.equal(cuts[parts], n);
    const work = (a: number, b: number) => { let w = 0; for (let r = a; r < b; r++) w += start + r + 1; return w; };
    const even = work(0, n) / parts, block = 4 * (start + n); // (a cut moves by at most two rows each way of the even point)
    for (let s = 0; s < parts; s++) {
      assert.ok(cuts[s] <= cuts[s + 1], `n ${n} start ${start}: runs in order`);
      if (s > 0 && cuts[s] < n) assert.equal(cuts[s] % 4, 0, `n ${n} start ${start}: cut ${cuts[s]} at a multiple of 4`);
      assert.ok(Math.abs(work(cuts[s], cuts[s + 1]) - even) <= block, `n ${n} start ${start} parts ${parts}: share ${s} has ${work(cuts[s], cuts[s + 1])} of ${even} per share`);
    }
  }
});
