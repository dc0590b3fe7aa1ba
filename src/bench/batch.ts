// `npm run bench:batch` (on a GPU): aggregate decode tokens/s of batched decoding (GpuSession.decodeBatch:
// one forward pass for B sequences, weights read once) at batch 1, 4, 16, 32, dense and Quest, for a
// 7B-shaped model with random weights (--shape 7b|8b|small, --weights f16|q4_0) and --context tokens per
// sequence. The sequences are forks of one random context (their pages shared, so 32 x 8K contexts fit):
// dense rows read the shared pages once per group of rows (a document asked several questions at once):
// 16 rows on tensor cores where the adapter has them (QUEST_SHARED_MMA=0: the thread kernel's four), and
// with QUEST_SHARED_QUEST=1 Quest rows read the shared pages any of them selected once; QUEST_SHARED_PAGES=0 makes
// every sequence read its whole context at every step, as separate contexts would. Three timings per point in one run; the median and the spread are printed, and a plot.
// --read argmax (default: each row's greedy token computed on the GPU) | logits (every row's logits read back).
// With argmax, each point is also timed with greedy steps in flight (GpuSession.greedyBatch: step t + 1
// recorded and submitted while the GPU runs step t).
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { getGpu, lastGpuError } from '../backend/webgpu/device.js';
import { GpuModel } from '../backend/webgpu/model.js';
import type { GpuWeightType } from '../backend/webgpu/kernels.js';
import { GpuRunner, GpuSession } from '../engine/gpu-session.js';
import { lineChart } from '../eval/plot.js';
import { gpuShape } from './gpu-shapes.js';

const arg = (name: string, def: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : def; };
const CONTEXT = Number(arg('context', '8192'));
const BATCHES = arg('batches', '1,4,16,32').split(',').map(Number);
const BUDGET = Number(arg('budget', '2048'));
const STEPS = Number(arg('steps', '8'));
const WEIGHTS = arg('weights', 'f16') as GpuWeightType;
const OUT = arg('out', 'results');
// what each step reads back: the rows' greedy tokens (argmax on the GPU, as `quest serve` does for greedy
// requests) or every row's logits (sampling on the CPU)
const READ = arg('read', 'argmax');
if (READ !== 'argmax' && READ !== 'logits') throw new Error(`--read is argmax or logits, got ${READ}`);

const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

async function main() {
  const gpu = await getGpu();
  if (!gpu) { console.log(`no WebGPU adapter: ${lastGpuError}`); return; }
  // (room for each fork's steps: two warm-up steps, four timings of STEPS and three of STEPS in flight)
  const { config, name } = gpuShape(arg('shape', '7b'), CONTEXT + Math.ceil((2 + 7 * STEPS) / 64) * 64);
  const m = GpuModel.random(gpu.device, config, 1, WEIGHTS), runner = new GpuRunner(m, 16);
  if (gpu.hasTimestamps) runner.enableTiming(); // (where a step's time goes: the GPU's, the CPU's encoding)
  const base = new GpuSession(runner);
  await base.fillRandomContext(CONTEXT);
  console.log(`${gpu.adapterName}: ${name}, random ${WEIGHTS} weights; ${CONTEXT}-token contexts (forks of one: ${runner.decode.sharedRows ? `shared pages read once per ${runner.decode.sharedRows} rows${runner.decode.sharedMma ? ' on tensor cores' : ''}${runner.decode.sharesSelections ? ', Quest rows too' : ''}` : 'each reads its own'}); ${STEPS} steps per timing, 3 timings (GPU and encoding times from a fourth, with timestamp queries); Quest budget ${BUDGET}; each step reads back ${READ === 'argmax' ? 'the rows\' greedy tokens' : 'every row\'s logits'}`);
  const rows: { policy: string; batch: number; tps: number[]; inFlight: number[]; gpuMs: number; encodeMs: number }[] = [];
  for (const policy of ['dense', 'quest'] as const) {
    // every batch size's forks made first, then the three timings taken in turn over the batch sizes, so
    // that a slow spell of the host falls on all of them rather than on one (its ratios swung ±15%)
    const all = BATCHES.map((B) => Array.from({ length: B }, () => base.fork({ policy, budget: BUDGET })));
    const step = (seqs: GpuSession[]) => GpuSession.decodeBatch(seqs.map((seq, i) => ({ seq, token: 1 + ((seq.length + i) % 100), argmax: READ === 'argmax' })));
    for (const seqs of all) { await step(seqs); await step(seqs); } // warm-up: pipelines, bind groups, clocks
    const got = BATCHES.map(() => ({ tps: [] as number[], inFlight: [] as number[], gpuMs: [] as number[], encodeMs: [] as number[] }));
    // three timings with the timestamp queries off (their readback is not a user's cost), then a fourth
    // with them on, for where a step's time goes
    const timing = runner.timing;
    for (let run = 0; run < 4; run++) {
      runner.timing = run < 3 ? null : timing;
      for (const [b, seqs] of all.entries()) {
        const t0 = performance.now();
        for (let s = 0; s < STEPS; s++) {
          await step(seqs);
          if (run === 3) { got[b].gpuMs.push(seqs[0].lastGpuMs); got[b].encodeMs.push(seqs[0].lastEncodeMs); }
        }
        if (run < 3) got[b].tps.push((seqs.length * STEPS) / ((performance.now() - t0) / 1000));
        // greedy steps in flight (GpuSession.greedyBatch): step t + 1 recorded while the GPU runs step t
        if (run < 3 && READ === 'argmax') {
          const t1 = performance.now();
          let k = 0;
          for await (const _ of GpuSession.greedyBatch(seqs, seqs.map((_, i) => 1 + i), STEPS)) k++;
          got[b].inFlight.push((seqs.length * k) / ((performance.now() - t1) / 1000));
        }
      }
    }
    for (const [b, B] of BATCHES.entries()) {
      const { tps, inFlight, gpuMs, encodeMs } = got[b];
      rows.push({ policy, batch: B, tps, inFlight, gpuMs: median(gpuMs), encodeMs: median(encodeMs) });
      console.log(`  ${policy.padEnd(5)} batch ${String(B).padStart(2)}: ${median(tps).toFixed(0)} tokens/s (${Math.min(...tps).toFixed(0)}-${Math.max(...tps).toFixed(0)}), ${(1000 * B / median(tps)).toFixed(2)} ms per step (GPU ${median(gpuMs).toFixed(2)} ms, encoding ${median(encodeMs).toFixed(2)} ms)${inFlight.length ? `; steps in flight ${median(inFlight).toFixed(0)} tokens/s (${Math.min(...inFlight).toFixed(0)}-${Math.max(...inFlight).toFixed(0)})` : ''}`);
    }
    for (const seqs of all) for (const s of seqs) s.dispose();
  }
  console.log('\n| batch | dense tokens/s | quest tokens/s | quest / dense | dense vs batch 1 | quest vs batch 1 |\n| --- | --- | --- | --- | --- | --- |');
  const rowAt = (p: string, b: number) => rows.find((r) => r.policy === p && r.batch === b)!;
  const at = (p: string, b: number) => median(rowAt(p, b).tps);
  for (const B of BATCHES) {
    console.log(`| ${B} | ${at('dense', B).toFixed(0)} | ${at('quest', B).toFixed(0)} | ${(at('quest', B) / at('dense', B)).toFixed(2)}x | ${(at('dense', B) / at('dense', BATCHES[0])).toFixed(1)}x | ${(at('quest', B) / at('quest', BATCHES[0])).toFixed(1)}x |`);
  }
  if (BATCHES.includes(1) && BATCHES.includes(16)) {
    const g = (p: string) => at(p, 16) / at(p, 1);
    console.log(`target batch 16 >= 8x batch 1: dense ${g('dense').toFixed(1)}x, quest ${g('quest').toFixed(1)}x (${g('dense') >= 8 && g('quest') >= 8 ? 'met' : 'MISSED'})`);
    // the same ratio on GPU time alone (the wall clock adds the host's CPU time per step, a larger share
    // of a batch of one, and moves with the host)
    const gg = (p: string) => (16 * rowAt(p, 1).gpuMs) / rowAt(p, 16).gpuMs;
    if (gpu.hasTimestamps) console.log(`on GPU time alone (tokens per GPU second), batch 16 vs batch 1: dense ${gg('dense').toFixed(1)}x, quest ${gg('quest').toFixed(1)}x`);
    const fl = (p: string, b: number) => median(rowAt(p, b).inFlight);
    if (READ === 'argmax') console.log(`steps in flight: batch 1 dense ${fl('dense', 1).toFixed(0)} / quest ${fl('quest', 1).toFixed(0)} tokens/s, batch 16 ${fl('dense', 16).toFixed(0)} / ${fl('quest', 16).toFixed(0)} (${(fl('dense', 16) / fl('dense', 1)).toFixed(1)}x / ${(fl('quest', 16) / fl('quest', 1)).toFixed(1)}x); against one step at a time at batch 16: ${(fl('dense', 16) / at('dense', 16)).toFixed(2)}x / ${(fl('quest', 16) / at('quest', 16)).toFixed(2)}x`);
  }
  if (!existsSync(OUT)) mkdirSync(OUT, { recursive: true });
  const stem = `${OUT}/bench-batch-${arg('shape', '7b')}-${WEIGHTS}`;
  const series = ['dense', 'quest'].flatMap((p) => [{ name: p, points: BATCHES.map((b) => ({ x: b, y: at(p, b) })) },
    ...(READ === 'argmax' ? [{ name: `${p}, steps in flight`, points: BATCHES.map((b) => ({ x: b, y: median(rowAt(p, b).inFlight) })) }] : [])]);
  writeFileSync(`${stem}.svg`, lineChart(`Batched decode, ${name.split(' (')[0]}, ${CONTEXT}-token contexts (${WEIGHTS})`, 'batch', 'tokens/s (all sequences)', series, 0, Math.max(...series.flatMap((s) => s.points.map((p) => p.y))) * 1.1));
  writeFileSync(`${stem}.json`, JSON.stringify({ device: gpu.adapterName, shape: name, weights: WEIGHTS, context: CONTEXT, budget: BUDGET, rows }, null, 1));
  base.dispose(); runner.dispose(); m.dispose();
}

void main().catch((e) => { console.error(e instanceof Error ? e.message : e); process.exit(1); });
