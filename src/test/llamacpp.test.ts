// llama.cpp (through node-llama-cpp) as an independent oracle for the whole forward pass: it loads the
// GGUF our converter writes from the default model, and its logits must agree with our engine's.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { convertHFToGGUF } from '../model/convert.js';
import { loadModelFiles } from '../model/load.js';
import { makeModel, Session } from '../engine/session.js';
import { argmax } from '../engine/sampler.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { tempFile } from './fixtures.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { randomGGUF } from './fixtures.js';
import { mkdtempSync, writeFileSync, copyFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rng } from '../engine/sampler.js';

let llamaCpp: typeof import('node-llama-cpp') | null = null;
try { llamaCpp = await import('node-llama-cpp'); } catch { llamaCpp = null; }

test('the converted GGUF of the default model loads in our engine and matches the HF folder', () => {
  const gguf = loadModelFiles(tempFile('tiny.gguf', convertHFToGGUF(DEFAULT_MODEL, 'f16')));
  const hf = loadModelFiles(DEFAULT_MODEL);
  assert.equal(gguf.config.ropeStyle, 'interleaved');
  // the GGUF carries the same tokenizer
  const text = 'The pass key is 48213. "Well, Prince," said Anna.';
  assert.deepEqual(new TextTokenizer(gguf.tokenizer!).encode(text), new TextTokenizer(hf.tokenizer!).encode(text));
  const ids = new TextTokenizer(hf.tokenizer!).encode(text);
  const a = new Session(makeModel(hf.config, hf.weights)).forward(ids, { logits: 'all' });
  const b = new Session(makeModel(gguf.config, gguf.weights)).forward(ids, { logits: 'all' });
  let d = 0; for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
  assert.ok(d < 1e-3, `GGUF vs HF max |Δlogit| ${d}`);
});

test('llama.cpp (node-llama-cpp) agrees with our engine on the default model', { skip: llamaCpp ? false : 'node-llama-cpp is not installed' }, async (t) => {
  const { getLlama } = llamaCpp!;
  const path = tempFile('tiny-f32.gguf', convertHFToGGUF(DEFAULT_MODEL, 'f32'));
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
  const model = await llama.loadModel({ modelPath: path });
  const context = await model.createContext({ contextSize: 256, batchSize: 128 });
  try {
    const ours = loadModelFiles(DEFAULT_MODEL);
    const tok = new TextTokenizer(ours.tokenizer!);
    const ids = tok.encode('"Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes. But I warn you, if you don\'t tell me that this means war');
    const V = ours.config.vocabSize;
    const mine = new Session(makeModel(ours.config, ours.weights)).forward(ids, { logits: 'all' });
    const seq = context.getSequence();
    // node-llama-cpp 3.21 reports next-token probabilities (temperature 1, no truncation): compare those
    const opts = { temperature: 1, topK: 0, topP: 1, minP: 0 };
    const res = await seq.controlledEvaluate(ids.map((t) => [t, { generateNext: { probabilities: true, options: opts } }] as never));
    let maxDiff = 0, agree = 0;
    ids.forEach((_, i) => {
      const probs = (res[i] as { next: { probabilities?: Map<number, number> } }).next.probabilities!;
      const row = mine.subarray(i * V, i * V + V), m = Math.max(...row);
      let z = 0; for (const v of row) z += Math.exp(v - m);
      let best = 0, bv = -Infinity;
      for (const [t, p] of probs) { maxDiff = Math.max(maxDiff, Math.abs(p - Math.exp(row[t] - m) / z)); if (p > bv) { bv = p; best = t; } }
      if (best === argmax(mine, i * V, V)) agree++;
    });
    t.diagnostic(`llama.cpp vs quest: top-1 agrees at ${agree}/${ids.length} positions, max |Δp| = ${maxDiff.toExponential(2)}`);
    assert.equal(agree, ids.length, `top-1 agrees at ${agree} of ${ids.length} positions`);
    assert.ok(maxDiff < 5e-3, `llama.cpp vs quest max |Δprobability| ${maxDiff}`);
  } finally {
    await context.dispose(); await model.dispose();
  }
});

// Every quantised type and llama.cpp's Q4_K_M / Q5_K_M mixes, written by our converter from the default
// model and run by llama.cpp and by us. Both round the input of every quantised product to llama.cpp's
// 8-bit formats (activations.ts), but this trained model amplifies the rare activation that a different
// order of float sums puts on the other side of a rounding step (measured max |Δp| 0.02–0.07; its
// probabilities move by ~0.05 between 8-bit and f32 inputs), so where its top two candidates are nearly
// tied the top-1 can flip; the test states bounds accordingly: top-1 equal wherever llama.cpp's top-1
// leads by more than 0.1 in probability, max |Δp| under 0.1, the prompt's mean log-likelihood within 1.5%,
// and our 32 greedy tokens are llama.cpp's greedy choices wherever it is not nearly tied. (The decoding
// of every type is checked exactly against llama.cpp's own decoder in quants.test.ts; random weights,
// next, have no such amplifier.)
const MIXED_TYPES = ['q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'iq4_nl', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k', 'iq4_xs', 'q4_k_m', 'q5_k_m'] as const;

interface Agreement {
  checked: number; positions: number; maxDp: number; flips: string[]; nllOurs: number; nllTheirs: number;
  /** llama.cpp against itself (selfCheck): its prompt in one batch of 128 and one token at a time (other
   *  kernels: repacked matrix products vs vector dot products) — top-1 disagreements, with the relative
   *  margin p1 - p2 / p1 of each, and max |Δp| */
  self?: { flips: number[]; maxDp: number };
}

type Probabilities = Map<number, number>;
const topTwo = (probs: Probabilities) => [...probs.entries()].sort((x, y) => y[1] - x[1]);

/** Our engine and llama.cpp on the same file: our greedy continuation of `ids` (32 tokens), then
 *  llama.cpp's next-token probabilities along prompt + continuation against ours. Top-1 is compared
 *  where `decided(p1, p2)` says llama.cpp's top two probabilities are not a tie (a number: p1 - p2
 *  above it). llama.cpp keeps its KV cache in f32 here (its default is f16, a rounding we don't make), on
 *  one thread (two threads on a two-core machine spend ~0.3 s a token waking each other). */
async function agreement(llama: Awaited<ReturnType<typeof import('node-llama-cpp')['getLlama']>>, path: string, ids: number[], margin: number | ((p1: number, p2: number) => boolean), selfCheck = false): Promise<Agreement> {
  const decided = typeof margin === 'number' ? (p1: number, p2: number) => p1 - p2 > margin : margin;
  const ours = loadModelFiles(path), V = ours.config.vocabSize;
  const s = new Session(makeModel(ours.config, ours.weights)), mine = s.forward(ids, { logits: 'all' });
  const rows: Float32Array[] = ids.map((_, i) => mine.slice(i * V, i * V + V)), greedy: number[] = [];
  for (let i = 0; i < 32; i++) { const next = argmax(rows[rows.length - 1]); greedy.push(next); rows.push(s.forward([next]).slice(0, V)); }
  const softmax = (row: Float32Array) => { const m = Math.max(...row); let z = 0; for (const v of row) z += Math.exp(v - m); return Array.from(row, (v) => Math.exp(v - m) / z); };
  const lm = await llama.loadModel({ modelPath: path });
  const seqIds = [...ids, ...greedy.slice(0, -1)];
  const evaluate = async (batchSize: number): Promise<Probabilities[]> => {
    const context = await lm.createContext({ contextSize: 256, batchSize, threads: 1, flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32' });
    try {
      const opts = { temperature: 1, topK: 0, topP: 1, minP: 0 };
      const res = await context.getSequence().controlledEvaluate(seqIds.map((x) => [x, { generateNext: { probabilities: true, options: opts } }] as never));
      return res.map((r) => (r as { next: { probabilities?: Probabilities } }).next.probabilities!);
    } finally { await context.dispose(); }
  };
  try {
    const res = await evaluate(128);
    const a: Agreement = { checked: 0, positions: seqIds.length, maxDp: 0, flips: [], nllOurs: 0, nllTheirs: 0 };
    seqIds.forEach((_, i) => {
      const probs = res[i];
      const p = softmax(rows[i]), sorted = topTwo(probs);
      for (const [x, q] of probs) a.maxDp = Math.max(a.maxDp, Math.abs(q - p[x]));
      if (i + 1 < ids.length) { a.nllOurs -= Math.log(p[ids[i + 1]]); a.nllTheirs -= Math.log(probs.get(ids[i + 1]) ?? 1e-30); }
      if (decided(sorted[0][1], sorted[1]?.[1] ?? 0)) {
        a.checked++;
        if (sorted[0][0] !== argmax(rows[i])) a.flips.push(`${i < ids.length ? 'prompt' : 'greedy'} position ${i}: llama.cpp ${sorted[0][0]} (p ${sorted[0][1].toFixed(3)}), ours ${argmax(rows[i])}`);
      }
    });
    if (selfCheck) {
      const one = await evaluate(1);
      a.self = { flips: [], maxDp: 0 };
      res.forEach((probs, i) => {
        for (const [x, q] of probs) a.self!.maxDp = Math.max(a.self!.maxDp, Math.abs(q - (one[i].get(x) ?? 0)));
        const [first, second] = topTwo(probs);
        if (first[0] !== topTwo(one[i])[0][0]) a.self!.flips.push((first[1] - second[1]) / first[1]);
      });
    }
    return a;
  } finally {
    await lm.dispose();
  }
}

const describe = (a: Agreement) => `top-1 checked at ${a.checked}/${a.positions}, max |Δp| ${a.maxDp.toFixed(4)}` +
  (a.self ? ` (llama.cpp batch 128 vs 1: max |Δp| ${a.self.maxDp.toFixed(4)}, top-1 differs at ${a.self.flips.length}${a.self.flips.length ? `, margins ${a.self.flips.map((m) => `${(100 * m).toFixed(1)}%`).join(' ')}` : ''})` : '');

test('llama.cpp runs our converter\'s quantised files of every type as our engine does', { skip: llamaCpp ? false : 'node-llama-cpp is not installed' }, async (t) => {
  const llama = await llamaCpp!.getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
  const hf = loadModelFiles(DEFAULT_MODEL), tok = new TextTokenizer(hf.tokenizer!);
  const ids = tok.encode('"Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes. But I warn you, if you don\'t tell me that this means war, if you still try to defend the infamies and horrors perpetrated by that Antichrist').slice(0, 64);
  assert.equal(ids.length, 64);
  const lines: string[] = [], failures: string[] = [];
  for (const type of MIXED_TYPES) {
    const a = await agreement(llama, tempFile(`tiny-${type}.gguf`, convertHFToGGUF(DEFAULT_MODEL, type)), ids, 0.1);
    const n = ids.length - 1;
    lines.push(`${type}: ${describe(a)}, mean NLL ${(a.nllOurs / n).toFixed(3)} vs ${(a.nllTheirs / n).toFixed(3)}`);
    failures.push(...a.flips.map((f) => `${type}: top-1 differs where llama.cpp is not nearly tied, ${f}`));
    if (!(a.maxDp < 0.1)) failures.push(`${type}: max |Δp| ${a.maxDp}`);
    if (!(Math.abs(a.nllOurs - a.nllTheirs) < 0.015 * a.nllTheirs)) failures.push(`${type}: prompt NLL ours ${a.nllOurs} vs llama.cpp ${a.nllTheirs}`);
    if (a.checked < 0.5 * a.positions) failures.push(`${type}: only ${a.checked} positions have a clear top-1`);
  }
  t.diagnostic(lines.join('; '));
  assert.deepEqual(failures, []);
});

// The same on random weights, as the issue asks: every type and both mixes on a random model whose
// rows are whole 256-element blocks (so every matrix is of the type named), a 64-token prompt and our 32
// greedy tokens. Both engines round each product's input to llama.cpp's 8-bit format for the type
// (Q8_0 / Q8_1 / Q8_K), so the remaining differences are the order of float sums (and Q8_1's f16 sum
// term), which now and then move an activation across a rounding step. A random model's next-token
// distribution is flat (top probability ~0.05), so near-ties are common: top-1 is compared wherever
// llama.cpp's top two probabilities differ by more than 2% of the top one (measured flips: all within 1%),
// and at least 85% of positions must be so decided. For scale, the diagnostic shows llama.cpp against
// itself (prompt in one batch vs one token at a time): it differs from itself by as much as from us
// (measured: Q4_K max |Δp| 9e-4 and 4 top-1 flips at margins of 0.6–1.7%, Q2_K one at 0.2%).
test('llama.cpp and our engine agree on random-weight GGUFs of every quantised type (top-1 wherever not tied within 2%)', { skip: llamaCpp ? false : 'node-llama-cpp is not installed' }, async (t) => {
  const llama = await llamaCpp!.getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
  const g = rng(5), ids = Array.from({ length: 64 }, () => 259 + Math.floor(g() * (512 - 259)));
  const lines: string[] = [], failures: string[] = [];
  for (const type of MIXED_TYPES) {
    const path = tempFile(`random-${type}.gguf`, randomGGUF({ vocab: 512, dim: 256, hidden: 512, layers: 2, heads: 4, kvHeads: 2, seed: 11, dtype: type, vocabulary: true }));
    const a = await agreement(llama, path, ids, (p1, p2) => p1 - p2 > 0.02 * p1, true);
    lines.push(`${type}: ${describe(a)}`);
    failures.push(...a.flips.map((f) => `${type}: ${f}`));
    if (!(a.maxDp < 3e-3)) failures.push(`${type}: max |Δp| ${a.maxDp}`);
    if (a.checked < 0.85 * a.positions) failures.push(`${type}: only ${a.checked} of ${a.positions} positions decided`);
  }
  t.diagnostic(lines.join('; '));
  assert.deepEqual(failures, []);
});

// Architectures on random weights (f32 weights and KV cache: only the order of float sums differs): top-1
// equal at every position of a random 64-token prompt and our 32 greedy tokens, max |Δp| under 0.001.
for (const [label, shape] of [
  ['Qwen3 (per-head q/k RMSNorm, head size 32 with dim 128)', { arch: 'qwen3', vocab: 300, dim: 128, hidden: 256, layers: 3, heads: 8, kvHeads: 2, headDim: 32, seed: 41 }],
  ['Llama with YaRN RoPE scaling (factor 4 over 32 original positions; 96 positions compared)', { vocab: 300, dim: 128, hidden: 256, layers: 3, heads: 4, kvHeads: 2, yarn: { factor: 4, ctx: 32 }, seed: 42 }],
  ['Qwen3 with YaRN RoPE scaling (neox pairs)', { arch: 'qwen3', vocab: 300, dim: 128, hidden: 256, layers: 2, heads: 4, kvHeads: 1, yarn: { factor: 8, ctx: 16 }, seed: 43 }],
  ['Phi-3 (fused qkv and gate/up, LongRoPE long factors past 32 original positions)', { arch: 'phi3', vocab: 300, dim: 128, hidden: 256, layers: 2, heads: 4, kvHeads: 4, longrope: { ctx: 32, attnFactor: 1.19 }, seed: 44 }],
  ['Phi-3 with LongRoPE short factors (context within the original 4096)', { arch: 'phi3', vocab: 300, dim: 128, hidden: 256, layers: 2, heads: 4, kvHeads: 4, longrope: { ctx: 4096, attnFactor: 1.1 }, seed: 45 }],
  ['Gemma 3 (2 of 3 layers windowed over 10 tokens with RoPE base 10^4, global 10^6; q/k norms, post-norms, GeGLU, scaled embedding)', { arch: 'gemma3', vocab: 300, dim: 128, hidden: 256, layers: 3, heads: 4, kvHeads: 2, headDim: 64, window: 10, pattern: 3, ropeTheta: 1e6, seed: 47 }],
  ['Phi-4-mini shape (GQA, 3/4 of each head rotated, LongRoPE)', { arch: 'phi3', vocab: 300, dim: 128, hidden: 256, layers: 2, heads: 4, kvHeads: 2, ropeDims: 24, longrope: { ctx: 32, attnFactor: 1.19 }, seed: 46 }],
] as const) {
  test(`llama.cpp agrees with our engine on a random ${label} GGUF`, { skip: llamaCpp ? false : 'node-llama-cpp is not installed' }, async (t) => {
    const llama = await llamaCpp!.getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
    const path = tempFile('arch.gguf', randomGGUF({ ...shape, vocabulary: true }));
    const g = rng(5), ids = Array.from({ length: 64 }, () => 259 + Math.floor(g() * (shape.vocab - 259)));
    const a = await agreement(llama, path, ids, 0);
    t.diagnostic(describe(a));
    assert.deepEqual(a.flips, []);
    assert.ok(a.maxDp < 0.001, `max |Δp| ${a.maxDp}`);
    assert.equal(a.checked, a.positions, 'every position compared (none exactly tied)');
  });
}

/** The default model's weights rewritten as a Hugging Face folder of another family: `config` merged into
 *  its config.json, `tensors` maps the default tensors (name, f16 bytes) to the family's. */
async function hfVariant(config: Record<string, unknown>, tensors: (all: { name: string; shape: number[]; data: Uint8Array }[]) => { name: string; dtype: 'F16' | 'F32'; shape: number[]; data: Uint8Array }[]): Promise<string> {
  const { parseSafetensors, writeSafetensors } = await import('../model/safetensors.js');
  const dir = mkdtempSync(join(tmpdir(), 'quest-hf-'));
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(DEFAULT_MODEL, f), join(dir, f));
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...JSON.parse(readFileSync(join(DEFAULT_MODEL, 'config.json'), 'utf8')), ...config }));
  const all = [...parseSafetensors(new Uint8Array(readFileSync(join(DEFAULT_MODEL, 'model.safetensors'))), 'x').values()];
  writeFileSync(join(dir, 'model.safetensors'), writeSafetensors(tensors(all.map((x) => ({ name: x.name, shape: x.shape, data: x.data })))));
  return dir;
}

/** Our engine on the folder, llama.cpp on the GGUF our converter writes from it, and our engine on that GGUF. */
async function checkFolder(t: { diagnostic(s: string): void }, dir: string): Promise<void> {
  const hf = loadModelFiles(dir), llama = await llamaCpp!.getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
  const path = tempFile('converted.gguf', convertHFToGGUF(dir, 'f32'));
  const ids = new TextTokenizer(hf.tokenizer!).encode('"Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes. But I warn you, if you don\'t tell me that this means war, if you still try').slice(0, 48);
  const a = await agreement(llama, path, ids, 0);
  t.diagnostic(describe(a));
  const x = new Session(makeModel(hf.config, hf.weights)).forward(ids, { logits: 'all' });
  const gg = loadModelFiles(path), y = new Session(makeModel(gg.config, gg.weights)).forward(ids, { logits: 'all' });
  let d = 0; for (let i = 0; i < x.length; i++) d = Math.max(d, Math.abs(x[i] - y[i]));
  assert.ok(d < 1e-3, `folder vs converted GGUF max |Δlogit| ${d}`);
  assert.deepEqual(a.flips, []);
  assert.ok(a.maxDp < 5e-3, `max |Δp| ${a.maxDp}`);
}

const f16 = (x: { name: string; shape: number[]; data: Uint8Array }) => ({ ...x, dtype: 'F16' as 'F16' | 'F32' });
const f32Tensor = (name: string, v: Float32Array) => ({ name, dtype: 'F32' as 'F16' | 'F32', shape: [v.length], data: new Uint8Array(v.buffer) });

test('a Qwen3 Hugging Face folder: our engine runs it as llama.cpp runs the GGUF our converter writes from it', { skip: llamaCpp ? false : 'node-llama-cpp is not installed' }, async (t) => {
  // the default model's weights as a Qwen3 checkpoint, with per-head query/key norms added
  const g = rng(3), hd = 32;
  const dir = await hfVariant({ model_type: 'qwen3', architectures: ['Qwen3ForCausalLM'] }, (all) => [
    ...all.map(f16),
    ...Array.from({ length: 8 }, (_, l) => ['q_norm', 'k_norm'].map((n) => f32Tensor(`model.layers.${l}.self_attn.${n}.weight`, Float32Array.from({ length: hd }, () => 0.7 + 0.6 * g())))).flat(),
  ]);
  const hf = loadModelFiles(dir);
  assert.equal(hf.config.arch, 'qwen3');
  assert.ok(hf.weights.layers[3].qNorm);
  await checkFolder(t, dir);
});

test('a Phi-3 Hugging Face folder (fused qkv_proj and gate_up_proj, LongRoPE, partial rotary): ours as llama.cpp on its converted GGUF', { skip: llamaCpp ? false : 'node-llama-cpp is not installed' }, async (t) => {
  const byName = (all: { name: string; shape: number[]; data: Uint8Array }[], n: string) => all.find((x) => x.name === n)!;
  const cat = (parts: { shape: number[]; data: Uint8Array }[], name: string) => {
    const data = new Uint8Array(parts.reduce((a, p) => a + p.data.byteLength, 0)); let o = 0;
    for (const p of parts) { data.set(p.data, o); o += p.data.byteLength; }
    return { name, dtype: 'F16' as 'F16' | 'F32', shape: [parts.reduce((a, p) => a + p.shape[0], 0), parts[0].shape[1]], data };
  };
  const pairs = 12, g = rng(4);
  const dir = await hfVariant({
    model_type: 'phi3', architectures: ['Phi3ForCausalLM'], partial_rotary_factor: 0.75, original_max_position_embeddings: 64,
    rope_scaling: { type: 'longrope', short_factor: Array.from({ length: pairs }, () => 1 + 0.3 * g()), long_factor: Array.from({ length: pairs }, (_, i) => 1 + i * (0.5 + g())) },
  }, (all) => {
    const out = all.filter((x) => !/(q_proj|k_proj|v_proj|gate_proj|up_proj)\.weight$/.test(x.name)).map(f16);
    for (let l = 0; l < 8; l++) {
      const p = `model.layers.${l}.`;
      out.push(cat(['q_proj', 'k_proj', 'v_proj'].map((n) => byName(all, `${p}self_attn.${n}.weight`)), `${p}self_attn.qkv_proj.weight`));
      out.push(cat(['gate_proj', 'up_proj'].map((n) => byName(all, `${p}mlp.${n}.weight`)), `${p}mlp.gate_up_proj.weight`));
    }
    return out;
  });
  const hf = loadModelFiles(dir);
  assert.equal(hf.config.arch, 'phi3');
  assert.equal(hf.config.ropeDims, 24);
  assert.equal(hf.config.ropeScaling.type, 'longrope');
  await checkFolder(t, dir);
});

test('a Gemma 3 (text) Hugging Face folder: ours as llama.cpp on its converted GGUF (norms stored as w, used as 1 + w)', { skip: llamaCpp ? false : 'node-llama-cpp is not installed' }, async (t) => {
  const g = rng(6), around0 = (n: number) => Float32Array.from({ length: n }, () => 0.3 * (g() - 0.5));
  const dir = await hfVariant({
    model_type: 'gemma3_text', architectures: ['Gemma3ForCausalLM'], hidden_activation: 'gelu_pytorch_tanh', query_pre_attn_scalar: 32,
    sliding_window: 12, sliding_window_pattern: 4, rope_local_base_freq: 10000, rope_theta: 1e6,
  }, (all) => {
    // Gemma's names: the pre-FFN norm is pre_feedforward_layernorm; post_attention_layernorm follows attention
    const out = all.map((x) => ({ ...f16(x), name: x.name.replace('post_attention_layernorm', 'pre_feedforward_layernorm') }));
    for (let l = 0; l < 8; l++) {
      const p = `model.layers.${l}.`;
      out.push(f32Tensor(`${p}post_attention_layernorm.weight`, around0(256)), f32Tensor(`${p}post_feedforward_layernorm.weight`, around0(256)),
        f32Tensor(`${p}self_attn.q_norm.weight`, around0(32)), f32Tensor(`${p}self_attn.k_norm.weight`, around0(32)));
    }
    return out;
  });
  const hf = loadModelFiles(dir);
  assert.equal(hf.config.arch, 'gemma3');
  assert.deepEqual(hf.config.windowLayers, [true, true, true, false, true, true, true, false]);
  await checkFolder(t, dir);
});
