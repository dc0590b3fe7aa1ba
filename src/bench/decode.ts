// `npm run bench:decode`: what Quest buys on the CPU. Decode time per token of the default model at long
// context, dense vs Quest at falling budgets (all from one dense prefill, forked), and prefill speed of a
// dense session vs a Quest session (Quest's page min/max upkeep must not slow the prefill).
import { readFileSync, existsSync, writeFileSync, mkdirSync } from 'node:fs';
import { loadModel } from '../engine/llm.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { SHARED_CORPUS, HELD_OUT_BOOK } from '../eval/recall.js';
import { lineChart } from '../eval/plot.js';

const STEPS = 32;
const BUDGETS = [64, 128, 256, 512, 1024, 2048];

async function main() {
  const llm = await loadModel(process.argv[2] ?? DEFAULT_MODEL);
  const book = SHARED_CORPUS + HELD_OUT_BOOK;
  const text = existsSync(book) ? readFileSync(book, 'utf8') : 'The grass is green. The sky is blue. '.repeat(4000);
  const ids = llm.encode(text);
  const contexts = [2048, 8000].filter((c) => c + STEPS <= llm.config.maxSeqLen);
  const lines: string[] = [];
  const series: { name: string; points: { x: number; y: number }[] }[] = [];
  for (const ctx of contexts) {
    const prompt = ids.slice(0, ctx);
    const timePrefill = (policy: 'dense' | 'quest') => {
      const s = llm.session({ policy, budget: 256 });
      const t0 = performance.now();
      s.forward(prompt, { logits: 'none' });
      const tps = ctx / ((performance.now() - t0) / 1000);
      return { s, tps };
    };
    // alternate the two twice so neither benefits from warm-up
    const d1 = timePrefill('dense'); d1.s.dispose();
    const q1 = timePrefill('quest'); q1.s.dispose();
    const d2 = timePrefill('dense');
    const q2 = timePrefill('quest'); q2.s.dispose();
    const base = d2.s;
    const decodeMs = (policy: 'dense' | 'quest', budget: number) => {
      const s = base.fork({ policy, budget });
      const t0 = performance.now();
      for (let i = 0; i < STEPS; i++) s.forward([ids[ctx + i]]);
      const ms = (performance.now() - t0) / STEPS;
      s.dispose();
      return ms;
    };
    decodeMs('dense', 1); decodeMs('quest', BUDGETS[0]); // warm-up (JIT) of both paths
    const dense = decodeMs('dense', 1);
    const quest = BUDGETS.map((b) => ({ b, ms: decodeMs('quest', b) }));
    base.dispose();
    lines.push(`context ${ctx}: prefill dense ${Math.max(d1.tps, d2.tps).toFixed(0)} tok/s, quest ${Math.max(q1.tps, q2.tps).toFixed(0)} tok/s ` +
      `(ratio ${(Math.max(q1.tps, q2.tps) / Math.max(d1.tps, d2.tps)).toFixed(3)})`);
    lines.push(`  decode ms/token: dense ${dense.toFixed(2)} | ` + quest.map((q) => `quest@${q.b} ${q.ms.toFixed(2)} (${(dense / q.ms).toFixed(2)}x)`).join(' | '));
    series.push({ name: `quest, ${ctx} ctx`, points: quest.map((q) => ({ x: q.b, y: q.ms })) });
    series.push({ name: `dense, ${ctx} ctx`, points: BUDGETS.map((b) => ({ x: b, y: dense })) });
  }
  console.log(`decode and prefill speed, ${llm.path}, CPU (WebAssembly SIMD + worker threads), ${STEPS} decode steps, page 16, ${llm.attention.denseLayers} dense layers`);
  console.log(lines.join('\n'));
  mkdirSync('results', { recursive: true });
  const yMax = Math.max(...series.flatMap((s) => s.points.map((p) => p.y))) * 1.1;
  writeFileSync('results/bench-decode.svg', lineChart('Decode time per token vs Quest budget (CPU)', 'token budget', 'ms / token', series, 0, yMax));
  console.log('plot: results/bench-decode.svg');
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
