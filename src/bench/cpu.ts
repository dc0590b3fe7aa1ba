// `npm run bench:cpu`: prefill and decode tokens/s at 512 and 4096 tokens of context, for the default
// model and random-weight models of SmolLM2-135M's shape (Q8_0, Q4_K_M), next to llama.cpp (node-llama-cpp)
// on the same GGUF in the same run, and our SIMD kernels next to our plain TypeScript kernels.
// `npm run bench:cpu -- --long`: decode at 16K and 32K tokens, ours dense and Quest against llama.cpp.
// `--only TEXT`: the models whose name contains TEXT; `--steps N`: decode steps timed (default 64).
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { availableParallelism } from 'node:os';
import { loadModelFiles } from '../model/load.js';
import { makeModel, Session } from '../engine/session.js';
import { fromBf16, toBf16, type KVType } from '../kv/paged-cache.js';
import { argmax, rng } from '../engine/sampler.js';
import type { AttentionOptions } from '../attention/policy.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { smolGguf, tinyGguf } from './bench-models.js';

interface Result { prefill: number; decode: number }
/** Decode steps timed after the prefill, ours and llama.cpp's alike (`--steps N`): 64, an answer's length.
 *  The first few of ours run while V8 still compiles the decode path (~20 instead of ~10 ms a step on
 *  SmolLM2-135M's shape), which 16 steps, the earlier default, counted four times as heavily. */
const DECODE_STEPS = process.argv.includes('--steps') ? Number(process.argv[process.argv.indexOf('--steps') + 1]) : 64;

function tokens(n: number, vocab: number): number[] { return Array.from({ length: n }, (_, i) => (i * 7919 + 13) % vocab); }

/** ours: prefill tok/s of the whole context, then decode tok/s of DECODE_STEPS greedy steps after it; run
 *  twice on the loaded model and the better of the two taken, as llama.cpp's best of two runs (1 thread,
 *  all cores) is (`first`: the first run alone, which also pays V8's compilation of the code it runs). */
function benchOurs(path: string, ctx: number, times = 2): Result & { vocab: number; first: Result } {
  const m = loadModelFiles(path), model = makeModel(m.config, m.weights), runs: Result[] = [];
  for (let run = 0; run < times; run++) {
    const s = new Session(model);
    const t0 = performance.now();
    let logits = s.forward(tokens(ctx, m.config.vocabSize), { chunk: 256 });
    const prefill = ctx / ((performance.now() - t0) / 1000);
    const t1 = performance.now();
    for (let i = 0; i < DECODE_STEPS; i++) logits = s.forward([argmax(logits)]);
    runs.push({ prefill, decode: DECODE_STEPS / ((performance.now() - t1) / 1000) });
    s.dispose();
  }
  return { prefill: Math.max(...runs.map((r) => r.prefill)), decode: Math.max(...runs.map((r) => r.decode)), vocab: m.config.vocabSize, first: runs[0] };
}

/** Decode tok/s after `ctx` tokens whose KV cache holds random keys and values: decode time does not
 *  depend on the values (dense reads every key; Quest scores every page and reads `budget` tokens), and a
 *  real prefill of 32K tokens on two cores takes many minutes. */
function benchOursDecodeAt(path: string, ctx: number, attention: Partial<AttentionOptions>, kvType: KVType = 'f32'): number {
  const m = loadModelFiles(path);
  const s = new Session(makeModel(m.config, m.weights, kvType), attention);
  s.adoptTokens(tokens(ctx, m.config.vocabSize));
  const g = rng(5), P = s.cache.pageSize, pages = Math.ceil(ctx / P), bf16 = kvType === 'bf16';
  for (let l = 0; l < m.config.nLayers; l++) {
    const L = s.cache.layers[l].pages, f = L.pageFloats, mf = L.metaFloats, hd = m.config.headDim, kb = f * L.elementBytes;
    for (let first = 0; first < pages; first += 256) {
      const count = Math.min(256, pages - first), kv = new Float32Array(2 * count * f), meta = new Float32Array(2 * count * mf);
      for (let i = 0; i < 2 * count * f; i++) kv[i] = bf16 ? fromBf16(toBf16(g() * 2 - 1)) : g() * 2 - 1;
      // each page's key min/max per KV head and channel, from its keys (what Quest scores)
      for (let i = 0; i < count; i++) for (let h = 0; h < m.config.nKVHeads; h++) for (let c = 0; c < hd; c++) {
        let lo = Infinity, hi = -Infinity;
        for (let t = 0; t < P; t++) { const v = kv[i * f + (h * P + t) * hd + c]; lo = Math.min(lo, v); hi = Math.max(hi, v); }
        meta[2 * i * mf + h * hd + c] = lo; meta[(2 * i + 1) * mf + h * hd + c] = hi;
      }
      // (readPages' layout: K pages, V pages, then each page's min and max)
      const bits = (a: Float32Array) => new Uint8Array((bf16 ? Uint16Array.from(a, toBf16) : a).buffer);
      const data = new Uint8Array(2 * count * kb + meta.length * L.elementBytes);
      data.set(bits(kv), 0);
      data.set(bits(meta), 2 * count * kb);
      s.writePages(l, first, count, data);
    }
  }
  let logits = s.forward([1]);
  const t1 = performance.now();
  for (let i = 0; i < DECODE_STEPS; i++) logits = s.forward([argmax(logits)]);
  const decode = DECODE_STEPS / ((performance.now() - t1) / 1000);
  s.dispose();
  return decode;
}

async function benchLlamaCpp(path: string, ctx: number, vocab: number, threads: number): Promise<Result | string> {
  let lib: typeof import('node-llama-cpp');
  try { lib = await import('node-llama-cpp'); } catch { return 'node-llama-cpp not installed'; }
  const llama = await lib.getLlama({ gpu: false, build: 'never', logLevel: 'error' as never });
  const model = await llama.loadModel({ modelPath: path });
  const context = await model.createContext({ contextSize: ctx + DECODE_STEPS + 8, batchSize: 512, threads });
  try {
    const seq = context.getSequence();
    const ids = tokens(ctx, vocab);
    const t0 = performance.now();
    const out = await seq.controlledEvaluate([...ids.slice(0, -1), [ids[ids.length - 1], { generateNext: { token: true } }]] as never);
    const prefill = ctx / ((performance.now() - t0) / 1000);
    const next = (out[ctx - 1] as { next: { token: number } }).next.token;
    // decode through the generation path (evaluate yields one token per step, greedy)
    const t1 = performance.now();
    let n = 0;
    for await (const _ of seq.evaluate([next] as never, { temperature: 0 })) { if (++n >= DECODE_STEPS) break; }
    return { prefill, decode: n / ((performance.now() - t1) / 1000) };
  } finally {
    await context.dispose(); await model.dispose(); await llama.dispose();
  }
}

/** Our plain TypeScript kernels, in a child process (the switch is read once per process); one run (minutes). */
function benchOursNoWasm(path: string, ctx: number): Result {
  const me = fileURLToPath(import.meta.url);
  const r = spawnSync(process.execPath, [me, '--child', path, String(ctx)], { env: { ...process.env, QUEST_NO_WASM: '1' }, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(r.stderr);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

async function main() {
  if (process.argv[2] === '--child') { console.log(JSON.stringify(benchOurs(process.argv[3], Number(process.argv[4]), 1))); return; }
  if (process.argv.includes('--long')) { await longRows(); return; }
  // --only TEXT: the models whose name contains TEXT (e.g. Q4_K_M)
  const only = process.argv.indexOf('--only') > 0 ? process.argv[process.argv.indexOf('--only') + 1] : '';
  const all: [string, () => string, () => string][] = [['quest-tiny-8k (HF f16 folder / same as f16 GGUF)', () => DEFAULT_MODEL, tinyGguf],
    ['SmolLM2-135M shape, random, Q8_0', smolGguf, smolGguf], ['SmolLM2-135M shape, random, Q4_0', () => smolGguf('q4_0'), () => smolGguf('q4_0')],
    ['SmolLM2-135M shape, random, Q4_K_M (llama.cpp\'s mix)', () => smolGguf('q4_k_m'), () => smolGguf('q4_k_m')]];
  const models = all.filter(([name]) => name.includes(only)).map(([name, ours, gguf]) => [name, ours(), gguf()] as const);
  const rows: string[] = [];
  const f = (x: number | undefined) => (x === undefined ? '-' : x.toFixed(1));
  for (const [name, ours, gguf] of models) {
    for (const ctx of [512, 4096]) {
      console.error(`${name}, context ${ctx}...`);
      const a = benchOurs(ours, ctx);
      const b = ctx <= 512 ? benchOursNoWasm(ours, ctx) : undefined; // the TS kernels at 4096 take minutes
      // llama.cpp's default thread count oversubscribes this VM (~1 s per decode step): take the best of 1 and all cores
      const runs = [await benchLlamaCpp(gguf, ctx, a.vocab, 1), await benchLlamaCpp(gguf, ctx, a.vocab, availableParallelism())];
      const ok = runs.filter((r): r is Result => typeof r !== 'string');
      const lc = ok.length ? { prefill: Math.max(...ok.map((r) => r.prefill)), decode: Math.max(...ok.map((r) => r.decode)) } : undefined;
      rows.push(`| ${name} | ${ctx} | ${f(a.prefill)} | ${f(a.decode)} | ${f(a.first.prefill)} / ${f(a.first.decode)} | ${f(b?.prefill)} | ${f(b?.decode)} | ${f(lc?.prefill)} | ${f(lc?.decode)} | ` +
        `${lc ? (a.prefill / lc.prefill).toFixed(2) : '-'} | ${lc ? (a.decode / lc.decode).toFixed(2) : '-'} |`);
    }
  }
  console.log(`CPU benchmark (tokens/s; prefill of the whole context, then ${DECODE_STEPS} decode steps after it; ours: WebAssembly SIMD + worker threads on all cores, best of two runs in one process (first run: the process's first, V8 still compiling); TS-only: our plain TypeScript kernels, one thread; llama.cpp: best of 1 thread and all cores)`);
  console.log('| model | context | ours prefill | ours decode | ours first run prefill / decode | ours TS-only prefill | ours TS-only decode | llama.cpp prefill | llama.cpp decode | prefill ratio (ours/llama.cpp) | decode ratio |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(r);
}

/** `--long`: decode at 16K and 32K tokens of context on SmolLM2-135M's shape (Q8_0, a 32K context), ours
 *  dense and Quest (budget 2048) against llama.cpp dense, where the KV cache outweighs the weights. */
async function longRows(): Promise<void> {
  const path = smolGguf('q8_0', 32768), out: string[] = [];
  for (const ctx of [16384, 32768 - DECODE_STEPS - 16]) {
    console.error(`long context ${ctx}: ours dense and Quest 2048 (random KV cache), then llama.cpp (a real prefill: minutes)...`);
    const dense = benchOursDecodeAt(path, ctx, { policy: 'dense' }), quest = benchOursDecodeAt(path, ctx, { policy: 'quest', budget: 2048 });
    const dense16 = benchOursDecodeAt(path, ctx, { policy: 'dense' }, 'bf16'), quest16 = benchOursDecodeAt(path, ctx, { policy: 'quest', budget: 2048 }, 'bf16');
    // (--no-llamacpp: ours only, a quick comparison of our own variants)
    const lc = process.argv.includes('--no-llamacpp') ? 'not run' : await benchLlamaCpp(path, ctx, 49152, availableParallelism());
    const l = typeof lc === 'string' ? undefined : lc.decode;
    const ratio = (x: number) => (l ? (x / l).toFixed(2) : '-');
    out.push(`| ${ctx} | ${dense.toFixed(1)} | ${quest.toFixed(1)} | ${dense16.toFixed(1)} | ${quest16.toFixed(1)} | ${l?.toFixed(1) ?? lc} | ${ratio(dense)} / ${ratio(dense16)} | ${ratio(quest)} / ${ratio(quest16)} |`);
  }
  console.log(`Long context, SmolLM2-135M shape Q8_0 (decode tokens/s over ${DECODE_STEPS} steps; ours: KV cache filled with random keys/values, all cores, f32 and bf16 caches; llama.cpp: real prefill, all cores, its default context settings (f16 cache))`);
  console.log('| context | ours dense f32 | ours Quest 2048 f32 | ours dense bf16 | ours Quest 2048 bf16 | llama.cpp dense | dense ratio (f32 / bf16) | Quest ratio (ours Quest / llama.cpp dense; f32 / bf16) |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of out) console.log(r);
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
