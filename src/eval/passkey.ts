// `quest eval passkey`: the Quest paper's passkey retrieval test. A random key is hidden at a chosen depth
// in long filler text; the context is prefilled densely and the question is fed token by token as decode
// steps, so the attention policy decides what the question sees; the answer is generated greedily.
// Every sample's dense prefill is shared by all policies and budgets (forked caches), and the prefix
// before the needle by all samples of a cell. Results are resumable: finished cells are not redone.
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { wantsPrefillScores } from '../attention/create.js';
import { loadModel, type AnySession, type Device, type LLM } from '../engine/llm.js';
import { policyGrid, type PolicyName } from '../attention/policy.js';
import { argmax, rng } from '../engine/sampler.js';
import { progressBar } from '../cli/progress.js';
import { heatmap, lineChart } from './plot.js';
import { HELD_OUT_BOOK, SHARED_CORPUS } from './recall.js';
import TEMPLATES from './passkey-templates.json' with { type: 'json' };

/** A passkey prompt's wording: `{key}` in the needle is the pass key; the question ends where the answer starts. */
export interface PasskeyTemplate { intro: string; needle: string; question: string }
/** The Quest paper's wording (mit-han-lab/Quest). */
export const PAPER_TEMPLATE: PasskeyTemplate = TEMPLATES.paper;
/** Phrasings for evaluation only: the training data of the 32K test model (tools/retrieval_data.py) never
 *  contains their key names or frames. */
export const HELDOUT_TEMPLATES: PasskeyTemplate[] = TEMPLATES.heldout;
export const PASSKEY_INTRO = PAPER_TEMPLATE.intro;
export const PASSKEY_FILLER = ' The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.';
export const passkeyNeedle = (key: string, t: PasskeyTemplate = PAPER_TEMPLATE) => t.needle.replaceAll('{key}', key);
export const PASSKEY_QUESTION = PAPER_TEMPLATE.question;

export interface PasskeyPrompt { tokens: number[]; needleAt: number; questionTokens: number; key: string }

/** Builds a prompt of exactly `length` tokens with the needle starting at `depth` (0..1) of the text
 *  between the intro and the question (within one token). `filler` is a token stream repeated as needed. */
export function buildPasskeyPrompt(encode: (s: string) => number[], length: number, depth: number, key: string, filler: number[],
                                   template: PasskeyTemplate = PAPER_TEMPLATE): PasskeyPrompt {
  const intro = template.intro ? encode(template.intro) : [], needle = encode(passkeyNeedle(key, template)), question = encode(template.question);
  const body = length - intro.length - needle.length - question.length;
  if (body < 0) throw new Error(`length ${length} is too short for the passkey prompt (needs ${length - body})`);
  const fill: number[] = [];
  while (fill.length < body) fill.push(...filler.slice(0, body - fill.length));
  const cut = Math.round(body * depth);
  const tokens = [...intro, ...fill.slice(0, cut), ...needle, ...fill.slice(cut), ...question];
  return { tokens, needleAt: intro.length + cut, questionTokens: question.length, key };
}

export interface PasskeyOptions {
  model: string; lengths: string; depths: string; samples: number; attention: string; budget: string;
  /** the paper's repeated sentences, the held-out book of ../shared/corpus, or a text file's path */
  filler: string; out: string; seed: number;
  /** 'paper' (default) or 'heldout' (the held-out phrasings, in turn: sample s of a cell uses phrasing
   *  floor(s * count / samples)) */
  template?: 'paper' | 'heldout';
  device?: Device;
}

/** The wording of sample s of `samples`. */
function templateOf(kind: 'paper' | 'heldout', s: number, samples: number): PasskeyTemplate {
  return kind === 'paper' ? PAPER_TEMPLATE : HELDOUT_TEMPLATES[Math.floor((s * HELDOUT_TEMPLATES.length) / samples)];
}

interface Cell { policy: string; budget: number; length: number; depth: number; correct: number; total: number; answers: string[] }

function randomKey(r: () => number): string { return String(10000 + Math.floor(r() * 90000)); }

export async function runPasskeyEval(o: PasskeyOptions): Promise<Cell[]> {
  const llm = await loadModel(o.model, { device: o.device });
  const lengths = o.lengths.split(',').map(Number), depths = o.depths.split(',').map(Number);
  for (const L of lengths) if (!(L > 0 && L + 8 <= llm.config.maxSeqLen)) throw new Error(`length ${L} does not fit the model's context of ${llm.config.maxSeqLen} (leave 8 tokens for the answer)`);
  for (const d of depths) if (!(d >= 0 && d <= 100)) throw new Error(`depth ${d} must be a percentage 0..100`);
  if (!Number.isInteger(o.samples) || o.samples < 1) throw new Error('samples must be a positive integer');
  const kind = o.template ?? 'paper';
  if (kind !== 'paper' && kind !== 'heldout') throw new Error(`unknown --template ${kind}: paper or heldout`);
  const filler = fillerTokens(llm, o.filler);
  mkdirSync(o.out, { recursive: true });
  const jsonPath = join(o.out, 'passkey.json');
  const saved = existsSync(jsonPath) ? JSON.parse(readFileSync(jsonPath, 'utf8')) : null;
  if (saved && ((saved.template ?? 'paper') !== kind || saved.filler !== o.filler)) {
    throw new Error(`${jsonPath} holds results with template ${saved.template ?? 'paper'} and filler ${saved.filler}: use another --out for template ${kind} and filler ${o.filler}`);
  }
  const cells: Cell[] = saved ? saved.cells : [];
  const configs = policyGrid(o.attention, o.budget);
  const cellOf = (c: { policy: string; budget: number }, L: number, d: number) => {
    let cell = cells.find((x) => x.policy === c.policy && x.budget === c.budget && x.length === L && x.depth === d);
    if (!cell) { cell = { policy: c.policy, budget: c.budget, length: L, depth: d, correct: 0, total: 0, answers: [] }; cells.push(cell); }
    return cell;
  };
  const work = lengths.length * depths.length * o.samples;
  const bar = progressBar('passkey', 'samples');
  let done = 0;
  for (const L of lengths) for (const d of depths) {
    const todo = configs.filter((c) => cellOf(c, L, d).total < o.samples);
    if (todo.length === 0) { done += o.samples; bar.update(done, work); continue; }
    const r = rng(o.seed + L * 1000 + d);
    // shared prefix: everything before the needle is the same for the samples of a cell that share a wording
    let base: AnySession | null = null, baseTemplate: PasskeyTemplate | null = null;
    for (let s = 0; s < o.samples; s++) {
      const key = randomKey(r), template = templateOf(kind, s, o.samples);
      const need = todo.filter((c) => cellOf(c, L, d).total <= s);
      if (need.length) {
        if (template !== baseTemplate) {
          base?.dispose();
          const probe = buildPasskeyPrompt((x) => llm.encode(x), L, d / 100, '00000', filler, template);
          base = llm.session({ policy: 'dense' }); baseTemplate = template;
          if (configs.some((c) => wantsPrefillScores(c.policy))) base.recordPrefillScores(); // H2O forks start from the prefill's scores
          if (probe.needleAt > 0) await base.forward(probe.tokens.slice(0, probe.needleAt), { logits: 'none' });
        }
        const p = buildPasskeyPrompt((x) => llm.encode(x), L, d / 100, key, filler, template);
        const ctx = base!.fork({ policy: 'dense' });
        await ctx.forward(p.tokens.slice(p.needleAt, p.tokens.length - p.questionTokens), { logits: 'none' });
        for (const c of need) {
          const answer = await answerWith(llm, ctx, p, c.policy as PolicyName, c.budget);
          const cell = cellOf(c, L, d);
          cell.total++; cell.answers.push(answer);
          if (answer.trim().startsWith(key)) cell.correct++;
        }
        ctx.dispose();
      }
      done++; bar.update(done, work);
      writeFileSync(jsonPath, JSON.stringify({ model: o.model, template: kind, filler: o.filler, cells }, null, 1)); // resumable
    }
    base?.dispose();
  }
  bar.stop();
  report(cells, o, lengths, depths, configs);
  return cells;
}

/** The filler's tokens: 'repeat' (the paper's sentences), 'book' (the held-out book of ../shared/corpus)
 *  or the path of any text file (its first 400,000 characters; repeated where the prompt is longer). */
function fillerTokens(llm: LLM, filler: string): number[] {
  if (filler === 'repeat') return llm.encode(PASSKEY_FILLER);
  const p = filler === 'book' ? SHARED_CORPUS + HELD_OUT_BOOK : filler;
  if (!existsSync(p)) throw new Error(filler === 'book' ? `--filler book needs ${p}; use --filler repeat or a text file's path` : `--filler: no such file ${p} (repeat, book, or a text file's path)`);
  const tokens = llm.encode(readFileSync(p, 'utf8').replace(/\r\n/g, '\n').slice(0, 400_000));
  if (tokens.length === 0) throw new Error(`--filler: ${p} holds no text`);
  return tokens;
}

/** The question decoded token by token under the policy, then a greedy answer of up to 8 tokens. */
async function answerWith(llm: LLM, ctx: AnySession, p: PasskeyPrompt, policy: PolicyName, budget: number): Promise<string> {
  const s = ctx.fork({ policy, budget: budget || llm.attention.budget });
  let logits: Float32Array = new Float32Array(0);
  for (const t of p.tokens.slice(p.tokens.length - p.questionTokens)) logits = await s.forward([t]);
  const out: number[] = [];
  for (let i = 0; i < 8; i++) {
    const t = argmax(logits);
    if (llm.config.eosIds.includes(t)) break;
    out.push(t);
    const text = llm.tokenizer!.decode(out);
    if (/^\s*\d+\D/.test(text)) break; // the number is complete
    logits = await s.forward([t]);
  }
  s.dispose();
  return llm.tokenizer!.decode(out);
}

function report(cells: Cell[], o: PasskeyOptions, lengths: number[], depths: number[], configs: { policy: string; budget: number }[]): void {
  const label = (c: { policy: string; budget: number }) => (c.policy === 'dense' ? 'dense' : `${c.policy}@${c.budget}`);
  const acc = (c: { policy: string; budget: number }, L?: number) => {
    const sel = cells.filter((x) => x.policy === c.policy && x.budget === c.budget && (L === undefined || x.length === L));
    const t = sel.reduce((a, x) => a + x.total, 0);
    return t ? sel.reduce((a, x) => a + x.correct, 0) / t : null;
  };
  const lines = [`passkey accuracy (${o.template ?? 'paper'} template, ${o.filler} filler, ${o.samples} samples per length x depth, question decoded token by token)`];
  lines.push('config'.padEnd(20) + lengths.map((L) => String(L).padStart(9)).join('') + '      all');
  for (const c of configs) lines.push(label(c).padEnd(20) + lengths.map((L) => fmt(acc(c, L))).join('') + fmt(acc(c)));
  console.log(lines.join('\n'));
  writeFileSync(join(o.out, 'passkey.txt'), lines.join('\n') + '\n');
  // plots: accuracy vs budget per policy, and a depth x length heatmap per configuration
  const policies = [...new Set(configs.map((c) => c.policy))];
  const budgets = [...new Set(configs.filter((c) => c.policy !== 'dense').map((c) => c.budget))];
  if (budgets.length) {
    const series = policies.map((p) => ({ name: p, points: (p === 'dense' ? budgets : budgets).map((b) => ({ x: b, y: acc({ policy: p, budget: p === 'dense' ? 0 : b }) ?? 0 })) }));
    writeFileSync(join(o.out, 'passkey-vs-budget.svg'), lineChart('Passkey retrieval accuracy', 'token budget', 'accuracy', series));
  }
  for (const c of configs) {
    const grid = depths.map((d) => lengths.map((L) => { const x = cells.find((y) => y.policy === c.policy && y.budget === c.budget && y.length === L && y.depth === d); return x && x.total ? x.correct / x.total : null; }));
    writeFileSync(join(o.out, `passkey-heatmap-${label(c).replace('@', '-')}.svg`), heatmap(`passkey: ${label(c)}`, depths.map((d) => `${d}%`), lengths.map(String), grid, 'depth', 'context length (tokens)'));
  }
}

const fmt = (x: number | null) => (x === null ? '-' : `${(x * 100).toFixed(1)}%`).padStart(9);
