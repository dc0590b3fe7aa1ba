// `node dist/bench/prefill-chunks.js` (on a GPU): where a long prompt's prefill spends its wall time, chunk
// by chunk: the time between progress calls against the GPU time of the chunk's compute pass (timestamps)
// and the CPU time recording it; what is left is the engine's own (growing the KV store, waiting, reading
// back). Two prefills of the same prompt on one runner: the first creates the KV buffers, the second
// finds them. Chunks are waited for one by one here (QUEST_PREFILL_AHEAD=0) so that each is timed; the
// engine otherwise queues the next while one runs, and the total of that is printed first.
//   --shape 7b|8b|small  --weights f16|q4_0|...  --tokens N (default 32768)
import { getGpu, lastGpuError } from '../backend/webgpu/device.js';
import { GpuModel } from '../backend/webgpu/model.js';
import type { GpuWeightType } from '../backend/webgpu/kernels.js';
import { GpuRunner, GpuSession } from '../engine/gpu-session.js';
import { gpuShape } from './gpu-shapes.js';

const arg = (name: string, def: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : def; };
const TOKENS = Number(arg('tokens', '32768')), WEIGHTS = arg('weights', 'f16') as GpuWeightType;

async function prefill(runner: GpuRunner, ids: number[]): Promise<{ total: number; rows: number[][] }> {
  const s = new GpuSession(runner, { policy: 'dense' });
  const rows: number[][] = [];
  const t0 = performance.now();
  let last = t0;
  await s.forward(ids, { logits: 'last', onProgress: (done) => { const now = performance.now(); rows.push([done, now - last, s.lastGpuMs, s.lastEncodeMs]); last = now; } });
  const total = performance.now() - t0;
  s.dispose();
  return { total, rows };
}

async function main() {
  const gpu = await getGpu();
  if (!gpu) { console.log(`no WebGPU adapter: ${lastGpuError}`); return; }
  const { config, name } = gpuShape(arg('shape', '7b'), TOKENS + 256);
  const m = GpuModel.random(gpu.device, config, 1, WEIGHTS);
  const ids = Array.from({ length: TOKENS }, (_, i) => 1 + (i % Math.min(1000, config.vocabSize - 1)));
  console.log(`${gpu.adapterName}: ${name}, random ${WEIGHTS} weights; a dense prefill of ${TOKENS} tokens`);
  for (const ahead of [true, false]) {
    process.env.QUEST_PREFILL_AHEAD = ahead ? '1' : '0';
    const runner = new GpuRunner(m, 16);
    if (gpu.hasTimestamps) runner.enableTiming();
    const first = await prefill(runner, ids), second = await prefill(runner, ids);
    const ms = (x: number) => `${x.toFixed(1)} ms`;
    console.log(`\n${ahead ? 'next chunk queued while one runs (the default)' : 'each chunk waited for'}: ${(first.total / 1000).toFixed(2)} s (creates the KV buffers), then ${(second.total / 1000).toFixed(2)} s`);
    if (!ahead) {
      const sum = (k: number) => second.rows.reduce((a, r) => a + r[k], 0);
      console.log(`second prefill, ${second.rows.length} chunk${second.rows.length === 1 ? '' : 's'}: GPU passes ${ms(sum(2))}, recording ${ms(sum(3))}, the rest ${ms(sum(1) - sum(2) - sum(3))}`);
      console.log('| tokens done | wall (first prefill) | wall | GPU pass | recording |');
      console.log('| --- | --- | --- | --- | --- |');
      second.rows.forEach((r, i) => console.log(`| ${r[0]} | ${ms(first.rows[i][1])} | ${ms(r[1])} | ${ms(r[2])} | ${ms(r[3])} |`));
    }
    runner.dispose();
  }
  m.dispose();
}
main().catch((e) => { console.error(e instanceof Error ? e.message : e); process.exit(1); });
