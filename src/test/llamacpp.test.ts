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
// model and run by llama.cpp and by us. llama.cpp quantises the input of every quantised product to 8
// bits (Q8_0 / Q8_1 / Q8_K), which moves this small model's next-token probabilities by up to ~0.05
// against its own unquantised input (measured: llama.cpp's Q8_0 file vs our f32 engine), so where its
// top two candidates are nearly tied the top-1 can flip; the test states bounds accordingly: top-1 equal
// wherever llama.cpp's top-1 leads by more than MARGIN, max |Δp| under MAX_DP, the prompt's mean
// log-likelihood within 1.5%, and our 32 greedy tokens are llama.cpp's greedy choices wherever it is not
// nearly tied. (The decoding of every type is checked exactly against llama.cpp's own decoder in
// quants.test.ts.)
const MIXED_TYPES = ['q8_0', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'iq4_nl', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k', 'iq4_xs', 'q4_k_m', 'q5_k_m'] as const;
const MARGIN = 0.1, MAX_DP = 0.1;

test('llama.cpp runs our converter\'s quantised files of every type as our engine does', { skip: llamaCpp ? false : 'node-llama-cpp is not installed' }, async (t) => {
  const { getLlama } = llamaCpp!;
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
  const hf = loadModelFiles(DEFAULT_MODEL), tok = new TextTokenizer(hf.tokenizer!);
  const ids = tok.encode('"Well, Prince, so Genoa and Lucca are now just family estates of the Buonapartes. But I warn you, if you don\'t tell me that this means war, if you still try to defend the infamies and horrors perpetrated by that Antichrist').slice(0, 64);
  assert.equal(ids.length, 64);
  const V = hf.config.vocabSize, lines: string[] = [], failures: string[] = [];
  const opts = { temperature: 1, topK: 0, topP: 1, minP: 0 };
  const softmax = (row: Float32Array) => { const m = Math.max(...row); let z = 0; for (const v of row) z += Math.exp(v - m); return Array.from(row, (v) => Math.exp(v - m) / z); };
  for (const type of MIXED_TYPES) {
    const path = tempFile(`tiny-${type}.gguf`, convertHFToGGUF(DEFAULT_MODEL, type));
    const ours = loadModelFiles(path), model = makeModel(ours.config, ours.weights);
    // our greedy continuation, then llama.cpp's probabilities along prompt + continuation
    const s = new Session(model), mine = s.forward(ids, { logits: 'all' });
    const rows: Float32Array[] = ids.map((_, i) => mine.slice(i * V, i * V + V)), greedy: number[] = [];
    for (let i = 0; i < 32; i++) { const next = argmax(rows[rows.length - 1]); greedy.push(next); rows.push(s.forward([next]).slice(0, V)); }
    const lm = await llama.loadModel({ modelPath: path });
    const context = await lm.createContext({ contextSize: 256, batchSize: 128 });
    try {
      const seqIds = [...ids, ...greedy.slice(0, -1)];
      const res = await context.getSequence().controlledEvaluate(seqIds.map((x) => [x, { generateNext: { probabilities: true, options: opts } }] as never));
      let maxDp = 0, checked = 0, nllOurs = 0, nllTheirs = 0;
      const flips: string[] = [];
      seqIds.forEach((_, i) => {
        const probs = (res[i] as { next: { probabilities?: Map<number, number> } }).next.probabilities!;
        const p = softmax(rows[i]);
        const sorted = [...probs.entries()].sort((a, b) => b[1] - a[1]);
        for (const [x, q] of probs) maxDp = Math.max(maxDp, Math.abs(q - p[x]));
        if (i + 1 < ids.length) { nllOurs -= Math.log(p[ids[i + 1]]); nllTheirs -= Math.log(probs.get(ids[i + 1]) ?? 1e-30); }
        if (sorted[0][1] - (sorted[1]?.[1] ?? 0) > MARGIN) {
          checked++;
          if (sorted[0][0] !== argmax(rows[i])) flips.push(`${i < ids.length ? 'prompt' : 'greedy'} position ${i}: llama.cpp ${sorted[0][0]} (p ${sorted[0][1].toFixed(3)}), ours ${argmax(rows[i])}`);
        }
      });
      const nllRel = Math.abs(nllOurs - nllTheirs) / nllTheirs;
      lines.push(`${type}: top-1 checked at ${checked}/${seqIds.length}, max |Δp| ${maxDp.toFixed(3)}, mean NLL ${(nllOurs / (ids.length - 1)).toFixed(3)} vs ${(nllTheirs / (ids.length - 1)).toFixed(3)}`);
      failures.push(...flips.map((f) => `${type}: top-1 differs where llama.cpp is not nearly tied, ${f}`));
      if (!(maxDp < MAX_DP)) failures.push(`${type}: max |Δp| ${maxDp}`);
      if (!(nllRel < 0.015)) failures.push(`${type}: prompt NLL ours ${nllOurs} vs llama.cpp ${nllTheirs}`);
      if (checked < 0.5 * seqIds.length) failures.push(`${type}: only ${checked} positions have a clear top-1`);
    } finally {
      await context.dispose(); await lm.dispose();
    }
  }
  t.diagnostic(lines.join('; '));
  assert.deepEqual(failures, []);
});
