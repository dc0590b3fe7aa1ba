// The OpenAI-compatible server on a loopback port: the official `openai` client (streaming and not),
// raw HTTP for malformed requests, concurrency and cancellation.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import type { FastifyInstance } from 'fastify';
import { loadModel, type LLM } from '../engine/llm.js';
import { createServer } from '../server/server.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { commonPrefix } from '../engine/prefix-cache.js';

let llm: LLM, app: FastifyInstance, base: string, client: OpenAI;
const MODEL = 'quest-tiny-8k';

before(async () => {
  llm = await loadModel(DEFAULT_MODEL);
  app = createServer(llm, { modelId: MODEL, concurrency: 2, queueLimit: 4, bodyLimit: 64 * 1024 });
  base = await app.listen({ host: '127.0.0.1', port: 0 });
  client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
});
after(async () => { await app.close(); });

const PROMPT = '"Well, Prince, so Genoa and Lucca are now';

test('GET /health and /v1/models', async () => {
  assert.equal((await (await fetch(`${base}/health`)).json()).status, 'ok');
  const models = await client.models.list();
  assert.deepEqual(models.data.map((m) => m.id), [MODEL]);
});

test('completions through the openai client equal the engine run alone (greedy), streaming and not', async () => {
  const alone = await llm.complete(PROMPT, { maxTokens: 24, temperature: 0 });
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 24, temperature: 0 });
  assert.equal(r.choices[0].text, alone.text);
  assert.equal(r.usage?.completion_tokens, alone.tokens.length);
  const s = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 24, temperature: 0, stream: true });
  let text = '', finish: string | null = null;
  for await (const c of s) { text += c.choices[0].text; finish = c.choices[0].finish_reason ?? finish; }
  assert.equal(text, alone.text);
  assert.equal(finish, 'length');
});

test('chat completions (streaming and not) and the quest extension', async () => {
  const messages = [{ role: 'user' as const, content: 'Tell me about Moscow.' }];
  const r = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 16, temperature: 0 });
  assert.equal(r.choices[0].message.role, 'assistant');
  const alone = await llm.complete(llm.tokenizer!.applyChatTemplate(messages), { maxTokens: 16, temperature: 0 });
  assert.equal(r.choices[0].message.content, alone.text);
  const s = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 16, temperature: 0, stream: true });
  let text = '';
  for await (const c of s) text += c.choices[0]?.delta?.content ?? '';
  assert.equal(text, alone.text);
  const q = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 8, temperature: 0, quest: { policy: 'quest', budget: 64 } } as never);
  assert.equal(typeof q.choices[0].message.content, 'string');
});

test('stop strings and seeds through the API', async () => {
  const alone = await llm.complete(PROMPT, { maxTokens: 30, temperature: 0 });
  const stop = alone.text.slice(10, 13);
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 30, temperature: 0, stop: [stop] });
  assert.equal(r.choices[0].text, alone.text.slice(0, alone.text.indexOf(stop)));
  assert.equal(r.choices[0].finish_reason, 'stop');
  const a = await client.completions.create({ model: MODEL, prompt: 'It was', max_tokens: 12, temperature: 1, seed: 7 });
  const b = await client.completions.create({ model: MODEL, prompt: 'It was', max_tokens: 12, temperature: 1, seed: 7 });
  assert.equal(a.choices[0].text, b.choices[0].text);
});

async function post(path: string, body: string, headers: Record<string, string> = { 'content-type': 'application/json' }) {
  const r = await fetch(`${base}${path}`, { method: 'POST', body, headers });
  return { status: r.status, body: await r.json() as { error: { message: string; type: string; code: string | null } } };
}

test('bad requests get 4xx with the OpenAI error shape', async () => {
  const cases: [string, number, RegExp][] = [
    ['{"model": "quest-tiny-8k", "prompt": ', 400, /not valid JSON/],
    [JSON.stringify({ model: 'gpt-9', prompt: 'hi' }), 404, /does not exist/],
    [JSON.stringify({ model: MODEL, prompt: 'hi', max_tokens: -5 }), 400, /max_tokens/],
    [JSON.stringify({ model: MODEL, prompt: 'hi', max_tokens: 1e9 }), 400, /max_tokens/],
    [JSON.stringify({ model: MODEL, prompt: 42 }), 400, /'prompt' must be a string/],
    [JSON.stringify({ model: MODEL, prompt: 'hi', temperature: 'hot' }), 400, /temperature/],
    [JSON.stringify({ model: MODEL, prompt: 'hi', quest: { policy: 'magic' } }), 400, /quest.policy/],
    [JSON.stringify({ model: MODEL, prompt: 'hi', quest: { policy: 'quest', budget: 0 } }), 400, /budget/],
    [JSON.stringify({ model: MODEL, prompt: 'the sky is blue. '.repeat(3000) }), 400, /context length is 8192/],
    [JSON.stringify({ model: MODEL, prompt: 'x'.repeat(100 * 1024) }), 413, /too large/i],
  ];
  for (const [body, status, msg] of cases) {
    const r = await post('/v1/completions', body);
    assert.equal(r.status, status, `${body.slice(0, 60)} -> ${r.status} ${JSON.stringify(r.body)}`);
    assert.match(r.body.error.message, msg);
    assert.equal(typeof r.body.error.type, 'string');
  }
  const chat = await post('/v1/chat/completions', JSON.stringify({ model: MODEL, messages: [{ role: 'wizard', content: 'x' }] }));
  assert.equal(chat.status, 400);
  assert.equal((await fetch(`${base}/v1/nothing`)).status, 404);
});

test('a bad request does not disturb one in flight; concurrent requests each get their own answer', async () => {
  const prompts = ['It was', 'The sky', '"Well, Prince', 'Chapter', 'Pierre', 'Moscow'];
  const alone = await Promise.all(prompts.map((p) => llm.complete(p, { maxTokens: 12, temperature: 0 })));
  const inFlight = prompts.map((p) => client.completions.create({ model: MODEL, prompt: p, max_tokens: 12, temperature: 0 }));
  const bad = await post('/v1/completions', '{oops');
  assert.equal(bad.status, 400);
  const got = await Promise.allSettled(inFlight);
  got.forEach((g, i) => {
    if (g.status === 'fulfilled') assert.equal(g.value.choices[0].text, alone[i].text, `request ${i} mixed up`);
    else assert.match(String(g.reason), /429/); // cleanly refused: queue full
  });
});

test('a client that disconnects cancels its generation', async () => {
  const ac = new AbortController();
  const s = await client.completions.create({ model: MODEL, prompt: 'Once', max_tokens: 4000, temperature: 0, stream: true }, { signal: ac.signal });
  let n = 0;
  try { for await (const _ of s) { if (++n === 3) ac.abort(); } } catch { /* aborted */ }
  // the generation stops (4000 tokens would take far longer than this wait)
  let running = -1;
  for (let i = 0; i < 50 && running !== 0; i++) { await new Promise((r) => setTimeout(r, 100)); running = (await (await fetch(`${base}/health`)).json()).running; }
  assert.equal(running, 0, 'the disconnected generation is still running');
  const t0 = Date.now();
  const r = await client.completions.create({ model: MODEL, prompt: 'It was', max_tokens: 4, temperature: 0 });
  assert.equal(typeof r.choices[0].text, 'string');
  assert.ok(Date.now() - t0 < 20000);
});

test('two requests sharing a long system prompt: the second reuses its KV (usage.prompt_tokens_details.cached_tokens) and answers as a cold run', async () => {
  llm.clearCache();
  const doc = Array.from({ length: 120 }, (_, i) => `Item ${i}: the ${['red', 'green', 'blue'][i % 3]} box holds ${i * 7} coins.`).join(' ');
  const ask = (q: string) => [{ role: 'system' as const, content: doc }, { role: 'user' as const, content: q }];
  const shared = commonPrefix(llm.encode(llm.tokenizer!.applyChatTemplate(ask('How many coins are in item 3?'))), llm.encode(llm.tokenizer!.applyChatTemplate(ask('Which box is item 40?'))));
  assert.ok(shared > 1000, `a long shared prefix (${shared} tokens)`);
  const r1 = await client.chat.completions.create({ model: MODEL, messages: ask('How many coins are in item 3?'), max_tokens: 12, temperature: 0 });
  assert.equal(r1.usage?.prompt_tokens_details?.cached_tokens, 0);
  const cold = await llm.complete(llm.tokenizer!.applyChatTemplate(ask('Which box is item 40?')), { maxTokens: 12, temperature: 0, cache: false });
  const s = await client.chat.completions.create({ model: MODEL, messages: ask('Which box is item 40?'), max_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true } });
  let text = '', usage: OpenAI.CompletionUsage | undefined;
  for await (const c of s) { text += c.choices[0]?.delta?.content ?? ''; usage = c.usage ?? usage; }
  assert.equal(usage?.prompt_tokens_details?.cached_tokens, shared);
  assert.equal(text, cold.text);
  await assert.rejects(fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL, messages: ask('x'), stream: true, stream_options: { include_usage: 'yes' } }) })
    .then(async (r) => { if (r.status !== 400) throw new Error(`status ${r.status}`); throw new Error(((await r.json()) as { error: { message: string } }).error.message); }), /stream_options/);
});

test('continuous batching: concurrent requests of mixed lengths and policies share batched decode steps and each get their answer alone', async () => {
  const app2 = createServer(llm, { modelId: MODEL, concurrency: 8, prefillChunk: 64 });
  const base2 = await app2.listen({ host: '127.0.0.1', port: 0 });
  const c2 = new OpenAI({ baseURL: `${base2}/v1`, apiKey: 'unused', maxRetries: 0 });
  llm.clearCache();
  const reqs = Array.from({ length: 8 }, (_, i) => ({
    prompt: `${['It was', 'The sky', '"Well, Prince', 'Chapter'][i % 4]} ${'and then '.repeat(i * 9)}`.trim(),
    max: 6 + ((i * 7) % 19), quest: i % 2 ? { policy: 'quest', budget: 32 } : undefined, seed: i % 3 === 0 ? 7 + i : undefined,
  }));
  const alone: string[] = [];
  for (const r of reqs) {
    alone.push((await llm.complete(r.prompt, { maxTokens: r.max, temperature: r.seed ? 0.8 : 0, seed: r.seed, attention: r.quest as never, cache: false })).text);
  }
  const before = llm.batchStats.largest;
  const got = await Promise.all(reqs.map((r) => c2.completions.create({ model: MODEL, prompt: r.prompt, max_tokens: r.max, temperature: r.seed ? 0.8 : 0, seed: r.seed, quest: r.quest } as never)));
  got.forEach((g, i) => assert.equal((g as OpenAI.Completion).choices[0].text, alone[i], `request ${i}`));
  assert.ok(llm.batchStats.largest > 1 && llm.batchStats.largest >= before, `decode steps were batched (largest batch ${llm.batchStats.largest})`);
  await app2.close();
});
