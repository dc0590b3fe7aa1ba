// `quest eval ppl`: perplexity of long texts, each token scored as a decode step so that the sparse
// policies really decide what every token sees (the Quest paper's PG-19 setting). Dense is computed the
// same way (a dense decode step equals a row of a causal prefill). Reported overall and per position bucket.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel, type Device } from '../engine/llm.js';
import { policyGrid } from '../attention/policy.js';
import { Sampler } from '../engine/sampler.js';
import { progressBar } from '../cli/progress.js';
import { lineChart } from './plot.js';
import { HELD_OUT_BOOK, SHARED_CORPUS } from './recall.js';

export interface PplOptions { model: string; text?: string; tokens: number; bucket: number; attention: string; budget: string; out: string; device?: Device;
  /** score N tokens that the model samples itself (models without a tokenizer), seeded */
  selfGenerated?: number; seed?: number }

interface PplRow { policy: string; budget: number; tokens: number; ppl: number; buckets: number[] }

/** Perplexity from summed negative log-likelihoods. */
export function perplexity(nll: number, count: number): number { return Math.exp(nll / count); }

/** -log softmax(logits)[target], computed stably. */
export function tokenNll(logits: Float32Array, target: number, o = 0, V = logits.length - o): number {
  let max = -Infinity; for (let i = 0; i < V; i++) if (logits[o + i] > max) max = logits[o + i];
  let z = 0; for (let i = 0; i < V; i++) z += Math.exp(logits[o + i] - max);
  return Math.log(z) + max - logits[o + target];
}

export async function runPplEval(o: PplOptions): Promise<PplRow[]> {
  const self = o.selfGenerated ?? 0;
  const path = self ? `${self} tokens sampled by the model (seed ${o.seed ?? 1})` : o.text ?? SHARED_CORPUS + HELD_OUT_BOOK;
  if (!self && !existsSync(path)) throw new Error(`no text at ${path}: pass --text FILE`);
  const llm = await loadModel(o.model, { device: o.device });
  let all: number[];
  if (self) {
    // the model's own text (temperature 1): perplexity then says how far each policy moves the model from itself
    // sampled in one sequence, end-of-text tokens included, so that every token is the model's own choice
    const want = Math.min(self, llm.config.maxSeqLen), sampler = new Sampler({ temperature: 1, topK: 0, topP: 1, seed: o.seed ?? 1 });
    const gen = llm.session();
    all = [llm.config.bosId ?? 0];
    let logits = await gen.forward(all);
    while (all.length < want) { all.push(sampler.sample(logits)); if (all.length < want) logits = await gen.forward([all[all.length - 1]]); }
    gen.dispose();
  } else all = llm.encode(readFileSync(path, 'utf8').replace(/\r\n/g, '\n'));
  const n = Math.min(o.tokens, all.length, llm.config.maxSeqLen);
  const ids = all.slice(0, n);
  const budgets = o.budget.split(',').map(Number);
  const configs = policyGrid(o.attention, o.budget);
  mkdirSync(o.out, { recursive: true });
  const jsonPath = join(o.out, 'ppl.json');
  const rows: PplRow[] = existsSync(jsonPath) ? JSON.parse(readFileSync(jsonPath, 'utf8')).rows : [];
  const bar = progressBar('perplexity', 'tokens');
  let done = 0;
  const total = configs.length * (n - 1);
  for (const c of configs) {
    if (rows.some((r) => r.policy === c.policy && r.budget === c.budget && r.tokens === n)) { done += n - 1; continue; }
    const s = llm.session({ policy: c.policy, budget: c.budget || llm.attention.budget });
    const nll = new Float64Array(n - 1);
    for (let t = 0; t < n - 1; t++) {
      nll[t] = tokenNll(await s.forward([ids[t]]), ids[t + 1]);
      if (++done % 64 === 0) bar.update(done, total);
    }
    s.dispose();
    const buckets: number[] = [];
    for (let b = 0; b < n - 1; b += o.bucket) { const part = nll.subarray(b, Math.min(n - 1, b + o.bucket)); buckets.push(perplexity(part.reduce((a, x) => a + x, 0), part.length)); }
    rows.push({ policy: c.policy, budget: c.budget, tokens: n, ppl: perplexity(nll.reduce((a, x) => a + x, 0), n - 1), buckets });
    writeFileSync(jsonPath, JSON.stringify({ model: o.model, text: path, rows }, null, 1));
  }
  bar.stop();
  const mine = rows.filter((r) => r.tokens === n);
  const lines = [`perplexity of the first ${n} tokens of ${path.split('/').pop()} (each token a decode step), per ${o.bucket}-token bucket`];
  for (const r of mine) lines.push(`${(r.policy === 'dense' ? 'dense' : `${r.policy}@${r.budget}`).padEnd(16)} ${r.ppl.toFixed(2).padStart(9)}   buckets: ${r.buckets.map((b) => b.toFixed(1)).join(' ')}`);
  console.log(lines.join('\n'));
  writeFileSync(join(o.out, 'ppl.txt'), lines.join('\n') + '\n');
  const series = [...new Set(mine.map((r) => r.policy))].map((p) => ({
    name: p, points: budgets.map((b) => ({ x: b, y: mine.find((r) => r.policy === p && (p === 'dense' || r.budget === b))?.ppl ?? NaN })),
  }));
  const ys = series.flatMap((s) => s.points.map((p) => p.y)).filter(Number.isFinite);
  writeFileSync(join(o.out, 'ppl-vs-budget.svg'), lineChart('Perplexity vs token budget', 'token budget', 'perplexity', series, Math.min(...ys) * 0.95, Math.max(...ys) * 1.05));
  return mine;
}
