// `quest eval recall` / `npm run eval:recall`: how much of the true attention mass each policy keeps.
// A long text is prefilled densely once; each (policy, budget) then decodes the next tokens of the
// text one by one (teacher forcing) from a copy of that cache, and the engine measures, at every
// sparse layer and step, the fraction of the dense softmax mass that the attended tokens carry.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { loadModel } from '../engine/llm.js';
import type { AttentionOptions, GqaMode, PolicyName } from '../attention/policy.js';
import { progressBar } from '../cli/progress.js';

export const SHARED_CORPUS = new URL('../../../shared/corpus/', import.meta.url).pathname;
export const HELD_OUT_BOOK = 'pride_and_prejudice.txt'; // the default model never saw it in training

export interface RecallOptions {
  model: string; text?: string; context: number; steps: number;
  budgets: string; policies: string; gqa: string; out?: string;
}

export interface RecallRow { policy: string; budget: number; recall: number; attended: number; decodeMsPerToken: number }

export async function runRecallEval(o: RecallOptions): Promise<RecallRow[]> {
  const textPath = o.text ?? SHARED_CORPUS + HELD_OUT_BOOK;
  if (!existsSync(textPath)) throw new Error(`no text at ${textPath}: pass --text FILE`);
  const llm = await loadModel(o.model);
  const ids = llm.encode(readFileSync(textPath, 'utf8').replace(/\r\n/g, '\n'));
  const need = o.context + o.steps;
  if (ids.length < need) throw new Error(`the text has ${ids.length} tokens, fewer than context + steps = ${need}`);
  if (need > llm.config.maxSeqLen) throw new Error(`context + steps = ${need} exceeds the model's context length ${llm.config.maxSeqLen}`);
  const budgets = o.budgets.split(',').map(Number);
  const policies = o.policies.split(',') as PolicyName[];
  const gqaModes = o.gqa.split(',') as GqaMode[];

  const base = llm.cpuSession({ policy: 'dense' });
  base.recordPrefillScores();
  const bar = progressBar('prefill', 'tokens');
  base.forward(ids.slice(0, o.context), { logits: 'none', onProgress: (d, t) => bar.update(d, t) });
  bar.stop();

  const configs: { label: string; attention: Partial<AttentionOptions> }[] = [];
  for (const p of policies) {
    if (p === 'quest') for (const g of gqaModes) configs.push({ label: gqaModes.length > 1 ? `quest(${g})` : 'quest', attention: { policy: p, gqa: g } });
    else configs.push({ label: p, attention: { policy: p } });
  }
  configs.unshift({ label: 'dense', attention: { policy: 'dense' } });
  const rows: RecallRow[] = [];
  const cells = progressBar('policies', 'runs');
  const total = 1 + (configs.length - 1) * budgets.length;
  for (const cfg of configs) {
    for (const budget of cfg.label === 'dense' ? [llm.config.maxSeqLen] : budgets) {
      const s = base.fork({ ...cfg.attention, budget });
      s.collectStats();
      const t0 = performance.now();
      for (let i = 0; i < o.steps; i++) s.forward([ids[o.context + i]], { logits: 'none' });
      const ms = (performance.now() - t0) / o.steps;
      s.dispose();
      rows.push({ policy: cfg.label, budget, recall: s.stats!.mean() ?? 1, attended: s.stats!.meanAttended() ?? o.context, decodeMsPerToken: ms });
      cells.update(rows.length, total);
    }
  }
  cells.stop();
  base.dispose();
  printTable(rows, budgets, o);
  if (o.out) writeFileSync(o.out, JSON.stringify({ model: o.model, text: textPath, context: o.context, steps: o.steps, denseLayers: llm.attention.denseLayers, pageSize: llm.attention.pageSize, rows }, null, 2));
  return rows;
}

function printTable(rows: RecallRow[], budgets: number[], o: RecallOptions): void {
  const labels = [...new Set(rows.map((r) => r.policy))].filter((l) => l !== 'dense');
  const w = Math.max(12, ...labels.map((l) => l.length + 2));
  const out: string[] = [];
  out.push(`attention-mass recall (mean over sparse layers, heads and ${o.steps} decode steps) after ${o.context} prompt tokens`);
  out.push('policy'.padEnd(w) + budgets.map((b) => String(b).padStart(9)).join(''));
  for (const l of labels) {
    out.push(l.padEnd(w) + budgets.map((b) => {
      const r = rows.find((x) => x.policy === l && x.budget === b);
      return (r ? r.recall.toFixed(4) : '-').padStart(9);
    }).join(''));
  }
  console.log(out.join('\n'));
}
