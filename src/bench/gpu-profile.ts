// `node dist/bench/gpu-profile.js` (on a GPU): where one decode step's, or one prefill chunk's, GPU time
// goes, kernel by kernel (each dispatch timed in a pass of its own: PassProfiler), for a model shape with
// random weights over a context of random keys and values.
//   --shape 7b|8b|small  --weights f16|q4_0|...  --context N (tokens already in the cache)
//   --policy dense|quest --budget N  --batch B (forks of the context decoding together)
//   --prefill N (profile a chunk of N tokens after the context instead of a decode step)
import { getGpu, lastGpuError } from '../backend/webgpu/device.js';
import { GpuModel } from '../backend/webgpu/model.js';
import type { GpuWeightType } from '../backend/webgpu/kernels.js';
import { PassProfiler, profileTable } from '../backend/webgpu/pass-profiler.js';
import { GpuRunner, GpuSession } from '../engine/gpu-session.js';
import { gpuShape } from './gpu-shapes.js';

const arg = (name: string, def: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : def; };
const CONTEXT = Number(arg('context', '32768')), BATCH = Number(arg('batch', '1')), PREFILL = Number(arg('prefill', '0'));
const POLICY = arg('policy', 'quest') as 'dense' | 'quest', BUDGET = Number(arg('budget', '2048')), WEIGHTS = arg('weights', 'f16') as GpuWeightType;

async function main() {
  const gpu = await getGpu();
  if (!gpu) { console.log(`no WebGPU adapter: ${lastGpuError}`); return; }
  if (!gpu.hasTimestamps) { console.log('this adapter has no timestamp queries: nothing to profile'); return; }
  const { config, name } = gpuShape(arg('shape', '7b'), CONTEXT + Math.max(PREFILL, 64));
  const m = GpuModel.random(gpu.device, config, 1, WEIGHTS), runner = new GpuRunner(m, 16);
  const base = new GpuSession(runner);
  if (CONTEXT) await base.fillRandomContext(CONTEXT);
  const profiler = new PassProfiler(gpu.device);
  let what: string;
  if (PREFILL) {
    const s = base.fork(), tokens = Array.from({ length: PREFILL }, (_, i) => 1 + (i % 100));
    await s.fork().forward(tokens, { logits: 'none' }); // (warm-up: pipelines)
    runner.profiler = profiler;
    await s.forward(tokens, { logits: 'last' });
    what = `a prefill of ${PREFILL} tokens after ${CONTEXT} (its last chunk)`;
  } else {
    const seqs = Array.from({ length: BATCH }, () => base.fork({ policy: POLICY, budget: BUDGET }));
    const step = () => (BATCH === 1 ? seqs[0].forward([7]) : GpuSession.decodeBatch(seqs.map((seq, i) => ({ seq, token: 1 + i }))));
    await step(); await step(); // warm-up: pipelines, bind groups
    runner.profiler = profiler;
    await step();
    what = `a decode step of ${BATCH} sequence${BATCH > 1 ? 's (forks of the context)' : ''}, ${POLICY}${POLICY === 'quest' ? ` ${BUDGET}` : ''}, after ${CONTEXT} tokens`;
  }
  runner.profiler = null;
  const times = await profiler.times();
  console.log(`${gpu.adapterName}: ${name}, random ${WEIGHTS} weights; ${what}; each dispatch in its own timed pass`);
  console.log(profileTable(times, Number(arg('top', '25'))));
  profiler.destroy(); base.dispose(); runner.dispose(); m.dispose();
}

void main().catch((e) => { console.error(e instanceof Error ? e.message : e); process.exit(1); });
