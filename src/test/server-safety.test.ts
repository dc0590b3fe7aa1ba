// The server exposed safely: API key (the openai client and raw HTTP), CORS off unless allowed, the
// per-request time limit, graceful shutdown (in the library and on SIGTERM from the CLI), and the
// warning for a non-loopback address without a key.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import OpenAI from 'openai';
import { loadModel, type LLM } from '../engine/llm.js';
import { createServer, type QuestServer } from '../server/server.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';

let llm: LLM;
before(async () => { llm = await loadModel(DEFAULT_MODEL); });
after(() => llm.dispose());

async function serve(o: Partial<Parameters<typeof createServer>[1]> = {}): Promise<{ app: QuestServer; base: string }> {
  const app = createServer(llm, { modelId: 'm', ...o });
  return { app, base: await app.listen({ host: '127.0.0.1', port: 0 }) };
}
const post = (base: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
  fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

test('--api-key: 401 in OpenAI\'s error shape without or with a wrong key; the right key works; /health stays open', async () => {
  const { app, base } = await serve({ apiKey: 's3cret' });
  const body = { model: 'm', prompt: 'Once', max_tokens: 3, temperature: 0 };
  const none = await post(base, '/v1/completions', body);
  assert.equal(none.status, 401);
  assert.deepEqual(Object.keys((await none.json()).error).sort(), ['code', 'message', 'param', 'type']);
  const wrong = await post(base, '/v1/completions', body, { authorization: 'Bearer nope' });
  assert.equal(wrong.status, 401);
  assert.equal((await wrong.json()).error.code, 'invalid_api_key');
  assert.equal((await fetch(`${base}/v1/models`)).status, 401);
  const bad = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'nope', maxRetries: 0 });
  await assert.rejects(bad.completions.create(body), (e: unknown) => e instanceof OpenAI.AuthenticationError);
  const good = new OpenAI({ baseURL: `${base}/v1`, apiKey: 's3cret', maxRetries: 0 });
  const r = await good.completions.create(body);
  assert.equal(r.choices[0].text, (await llm.complete('Once', { maxTokens: 3, temperature: 0 })).text);
  assert.equal((await fetch(`${base}/health`)).status, 200);
  await app.close();
});

test('CORS: no headers by default; --cors ORIGIN answers preflights and tags responses', async () => {
  const plain = await serve();
  const r0 = await fetch(`${plain.base}/v1/models`, { headers: { origin: 'https://example.com' } });
  assert.equal(r0.headers.get('access-control-allow-origin'), null);
  assert.notEqual((await fetch(`${plain.base}/v1/models`, { method: 'OPTIONS', headers: { origin: 'https://example.com', 'access-control-request-method': 'POST' } })).status, 204);
  await plain.app.close();
  const { app, base } = await serve({ cors: 'https://example.com', apiKey: 'k' });
  const pre = await fetch(`${base}/v1/chat/completions`, { method: 'OPTIONS', headers: { origin: 'https://example.com', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' } });
  assert.equal(pre.status, 204, 'a preflight needs no key');
  assert.equal(pre.headers.get('access-control-allow-origin'), 'https://example.com');
  assert.match(pre.headers.get('access-control-allow-headers') ?? '', /authorization/);
  const r = await fetch(`${base}/v1/models`, { headers: { origin: 'https://example.com', authorization: 'Bearer k' } });
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('access-control-allow-origin'), 'https://example.com');
  await app.close();
});

test('a request over the time limit ends with a 504 timeout error (whole and streaming)', async () => {
  const { app, base } = await serve({ timeoutMs: 300 });
  const body = { model: 'm', prompt: 'Once upon a time', max_tokens: 4000, temperature: 0 };
  const t0 = performance.now();
  const r = await post(base, '/v1/completions', body);
  assert.equal(r.status, 504);
  assert.equal((await r.json()).error.code, 'timeout');
  assert.ok(performance.now() - t0 < 5000, 'stopped near the limit, not after 4000 tokens');
  const s = await post(base, '/v1/completions', { ...body, stream: true });
  const text = await s.text();
  assert.match(text, /"code":"timeout"/);
  assert.doesNotMatch(text, /\[DONE\]/);
  await app.close();
});

test('shutdown: running generations finish, waiting and new requests get 503, then the server closes', async () => {
  const { app, base } = await serve({ concurrency: 1 });
  const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'x', maxRetries: 0 });
  const want = await llm.complete('It was', { maxTokens: 200, temperature: 0 });
  // (streamed, so that its first token proves it runs before the next request arrives: with one slot, that
  // one waits, however fast the machine)
  const stream = await client.completions.create({ model: 'm', prompt: 'It was', max_tokens: 200, temperature: 0, stream: true });
  const chunks = stream[Symbol.asyncIterator]();
  let text = (await chunks.next()).value!.choices[0].text;
  const waiting = post(base, '/v1/completions', { model: 'm', prompt: 'The', max_tokens: 5 });
  await new Promise((r) => setTimeout(r, 50));
  const closed = app.shutdown(30_000);
  assert.equal((await post(base, '/v1/completions', { model: 'm', prompt: 'x', max_tokens: 2 }).catch(() => ({ status: 503 }))).status, 503);
  assert.equal((await waiting).status, 503);
  for (let c = await chunks.next(); !c.done; c = await chunks.next()) text += c.value.choices[0].text;
  assert.equal(text, want.text, 'the running generation finished');
  await closed;
  await assert.rejects(fetch(`${base}/health`), 'closed');
});

test('shutdown past the grace period cancels what still runs', async () => {
  const { app, base } = await serve();
  const s = post(base, '/v1/completions', { model: 'm', prompt: 'Once', max_tokens: 4000, stream: true });
  await new Promise((r) => setTimeout(r, 200));
  const t0 = performance.now();
  await app.shutdown(100);
  assert.ok(performance.now() - t0 < 5000, 'cancelled, not run to 4000 tokens');
  assert.match(await (await s).text(), /data:/);
});

test('quest serve: a warning on a non-loopback address without a key; SIGTERM exits 0', async () => {
  const cli = new URL('../cli/main.js', import.meta.url).pathname;
  const child = spawn(process.execPath, [cli, 'serve', '--host', '0.0.0.0', '--port', '0'], { env: { ...process.env, QUEST_API_KEY: '' } });
  let err = '';
  child.stderr.on('data', (d) => { err += d; });
  const code = new Promise<number | null>((r) => child.on('exit', r));
  try {
    for (let i = 0; i < 600 && !/quest serving/.test(err); i++) await new Promise((r) => setTimeout(r, 100));
    assert.match(err, /warning: listening on 0\.0\.0\.0 without an API key/);
  } finally { child.kill('SIGTERM'); } // (a failed check must not leave the server running the test file forever)
  assert.equal(await code, 0);
  assert.match(err, /SIGTERM: no new requests/);
});
