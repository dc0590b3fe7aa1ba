// `quest serve`: an OpenAI-compatible HTTP server (fastify). Generations run concurrently up to a limit,
// interleaved token by token (the engine yields to the event loop between tokens), the rest wait in a
// FIFO queue; a full queue is refused with 429. A client that disconnects cancels its generation.
// On the CPU running generations' decode steps are batched (one forward pass for all of them); a new
// request's prefill runs in chunks between batches.
// Safe to expose: an API key (Bearer) guards /v1, CORS is off unless an origin is allowed, every request
// has a time limit, and shutdown stops admitting, lets running generations finish (within a grace
// period, then cancels them) and closes.
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type { LLM, GenerateOptions } from '../engine/llm.js';
import { ApiError, parseCommon, parseMessages, parsePrompt, type CommonRequest } from './validate.js';

export interface ServeOptions {
  modelId: string;
  /** generations running at once (token-interleaved) */
  concurrency?: number;
  /** requests allowed to wait beyond those */
  queueLimit?: number;
  bodyLimit?: number;
  logger?: boolean;
  /** required as `Authorization: Bearer <key>` on /v1 routes (none: open) */
  apiKey?: string;
  /** an origin allowed to call the API from a web page ('*' for any); none: no CORS headers */
  cors?: string;
  /** a request's time limit in ms, queueing included (default 10 minutes) */
  timeoutMs?: number;
  /** continuous batching of the running generations' decode steps (default: LLM.batchesByDefault — the
   *  CPU, and WebGPU with tensor cores; elsewhere each generation keeps its own steps in flight) */
  batch?: boolean;
  /** prompt tokens per prefill chunk: other requests' decode steps run between chunks */
  prefillChunk?: number;
}

/** The server with its shutdown: stop admitting, finish or (after graceMs) cancel running work, close. */
export type QuestServer = FastifyInstance & { shutdown(graceMs?: number): Promise<void> };

/** FIFO admission: at most `limit` holders at once. */
class Admission {
  private active = 0;
  private waiting: (() => void)[] = [];
  constructor(private readonly limit: number, private readonly queueLimit: number) {}
  get queued() { return this.waiting.length; }
  get running() { return this.active; }
  async acquire(signal: AbortSignal): Promise<void> {
    if (this.active < this.limit) { this.active++; return; }
    if (this.waiting.length >= this.queueLimit) throw new ApiError(429, 'the server is busy: too many requests queued, retry later', null, 'rate_limit_exceeded', 'rate_limit_error');
    await new Promise<void>((resolve, reject) => {
      const go = () => { signal.removeEventListener('abort', cancel); this.refusals.delete(go); resolve(); };
      const cancel = () => { this.waiting = this.waiting.filter((w) => w !== go); this.refusals.delete(go); reject(new Error('client went away')); };
      this.waiting.push(go);
      this.refusals.set(go, (e) => { signal.removeEventListener('abort', cancel); this.refusals.delete(go); reject(e); });
      signal.addEventListener('abort', cancel, { once: true });
    });
    this.active++;
  }
  release(): void {
    this.active--;
    const next = this.waiting.shift();
    next?.();
  }
  /** Refuses every waiting request with `error` (shutdown). */
  refuseWaiting(error: Error): void {
    for (const w of this.waiting.splice(0)) this.refusals.get(w)?.(error);
  }
  private refusals = new Map<() => void, (e: Error) => void>();
}

export function createServer(llm: LLM, o: ServeOptions): QuestServer {
  const app = Fastify({ logger: o.logger ?? false, bodyLimit: o.bodyLimit ?? 4 * 2 ** 20, forceCloseConnections: 'idle' }) as unknown as QuestServer;
  const timeoutMs = o.timeoutMs ?? 600_000;
  const running = new Set<AbortController>();
  let closing = false;
  // the key compared as digests: constant time whatever the lengths
  const digest = (x: string) => createHash('sha256').update(x).digest();
  const keyDigest = o.apiKey ? digest(o.apiKey) : null;

  app.addHook('onRequest', async (req, reply) => {
    if (o.cors) {
      reply.header('access-control-allow-origin', o.cors);
      if (o.cors !== '*') reply.header('vary', 'origin');
      if (req.method === 'OPTIONS') {
        reply.header('access-control-allow-methods', 'GET, POST, OPTIONS');
        reply.header('access-control-allow-headers', 'authorization, content-type');
        reply.header('access-control-max-age', '600');
        return reply.status(204).send();
      }
    }
    if (keyDigest && req.url.startsWith('/v1')) {
      const m = /^Bearer (.+)$/.exec(req.headers.authorization ?? '');
      if (!m || !timingSafeEqual(digest(m[1]), keyDigest)) {
        throw new ApiError(401, m ? 'Incorrect API key provided.' : 'Missing API key: send it as "Authorization: Bearer <key>".', null, 'invalid_api_key');
      }
    }
    if (closing && req.url.startsWith('/v1') && req.method === 'POST') throw new ApiError(503, 'the server is shutting down', null, 'server_shutting_down', 'server_error');
  });
  const admission = new Admission(o.concurrency ?? 4, o.queueLimit ?? 256);
  const created = Math.floor(Date.now() / 1000);
  const ctx = llm.config.maxSeqLen;

  app.setErrorHandler((err: Error & { statusCode?: number; code?: string }, _req, reply) => {
    if (err instanceof ApiError) return reply.status(err.status).send(err.body());
    const status = err.statusCode ?? 500;
    const code = err.code === 'FST_ERR_CTP_BODY_TOO_LARGE' ? 'body_too_large' : err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE' ? 'unsupported_media_type' : status === 400 ? 'invalid_json' : null;
    const msg = status >= 500 ? `internal error: ${err.message}` : code === 'invalid_json' ? `the request body is not valid JSON: ${err.message}` : err.message;
    return reply.status(status).send(new ApiError(status, msg, null, code).body());
  });
  app.setNotFoundHandler((req, reply) => reply.status(404).send(new ApiError(404, `no route ${req.method} ${req.url}`, null, 'unknown_route').body()));

  app.get('/health', async () => ({ status: 'ok', model: o.modelId, running: admission.running, queued: admission.queued }));
  app.get('/v1/models', async () => ({ object: 'list', data: [{ id: o.modelId, object: 'model', created, owned_by: 'quest' }] }));

  const run = async (req: FastifyRequest, reply: FastifyReply, chat: boolean) => {
    const { b, req: common } = parseCommon(req.body, [o.modelId]);
    let prompt: string;
    if (chat) {
      if (!llm.tokenizer) throw new ApiError(400, 'this model has no tokenizer: chat is unavailable', null, 'unsupported');
      prompt = llm.tokenizer.applyChatTemplate(parseMessages(b));
    } else prompt = parsePrompt(b);
    const promptTokens = llm.encode(prompt);
    if (promptTokens.length + 1 > ctx) {
      throw new ApiError(400, `the prompt has ${promptTokens.length} tokens; this model's context length is ${ctx}`, chat ? 'messages' : 'prompt', 'context_length_exceeded');
    }
    const abort = new AbortController();
    const onClose = () => { if (!reply.raw.writableFinished) abort.abort(); };
    reply.raw.on('close', onClose);
    let timedOut = false;
    const timer = setTimeout(() => { timedOut = true; abort.abort(); }, timeoutMs);
    const late = () => new ApiError(504, `the request took longer than the server's limit of ${timeoutMs / 1000} s`, null, 'timeout', 'server_error');
    try {
      await admission.acquire(abort.signal).catch((e) => { if (e instanceof ApiError) throw e; abort.abort(); });
    } catch (e) { clearTimeout(timer); reply.raw.off('close', onClose); throw e; }
    if (abort.signal.aborted) { clearTimeout(timer); reply.raw.off('close', onClose); if (timedOut) throw late(); return reply; }
    running.add(abort);
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`;
    const opts: GenerateOptions = {
      promptIds: promptTokens, maxTokens: Math.min(common.maxTokens, ctx - promptTokens.length), temperature: common.temperature,
      topP: common.topP, seed: common.seed, stop: common.stop, signal: abort.signal, attention: common.attention,
      batch: o.batch ?? llm.batchesByDefault, prefillChunk: o.prefillChunk,
    };
    try {
      return common.stream ? await stream(reply, id, chat, common, opts, () => timedOut) : await whole(reply, id, chat, common, opts, promptTokens.length, () => timedOut);
    } finally {
      clearTimeout(timer);
      running.delete(abort);
      admission.release();
      reply.raw.off('close', onClose);
    }
  };

  // (cached_tokens: prompt tokens whose KV came from the prefix cache, as OpenAI reports its prompt caching)
  const usageOf = (r: { tokens: number[]; cachedTokens: number }, nPrompt: number) => ({
    prompt_tokens: nPrompt, completion_tokens: r.tokens.length, total_tokens: nPrompt + r.tokens.length,
    prompt_tokens_details: { cached_tokens: r.cachedTokens },
  });

  const finish = (r: string) => (r === 'stop' ? 'stop' : r === 'abort' ? 'stop' : 'length');

  const whole = async (reply: FastifyReply, id: string, chat: boolean, c: CommonRequest, opts: GenerateOptions, nPrompt: number, timedOut: () => boolean) => {
    const r = await llm.complete('', opts);
    if (timedOut()) throw new ApiError(504, `the request took longer than the server's limit of ${timeoutMs / 1000} s`, null, 'timeout', 'server_error');
    const usage = usageOf(r, nPrompt);
    const choice = chat
      ? { index: 0, message: { role: 'assistant', content: r.text }, finish_reason: finish(r.finishReason), logprobs: null }
      : { index: 0, text: r.text, finish_reason: finish(r.finishReason), logprobs: null };
    return reply.send({ id, object: chat ? 'chat.completion' : 'text_completion', created: Math.floor(Date.now() / 1000), model: c.model, choices: [choice], usage });
  };

  const stream = async (reply: FastifyReply, id: string, chat: boolean, c: CommonRequest, opts: GenerateOptions, timedOut: () => boolean) => {
    reply.hijack();
    const res = reply.raw;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
    const t = Math.floor(Date.now() / 1000);
    const send = (delta: Record<string, unknown> | string, fin: string | null) => {
      const choice = chat ? { index: 0, delta, finish_reason: fin, logprobs: null } : { index: 0, text: delta, finish_reason: fin, logprobs: null };
      res.write(`data: ${JSON.stringify({ id, object: chat ? 'chat.completion.chunk' : 'text_completion', created: t, model: c.model, choices: [choice] })}\n\n`);
    };
    if (chat) send({ role: 'assistant', content: '' }, null);
    const gen = llm.generate('', opts);
    try {
      for await (const e of gen) if (e.text && !res.destroyed) send(chat ? { content: e.text } : e.text, null);
      const r = await gen.result;
      if (timedOut() && !res.destroyed) res.write(`data: ${JSON.stringify(new ApiError(504, `the request took longer than the server's limit of ${timeoutMs / 1000} s`, null, 'timeout', 'server_error').body())}\n\n`);
      else if (!res.destroyed) {
        send(chat ? {} : '', finish(r.finishReason));
        if (c.streamUsage) res.write(`data: ${JSON.stringify({ id, object: chat ? 'chat.completion.chunk' : 'text_completion', created: t, model: c.model, choices: [], usage: usageOf(r, r.promptTokens) })}\n\n`);
        res.write('data: [DONE]\n\n');
      }
    } catch (e) {
      if (!res.destroyed) res.write(`data: ${JSON.stringify(new ApiError(500, (e as Error).message).body())}\n\n`);
    }
    res.end();
  };

  app.post('/v1/completions', (req, reply) => run(req, reply, false));
  app.post('/v1/chat/completions', (req, reply) => run(req, reply, true));

  app.shutdown = async (graceMs = 30_000) => {
    closing = true;
    admission.refuseWaiting(new ApiError(503, 'the server is shutting down', null, 'server_shutting_down', 'server_error'));
    const deadline = Date.now() + graceMs;
    while (running.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    for (const a of running) a.abort(); // (past the grace period: cancelled, their clients get what was generated)
    while (running.size) await new Promise((r) => setTimeout(r, 20));
    await app.close();
  };
  return app;
}
