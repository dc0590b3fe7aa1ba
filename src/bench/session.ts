// `npm run bench:session`: time to first token when a long document is prefilled once and asked many
// times, against a cold run over the whole prompt, in the same run:
//   cold            generate on document + question, nothing cached
//   session file    quest prefill's path: the document's session loaded from disk, then the question
//   prefix cache    the same document asked again in the same process (its KV kept in memory)
//   server          two streaming requests sharing the document: the second's first token, and its
//                   usage.prompt_tokens_details.cached_tokens
// Every warm answer must equal the cold run's greedy tokens. Runs --runs times; prints the spread.
// On a GPU, --shape 7b|8b|small times the same at --context (e.g. 32768) with random weights (no
// tokenizer: the server part is skipped, and the answers are compared as token ids).
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, type LLM } from '../engine/llm.js';
import { loadSession } from '../engine/session-file.js';
import { createServer } from '../server/server.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { getGpu, lastGpuError } from '../backend/webgpu/device.js';
import { GpuModel } from '../backend/webgpu/model.js';
import { GpuRunner, GpuSession } from '../engine/gpu-session.js';
import { gpuShape } from './gpu-shapes.js';
import { argmax } from '../engine/sampler.js';

const arg = (name: string, def: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : def; };
const CONTEXT = Number(arg('context', '8000'));
const RUNS = Number(arg('runs', '3'));
const ANSWER = 16;
const OUT = arg('out', 'results');
const SHAPE = arg('shape', '');

const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
const spread = (a: number[]) => `${median(a).toFixed(2)} s (${Math.min(...a).toFixed(2)}-${Math.max(...a).toFixed(2)})`;

interface Times { cold: number[]; file: number[]; prefix: number[]; save: number[]; server1: number[]; server2: number[]; cached: number[] }

function bookTokens(llm: LLM, n: number): number[] {
  const path = new URL('../../../shared/corpus/pride_and_prejudice.txt', import.meta.url).pathname;
  const text = existsSync(path) ? readFileSync(path, 'utf8') : Array.from({ length: n }, (_, i) => `Line ${i}: the ${['red', 'green', 'blue'][i % 3]} box holds ${i * 7} coins.`).join('\n');
  const ids = llm.encode(text);
  if (ids.length < n) throw new Error(`the text has ${ids.length} tokens, fewer than --context ${n}`);
  return ids.slice(0, n);
}

/** The model-file benchmark (CPU or WebGPU): the default model unless --model. */
async function withModel(): Promise<void> {
  const device = arg('device', 'cpu') as 'cpu' | 'webgpu';
  const llm = await loadModel(arg('model', DEFAULT_MODEL), { device });
  const doc = bookTokens(llm, CONTEXT);
  const questions = ['\n\nWho wrote the letter that Elizabeth read?\n', '\n\nWhere did Mr. Darcy live?\n'].map((q) => llm.tokenizer!.encode(q, { bos: false }));
  const dir = mkdtempSync(join(tmpdir(), 'quest-bench-session-')), file = join(dir, 'doc.qkv');
  const t: Times = { cold: [], file: [], prefix: [], save: [], server1: [], server2: [], cached: [] };
  const opts = { maxTokens: ANSWER, temperature: 0 };
  console.log(`${llm.path} on ${device}: a ${doc.length}-token document (Pride and Prejudice), questions of ${questions.map((q) => q.length).join(' and ')} tokens, ${ANSWER}-token greedy answers, ${RUNS} runs`);
  let fileBytes = 0;
  for (let run = 0; run < RUNS; run++) {
    llm.clearCache();
    const cold = await llm.complete('', { ...opts, promptIds: [...doc, ...questions[0]], cache: false });
    t.cold.push(cold.prefillMs / 1000);
    // quest prefill: the document once, saved
    let t0 = performance.now();
    const s = llm.session();
    await s.forward(doc, { logits: 'none', dense: true });
    await s.save(file);
    s.dispose();
    t.save.push((performance.now() - t0) / 1000);
    fileBytes = statSync(file).size;
    // quest generate --session: load, then the question
    t0 = performance.now();
    const loaded = await llm.loadSession(file);
    const warm = await llm.complete('', { ...opts, promptIds: questions[0], session: loaded });
    t.file.push((performance.now() - t0 - warm.decodeMs) / 1000);
    loaded.dispose();
    if (warm.tokens.join() !== cold.tokens.join()) throw new Error(`run ${run}: the session file's answer differs from the cold run's`);
    // the prefix cache: the document asked a second time in this process
    await llm.complete('', { ...opts, promptIds: [...doc, ...questions[1]] });
    const again = await llm.complete('', { ...opts, promptIds: [...doc, ...questions[0]] });
    t.prefix.push(again.prefillMs / 1000);
    if (again.tokens.join() !== cold.tokens.join()) throw new Error(`run ${run}: the prefix cache's answer differs from the cold run's`);
    await serverRun(llm, doc, questions, t, run);
  }
  rmSync(dir, { recursive: true, force: true });
  report(`${llm.path} on ${device}, ${doc.length}-token document`, t, fileBytes);
  llm.dispose();
}

/** Two streaming requests sharing the document (as the text of a completion prompt): first-token times. */
async function serverRun(llm: LLM, doc: number[], questions: number[][], t: Times, run: number): Promise<void> {
  llm.clearCache();
  const app = createServer(llm, { modelId: 'm', concurrency: 1 });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  const { default: OpenAI } = await import('openai'); // (a dev dependency: the GPU machine's --shape runs never load it)
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'x', maxRetries: 0, timeout: 3_600_000 });
  const text = (ids: number[]) => llm.tokenizer!.decode(ids);
  const ask = async (q: number[]) => {
    const t0 = performance.now();
    let first = 0, out = '', cached = -1;
    const s = await client.completions.create({ model: 'm', prompt: text(doc) + text(q), max_tokens: ANSWER, temperature: 0, stream: true, stream_options: { include_usage: true } });
    for await (const c of s) {
      if (!first && c.choices[0]?.text) first = performance.now() - t0;
      out += c.choices[0]?.text ?? '';
      if (c.usage) cached = c.usage.prompt_tokens_details?.cached_tokens ?? -1;
    }
    return { first: first / 1000, out, cached };
  };
  const r1 = await ask(questions[1]), r2 = await ask(questions[0]);
  await app.close();
  const cold = await llm.complete(text(doc) + text(questions[0]), { maxTokens: ANSWER, temperature: 0, cache: false });
  if (r2.out !== cold.text) throw new Error(`run ${run}: the server's second answer differs from a cold run's`);
  t.server1.push(r1.first); t.server2.push(r2.first); t.cached.push(r2.cached);
}

/** The GPU benchmark at the paper's scale: random weights of a 7B/8B shape, token ids only. */
async function withShape(): Promise<void> {
  const gpu = await getGpu();
  if (!gpu) { console.log(`no WebGPU adapter: ${lastGpuError}`); return; }
  const { config, name } = gpuShape(SHAPE, CONTEXT + 256);
  const m = GpuModel.random(gpu.device, config, 1, 'f16'), runner = new GpuRunner(m, 16);
  const doc = Array.from({ length: CONTEXT }, (_, i) => 3 + ((i * 7919) % (config.vocabSize - 3))), question = [5, 17, 29, 31, 7, 11, 13, 3, 19, 23, 37, 41];
  const dir = mkdtempSync(join(tmpdir(), 'quest-bench-session-')), file = join(dir, 'doc.qkv');
  const t: Times = { cold: [], file: [], prefix: [], save: [], server1: [], server2: [], cached: [] };
  console.log(`${gpu.adapterName}: ${name}, random f16 weights; a ${CONTEXT}-token document, a ${question.length}-token question, ${RUNS} runs`);
  const firstToken = async (s: GpuSession, ids: number[]) => argmax(await s.forward(ids, { dense: true }));
  let fileBytes = 0;
  for (let run = 0; run < RUNS; run++) {
    let t0 = performance.now();
    const cold = new GpuSession(runner);
    const want = await firstToken(cold, [...doc, ...question]);
    t.cold.push((performance.now() - t0) / 1000);
    cold.dispose();
    t0 = performance.now();
    const s = new GpuSession(runner);
    await s.forward(doc, { logits: 'none', dense: true });
    await s.save(file);
    t.save.push((performance.now() - t0) / 1000);
    fileBytes = statSync(file).size;
    t0 = performance.now();
    const loaded = new GpuSession(runner);
    await loadSession(loaded, file, m.fingerprint, config.maxSeqLen);
    const got = await firstToken(loaded, question);
    t.file.push((performance.now() - t0) / 1000);
    loaded.dispose();
    t0 = performance.now();
    const fork = s.fork();
    const again = await firstToken(fork, question);
    t.prefix.push((performance.now() - t0) / 1000);
    fork.dispose(); s.dispose();
    if (got !== want || again !== want) throw new Error(`run ${run}: warm first token ${got} / ${again}, cold ${want}`);
  }
  rmSync(dir, { recursive: true, force: true });
  report(`${gpu.adapterName}, ${name.split(' (')[0]}, ${CONTEXT}-token document`, t, fileBytes);
  runner.dispose(); m.dispose();
}

function report(what: string, t: Times, fileBytes: number): void {
  const cold = median(t.cold);
  const line = (label: string, a: number[], base = cold) => console.log(`  ${label.padEnd(44)} ${spread(a).padEnd(24)} ${base ? `${((100 * median(a)) / base).toFixed(1)}% of cold` : ''}`);
  console.log(`time to first token, median (min-max) of ${t.cold.length} runs:`);
  line('cold: document + question prefilled', t.cold, 0);
  line('session file: load + question (quest generate --session)', t.file);
  line('prefix cache: same document again, in memory', t.prefix);
  if (t.server1.length) {
    line('server, 1st request (cold)', t.server1, 0);
    line(`server, 2nd request (cached_tokens ${t.cached.join('/')})`, t.server2, median(t.server1));
  }
  console.log(`  (once: prefill + save of the document ${spread(t.save)}; session file ${(fileBytes / 2 ** 20).toFixed(0)} MiB)`);
  const target = median(t.file) <= 0.1 * cold && median(t.prefix) <= 0.1 * cold && (!t.server1.length || median(t.server2) <= 0.1 * median(t.server1));
  console.log(`target (warm time to first token <= 10% of cold): ${target ? 'met' : 'MISSED'}`);
  if (!existsSync(OUT)) mkdirSync(OUT, { recursive: true });
  writeFileSync(join(OUT, `bench-session${SHAPE ? `-${SHAPE}-${CONTEXT}` : ''}.json`), JSON.stringify({ what, ...t, fileBytes }, null, 1));
}

void (SHAPE ? withShape() : withModel()).catch((e) => { console.error(e instanceof Error ? e.message : e); process.exit(1); });
