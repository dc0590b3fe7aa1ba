// Our engine on each folder that hf_models.py saved with transformers, against transformers' own logits:
// the CPU engine, and the WebGPU engine where an adapter exists.
// On a machine with PyTorch and transformers (the GPU machine has both), after the build:
//   python3 tools/hf-reference/hf_models.py /tmp/hf models/quest-tiny-8k && node tools/hf-reference/hf_check.mjs /tmp/hf
// Results of a run: docs/results/h200/hf-transformers-check.txt.
import { readdirSync, readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadModelFiles } from '../../dist/model/load.js';
import { makeModel, Session } from '../../dist/engine/session.js';
import { getGpu } from '../../dist/backend/webgpu/device.js';
import { GpuModel } from '../../dist/backend/webgpu/model.js';
import { GpuRunner, GpuSession } from '../../dist/engine/gpu-session.js';
const dir = process.argv[2];
const gpu = await getGpu().catch(() => null);
if (gpu) console.log(`WebGPU on ${gpu.adapterName}`);
const argmax = (a) => { let b = 0; for (let i = 1; i < a.length; i++) if (a[i] > a[b]) b = i; return b; };
for (const name of readdirSync(dir).sort()) {
  const d = join(dir, name);
  if (!existsSync(join(d, 'reference-logits.json'))) continue;
  const ref = JSON.parse(readFileSync(join(d, 'reference-logits.json'), 'utf8'));
  try {
    const m = loadModelFiles(d), V = m.config.vocabSize;
    const report = (device, out) => {
      let md = 0, agree = 0;
      ref.logits.forEach((row, i) => { for (let j = 0; j < V; j++) md = Math.max(md, Math.abs(out[i * V + j] - row[j])); if (argmax(out.subarray(i * V, i * V + V)) === argmax(row)) agree++; });
      console.log(`${name}: ${device} max |dlogit| ${md.toExponential(2)}, top-1 ${agree}/${ref.ids.length}, config ${m.config.arch} ropeScaling ${m.config.ropeScaling.type} window ${m.config.slidingWindow ?? '-'}`);
    };
    report('cpu', new Session(makeModel(m.config, m.weights)).forward(ref.ids, { logits: 'all' }));
    if (gpu) {
      const runner = new GpuRunner(GpuModel.upload(gpu.device, m.config, m.weights), 16);
      // (prefill in chunks of 5: the windows cross chunk borders)
      report('webgpu', await new GpuSession(runner).forward(ref.ids, { logits: 'all', chunk: 5 }));
      runner.dispose(); runner.m.dispose();
    }
  } catch (e) { console.log(`${name}: ERROR ${e.message.slice(0, 400)}`); }
}
