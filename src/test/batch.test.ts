// Batched decoding: every sequence of a batch gets the logits (and so the greedy tokens) it gets alone,
// dense and Quest, with sequences of different lengths joining and leaving mid-way (CPU; WebGPU where
// an adapter exists).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModelFiles } from '../model/load.js';
import { decodeBatch, makeModel, Session } from '../engine/session.js';
import { GpuModel } from '../backend/webgpu/model.js';
import { GpuRunner, GpuSession, gpuDecodeBatch } from '../engine/gpu-session.js';
import { argmax, rng } from '../engine/sampler.js';
import { randomGGUF, tempFile } from './fixtures.js';
import { gpu, skipGpu } from './gpu.js';
import { hasIntDot4, matrixConfig, processEnv } from '../backend/webgpu/device.js';
import type { AttentionOptions } from '../attention/policy.js';
import { loadModel } from '../engine/llm.js';
import { StepBatcher } from '../engine/batcher.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';

const loaded = loadModelFiles(tempFile('batch.gguf', randomGGUF({ vocab: 100, dim: 64, hidden: 128, layers: 3, heads: 8, kvHeads: 2, dtype: 'f16', seed: 31 })));
// (Q4_0: where the GPU has integer dot products, a batched step's products quantise x to int8 per row)
const loadedQ4 = loadModelFiles(tempFile('batch-q4.gguf', randomGGUF({ vocab: 100, dim: 64, hidden: 128, layers: 3, heads: 8, kvHeads: 2, dtype: 'q4_0', seed: 32 })));
const promptOf = (n: number, seed: number) => { const r = rng(seed); return Array.from({ length: n }, () => Math.floor(r() * 100)); };

type AnyS = Session | GpuSession;
/** `argmaxRows`: sequences 1 and 3 ask for their greedy token only (a one-element array) in the batch. */
interface Backend { session(a: Partial<AttentionOptions>): AnyS; batch(steps: { seq: AnyS; token: number; argmax?: boolean }[]): Promise<Float32Array[]>; tol: number; argmaxRows?: boolean }

/** Sequences (prompts of 9..70 tokens) decode greedily for different numbers of steps; they join the
 *  batch at different steps and leave when done. Each must follow its solo run's tokens exactly. Five
 *  sequences: batches of up to 4 rows. */
const FIVE = [{ len: 9, join: 0, steps: 12 }, { len: 70, join: 0, steps: 5 }, { len: 33, join: 2, steps: 9 }, { len: 48, join: 3, steps: 14 }, { len: 17, join: 6, steps: 3 }];
/** Seven sequences: batches of 2 to 7 rows (past the 4 up to which a batch runs the one-token kernels). */
const SEVEN = [{ len: 9, join: 0, steps: 12 }, { len: 70, join: 0, steps: 5 }, { len: 33, join: 1, steps: 9 }, { len: 48, join: 1, steps: 14 }, { len: 17, join: 2, steps: 6 }, { len: 25, join: 2, steps: 10 }, { len: 12, join: 4, steps: 3 }];
async function checkBatch(b: Backend, attention: Partial<AttentionOptions>, plans = FIVE): Promise<number> {
  // alone: each sequence's greedy tokens and logits
  const solo: { toks: number[]; all: Float32Array[] }[] = [];
  for (const [i, p] of plans.entries()) {
    const s = b.session(attention);
    let logits = await s.forward(promptOf(p.len, i + 1), { dense: true });
    const toks: number[] = [], all: Float32Array[] = [];
    for (let k = 0; k < p.steps; k++) { const t = argmax(logits); toks.push(t); logits = await s.forward([t]); all.push(logits); }
    solo.push({ toks, all });
    s.dispose();
  }
  // batched
  const live: { i: number; seq: AnyS; next: number; done: number }[] = [];
  let maxDiff = 0;
  for (let step = 0; live.length || step <= Math.max(...plans.map((p) => p.join)); step++) {
    for (const [i, p] of plans.entries()) {
      if (p.join !== step) continue;
      const seq = b.session(attention);
      live.push({ i, seq, next: argmax(await seq.forward(promptOf(p.len, i + 1), { dense: true })), done: 0 });
    }
    if (!live.length) continue;
    const greedy = (x: { i: number }) => b.argmaxRows === true && x.i % 2 === 1;
    const out = await b.batch(live.map((x) => ({ seq: x.seq, token: x.next, argmax: greedy(x) })));
    live.forEach((x, j) => {
      assert.equal(x.next, solo[x.i].toks[x.done], `sequence ${x.i}, step ${x.done}: token`);
      const want = solo[x.i].all[x.done];
      if (greedy(x)) {
        assert.deepEqual([...out[j]], [argmax(want)], `sequence ${x.i}, step ${x.done}: the batch's argmax against the logits alone`);
        x.next = out[j][0]; x.done++;
        return;
      }
      for (let v = 0; v < want.length; v++) maxDiff = Math.max(maxDiff, Math.abs(out[j][v] - want[v]));
      x.next = argmax(out[j]); x.done++;
    });
    for (const x of live.filter((y) => y.done === plans[y.i].steps)) { x.seq.dispose(); live.splice(live.indexOf(x), 1); }
  }
  assert.ok(maxDiff <= b.tol, `max |Δlogit| between batched and alone ${maxDiff} over ${b.tol}`);
  return maxDiff;
}

const policies: Partial<AttentionOptions>[] = [{ policy: 'dense' }, { policy: 'quest', budget: 32, denseLayers: 1 }];
for (const attention of policies) {
  test(`CPU: batched decode equals each sequence alone (${attention.policy}, sequences joining and leaving)`, async () => {
    const m = makeModel(loaded.config, loaded.weights);
    await checkBatch({ session: (a) => new Session(m, a), batch: async (st) => decodeBatch(st as { seq: Session; token: number }[]), tol: 1e-4 }, attention);
  });
  for (const [dtype, m] of [['f16', loaded], ['q4_0', loadedQ4]] as const) {
    test(`WebGPU: batched decode equals each sequence alone (${attention.policy}, ${dtype}, sequences joining and leaving)`, { skip: skipGpu }, async (t) => {
      const runner = new GpuRunner(GpuModel.upload(gpu!.device, m.config, m.weights), 16);
      // (a batch runs other product kernels than one sequence: the batched SIMT kernel past 4 rows, or, for
      // f16 weights where the adapter has subgroup matrices, the tensor-core products from 2 rows)
      // the tensor-core products keep x's precision (split into two f16 parts): an H100 measured 5.5e-6, x as
      // one f16 1.6e-3 (which changed one greedy answer of 64 in bench:serve)
      const mma = matrixConfig(gpu!.device) !== null && dtype === 'f16';
      // (two of the sequences take their greedy tokens from the GPU's argmax instead of the logits)
      const d = await checkBatch({ session: (a) => new GpuSession(runner, a), batch: (st) => gpuDecodeBatch(st as { seq: GpuSession; token: number }[]), tol: mma ? 1e-4 : 2e-2, argmaxRows: true }, attention);
      t.diagnostic(`max |Δlogit| batched vs alone ${d.toExponential(2)}${mma ? ' (tensor-core products)' : ''}`);
      runner.dispose(); runner.m.dispose();
    });
  }
  // 4-bit weights with x quantised to int8 as GPUs run them (the x-stationary kernels; CPU adapters
  // otherwise take a thread per row): from 5 rows a batch's products apply each weight block to all its
  // tokens (int8-batch.ts), where a sequence alone runs the matrix-vector kernel: only the order of the
  // float sums differs.
  test(`WebGPU: batched decode of 4-bit weights on int8 x equals each sequence alone (${attention.policy}, up to 7 rows)`, {
    skip: skipGpu || (!hasIntDot4(gpu!.device) ? 'no packed 4x8 integer dot products on this adapter' : false),
  }, async (t) => {
    const env = processEnv(), was = env.QUEST_MATVEC;
    env.QUEST_MATVEC = 'rows';
    try {
      const runner = new GpuRunner(GpuModel.upload(gpu!.device, loadedQ4.config, loadedQ4.weights), 16);
      assert.ok(runner.m.int8BatchProduct(runner.m.layers[0].gateUp, false, 7), 'the batched int8 kernel is not in use');
      const d = await checkBatch({ session: (a) => new GpuSession(runner, a), batch: (st) => gpuDecodeBatch(st as { seq: GpuSession; token: number }[]), tol: 1e-4, argmaxRows: true }, attention, SEVEN);
      t.diagnostic(`max |Δlogit| batched vs alone ${d.toExponential(2)}`);
      runner.dispose(); runner.m.dispose();
    } finally {
      if (was === undefined) delete env.QUEST_MATVEC; else env.QUEST_MATVEC = was;
    }
  });
  // (QUEST_BATCH_PRODUCT=mma forces the tensor-core products on quantised weights too: a benchmarking knob,
  // not tested for exactness — their x is split f16, where a sequence alone multiplies x quantised to int8)
}

// Forks of one context decoded together (a document asked several questions): the pages they share are
// read once for the group (DecodeAttention's shared-prefix path), each fork must still get its tokens and
// logits alone, dense and Quest (whose dense first layer shares; in its sparse layers each fork selects its
// own pages, and the group reads the shared pages any of them selected once, where the attention does that);
// also with steps in flight (greedyBatch).
test('WebGPU: a batch of forks of one context (shared pages read once) equals each fork alone', { skip: skipGpu }, async (t) => {
  const runner = new GpuRunner(GpuModel.upload(gpu!.device, loaded.config, loaded.weights), 16);
  const mma = matrixConfig(gpu!.device) !== null, tol = mma ? 1e-4 : 2e-2;
  const tails = [[5], [9, 3], [40, 41, 42], [77], [12, 13]];
  for (const attention of policies) {
    const base = new GpuSession(runner, attention);
    await base.forward(promptOf(70, 7), { logits: 'none', dense: true });
    const solo: { toks: number[]; all: Float32Array[] }[] = [];
    for (const tail of tails) {
      const f = base.fork();
      let logits = await f.forward(tail, { dense: true });
      const toks: number[] = [], all: Float32Array[] = [];
      for (let k = 0; k < 6; k++) { const tok = argmax(logits); toks.push(tok); logits = await f.forward([tok]); all.push(logits); }
      solo.push({ toks, all });
      f.dispose();
    }
    const forks = tails.map(() => base.fork());
    const next = await Promise.all(forks.map(async (f, j) => argmax(await f.forward(tails[j], { dense: true }))));
    const before = runner.decode.sharedCalls, beforeQuest = runner.decode.sharedSparseCalls;
    let worst = 0;
    for (let k = 0; k < 6; k++) {
      const out = await gpuDecodeBatch(forks.map((seq, j) => ({ seq, token: next[j] })));
      forks.forEach((_, j) => {
        assert.equal(next[j], solo[j].toks[k], `${attention.policy}: fork ${j}, step ${k}: token`);
        for (let v = 0; v < out[j].length; v++) worst = Math.max(worst, Math.abs(out[j][v] - solo[j].all[k][v]));
        next[j] = argmax(out[j]);
      });
    }
    // the same forks decoded greedily with steps in flight (greedyBatch: each step's input tokens are the
    // argmax of the step before, on the GPU): the same tokens; a consumer stopping after two steps leaves each
    // fork two tokens on, its token list filled in, and the next step continues as the fork alone would
    const piped = tails.map(() => base.fork());
    const first = await Promise.all(piped.map(async (f, j) => argmax(await f.forward(tails[j], { dense: true }))));
    const start = piped.map((f) => f.length);
    let k = 0;
    for await (const toks of GpuSession.greedyBatch(piped, first, 6)) {
      toks.forEach((tok, j) => assert.equal(tok, argmax(solo[j].all[k]), `${attention.policy}: fork ${j}, step ${k} in flight: token`));
      if (++k === 2) break;
    }
    piped.forEach((f, j) => {
      assert.equal(f.length, start[j] + 2, `${attention.policy}: fork ${j} kept steps it did not yield`);
      assert.deepEqual(f.tokens.slice(-2), solo[j].toks.slice(0, 2), `${attention.policy}: fork ${j}'s token list`);
    });
    const after = await gpuDecodeBatch(piped.map((seq, j) => ({ seq, token: solo[j].toks[2], argmax: true })));
    after.forEach((o, j) => assert.equal(o[0], argmax(solo[j].all[2]), `${attention.policy}: fork ${j} after the early stop`));
    for (const f of piped) f.dispose();
    assert.ok(runner.decode.sharedCalls > before, `${attention.policy}: the batch did not read its shared pages together`);
    if (attention.policy === 'quest' && runner.decode.sharesSelections) assert.ok(runner.decode.sharedSparseCalls > beforeQuest, 'the Quest forks did not read their selected shared pages together');
    assert.ok(worst <= tol, `${attention.policy}: max |Δlogit| between batched and alone ${worst} over ${tol}`);
    t.diagnostic(`${attention.policy}: max |Δlogit| batched forks vs alone ${worst.toExponential(2)}`);
    for (const f of [...forks, base]) f.dispose();
  }
  runner.dispose(); runner.m.dispose();
});

test('a batch refuses sequences of two models and a sequence twice, with clear errors', () => {
  const m1 = makeModel(loaded.config, loaded.weights), m2 = makeModel(loaded.config, loaded.weights);
  const a = new Session(m1), b = new Session(m2);
  a.forward([1, 2]); b.forward([3]);
  assert.throws(() => decodeBatch([{ seq: a, token: 1 }, { seq: b, token: 2 }]), /one model/);
  assert.throws(() => decodeBatch([{ seq: a, token: 1 }, { seq: a, token: 2 }]), /twice/);
  assert.throws(() => decodeBatch([{ seq: a, token: 1000 }]), /outside the vocabulary/);
});

// The serving path end to end: questions about one document asked at once. The prefix cache forks the
// document's sequence for each request (their page tables share its pages), the batcher runs their
// decode steps together, and the GPU step reads the shared pages once for the group; every answer must be
// the one the same request gets alone and cold (on the CPU engine, whose greedy text the GPU's equals:
// webgpu-engine.test.ts).
test('WebGPU: concurrent questions about one cached document share its pages in batched steps, each answer as alone', { skip: skipGpu }, async () => {
  const llm = await loadModel(DEFAULT_MODEL, { device: 'webgpu' }), cpu = await loadModel(DEFAULT_MODEL);
  const doc = 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife. '.repeat(4);
  const questions = [' Who is in want of a wife?', ' What is universally acknowledged?', ' What does he possess?'];
  const alone: string[] = [];
  for (const q of questions) alone.push((await cpu.complete(doc + q, { temperature: 0, maxTokens: 3, cache: false })).text);
  await llm.complete(doc, { temperature: 0, maxTokens: 1 }); // (the document's KV into the prefix cache)
  const before = llm.gpu!.decode.sharedCalls;
  const together = await Promise.all(questions.map((q) => llm.complete(doc + q, { temperature: 0, maxTokens: 3, batch: true })));
  together.forEach((r, i) => { assert.equal(r.text, alone[i], `question ${i}`); assert.ok(r.cachedTokens > 0, `question ${i} did not fork the cached document`); });
  assert.ok(llm.gpu!.decode.sharedCalls > before, 'the batched steps did not read the shared pages together');
  assert.ok(llm.batchStats.largest > 1, 'the requests never decoded in one batch');
  llm.dispose(); cpu.dispose();
});

// Continuous batching of greedy generations on WebGPU keeps a chained step in flight (StepBatcher with
// GpuSession.ahead). Generations of different lengths, one joining late and one asking slowly (after a
// timer, so the chained step completes unclaimed and is undone), each follow their solo tokens; after
// release() each sequence holds exactly its prompt and the tokens it stepped on (no step past its end), and
// a next step continues as alone. Then the same through the LLM: greedy generations batched = alone.
test('WebGPU: greedy batched steps with a chained step in flight equal each alone, and no step past a generation stays', { skip: skipGpu }, async (t) => {
  const runner = new GpuRunner(GpuModel.upload(gpu!.device, loaded.config, loaded.weights), 16);
  const plans = [{ len: 9, steps: 7, join: 0 }, { len: 40, steps: 3, join: 0 }, { len: 21, steps: 10, join: 0 }, { len: 30, steps: 5, join: 25, slow: true }];
  const solo: { toks: number[]; tokens: number[] }[] = [];
  for (const [i, p] of plans.entries()) {
    const s = new GpuSession(runner, { policy: 'dense' });
    let logits = await s.forward(promptOf(p.len, 50 + i), { dense: true });
    const toks: number[] = [];
    for (let k = 0; k <= p.steps; k++) { const t = argmax(logits); toks.push(t); logits = await s.forward([t]); }
    solo.push({ toks, tokens: s.tokens.slice(0, p.len + p.steps) });
    s.dispose();
  }
  const batcher = new StepBatcher<GpuSession>(gpuDecodeBatch, 16, GpuSession.ahead);
  const seqs = plans.map(() => new GpuSession(runner, { policy: 'dense' }));
  await Promise.all(plans.map(async (p, i) => {
    await new Promise((r) => setTimeout(r, p.join));
    let tok = argmax(await seqs[i].forward(promptOf(p.len, 50 + i), { dense: true }));
    for (let k = 0; k < p.steps; k++) {
      assert.equal(tok, solo[i].toks[k], `sequence ${i}, step ${k}: token`);
      if (p.slow && k === 2) await new Promise((r) => setTimeout(r, 40));
      tok = (await batcher.step(seqs[i], tok, true))[0];
    }
    assert.equal(tok, solo[i].toks[p.steps], `sequence ${i}: last token`);
    await batcher.release(seqs[i]);
    assert.equal(seqs[i].length, p.len + p.steps, `sequence ${i} kept a step it did not take`);
    assert.deepEqual(seqs[i].tokens, solo[i].tokens, `sequence ${i}: its token list`);
  }));
  assert.ok(batcher.stats.chained > 0, 'no step ran chained');
  t.diagnostic(`batched steps ${batcher.stats.batches}, of which chained ${batcher.stats.chained}`);
  const after = await gpuDecodeBatch(seqs.map((seq, i) => ({ seq, token: solo[i].toks[plans[i].steps], argmax: true })));
  for (const [i, p] of plans.entries()) {
    const s = new GpuSession(runner, { policy: 'dense' });
    await s.forward(solo[i].tokens, { dense: true, logits: 'none' });
    assert.equal(after[i][0], argmax(await s.forward([solo[i].toks[p.steps]])), `sequence ${i}: the step after continues as alone`);
    s.dispose();
  }
  for (const s of seqs) s.dispose();
  runner.dispose(); runner.m.dispose();
  // the same through the LLM: greedy generations (one cut by a stop string) batched equal each alone
  const llm = await loadModel(DEFAULT_MODEL, { device: 'webgpu' });
  const prompts = [' Once upon a time', ' The little dog', ' She looked at the sky and'];
  const opts = (i: number) => ({ temperature: 0, maxTokens: [9, 4, 14][i], cache: false, ...(i === 1 ? { stop: [' the'] } : {}) });
  const alone: Awaited<ReturnType<typeof llm.complete>>[] = [];
  for (const [i, p] of prompts.entries()) alone.push(await llm.complete(p, { ...opts(i), batch: false }));
  const together = await Promise.all(prompts.map((p, i) => llm.complete(p, { ...opts(i), batch: true })));
  together.forEach((r, i) => { assert.deepEqual(r.tokens, alone[i].tokens, `generation ${i}`); assert.equal(r.finishReason, alone[i].finishReason, `generation ${i}`); });
  assert.ok(llm.batchStats.chained > 0, 'no generation step ran chained');
  llm.dispose();
});
