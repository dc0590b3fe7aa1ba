// `quest eval qa`: long-context question answering in LongBench's form (a long context, a question,
// reference answers, F1 and exact match), with a task set built from a Gutenberg book so that every
// answer sits far back in the context (docs/qa.md describes the tasks):
//   quote : a sentence from the first 30% of the context is quoted by its first words near the end; the
//           answer is how it continued (the next words of the book).
//   facts : several facts ("The room number of Petra is 48213.") are spread over the first 60% of the
//           book text; the question asks for one of them.
// As in the reference implementation, the context is prefilled densely and the question is fed token by
// token as decode steps (so the policy decides what it sees); the answer is generated greedily.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { wantsPrefillScores } from '../attention/create.js';
import { loadModel, type AnySession, type Device, type LLM } from '../engine/llm.js';
import { policyGrid, type PolicyName } from '../attention/policy.js';
import { argmax, rng } from '../engine/sampler.js';
import { progressBar } from '../cli/progress.js';
import { lineChart } from './plot.js';
import { HELD_OUT_BOOK, SHARED_CORPUS } from './recall.js';

export type QaTask = 'quote' | 'facts';
export const QA_TASKS: readonly QaTask[] = ['quote', 'facts'];

export interface QaSample { id: string; task: QaTask; context: string; question: string; answers: string[] }

// --- scoring, as LongBench's qa_f1_score / exact match (lower case, no punctuation, no articles) ---

export function normalizeAnswer(s: string): string {
  return s.toLowerCase().replace(/[^\p{L}\p{N}\s]/gu, ' ').replace(/\b(a|an|the)\b/g, ' ').split(/\s+/).filter(Boolean).join(' ');
}

/** Token-level F1 of a prediction against one reference. */
export function f1Score(prediction: string, reference: string): number {
  const p = normalizeAnswer(prediction).split(' ').filter(Boolean), r = normalizeAnswer(reference).split(' ').filter(Boolean);
  if (!p.length || !r.length) return p.length === r.length ? 1 : 0;
  const counts = new Map<string, number>();
  for (const w of r) counts.set(w, (counts.get(w) ?? 0) + 1);
  let common = 0;
  for (const w of p) { const c = counts.get(w) ?? 0; if (c > 0) { common++; counts.set(w, c - 1); } }
  if (common === 0) return 0;
  const precision = common / p.length, recall = common / r.length;
  return (2 * precision * recall) / (precision + recall);
}

export function exactMatch(prediction: string, reference: string): number {
  return normalizeAnswer(prediction) === normalizeAnswer(reference) ? 1 : 0;
}

/** Best score over the reference answers (LongBench takes the max). */
export function bestScore(prediction: string, answers: string[], score: (p: string, r: string) => number): number {
  return Math.max(0, ...answers.map((a) => score(prediction, a)));
}

// --- the task set ---

const NAMES = 'Anna Boris Clara Dmitri Elena Fyodor Galina Hugo Irene Jonas Karl Lena Marco Nadia Oscar Petra Quentin Rosa Stefan Tanya'.split(' ');
const THINGS = ['secret number', 'room number', 'code', 'ticket number', 'lucky number'];
export const QUOTE_WORDS = 8; // words of the quoted beginning
export const ANSWER_WORDS = 5; // words of the reference continuation

/** Builds `samples` samples per task, each with a context of about `contextTokens` tokens cut from
 *  `book` (a different window per sample), deterministically from `seed`. */
export function buildQaSet(book: string, encode: (s: string) => number[], contextTokens: number, samples: number, seed: number, tasks: readonly QaTask[] = QA_TASKS): QaSample[] {
  const r = rng(seed), out: QaSample[] = [];
  // Gutenberg hard-wraps lines: join them (paragraph breaks stay) so that a quote is a plain substring
  const text = book.replace(/\r\n/g, '\n').replace(/([^\n])\n(?!\n)/g, '$1 ').replace(/[ \t]+/g, ' ');
  // characters per token of this tokenizer on this book, to cut windows of about the right size
  const probe = text.slice(0, 20000), cpt = probe.length / encode(probe).length;
  const span = Math.floor(contextTokens * cpt * 0.97);
  if (text.length < span * 1.2) throw new Error(`the book has ${text.length} characters, too short for ${contextTokens}-token contexts`);
  for (const task of tasks) {
    for (let s = 0; s < samples; s++) {
      const start = Math.floor(r() * (text.length - span));
      let window = text.slice(start, start + span);
      window = window.slice(window.indexOf(' ') + 1); // start at a word boundary
      if (task === 'quote') {
        // a sentence of >= QUOTE_WORDS + ANSWER_WORDS words, starting in the first 30% of the window
        const limit = window.length * 0.3;
        const starts = [...window.matchAll(/[.!?]["']?\s+(?=[A-Z"])/g)].map((m) => m.index! + m[0].length).filter((i) => i < limit);
        const candidates = starts.filter((i) => window.slice(i).split(/\s+/).slice(0, QUOTE_WORDS + ANSWER_WORDS).join(' ').match(/^[^.!?]*$/));
        const at = candidates.length ? candidates[Math.floor(r() * candidates.length)] : 0;
        const words = window.slice(at).split(/\s+/);
        const quote = words.slice(0, QUOTE_WORDS).join(' '), answer = words.slice(QUOTE_WORDS, QUOTE_WORDS + ANSWER_WORDS).join(' ');
        out.push({ id: `quote-${s}`, task, context: window, question: `\n\nAs the text said earlier: "${quote}`, answers: [answer] });
      } else {
        const n = 2 + Math.floor(r() * 5), thing = THINGS[Math.floor(r() * THINGS.length)];
        const names = [...NAMES].sort(() => r() - 0.5).slice(0, n);
        const keys = names.map(() => String(10000 + Math.floor(r() * 90000)));
        // facts at sentence ends in the first 60% of the window
        const ends = [...window.matchAll(/[.!?]\s/g)].map((m) => m.index! + 1).filter((i) => i < window.length * 0.6);
        const at = names.map(() => ends[Math.floor(r() * ends.length)] ?? 0).sort((a, b) => a - b);
        let ctx = '', prev = 0;
        names.forEach((nm, i) => { ctx += window.slice(prev, at[i]) + ` The ${thing} of ${nm} is ${keys[i]}.`; prev = at[i]; });
        ctx += window.slice(prev);
        const ask = Math.floor(r() * n);
        out.push({ id: `facts-${s}`, task, context: ctx, question: ` What is the ${thing} of ${names[ask]}? The ${thing} of ${names[ask]} is`, answers: [keys[ask]] });
      }
    }
  }
  return out;
}

// --- running it ---

export interface QaOptions {
  model: string; text?: string; context: number; samples: number; tasks: string;
  attention: string; budget: string; out: string; seed: number; device?: Device;
}

interface QaResult { id: string; task: QaTask; policy: string; budget: number; prediction: string; f1: number; em: number }

/** The question decoded token by token under the policy, then a greedy answer. */
async function answer(llm: LLM, ctx: AnySession, question: number[], policy: PolicyName, budget: number, task: QaTask): Promise<string> {
  const s = ctx.fork({ policy, budget: budget || llm.attention.budget });
  let logits: Float32Array = new Float32Array(0);
  for (const t of question) logits = await s.forward([t]);
  // answer lengths as the tasks define them (LongBench also bounds new tokens per task): a 5-digit
  // number; ANSWER_WORDS words
  const out: number[] = [], maxTokens = task === 'facts' ? 8 : 16;
  for (let i = 0; i < maxTokens && s.length < llm.config.maxSeqLen; i++) {
    const t = argmax(logits);
    if (llm.config.eosIds.includes(t)) break;
    out.push(t);
    const text = llm.tokenizer!.decode(out);
    if (task === 'facts' ? /\d{5}|\d\D/.test(text) : text.trim().split(/\s+/).length > ANSWER_WORDS || /\S["\n]/.test(text)) break;
    logits = await s.forward([t]);
  }
  s.dispose();
  const text = llm.tokenizer!.decode(out);
  return task === 'facts' ? (/\d{1,5}/.exec(text)?.[0] ?? text.trim()) : text.trim().split(/["\n]/)[0].trim().split(/\s+/).slice(0, ANSWER_WORDS).join(' ');
}

export async function runQaEval(o: QaOptions): Promise<QaResult[]> {
  const path = o.text ?? SHARED_CORPUS + HELD_OUT_BOOK;
  if (!existsSync(path)) throw new Error(`no text at ${path}: pass --text FILE`);
  const tasks = o.tasks.split(',').map((t) => t.trim()) as QaTask[];
  for (const t of tasks) if (!QA_TASKS.includes(t)) throw new Error(`unknown QA task "${t}" (choose ${QA_TASKS.join(', ')})`);
  if (!Number.isInteger(o.samples) || o.samples < 1) throw new Error('samples must be a positive integer');
  const llm = await loadModel(o.model, { device: o.device });
  if (!llm.tokenizer) throw new Error(`the model ${o.model} has no tokenizer: QA needs text`);
  if (!(o.context > 64 && o.context + 64 <= llm.config.maxSeqLen)) throw new Error(`context ${o.context} does not fit the model's ${llm.config.maxSeqLen} tokens (leave 64 for the question and answer)`);
  const configs = policyGrid(o.attention, o.budget);
  const set = buildQaSet(readFileSync(path, 'utf8'), (s) => llm.encode(s), o.context, o.samples, o.seed, tasks);
  mkdirSync(o.out, { recursive: true });
  writeFileSync(join(o.out, 'qa-tasks.json'), JSON.stringify(set, null, 1));
  const jsonPath = join(o.out, 'qa.json');
  const results: QaResult[] = existsSync(jsonPath) ? JSON.parse(readFileSync(jsonPath, 'utf8')).results : [];
  const done = (id: string, c: { policy: string; budget: number }) => results.some((x) => x.id === id && x.policy === c.policy && x.budget === c.budget);
  const bar = progressBar('qa', 'samples');
  let n = 0;
  for (const sample of set) {
    const todo = configs.filter((c) => !done(sample.id, c));
    if (todo.length) {
      const base = llm.session({ policy: 'dense' });
      if (configs.some((c) => wantsPrefillScores(c.policy))) base.recordPrefillScores(); // H2O forks start from the prefill's scores
      const ctxIds = llm.encode(sample.context).slice(0, o.context), q = llm.encode(sample.question);
      await base.forward(ctxIds, { logits: 'none' });
      for (const c of todo) {
        const prediction = await answer(llm, base, q, c.policy, c.budget, sample.task);
        results.push({ id: sample.id, task: sample.task, policy: c.policy, budget: c.budget, prediction,
          f1: bestScore(prediction, sample.answers, f1Score), em: bestScore(prediction, sample.answers, exactMatch) });
      }
      base.dispose();
      writeFileSync(jsonPath, JSON.stringify({ model: o.model, device: llm.device, context: o.context, results }, null, 1)); // resumable
    }
    bar.update(++n, set.length);
  }
  bar.stop();
  report(results, o, tasks, configs);
  llm.dispose();
  return results;
}

function report(results: QaResult[], o: QaOptions, tasks: QaTask[], configs: { policy: string; budget: number }[]): void {
  const label = (c: { policy: string; budget: number }) => (c.policy === 'dense' ? 'dense' : `${c.policy}@${c.budget}`);
  const mean = (c: { policy: string; budget: number }, task: QaTask | null, key: 'f1' | 'em') => {
    const sel = results.filter((x) => x.policy === c.policy && x.budget === c.budget && (task === null || x.task === task));
    return sel.length ? sel.reduce((a, x) => a + x[key], 0) / sel.length : null;
  };
  const pct = (x: number | null) => (x === null ? '-' : (x * 100).toFixed(1)).padStart(10);
  const lines = [`long-context QA (${o.context}-token contexts, ${o.samples} samples per task, question decoded token by token): F1 / EM in %`];
  lines.push('config'.padEnd(20) + tasks.map((t) => `${t} F1`.padStart(10) + `${t} EM`.padStart(10)).join('') + 'all F1'.padStart(10));
  for (const c of configs) lines.push(label(c).padEnd(20) + tasks.map((t) => pct(mean(c, t, 'f1')) + pct(mean(c, t, 'em'))).join('') + pct(mean(c, null, 'f1')));
  console.log(lines.join('\n'));
  writeFileSync(join(o.out, 'qa.txt'), lines.join('\n') + '\n');
  const budgets = [...new Set(configs.filter((c) => c.policy !== 'dense').map((c) => c.budget))];
  if (budgets.length) {
    const policies = [...new Set(configs.map((c) => c.policy))];
    const series = policies.map((p) => ({ name: p, points: budgets.map((b) => ({ x: b, y: mean({ policy: p, budget: p === 'dense' ? 0 : b }, null, 'f1') ?? 0 })) }));
    writeFileSync(join(o.out, 'qa-vs-budget.svg'), lineChart('Long-context QA: F1 vs token budget', 'token budget', 'F1', series));
  }
}
