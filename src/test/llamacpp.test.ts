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
