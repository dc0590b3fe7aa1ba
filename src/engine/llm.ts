// The library's front door: load a model, generate text as a stream of tokens, chat.
import { loadModelFiles, type LoadProgress } from '../model/load.js';
import type { ModelFiles } from '../model/model-files.js';
import { isRemote } from '../model/fetch-files.js';
import { cachedOrFetched } from '../model/model-cache.js';
import type { ModelConfig } from '../model/config.js';
import { TextTokenizer, StreamDecoder, type ChatMessage } from '../tokenizer/tokenizer.js';
import type { AttentionOptions } from '../attention/policy.js';
import { DEFAULT_ATTENTION, validateAttentionOptions } from '../attention/policy.js';
import { createPolicy } from '../attention/create.js';
import { decodeBatch, makeModel, PREFILL_CHUNK, Session, type Model } from './session.js';
import { StepBatcher, type AheadSteps, type BatchStats, type BatchStep } from './batcher.js';
import { DEFAULT_PREFIX_CACHE_BYTES, PrefixCache } from './prefix-cache.js';
import { loadSession, type SessionFileOptions } from './session-file.js';
import { releaseModelBytes } from '../model/file-bytes.js';
import { argmax as argmaxOf, Sampler, validateSampling, type SamplingOptions } from './sampler.js';
import { GpuRunner, GpuSession, MAX_BATCH } from './gpu-session.js';
import { getGpu, lastGpuError, matrixConfig, processEnv } from '../backend/webgpu/device.js';
import { GpuModel } from '../backend/webgpu/model.js';
import { KV_TYPES, type KVType } from '../kv/paged-cache.js';

/** A macrotask turn: setImmediate in Node; in browsers a message (setTimeout clamps to 4 ms once nested). */
const yieldToEventLoop: () => Promise<void> = typeof setImmediate === 'function'
  ? () => new Promise((r) => setImmediate(r))
  : (() => {
      const ch = new MessageChannel(), waiting: (() => void)[] = [];
      ch.port1.onmessage = () => waiting.shift()?.();
      return () => new Promise<void>((r) => { waiting.push(r); ch.port2.postMessage(0); });
    })();

export type Device = 'cpu' | 'webgpu';
export const DEVICES: readonly Device[] = ['cpu', 'webgpu'];
/** A sequence on either device (their forward passes agree; the GPU's is asynchronous). */
export type AnySession = Session | GpuSession;

export interface LoadOptions {
  /** 'cpu' (default, anywhere) or 'webgpu' (Dawn in Node, navigator.gpu in browsers) */
  device?: Device;
  attention?: Partial<AttentionOptions>;
  /** llama2.c checkpoints: path of tokenizer.bin (default: beside the model) */
  tokenizer?: string;
  onProgress?: LoadProgress;
  /** WebGPU: keep the weights in host memory too, for CPU sessions (default false: once on the GPU,
   *  the host copy is freed, which halves the memory a GPU model takes) */
  keepHostWeights?: boolean;
  /** messages worth showing (where a downloaded model was cached) */
  onNote?: (msg: string) => void;
  /** CPU sessions: keys and values as 'f32' (default) or 'bf16' (half the memory, and half the bytes a
   *  long-context decode step reads; WebGPU keeps its f16 cache) */
  kvCache?: KVType;
  /** progress of the weights' upload to the GPU (layers) */
  onGpuUpload?: (done: number, total: number) => void;
  /** KV memory (bytes) that finished generations may keep so that prompts starting the same way skip
   *  that part of their prefill (default 1 GiB; 0 turns the prefix cache off) */
  prefixCacheBytes?: number;
}

export interface GenerateOptions extends SamplingOptions {
  maxTokens?: number;
  stop?: string[];
  signal?: AbortSignal;
  /** per-request attention settings (policy, budget, ...) over the model's defaults */
  attention?: Partial<AttentionOptions>;
  /** feed the last N prompt tokens as decode steps (so the sparse policy decides what they see) */
  decodeTail?: number;
  /** collect attention-mass recall of the sparse steps */
  stats?: boolean;
  /** prompt as token ids instead of text (models without a tokenizer) */
  promptIds?: number[];
  /** continue this sequence (llm.session(), llm.loadSession()): the prompt is appended to its tokens;
   *  the session itself is left as it was (a fork runs) */
  session?: AnySession;
  onPrefillProgress?: (done: number, total: number) => void;
  /** continuous batching: this generation's decode steps join those of other generations running at the
   *  same time in one forward pass (the server turns it on). Default false: on WebGPU a lone greedy
   *  generation is faster with its own steps in flight. */
  batch?: boolean;
  /** prompt tokens per prefill chunk (between chunks, other generations' decode steps run) */
  prefillChunk?: number;
  /** reuse (and afterwards keep) KV of prompts that start the same way (default true; the prefix
   *  cache of LoadOptions.prefixCacheBytes; h2o and tova always prefill cold) */
  cache?: boolean;
}

export interface TokenEvent { token: number; text: string }

export interface GenerationResult {
  text: string;
  tokens: number[];
  promptTokens: number;
  /** prompt tokens whose KV came from the prefix cache (not prefilled again) */
  cachedTokens: number;
  finishReason: 'stop' | 'length' | 'abort';
  prefillMs: number;
  decodeMs: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  /** mean attention-mass recall of sparse steps, per layer (null where the layer stayed dense) */
  recall?: { mean: number | null; perLayer: (number | null)[]; meanAttendedTokens: number | null };
}

export interface Generation extends AsyncIterable<TokenEvent> { result: Promise<GenerationResult> }

export class LLM {
  private readonly cpuModel: Model | null;
  readonly tokenizer: TextTokenizer | null;
  readonly attention: AttentionOptions;
  private disposed = false;
  /** the GPU side where device is 'webgpu' (weights and shared activations on the GPU) */
  readonly gpu: GpuRunner | null;
  /** finished sequences kept for prompts that start the same way */
  readonly prefixCache: PrefixCache<AnySession>;
  private batcherOf: StepBatcher<AnySession> | null = null;
  /** batched decode steps so far (continuous batching, GenerateOptions.batch) */
  get batchStats(): BatchStats { return this.batcher.stats; }
  private get batcher(): StepBatcher<AnySession> {
    // (a step that asks for its argmax gets a one-element array holding its greedy token: the GPU
    // computes it there; the CPU takes it from the logits)
    // (greedy batches on the GPU keep a chained step in flight: QUEST_BATCH_AHEAD=0 turns it off, to compare)
    this.batcherOf ??= new StepBatcher<AnySession>((steps) => (this.gpu
      ? GpuSession.decodeBatch(steps as BatchStep<GpuSession>[])
      : decodeBatch(steps as BatchStep<Session>[]).map((l, i) => (steps[i].argmax ? Float32Array.of(argmaxOf(l)) : l))), this.gpu ? Math.min(this.gpu.chunk, MAX_BATCH) : MAX_BATCH,
    this.gpu && processEnv().QUEST_BATCH_AHEAD !== '0' ? GpuSession.ahead as AheadSteps<AnySession> : null);
    return this.batcherOf;
  }

  /** `model` null: the weights live on the GPU only (see LoadOptions.keepHostWeights). */
  constructor(readonly config: ModelConfig, model: Model | null, tokenizer: TextTokenizer | null, attention: AttentionOptions, readonly path: string,
              private readonly files: Uint8Array[] = [], gpu: GpuRunner | null = null, prefixCacheBytes = DEFAULT_PREFIX_CACHE_BYTES) {
    this.gpu = gpu;
    this.prefixCache = new PrefixCache<AnySession>(prefixCacheBytes);
    this.cpuModel = model;
    this.tokenizer = tokenizer;
    this.attention = attention;
  }

  /** The CPU side of the model (its weights in host memory). */
  get model(): Model {
    if (!this.cpuModel) throw new Error(`the weights of ${this.path} live on the GPU only: load with keepHostWeights: true (or device 'cpu') for CPU sessions`);
    return this.cpuModel;
  }

  /** A sequence on the CPU whatever the device (evaluations that need the CPU's policies or statistics). */
  cpuSession(attention: Partial<AttentionOptions> = {}): Session {
    this.checkAlive();
    return new Session(this.model, { ...this.attention, ...attention });
  }

  get device(): Device { return this.gpu ? 'webgpu' : 'cpu'; }

  /** Whether batching several generations' decode steps is the measured better way to serve them here:
   *  the CPU, and WebGPU adapters with f16 subgroup matrices (the batch's products on tensor cores, exact
   *  to the solo runs: H100, bench:serve, 2,386 vs 1,368 tokens/s and 64/64 answers identical). Elsewhere
   *  each generation keeps its own steps (not measured against batching since session 8). */
  get batchesByDefault(): boolean { return !this.gpu || matrixConfig(this.gpu.m.device) !== null; }

  /** A fresh sequence (KV cache + attention policy state) on the model's device. */
  session(attention: Partial<AttentionOptions> = {}): AnySession {
    this.checkAlive();
    const a = { ...this.attention, ...attention };
    return this.gpu ? new GpuSession(this.gpu, a) : new Session(this.model, a);
  }

  /** Token ids of `text` (`bos: false`: no BOS, for text that continues a sequence). */
  encode(text: string, opts: { bos?: boolean } = {}): number[] {
    if (!this.tokenizer) throw new Error(`the model ${this.path} has no tokenizer: pass token ids (promptIds)`);
    return this.tokenizer.encode(text, opts);
  }

  generate(prompt: string, options: GenerateOptions = {}): Generation {
    const events: TokenEvent[] = [];
    let wake: (() => void) | null = null, done = false, failure: unknown = null;
    const result = this.run(prompt, options, (e) => { events.push(e); wake?.(); })
      .catch((e) => { failure = e; throw e; })
      .finally(() => { done = true; wake?.(); });
    result.catch(() => {}); // surfaced through iteration or `result`
    return {
      result,
      async *[Symbol.asyncIterator]() {
        for (;;) {
          while (events.length) yield events.shift()!;
          if (failure) throw failure;
          if (done) return;
          await new Promise<void>((r) => { wake = r; });
          wake = null;
        }
      },
    };
  }

  /** Generates the whole reply and returns it (no streaming). */
  async complete(prompt: string, options: GenerateOptions = {}): Promise<GenerationResult> {
    return this.generate(prompt, options).result;
  }

  chat(messages: ChatMessage[], options: GenerateOptions = {}): Generation {
    if (!this.tokenizer) throw new Error(`the model ${this.path} has no tokenizer: chat needs one`);
    return this.generate(this.tokenizer.applyChatTemplate(messages), options);
  }

  /** A sequence read from a session file (Session.save / GpuSession.save, `quest prefill`): its tokens
   *  and KV pages, under the model's attention settings or `attention`. */
  async loadSession(path: string, o: { attention?: Partial<AttentionOptions> } & SessionFileOptions = {}): Promise<AnySession> {
    this.checkAlive();
    const s = this.session(o.attention);
    try {
      await loadSession(s, path, this.gpu ? this.gpu.m.fingerprint : this.model.fingerprint, this.config.maxSeqLen, o);
      return s;
    } catch (e) {
      s.dispose();
      throw e;
    }
  }

  /** A session of this model and device, with every token known (GenerateOptions.session). */
  private checkOwnSession(s: AnySession): AnySession {
    const own = this.gpu ? s instanceof GpuSession && s.runner === this.gpu : s instanceof Session && s.model === this.cpuModel;
    if (!own) throw new Error('options.session must be a session of this model on its device (llm.session() or llm.loadSession())');
    if (s.tokens.some((t) => t < 0)) throw new Error('options.session is still running greedy steps');
    return s;
  }

  /** A fork of `s` under `attention`, rewound to at most `most` tokens. */
  private continued(s: AnySession, attention: AttentionOptions, most: number): { seq: AnySession; cached: number } {
    const seq = s.fork(attention), cached = Math.min(s.length, most);
    seq.truncate(cached);
    return { seq, cached };
  }

  /** Forgets the prefix cache's sequences and frees their KV memory (on a GPU also the KV buffers kept
   *  between requests, where no other sequence holds them). */
  clearCache(): void { this.prefixCache.clear(); this.gpu?.releaseKV(); }

  /** Frees the weights' memory; the model cannot be used afterwards. Sessions free their KV caches
   *  themselves (generate does; a Session from session() on dispose() or when collected). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.prefixCache.clear();
    releaseModelBytes(this.files.splice(0));
    if (this.gpu) { this.gpu.dispose(); this.gpu.m.dispose(); }
  }

  private checkAlive(): void { if (this.disposed) throw new Error('this model was disposed'); }

  private async run(prompt: string, o: GenerateOptions, emit: (e: TokenEvent) => void): Promise<GenerationResult> {
    this.checkAlive();
    validateSampling(o);
    const maxTokens = o.maxTokens ?? 256;
    if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new Error(`maxTokens must be an integer >= 0, got ${maxTokens}`);
    if (o.prefillChunk !== undefined && !(Number.isInteger(o.prefillChunk) && o.prefillChunk >= 1)) throw new Error(`prefillChunk must be an integer >= 1, got ${o.prefillChunk}`);
    const from = o.session ? this.checkOwnSession(o.session) : null;
    // (a prompt that continues a session has no BOS of its own)
    const ids = [...(from?.tokens ?? []), ...(o.promptIds ?? (from && !prompt ? [] : this.encode(prompt, from ? { bos: false } : {})))];
    if (ids.length === 0) throw new Error('the prompt is empty');
    const ctx = this.config.maxSeqLen;
    if (ids.length >= ctx) throw new Error(`the prompt has ${ids.length} tokens, over the model's context length of ${ctx}`);
    const attention = { ...this.attention, ...o.attention };
    validateAttentionOptions(attention);
    if (o.stats && this.gpu) throw new Error('attention-mass recall (stats) is measured on the CPU only');
    const sampler = new Sampler(o);
    // the prompt's longest cached prefix (policies that watch the prefill's attention start cold); at
    // least the last prompt token still runs, as a prefill or a decode step of the tail
    const tail = Math.min(Math.max(0, o.decodeTail ?? 0), ids.length - 1), prefill = ids.length - tail;
    const most = tail > 0 ? prefill : prefill - 1;
    // (a session the caller passed: its tokens may have been decoded sparsely, so it is not kept)
    const reuse = !from && o.cache !== false && !createPolicy(attention)?.wantsPrefillScores;
    const hit = from ? this.continued(from, attention, most) : reuse ? this.prefixCache.take(ids, most, (kept) => kept.fork(attention)) : null;
    const session = hit?.seq ?? this.session(attention);
    if (o.stats) (session as Session).collectStats();
    let kept = false;
    try {
      const r = await this.decodeLoop(session, ids, hit?.cached ?? 0, tail, o, sampler, emit, ctx);
      await this.batcherOf?.release(session); // (a batched step in flight past the answer is undone first)
      // keep the sequence's densely computed tokens: the prompt's prefill (all of it under dense attention)
      const held = session.tokens.slice();
      if (reuse && held.every((t) => t >= 0)) {
        this.prefixCache.put(held, attention.policy === 'dense' ? held.length : Math.min(held.length, prefill), session);
        kept = true;
      }
      return r;
    } finally {
      if (!kept) { await this.batcherOf?.release(session); session.dispose(); }
    }
  }

  /** Prefills ids[cached..length - tail] (the session holds the first `cached`), feeds the last `tail` as decode steps, and generates. */
  private async decodeLoop(session: AnySession, ids: number[], cached: number, tail: number, o: GenerateOptions, sampler: Sampler, emit: (e: TokenEvent) => void, ctx: number): Promise<GenerationResult> {
    const maxTokens = o.maxTokens ?? 256;
    const decoder = this.tokenizer ? new StreamDecoder(this.tokenizer) : null;
    const stops = (o.stop ?? []).filter((s) => s.length > 0);
    const eos = new Set(this.config.eosIds);
    const t0 = performance.now();
    // greedy decoding on the GPU reads back the argmax instead of the logits (with steps in flight,
    // unless the steps join batches: then each batched step reads back the rows' argmax)
    // (a GPU sequence whose policy plans on the CPU runs its steps one by one, each read back)
    const batched = o.batch === true && !(session instanceof GpuSession && session.planned);
    const greedyOnGpu = session instanceof GpuSession && (o.temperature ?? 1) === 0 && !session.planned;
    const argmax = greedyOnGpu && !batched, batchArgmax = greedyOnGpu && batched;
    const decodeStep = (t: number) => (batched ? this.batcher.step(session, t, batchArgmax) : step([t]));
    // a step's result: the logits, or (argmax) its greedy token in a one-element array
    const next = (l: Float32Array, token: boolean) => (token ? l[0] : sampler.sample(l));
    const step = (t: number[], logits: 'last' | 'none' = 'last', dense = false) =>
      session instanceof GpuSession ? session.forward(t, { logits, argmax, dense }) : session.forward(t, { logits, dense });
    // the prompt, a chunk per submission: progress after each, and a turn of the event loop in which a
    // cancel (o.signal) can arrive; a cancelled prefill keeps the chunks done and generates nothing
    const most = session instanceof GpuSession ? session.runner.chunk : PREFILL_CHUNK;
    const prompt = ids.slice(cached, ids.length - tail), chunk = Math.min(most, o.prefillChunk ?? most);
    let logits: Float32Array = new Float32Array(0);
    // room for the prompt and the answer in one grow of the KV store at most (a grow copies every page)
    const room = Math.min(prompt.length + tail + maxTokens, Math.max(0, this.config.maxSeqLen - session.length));
    (session instanceof GpuSession ? session.table : session.cache.table).makeRoom(session.length, room);
    for (let s = 0; s < prompt.length && !o.signal?.aborted; s += chunk) {
      const last = s + chunk >= prompt.length;
      logits = await step(prompt.slice(s, s + chunk), last ? 'last' : 'none', true);
      o.onPrefillProgress?.(Math.min(prompt.length, s + chunk), prompt.length);
      if (!last) await yieldToEventLoop();
    }
    const prefillMs = performance.now() - t0;
    const t1 = performance.now();
    if (o.signal?.aborted) {
      return { text: '', tokens: [], promptTokens: ids.length, cachedTokens: cached, finishReason: 'abort', prefillMs, decodeMs: 0, prefillTokensPerSecond: 0, decodeTokensPerSecond: 0 };
    }
    let isToken = argmax; // (whether `logits` holds the greedy token: a forward or batched step with argmax)
    for (const t of ids.slice(ids.length - tail)) { logits = await decodeStep(t); isToken = argmax || batchArgmax; }

    const out: number[] = [];
    let text = '', pending = '', finishReason: GenerationResult['finishReason'] = 'length';
    // the tokens: greedy on the GPU keeps steps in flight (the argmax stays on the GPU); otherwise each
    // token is sampled from the logits and its step runs when the next token is asked for
    const first = next(logits, isToken);
    let lastTok = first, i = 0;
    const tokens = argmax ? (session as GpuSession).greedy(first, maxTokens - 1) : (async function* () {
      yield first;
      for (let n = 1; n < maxTokens && session.length < ctx; n++) yield next(await decodeStep(lastTok), batchArgmax);
    })();
    for await (const tok of tokens) {
      if (o.signal?.aborted) { finishReason = 'abort'; break; }
      if (i++ >= maxTokens) break; // (maxTokens 0: the first token is not taken either)
      lastTok = tok;
      if (eos.has(tok)) { finishReason = 'stop'; break; }
      out.push(tok);
      pending += decoder ? decoder.push(tok) : '';
      // stop strings: cut at the first one; hold back text that may be the start of one
      const hit = stops.map((s) => pending.indexOf(s)).filter((x) => x >= 0);
      if (hit.length) {
        const piece = pending.slice(0, Math.min(...hit));
        text += piece; emit({ token: tok, text: piece }); pending = '';
        finishReason = 'stop'; break;
      }
      let safe = pending.length;
      for (const s of stops) for (let k = Math.min(s.length - 1, pending.length); k > 0; k--) {
        if (pending.endsWith(s.slice(0, k))) { safe = Math.min(safe, pending.length - k); break; }
      }
      const piece = pending.slice(0, safe);
      pending = pending.slice(safe);
      text += piece;
      emit({ token: tok, text: piece });
      await yieldToEventLoop(); // keep the event loop (servers, progress, a page) alive
    }
    if (finishReason !== 'stop') { text += pending + (decoder?.flush() ?? ''); }
    const decodeMs = performance.now() - t1;
    const decoded = tail + out.length;
    return {
      text, tokens: out, promptTokens: ids.length, cachedTokens: cached, finishReason, prefillMs, decodeMs,
      prefillTokensPerSecond: (ids.length - tail - cached) / (prefillMs / 1000),
      decodeTokensPerSecond: decoded ? decoded / (decodeMs / 1000) : 0,
      recall: session instanceof Session && session.stats ? { mean: session.stats.mean(), perLayer: session.stats.perLayer(), meanAttendedTokens: session.stats.meanAttended() } : undefined,
    };
  }
}

/** Loads a GGUF file, a Hugging Face folder or a llama2.c checkpoint: a path on disk, a URL or
 *  hf:org/name (downloaded once into a disk cache, see model-cache.ts), or files already in memory (`fetchModelFiles`,
 *  `pickedModelFiles`). */
export async function loadModel(source: string | ModelFiles, options: LoadOptions = {}): Promise<LLM> {
  const device = options.device ?? 'cpu';
  if (!DEVICES.includes(device)) throw new Error(`unknown device "${device}" (choose cpu or webgpu)`);
  const attention = { ...DEFAULT_ATTENTION, ...options.attention };
  validateAttentionOptions(attention);
  const kvCache = options.kvCache ?? 'f32';
  if (!KV_TYPES.includes(kvCache)) throw new Error(`unknown KV cache type "${kvCache}" (choose ${KV_TYPES.join(' or ')})`);
  const cacheBytes = options.prefixCacheBytes;
  if (cacheBytes !== undefined && !(Number.isFinite(cacheBytes) && cacheBytes >= 0)) throw new Error(`prefixCacheBytes must be a number of bytes >= 0, got ${cacheBytes}`);
  // (Node: downloads go to a disk cache, see model-cache.ts; the browser entry fetches before calling this)
  if (typeof source === 'string' && isRemote(source)) source = await cachedOrFetched(source, { onProgress: options.onProgress, onNote: options.onNote });
  const loaded = loadModelFiles(source, { tokenizerPath: options.tokenizer, onProgress: options.onProgress });
  try {
    const tokenizer = loaded.tokenizer ? new TextTokenizer(loaded.tokenizer, loaded.path) : null;
    let runner: GpuRunner | null = null;
    if (device === 'webgpu') {
      const gpu = await getGpu();
      if (!gpu) throw new Error(`--device webgpu: ${lastGpuError}`);
      const m = GpuModel.upload(gpu.device, loaded.config, loaded.weights, options.onGpuUpload);
      runner = new GpuRunner(m, attention.pageSize);
      await gpu.device.queue.onSubmittedWorkDone();
      if (!options.keepHostWeights) {
        // (the upload copied every weight: writeBuffer takes its data when called)
        releaseModelBytes(loaded.files ?? []);
        return new LLM(loaded.config, null, tokenizer, attention, loaded.path, [], runner, options.prefixCacheBytes);
      }
    }
    return new LLM(loaded.config, makeModel(loaded.config, loaded.weights, kvCache), tokenizer, attention, loaded.path, loaded.files, runner, options.prefixCacheBytes);
  } catch (e) {
    releaseModelBytes(loaded.files ?? []); // a failed load leaves nothing behind
    throw e;
  }
}
