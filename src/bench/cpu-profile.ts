// `npm run profile:cpu [-- --context 512 --steps 48] [--prefill]`: where a CPU decode step's time goes (or,
// with --prefill, a prompt's prefill of --context tokens), on the SmolLM2-135M-shaped Q8_0 model: V8's
// sampling profiler on the main thread around the decode loop (or the prefill) only
// (WebAssembly kernels appear under their export names; `run wasm/pool.js` is the wait for the worker
// threads' shares). Prints self time per function; the profile itself goes to results/ for DevTools.
import { mkdirSync, writeFileSync } from 'node:fs';
import { Session as Inspector } from 'node:inspector/promises';
import { loadModelFiles } from '../model/load.js';
import { makeModel, Session } from '../engine/session.js';
import { argmax } from '../engine/sampler.js';
import { smolGguf } from './bench-models.js';
import { KERNEL_FUNCTION_NAMES } from '../backend/wasm/kernels-wasm.js';

const arg = (name: string, def: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : def; };
// (kernels.wat's functions in order: the binary has no name section)
const WASM_NAMES = KERNEL_FUNCTION_NAMES; // (by function index)

interface Node { id: number; callFrame: { functionName: string; url: string } }
interface Profile { nodes: Node[]; samples: number[]; timeDeltas: number[] }

async function main() {
  const ctx = Number(arg('context', '512')), steps = Number(arg('steps', '48'));
  const model = arg('model', ''), m = loadModelFiles(model || smolGguf()); // (--model FILE: any model; default SmolLM2-135M's shape, Q8_0)
  const prefill = process.argv.includes('--prefill'), mm = makeModel(m.config, m.weights);
  const prompt = Array.from({ length: ctx }, (_, i) => (i * 7919 + 13) % m.config.vocabSize);
  const s = new Session(mm);
  let logits = s.forward(prompt, { chunk: 256 });
  for (let i = 0; i < 3; i++) logits = s.forward([argmax(logits)]); // (warm)
  const inspector = new Inspector();
  inspector.connect();
  await inspector.post('Profiler.enable');
  await inspector.post('Profiler.setSamplingInterval', { interval: 200 });
  await inspector.post('Profiler.start');
  const t0 = performance.now();
  if (prefill) { const p = new Session(mm); p.forward(prompt, { chunk: 256 }); p.dispose(); }
  else for (let i = 0; i < steps; i++) logits = s.forward([argmax(logits)]);
  const ms = (performance.now() - t0) / (prefill ? 1 : steps);
  const per = prefill ? 1 : steps, unit = prefill ? 'ms' : 'ms/token';
  const { profile } = await inspector.post('Profiler.stop') as { profile: Profile };
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  profile.samples.forEach((id, i) => {
    const f = byId.get(id)!.callFrame, wasmIndex = /^wasm-function\[(\d+)\]$/.exec(f.functionName);
    const name = wasmIndex ? `wasm ${WASM_NAMES[Number(wasmIndex[1])] ?? f.functionName}` : `${f.functionName || '(anonymous)'} ${f.url.split('/').slice(-2).join('/')}`;
    self.set(name, (self.get(name) ?? 0) + profile.timeDeltas[i]);
    total += profile.timeDeltas[i];
  });
  if (prefill) console.log(`prefill of ${ctx} tokens: ${ms.toFixed(0)} ms (${(ctx / ms * 1000).toFixed(1)} tokens/s); main thread, self time:`);
  else console.log(`decode at ${ctx} tokens of context: ${ms.toFixed(1)} ms/token (${steps} steps); main thread, self time:`);
  for (const [name, us] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 16)) {
    console.log(`${(100 * us / total).toFixed(1).padStart(5)}%  ${(us / 1000 / per).toFixed(2).padStart(7)} ${unit}  ${name}`);
  }
  mkdirSync('results', { recursive: true });
  writeFileSync(`results/cpu-${prefill ? 'prefill' : 'decode'}-${ctx}.cpuprofile`, JSON.stringify(profile));
  process.exit(0);
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
