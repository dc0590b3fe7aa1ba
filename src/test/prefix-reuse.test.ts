// Sequences that share KV pages, on the CPU and on WebGPU: a fork rewound into a shared, partly filled
// page and continued with other tokens, and the original continued too, each give the logits and
// greedy tokens of a cold run over its whole token sequence (dense and Quest; the shared pages are
// never written through, or the other sequence's logits would move).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gpu, skipGpu } from './gpu.js';
import { loadModelFiles } from '../model/load.js';
import { GpuModel } from '../backend/webgpu/model.js';
import { GpuRunner, GpuSession } from '../engine/gpu-session.js';
import { makeModel, Session } from '../engine/session.js';
import { argmax, rng } from '../engine/sampler.js';
import { randomGGUF, tempFile } from './fixtures.js';
import type { AttentionOptions } from '../attention/policy.js';

const model = loadModelFiles(tempFile('share.gguf', randomGGUF({ vocab: 100, dim: 64, hidden: 128, layers: 3, heads: 8, kvHeads: 2, dtype: 'f16', seed: 11 })));
const tokensOf = (n: number, seed: number) => { const r = rng(seed); return Array.from({ length: n }, () => Math.floor(r() * 100)); };

type AnyS = Session | GpuSession;
interface Backend { name: string; session(a: Partial<AttentionOptions>): AnyS; tol: number }

/** Logits of every position of `tokens` after the session's tokens, then `steps` greedy tokens. */
async function continueWith(s: AnyS, tokens: number[], steps: number): Promise<{ logits: Float32Array; greedy: number[] }> {
  const logits = await s.forward(tokens, { logits: 'all' });
  const V = model.config.vocabSize, greedy: number[] = [];
  let next = argmax(logits, logits.length - V, V);
  for (let i = 0; i < steps; i++) { greedy.push(next); next = argmax(await s.forward([next])); }
  return { logits, greedy };
}

function close(got: Float32Array, want: Float32Array, tol: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: logits length`);
  let d = 0; for (let i = 0; i < got.length; i++) d = Math.max(d, Math.abs(got[i] - want[i]));
  assert.ok(d <= tol, `${what}: max |Δlogit| ${d} over ${tol}`);
}

async function checkSharing(b: Backend, attention: Partial<AttentionOptions>): Promise<void> {
  const prefix = tokensOf(45, 1), tailA = tokensOf(23, 2), tailB = tokensOf(19, 3), keep = 37; // 37: inside page 2
  const what = `${b.name} ${attention.policy}`;
  const base = b.session(attention);
  await base.forward(prefix, { logits: 'none' });
  const fork = base.fork();
  fork.truncate(keep);
  assert.equal(fork.length, keep);
  const forked = await continueWith(fork, tailA, 8);
  const original = await continueWith(base, tailB, 8);
  // a second fork of the original, after both have written, still sees the original's tokens
  const late = base.fork();
  const lateTail = await continueWith(late, tailA.slice(0, 5), 3);
  const cold = async (tokens: number[], tail: number[], steps: number) => {
    const s = b.session(attention);
    await s.forward(tokens, { logits: 'none' });
    const r = await continueWith(s, tail, steps);
    s.dispose();
    return r;
  };
  const wantFork = await cold(prefix.slice(0, keep), tailA, 8);
  const wantBase = await cold(prefix, tailB, 8);
  const wantLate = await cold([...prefix, ...tailB, ...original.greedy], tailA.slice(0, 5), 3);
  close(forked.logits, wantFork.logits, b.tol, `${what}: fork rewound into a shared page`);
  assert.deepEqual(forked.greedy, wantFork.greedy, `${what}: fork's greedy tokens`);
  close(original.logits, wantBase.logits, b.tol, `${what}: original after the fork wrote`);
  assert.deepEqual(original.greedy, wantBase.greedy, `${what}: original's greedy tokens`);
  close(lateTail.logits, wantLate.logits, b.tol, `${what}: a later fork`);
  assert.deepEqual(lateTail.greedy, wantLate.greedy, `${what}: later fork's greedy tokens`);
  for (const s of [base, fork, late]) s.dispose();
}

// budget 32 with pages of 16: Quest keeps 3 of up to 6 pages in the last layer (denseLayers 2)
const policies: Partial<AttentionOptions>[] = [{ policy: 'dense' }, { policy: 'quest', budget: 32, denseLayers: 2 }];

for (const attention of policies) {
  test(`CPU: forks share pages and continue as cold runs (${attention.policy})`, async () => {
    const m = makeModel(model.config, model.weights);
    await checkSharing({ name: 'CPU', session: (a) => new Session(m, a), tol: 1e-4 }, attention);
  });

  test(`WebGPU: forks share pages and continue as cold runs (${attention.policy})`, { skip: skipGpu }, async () => {
    const runner = new GpuRunner(GpuModel.upload(gpu!.device, model.config, model.weights), 16);
    // (a chunk's rows run tiled or matrix-vector products depending on its length: f16 rounding)
    await checkSharing({ name: 'WebGPU', session: (a) => new GpuSession(runner, a), tol: 2e-2 }, attention);
    runner.dispose(); runner.m.dispose();
  });
}
