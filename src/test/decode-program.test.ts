// The decode step's layer program (backend/cpu/decode-program.ts, wasm/program.ts) against the
// product-by-product path it replaces (itself checked against float64 in forward.test): the same kernels
// on the same inputs, so the logits must be bit for bit the same, for every architecture's extra steps
// (Qwen2's biases, Qwen3's q/k norms, Gemma 3's post-norms, GeGLU and windows, Phi-3's fused q/k/v),
// weight types whose products take different inputs (f32, f16, Q8_0 / Q4_0 integer, K-quant mixes), the
// attention inside the program (dense layers) and outside it (Quest's sparse layers, windows, batches).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModelFiles } from '../model/load.js';
import { decodeBatch, makeModel, Session } from '../engine/session.js';
import { argmax, rng } from '../engine/sampler.js';
import { wasm } from '../backend/wasm/runtime.js';
import { workerPool } from '../backend/wasm/pool.js';
import { DecodeProgram } from '../backend/cpu/decode-program.js';
import { randomGGUF, tempFile, type RandomModelShape } from './fixtures.js';
import type { AttentionOptions } from '../attention/policy.js';
import { windowOf } from '../model/config.js';

const MODELS: (RandomModelShape & { name: string })[] = [
  { name: 'llama q8_0 (GQA 4/2)', vocab: 90, dim: 64, hidden: 96, layers: 3, heads: 4, kvHeads: 2, dtype: 'q8_0', seed: 3 },
  { name: 'qwen2 f16 (biases)', arch: 'qwen2', vocab: 90, dim: 64, hidden: 128, layers: 2, heads: 4, kvHeads: 1, dtype: 'f16', seed: 4 },
  { name: 'qwen3 q4_k_m (q/k norms)', arch: 'qwen3', vocab: 90, dim: 256, hidden: 512, layers: 2, heads: 4, kvHeads: 2, dtype: 'q4_k_m', seed: 5 },
  { name: 'gemma3 q4_0 (post-norms, GeGLU, windows)', arch: 'gemma3', vocab: 90, dim: 64, hidden: 128, layers: 3, heads: 2, kvHeads: 1, dtype: 'q4_0', seed: 6, window: 8, pattern: 3 },
  { name: 'phi3 f32 (fused q/k/v)', arch: 'phi3', vocab: 90, dim: 64, hidden: 96, layers: 2, heads: 4, kvHeads: 4, dtype: 'f32', seed: 7 },
];

/** Greedy decode steps after a prompt, with the layer program on or off; the logits of every step. */
function decode(m: ReturnType<typeof loadModelFiles>, attention: Partial<AttentionOptions>, program: boolean, prompt = 45): Float32Array[] {
  const before = process.env.QUEST_NO_PROGRAM;
  process.env.QUEST_NO_PROGRAM = program ? '0' : '1';
  try {
    const r = rng(11), s = new Session(makeModel(m.config, m.weights), attention);
    let logits = s.forward(Array.from({ length: prompt }, () => Math.floor(r() * m.config.vocabSize)), { dense: true });
    const out: Float32Array[] = [];
    for (let i = 0; i < 7; i++) { logits = s.forward([argmax(logits)]); out.push(logits); }
    s.dispose();
    return out;
  } finally { if (before === undefined) delete process.env.QUEST_NO_PROGRAM; else process.env.QUEST_NO_PROGRAM = before; }
}

/** Counts the program's hand-offs to the threads while fn runs (to know the program was taken, not the
 *  fallback, and where it stopped for the engine's own attention). */
function countRuns(fn: () => void): number {
  const proto = DecodeProgram.prototype as unknown as { runRange: (...a: unknown[]) => void };
  const run = proto.runRange;
  let calls = 0;
  proto.runRange = function (this: unknown, ...a: unknown[]) { calls++; run.apply(this, a); };
  try { fn(); } finally { proto.runRange = run; }
  return calls;
}

test('decode steps through the layer program give bit for bit the logits of the product-by-product path: every architecture, dense and Quest', (t) => {
  const rt = wasm();
  if (!rt || !workerPool(rt)) { t.skip('no worker threads (or no WebAssembly): decode steps take the product-by-product path'); return; }
  for (const shape of MODELS) {
    const m = loadModelFiles(tempFile(`program-${shape.seed}.gguf`, randomGGUF(shape)));
    for (const attention of [{ policy: 'dense' }, { policy: 'quest', budget: 16, pageSize: 4, denseLayers: 1 }] as Partial<AttentionOptions>[]) {
      let on: Float32Array[] = [];
      const runs = countRuns(() => { on = decode(m, attention, true); });
      // one hand-off a step, plus one after each layer whose attention the engine runs itself (windowed, sparse)
      const outside = Array.from({ length: m.config.nLayers }, (_, l) => windowOf(m.config, l) > 0 || (attention.policy === 'quest' && l >= 1)).filter(Boolean).length;
      assert.equal(runs, 7 * (outside + 1), `${shape.name} ${attention.policy}: hand-offs to the threads`);
      const off = decode(m, attention, false);
      on.forEach((l, step) => {
        for (let j = 0; j < l.length; j++) if (l[j] !== off[step][j]) assert.fail(`${shape.name} ${attention.policy}, step ${step}: logit ${j} ${l[j]} vs ${off[step][j]}`);
      });
    }
  }
});

test('decode steps over more than TOKEN_SPLIT keys: the program splits a dense layer\'s attention by keys and every thread merges the parts, bit for bit as the engine does', (t) => {
  const rt = wasm();
  if (!rt || !workerPool(rt)) { t.skip('no worker threads (or no WebAssembly)'); return; }
  // (6 heads over 2 KV heads: a group of 3 does not split evenly across threads by heads)
  const m = loadModelFiles(tempFile('program-long.gguf', randomGGUF({ vocab: 90, dim: 96, hidden: 64, layers: 2, heads: 6, kvHeads: 2, dtype: 'q8_0', seed: 8, ctx: 2048 })));
  for (const attention of [{ policy: 'dense' }, { policy: 'quest', budget: 512, pageSize: 16, denseLayers: 1 }] as Partial<AttentionOptions>[]) {
    let on: Float32Array[] = [];
    const runs = countRuns(() => { on = decode(m, attention, true, 1030); });
    assert.equal(runs, 7 * (attention.policy === 'quest' ? 2 : 1), `${attention.policy}: hand-offs to the threads`);
    const off = decode(m, attention, false, 1030);
    on.forEach((l, step) => {
      for (let j = 0; j < l.length; j++) if (l[j] !== off[step][j]) assert.fail(`${attention.policy}, step ${step}: logit ${j} ${l[j]} vs ${off[step][j]}`);
    });
  }
});

test('a batched decode step of 2-4 sequences through the layer program gives each the logits it gets alone', (t) => {
  const rt = wasm();
  if (!rt || !workerPool(rt)) { t.skip('no worker threads (or no WebAssembly)'); return; }
  const m = loadModelFiles(tempFile('program-batch.gguf', randomGGUF(MODELS[0])));
  const model = makeModel(m.config, m.weights), r = rng(5);
  const prompts = [13, 40, 7, 26].map((n) => Array.from({ length: n }, () => Math.floor(r() * 90)));
  for (const size of [2, 3, 4]) {
    const alone = prompts.slice(0, size).map((p) => { const s = new Session(model); const l0 = s.forward(p); const l = s.forward([argmax(l0)]); s.dispose(); return { first: argmax(l0), l }; });
    const seqs = prompts.slice(0, size).map((p) => { const s = new Session(model); s.forward(p); return s; });
    let out: Float32Array[] = [];
    const runs = countRuns(() => { out = decodeBatch(seqs.map((seq, i) => ({ seq, token: alone[i].first }))); });
    assert.equal(runs, m.config.nLayers + 1, `batch of ${size}: through the program, each layer's attention outside it`);
    out.forEach((l, i) => {
      let d = 0;
      for (let j = 0; j < l.length; j++) d = Math.max(d, Math.abs(l[j] - alone[i].l[j]));
      assert.ok(d < 1e-4, `batch of ${size}, sequence ${i}: max |Δlogit| against alone ${d}`);
    });
    seqs.forEach((s) => s.dispose());
  }
});

test('a decode step whose program fails part-way (an error on the calling thread between barriers) throws that error, and the threads serve the next step', { timeout: 60_000 }, (t) => {
  const rt = wasm();
  if (!rt || !workerPool(rt)) { t.skip('no worker threads (or no WebAssembly)'); return; }
  const m = loadModelFiles(tempFile('program-fail.gguf', randomGGUF(MODELS[0])));
  const model = makeModel(m.config, m.weights), prompt = [5, 9, 14, 2, 7, 7, 30];
  const control = new Session(model);
  control.forward(prompt);
  const want = control.forward([11]);
  const proto = Session.prototype as unknown as { programCache: (l: number) => unknown };
  const cache = proto.programCache;
  proto.programCache = function (this: Session, l: number) { if (l === 1) throw new Error('injected failure in layer 1'); return cache.call(this, l); };
  const s = new Session(model);
  s.forward(prompt);
  try { assert.throws(() => s.forward([11]), /injected failure in layer 1/); } finally { proto.programCache = cache; }
  const again = new Session(model);
  again.forward(prompt);
  const got = again.forward([11]);
  for (let j = 0; j < got.length; j++) assert.equal(got[j], want[j], `logit ${j} after the failed step`);
});
