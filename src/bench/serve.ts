// `npm run bench:serve`: 64 concurrent streaming requests of mixed lengths against the server on
// loopback (the default model; --device webgpu for the GPU), first with each generation decoding on its
// own (interleaved token by token), then with continuous batching (decode steps batched). Every
// response is checked against the same prompt run alone with greedy decoding: none may be lost or mixed
// up; refusals (429) must be clean. Prints throughput and p50/p99 latency (first token and whole response).
import { loadModel } from '../engine/llm.js';
import { createServer } from '../server/server.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';

const N = 64;
const WORDS = ['It was', 'The sky', '"Well, Prince', 'Chapter', 'Pierre said', 'Moscow', 'Natasha', 'The old count', 'At dawn', 'He looked'];

function pct(a: number[], p: number): number { const s = [...a].sort((x, y) => x - y); return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]; }

const arg = (name: string, def: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : def; };

async function main() {
  const concurrency = Number(arg('concurrency', process.env.QUEST_SERVE_CONCURRENCY ?? '16'));
  const device = arg('device', 'cpu') as 'cpu' | 'webgpu';
  const llm = await loadModel(DEFAULT_MODEL, { device });
  const reqs = Array.from({ length: N }, (_, i) => ({ prompt: `${WORDS[i % WORDS.length]} ${'and then '.repeat(i % 7)}`.trim(), max: 8 + ((i * 13) % 57) }));
  console.error(`computing the ${N} reference answers alone (greedy)...`);
  const expected: string[] = [];
  for (const r of reqs) expected.push((await llm.complete(r.prompt, { maxTokens: r.max, temperature: 0, cache: false })).text);
  let failed = false;
  for (const batch of [false, true]) {
    llm.clearCache();
    failed = (await round(llm, reqs, expected, concurrency, device, batch)) || failed;
  }
  if (failed) process.exit(1);
}

async function round(llm: Awaited<ReturnType<typeof loadModel>>, reqs: { prompt: string; max: number }[], expected: string[], concurrency: number, device: string, batch: boolean): Promise<boolean> {
  const app = createServer(llm, { modelId: 'm', concurrency, queueLimit: N, batch });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  const { default: OpenAI } = await import('openai'); // (a dev dependency: absent on the GPU machine's package set)
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'x', maxRetries: 0, timeout: 600_000 });
  const stats0 = { ...llm.batchStats };
  console.error(`firing ${N} concurrent streaming requests (server concurrency ${concurrency})...`);
  const t0 = performance.now();
  const results = await Promise.all(reqs.map(async (r, i) => {
    const start = performance.now();
    let first = 0, text = '', tokens = 0;
    try {
      const s = await client.completions.create({ model: 'm', prompt: r.prompt, max_tokens: r.max, temperature: 0, stream: true });
      for await (const c of s) { if (c.choices[0].text) { if (!first) first = performance.now() - start; text += c.choices[0].text; tokens++; } }
      return { i, ok: text === expected[i], refused: false, first, total: performance.now() - start, tokens, text };
    } catch (e) {
      return { i, ok: false, refused: /429/.test(String(e)), first: 0, total: performance.now() - start, tokens: 0, text: String(e) };
    }
  }));
  const wall = (performance.now() - t0) / 1000;
  await app.close();
  const done = results.filter((r) => r.ok), refused = results.filter((r) => r.refused), wrong = results.filter((r) => !r.ok && !r.refused);
  const toks = done.reduce((a, r) => a + r.tokens, 0);
  const b = llm.batchStats, steps = b.steps - stats0.steps, batches = b.batches - stats0.batches;
  console.log(`\n${N} concurrent streaming requests, default model, server concurrency ${concurrency}, ${device}, ${batch ? `continuous batching (mean batch ${(steps / Math.max(1, batches)).toFixed(1)}, largest ${b.largest})` : 'each generation on its own (token-interleaved)'}`);
  console.log(`completed and identical to the greedy run alone: ${done.length}/${N}; cleanly refused (429): ${refused.length}; lost or mixed up: ${wrong.length}`);
  console.log(`wall ${wall.toFixed(1)} s | throughput ${(toks / wall).toFixed(1)} tokens/s (stream chunks) | ${(done.length / wall).toFixed(2)} requests/s`);
  console.log(`time to first token p50 ${pct(done.map((r) => r.first), 50).toFixed(0)} ms, p99 ${pct(done.map((r) => r.first), 99).toFixed(0)} ms | ` +
    `whole response p50 ${pct(done.map((r) => r.total), 50).toFixed(0)} ms, p99 ${pct(done.map((r) => r.total), 99).toFixed(0)} ms`);
  for (const w of wrong.slice(0, 3)) console.log(`MISMATCH request ${w.i}: ${JSON.stringify(w.text)} vs ${JSON.stringify(expected[w.i])}`);
  return wrong.length > 0;
}

main().catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
