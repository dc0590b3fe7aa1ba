// One sequence being run through a model: its paged KV cache, its attention policy, and the forward
// pass (llama2.c style: one obvious loop over layers). Prefill (several tokens) is always dense;
// single-token decode steps use the policy in every layer from `denseLayers` on.
import { activations, addInPlace, geglu, matmul, matmuls, rmsnorm, swiglu } from '../backend/cpu/kernels.js';
import { decodeProgram, type AttentionCache } from '../backend/cpu/decode-program.js';
import { attendHead, headScores } from '../attention/attend.js';
import { wasm, type WasmRuntime } from '../backend/wasm/runtime.js';
import { workerPool, split, OP_ATTEND, OP_ATTEND_TOKENS, OP_PAGE_SCORES, type WorkerPool } from '../backend/wasm/pool.js';
import { ATTEND_ROWS, TOKEN_SPLIT, attendHeads, attendTokenPart, mergeTokenParts, pageScoreRange } from '../backend/wasm/shared-ops.js';
import { createPolicy } from '../attention/create.js';
import { pageScores } from '../attention/quest.js';
import { DEFAULT_ATTENTION, type AttentionOptions, type AttentionPolicy, type Selection, type StepContext } from '../attention/policy.js';
import { PagedKVCache, type KVType, type LayerKV } from '../kv/paged-cache.js';
import type { PageTable } from '../kv/page-table.js';
import { windowOf, type ModelConfig, type ModelWeights } from '../model/config.js';
import { Rope } from '../model/rope.js';
import { modelFingerprint } from '../model/fingerprint.js';
import { saveSession, type SessionFileOptions } from './session-file.js';
import { concatF32 } from '../model/tensor.js';

export interface Model {
  config: ModelConfig; weights: ModelWeights; rope: Rope;
  /** the windowed layers' RoPE where it differs (Gemma 3), else `rope` */
  ropeLocal: Rope;
  /** what saved KV caches of this model are checked against (model/fingerprint.ts) */
  readonly fingerprint: string;
  /** how its sequences store keys and values (LoadOptions.kvCache) */
  readonly kvType: KVType;
}

export function makeModel(config: ModelConfig, weights: ModelWeights, kvType: KVType = 'f32'): Model {
  let fp: string | undefined;
  const rope = Rope.forConfig(config), lr = config.localRope;
  const ropeLocal = lr ? new Rope(config.headDim, config.ropeStyle, lr.theta, lr.scaling, config.ropeDims ?? config.headDim) : rope;
  return { config, weights, rope, ropeLocal, kvType, get fingerprint() { return (fp ??= modelFingerprint(config, weights)); } };
}

/** Attention-mass recall of sparse decode steps: per layer, the sum over steps and heads. */
export class RecallStats {
  sum: Float64Array; count: Float64Array; tokens: Float64Array;
  constructor(nLayers: number) { this.sum = new Float64Array(nLayers); this.count = new Float64Array(nLayers); this.tokens = new Float64Array(nLayers); }
  add(layer: number, recall: number, attended: number): void { this.sum[layer] += recall; this.count[layer] += 1; this.tokens[layer] += attended; }
  perLayer(): (number | null)[] { return Array.from(this.sum, (s, l) => (this.count[l] ? s / this.count[l] : null)); }
  /** mean over the layers that ran sparse (null: no sparse step yet) */
  mean(): number | null {
    let s = 0, c = 0;
    this.sum.forEach((v, l) => { if (this.count[l]) { s += v; c += this.count[l]; } });
    return c ? s / c : null;
  }
  meanAttended(): number | null {
    let s = 0, c = 0;
    this.tokens.forEach((v, l) => { if (this.count[l]) { s += v; c += this.count[l]; } });
    return c ? s / c : null;
  }
}

/** How a sequence's KV pages are stored: the element type and the bytes of one page per layer. */
export interface KVLayout { kv: 'f32' | 'f16' | 'bf16'; nLayers: number; nKV: number; headDim: number; pageSize: number; kPageBytes: number; metaPageBytes: number }

export interface ForwardOptions {
  /** which positions' logits to return: the last token's, every token's, or none */
  logits?: 'last' | 'all' | 'none';
  /** prefill chunk size (bounds activation memory; progress is reported per chunk) */
  chunk?: number;
  onProgress?: (done: number, total: number) => void;
  /** every layer attends densely, whatever the policy (a prompt's prefill: a chunk of one token is
   *  otherwise a decode step, which the policy may make sparse) */
  dense?: boolean;
}

/** Tokens per prefill chunk on the CPU (bounds activation memory; progress is reported per chunk). */
export const PREFILL_CHUNK = 256;

export class Session {
  readonly cache: PagedKVCache;
  /** the token ids the sequence holds (its KV cache's tokens, in order) */
  readonly tokens: number[] = [];
  readonly attention: AttentionOptions;
  readonly policy: AttentionPolicy | null;
  /** set to collect attention-mass recall (costs a dense attention pass per sparse step) */
  stats: RecallStats | null = null;
  private probs = new Float32Array(0);
  private full = new Float32Array(0);

  /** `shareWith`: start as a fork of that sequence, sharing its KV pages (copy-on-write). */
  constructor(readonly model: Model, attention: Partial<AttentionOptions> = {}, shareWith?: Session) {
    const c = model.config;
    this.attention = { ...DEFAULT_ATTENTION, ...attention };
    this.policy = createPolicy(this.attention);
    if (shareWith && shareWith.attention.pageSize !== this.attention.pageSize) throw new Error(`a fork keeps the page size (${shareWith.attention.pageSize}), got ${this.attention.pageSize}`);
    this.cache = shareWith ? shareWith.cache.fork() : new PagedKVCache(c.nLayers, c.nKVHeads, c.headDim, this.attention.pageSize, 1024, undefined, model.kvType);
    if (shareWith) this.tokens.push(...shareWith.tokens);
  }

  get length(): number { return this.cache.length; }
  /** the sequence's page table (which physical pages of its family it reads) */
  get table(): PageTable { return this.cache.table; }
  /** bytes of one page of KV (K, V and key min/max of every layer) */
  get pageBytes(): number { const l = this.cache.layers[0]; return this.cache.layers.length * (2 * l.pageFloats + 2 * l.nKV * l.headDim) * l.pages.elementBytes; }

  /** Prefill attention received per `layer:head`, kept so that forks can hand it to H2O-like policies. */
  private prefillScores: Map<string, Float32Array> | null = null;
  recordPrefillScores(): void { this.prefillScores = new Map(); }

  /** This sequence under another attention policy, sharing its KV pages (nothing is copied; a page
   *  either sequence later writes to is copied first): evaluations prefill once. */
  fork(attention: Partial<AttentionOptions> = {}): Session {
    const s = new Session(this.model, { ...this.attention, ...attention }, this);
    if (this.prefillScores) s.prefillScores = new Map([...this.prefillScores].map(([k, v]) => [k, v.slice()]));
    if (s.policy?.wantsPrefillScores) {
      if (!this.prefillScores) throw new Error('fork to a policy that needs prefill scores: call recordPrefillScores() before the prefill');
      for (const [key, v] of this.prefillScores) { const [l, h] = key.split(':').map(Number); s.policy.observePrefill!(l, h, v, v.length); }
    }
    return s;
  }

  /** Rewinds to the first `length` tokens (a cached prefix continued with other tokens). */
  truncate(length: number): void {
    if (!Number.isInteger(length) || length < 0) throw new Error(`truncate needs a token count >= 0, got ${length}`);
    if (this.policy?.wantsPrefillScores || this.prefillScores) throw new Error(`a ${this.attention.policy} sequence cannot be rewound: its policy has seen attention from the tokens it would drop`);
    this.cache.truncate(length);
    this.tokens.length = Math.min(this.tokens.length, length);
  }

  /** Writes the sequence (tokens, KV pages, page min/max) to a session file (engine/session-file.ts). */
  save(path: string, o: SessionFileOptions = {}): Promise<void> {
    const c = this.model.config;
    return saveSession(this, path, this.model.fingerprint, `${c.arch} ${c.nLayers} layers x ${c.dim}`, o);
  }

  /** How this sequence's KV pages are stored (session files must match it to be loaded). */
  kvLayout(): KVLayout {
    const l = this.cache.layers[0];
    return { kv: l.pages.kvType, nLayers: this.cache.layers.length, nKV: l.nKV, headDim: l.headDim, pageSize: l.pageSize,
      kPageBytes: l.pageFloats * l.pages.elementBytes, metaPageBytes: 2 * l.nKV * l.headDim * l.pages.elementBytes };
  }

  /** Logical pages first..first+count-1 of one layer: their K pages, then V pages, then key min/max. */
  async readPages(layer: number, first: number, count: number): Promise<Uint8Array> {
    const L = this.cache.layers[layer].pages, kb = L.pageFloats * L.elementBytes, mb = L.metaFloats * L.elementBytes;
    const out = new Uint8Array(count * (2 * kb + 2 * mb));
    const bytes = (a: ArrayBufferView, at: number, n: number) => new Uint8Array(a.buffer, a.byteOffset + at, n);
    for (let i = 0; i < count; i++) {
      const p = this.cache.table.pages[first + i];
      out.set(bytes(L.k, p * kb, kb), i * kb);
      out.set(bytes(L.v, p * kb, kb), (count + i) * kb);
      out.set(bytes(L.kmin, p * mb, mb), 2 * count * kb + 2 * i * mb);
      out.set(bytes(L.kmax, p * mb, mb), 2 * count * kb + (2 * i + 1) * mb);
    }
    return out;
  }

  /** The inverse of readPages (pages made writable by adoptTokens). */
  writePages(layer: number, first: number, count: number, data: Uint8Array): void {
    const L = this.cache.layers[layer].pages, kb = L.pageFloats * L.elementBytes, mb = L.metaFloats * L.elementBytes;
    const bytes = (a: ArrayBufferView, at: number, n: number) => new Uint8Array(a.buffer, a.byteOffset + at, n);
    for (let i = 0; i < count; i++) {
      const p = this.cache.table.pages[first + i];
      bytes(L.k, p * kb, kb).set(data.subarray(i * kb, (i + 1) * kb));
      bytes(L.v, p * kb, kb).set(data.subarray((count + i) * kb, (count + i + 1) * kb));
      bytes(L.kmin, p * mb, mb).set(data.subarray(2 * count * kb + 2 * i * mb, 2 * count * kb + (2 * i + 1) * mb));
      bytes(L.kmax, p * mb, mb).set(data.subarray(2 * count * kb + (2 * i + 1) * mb, 2 * count * kb + (2 * i + 2) * mb));
    }
  }

  /** An empty session takes `tokens` as held, with pages for them (whose contents writePages fills). */
  adoptTokens(tokens: number[]): void {
    if (this.length !== 0) throw new Error('adoptTokens needs an empty session');
    this.cache.table.reserve(0, tokens.length);
    for (const l of this.cache.layers) l.length = tokens.length;
    this.tokens.push(...tokens);
  }

  /** Frees the KV cache now (it is also reclaimed when the session is garbage-collected). */
  dispose(): void { this.cache.dispose(); }

  collectStats(on = true): void { this.stats = on ? new RecallStats(this.model.config.nLayers) : null; }

  /** Runs `tokens` after what the session already holds; returns logits ([vocab] or [n x vocab]). */
  forward(tokens: number[], opts: ForwardOptions = {}): Float32Array {
    checkTokens(this.model.config, this.length, tokens);
    const mode = opts.logits ?? 'last';
    const chunk = Math.max(1, opts.chunk ?? PREFILL_CHUNK);
    this.cache.table.makeRoom(this.length, tokens.length); // (the store grows once for a long prompt)
    const parts: Float32Array[] = [];
    for (let s = 0; s < tokens.length; s += chunk) {
      const piece = tokens.slice(s, s + chunk);
      const last = s + chunk >= tokens.length;
      const logits = this.forwardChunk(piece, mode === 'all' ? 'all' : mode === 'last' && last ? 'last' : 'none', opts.dense === true);
      if (logits) parts.push(logits);
      opts.onProgress?.(Math.min(tokens.length, s + chunk), tokens.length);
    }
    return mode === 'none' ? new Float32Array(0) : concatF32(parts);
  }

  private forwardChunk(tokens: number[], logitsMode: 'last' | 'all' | 'none', dense: boolean): Float32Array | null {
    return forwardParts(this.model, [{ seq: this, tokens, logits: logitsMode, dense }])[0];
  }

  /** Attention of this sequence's n new rows (positions start..) in layer l, after their KV was appended:
   *  a decode step (n = 1) under the policy from `denseLayers` on, else dense. */
  attendRows(l: number, q: Float32Array, att: Float32Array, n: number, start: number, scale: number, dense: boolean): void {
    if (this.probs.length < start + n) this.probs = new Float32Array(Math.max(start + n, this.probs.length * 2));
    const window = windowOf(this.model.config, l);
    if (window) { this.windowedAttention(l, q, att, n, start, scale, window); return; } // (already sparse: no policy)
    const sparse = n === 1 && !dense && this.policy !== null && l >= this.attention.denseLayers;
    if (sparse) this.sparseStep(l, q, att, scale);
    else this.denseAttention(l, q, att, n, start, scale);
  }

  /** Whether layer l's attention in this decode step (one token) may run inside the layer program
   *  (decode-program.ts): dense for this step as attendRows decides, in the WebAssembly memory, and no
   *  policy collecting what it receives (the program splits it as denseAttention does: by heads, or by
   *  keys from TOKEN_SPLIT on). */
  programAttends(l: number, dense: boolean): boolean {
    const kv = this.cache.layers[l], c = this.model.config;
    if (!kv.inWasm || c.headDim % 4 || windowOf(c, l) || this.policy?.wantsPrefillScores || this.prefillScores !== null) return false;
    return dense || this.policy === null || l < this.attention.denseLayers;
  }

  /** Layer l's cache as the program's attention reads it, once this step's key is appended. */
  programCache(l: number): AttentionCache {
    const kv = this.cache.layers[l];
    return [kv.length, kv.kPtr, kv.vPtr, kv.tablePtr(), kv.pageFloats * kv.pages.elementBytes, kv.pageSize, kv.bf16 ? 1 : 0];
  }

  /** Causal dense attention of n new tokens (positions start..start+n-1) over the cache. */
  private denseAttention(l: number, q: Float32Array, att: Float32Array, n: number, start: number, scale: number): void {
    const c = this.model.config, hd = c.headDim, nH = c.nHeads, group = nH / c.nKVHeads, kv = this.cache.layers[l];
    const probs = this.probs, report = this.policy?.wantsPrefillScores === true || this.prefillScores !== null;
    const rt = wasm();
    if (rt && kv.inWasm && hd % 4 === 0) {
      // SIMD kernel over all heads and queries, split by heads across the worker threads
      // (split by heads once the keys are a few hundred: a hand-off to a spinning worker costs microseconds)
      const qDim = nH * hd, pool = n * (start + n) >= 256 ? workerPool(rt) : null, parts = pool ? pool.size + 1 : 1;
      const stride = (start + n + 3) & ~3; // received[h] rows, padded for the vector add
      // (q and att are read and written in place where they lie in the wasm memory: the forward pass's activations)
      const qIn = rt.owns(q), outIn = rt.owns(att);
      const qp = qIn ? q.byteOffset : rt.scratchPtr('pf.q', n * qDim * 4), op = outIn ? att.byteOffset : rt.scratchPtr('pf.o', n * qDim * 4);
      const rp = report ? rt.scratchPtr('pf.r', nH * stride * 4) : 0;
      const pp = Array.from({ length: parts }, (_, i) => rt.scratchPtr(`pf.p${i}`, (ATTEND_ROWS * group + 1) * (start + n + 4) * 4));
      if (!qIn) rt.f32(qp, n * qDim).set(q.subarray(0, n * qDim));
      if (report) rt.f32(rp, nH * stride).fill(0);
      const table = kv.tablePtr();
      const bf16 = kv.bf16 ? 1 : 0, pageStride = kv.pageFloats * kv.pages.elementBytes;
      if (pool && n === 1 && !report && start + 1 >= TOKEN_SPLIT) { attendByTokens(rt, pool, kv, qp, att, nH, 0, start + 1, scale); return; }
      // a prefill chunk: every head, the rows split by their causal work (a row sees one more key than the
      // one before), so each thread does half (9 heads split by heads: 5 and 4); policies that sum each
      // token's received weight per head, and decode steps, split by heads
      const byRows = n > 1 && !report;
      const args = (share: number) => {
        if (!byRows) return [...split(nH, parts, share), n, start, nH, group, hd, qp, op, kv.kPtr, kv.vPtr, table, pageStride, kv.pageSize, pp[share], rp, stride, 0, bf16];
        const r0 = causalRowSplit(n, start, parts, share), r1 = causalRowSplit(n, start, parts, share + 1), off = r0 * qDim * 4;
        return [0, r1 > r0 ? nH : 0, r1 - r0, start + r0, nH, group, hd, qp + off, op + off, kv.kPtr, kv.vPtr, table, pageStride, kv.pageSize, pp[share], rp, stride, 0, bf16];
      };
      const local = () => { const a = args(0); attendHeads(rt.k, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], scale, a[15], a[16], 0, null, bf16); };
      if (pool) pool.run(OP_ATTEND, args, () => scale, local); else local();
      if (!outIn) att.set(rt.f32(op, n * qDim));
      if (report) for (let h = 0; h < nH; h++) this.reportReceived(l, h, rt.f32(rp + h * stride * 4, start + n), start + n);
      return;
    }
    const received = report ? new Float32Array(start + n) : null;
    for (let h = 0; h < nH; h++) {
      received?.fill(0);
      for (let i = 0; i < n; i++) {
        const count = start + i + 1;
        attendHead(q, (i * nH + h) * hd, kv, Math.floor(h / group), null, count, scale, att, (i * nH + h) * hd, received ? probs : null);
        if (received) for (let t = 0; t < count; t++) received[t] += probs[t];
      }
      if (received) this.reportReceived(l, h, received, start + n);
    }
  }

  /** Sliding-window attention of n new tokens: the query at position p sees tokens p - window + 1 .. p. */
  private windowedAttention(l: number, q: Float32Array, att: Float32Array, n: number, start: number, scale: number, window: number): void {
    const c = this.model.config, hd = c.headDim, nH = c.nHeads, group = nH / c.nKVHeads, kv = this.cache.layers[l];
    const ids = identity(start + n);
    for (let i = 0; i < n; i++) {
      const p = start + i, from = Math.max(0, p - window + 1);
      for (let h = 0; h < nH; h++) attendHead(q, (i * nH + h) * hd, kv, Math.floor(h / group), ids.subarray(from, p + 1), p + 1, scale, att, (i * nH + h) * hd, null);
    }
  }

  /** Hands the attention each token received in a prefill chunk to the policy and/or the record. */
  private reportReceived(l: number, h: number, received: Float32Array, length: number): void {
    if (this.policy?.wantsPrefillScores) this.policy.observePrefill!(l, h, received, length);
    if (this.prefillScores) {
      const key = `${l}:${h}`, old = this.prefillScores.get(key), acc = new Float32Array(length);
      if (old) acc.set(old);
      for (let t = 0; t < length; t++) acc[t] += received[t];
      this.prefillScores.set(key, acc);
    }
  }

  /** One decode step of a sparse layer: the policy selects, attention runs over the selection. */
  private sparseStep(l: number, q: Float32Array, att: Float32Array, scale: number): void {
    const c = this.model.config, hd = c.headDim, nH = c.nHeads, group = nH / c.nKVHeads, kv = this.cache.layers[l];
    const pos = this.length - 1, rt = wasm(), simd = rt !== null && kv.inWasm && hd % 4 === 0;
    let bounds = 0; // (SIMD path: every head's page scores, computed at the policy's first request)
    const ctx: StepContext = {
      layer: l, pos, nHeads: nH, groupSize: group, pageSize: kv.pageSize,
      scores: (h, out) => headScores(q, h * hd, kv, Math.floor(h / group), pos + 1, scale, out),
      pageBounds: (h, out) => {
        if (!simd) { pageScores(q, h * hd, kv, Math.floor(h / group), out); return; }
        const np = kv.numPages;
        if (!bounds) bounds = allPageScores(rt, kv, q, nH);
        out.set(rt.f32(bounds + h * np * 4, Math.min(np, out.length)));
      },
    };
    const sel: Selection | null = this.policy!.select(ctx);
    if (simd && !this.policy!.observe) attendSelected(rt, kv, q, att, nH, sel, pos, scale);
    const keep = this.policy!.observe ? new Array<Float32Array>(nH) : null;
    let recall = 0, attended = 0;
    for (let h = 0; h < nH; h++) {
      const tokens = sel?.[h] ?? null;
      const n = simd && !keep ? (tokens ? tokens.length : pos + 1)
        : attendHead(q, h * hd, kv, Math.floor(h / group), tokens, pos + 1, scale, att, h * hd, keep ? this.probs : null);
      if (keep) keep[h] = this.probs.slice(0, n);
      if (this.stats) { recall += tokens ? this.recall(q, h, kv, tokens, scale) : 1; attended += n; }
    }
    this.stats?.add(l, recall / nH, attended / nH);
    if (sel && keep) this.policy!.observe!(ctx, sel, keep);
  }

  /** Fraction of head h's true (dense) softmax mass that the selected tokens carry. */
  private recall(q: Float32Array, h: number, kv: PagedKVCache['layers'][number], tokens: Int32Array, scale: number): number {
    const c = this.model.config, n = kv.length;
    if (this.full.length < n) this.full = new Float32Array(n * 2);
    const s = this.full;
    headScores(q, h * c.headDim, kv, Math.floor(h / (c.nHeads / c.nKVHeads)), n, scale, s);
    let max = -Infinity; for (let t = 0; t < n; t++) if (s[t] > max) max = s[t];
    let total = 0; for (let t = 0; t < n; t++) total += Math.exp(s[t] - max);
    let kept = 0; for (const t of tokens) kept += Math.exp(s[t] - max);
    return kept / total;
  }
}

let ids = new Int32Array(0);
/** 0, 1, ..., n-1 (at least): windows are its slices. */
function identity(n: number): Int32Array {
  if (ids.length < n) { ids = new Int32Array(Math.max(n, ids.length * 2, 1024)); ids.forEach((_, i) => { ids[i] = i; }); }
  return ids;
}

/** One part of a batched forward pass: tokens that follow what `seq` holds. */
export interface ForwardPart { seq: Session; tokens: number[]; logits: 'last' | 'all' | 'none'; dense?: boolean }

/**
 * The forward pass (llama2.c style: one obvious loop over layers) over the rows of several sequences at
 * once: every weight product reads the weights once for all rows; RoPE, the KV append and attention
 * run per sequence, each over its own pages and under its own policy. One part is a prefill chunk or a
 * decode step of one sequence; several one-token parts are a batched decode step. Returns each part's
 * logits (null for logits 'none').
 */
export function forwardParts(model: Model, parts: ForwardPart[]): (Float32Array | null)[] {
  const { config: c, weights: w } = model;
  const n = parts.reduce((a, p) => a + p.tokens.length, 0), dim = c.dim, hd = c.headDim, nH = c.nHeads, nKV = c.nKVHeads;
  const qDim = nH * hd, kvDim = nKV * hd;
  // (in the WebAssembly memory where the SIMD kernels run: they read and write them in place)
  const x = activations('x', n * dim), xb = activations('xb', n * dim), xb2 = activations('xb2', n * dim);
  const q = activations('q', n * qDim), k = activations('k', n * kvDim), v = activations('v', n * kvDim);
  const att = activations('att', n * qDim);
  const gate = activations('gate', n * c.hiddenDim), up = activations('up', n * c.hiddenDim);
  const row = new Float32Array(dim);
  // each part's first row and first position
  const rows: number[] = [], starts = parts.map((p) => p.seq.length);
  parts.reduce((r, p) => { rows.push(r); return r + p.tokens.length; }, 0);
  parts.forEach((p, j) => p.tokens.forEach((t, i) => x.set(w.embed.row(t, row), (rows[j] + i) * dim)));
  if (c.embedScale) for (let i = 0; i < n * dim; i++) x[i] *= c.embedScale; // (Gemma)
  const scale = c.attnScale ?? 1 / Math.sqrt(hd);
  // (what precedes a layer's attention, and the attention itself: each part over its own cache)
  const beforeAttention = (l: number) => {
    const L = w.layers[l];
    if (L.qNorm) { rmsnorm(q, q, L.qNorm, n * nH, hd, c.normEps); rmsnorm(k, k, L.kNorm!, n * nKV, hd, c.normEps); } // Qwen3, per head
    const rope = windowOf(c, l) ? model.ropeLocal : model.rope;
    parts.forEach((p, j) => {
      const kv = p.seq.cache.layers[l], r0 = rows[j];
      for (let i = 0; i < p.tokens.length; i++) {
        rope.apply(q, (r0 + i) * qDim, nH, starts[j] + i);
        rope.apply(k, (r0 + i) * kvDim, nKV, starts[j] + i);
        kv.append(k, (r0 + i) * kvDim, v, (r0 + i) * kvDim);
      }
    });
  };
  const attend = (l: number) => parts.forEach((p, j) => {
    const r0 = rows[j], m = p.tokens.length;
    p.seq.attendRows(l, q.subarray(r0 * qDim, (r0 + m) * qDim), att.subarray(r0 * qDim, (r0 + m) * qDim), m, starts[j], scale, p.dense === true);
  });

  // decode steps: the layers as one program the threads run together (backend/cpu/decode-program.ts)
  const rt = wasm(), program = decodeProgram(rt, rt && workerPool(rt), c, w, n, { x, q, k, v, att, gate, up, xb2 });
  if (program) {
    const one = parts.length === 1 && n === 1 ? parts[0] : null; // (a single sequence's dense layers attend inside)
    const inside = (l: number) => one !== null && one.seq.length < program.maxKeys && one.seq.programAttends(l, one.dense === true);
    program.step(inside, (l) => one!.seq.programCache(l),
      (l) => { const L = w.layers[l]; addBias(q, L.bq, n); addBias(k, L.bk, n); addBias(v, L.bv, n); beforeAttention(l); }, attend);
  } else for (let l = 0; l < c.nLayers; l++) {
    const L = w.layers[l];
    rmsnorm(xb, x, L.attnNorm, n, dim, c.normEps);
    matmuls([L.wq, L.wk, L.wv], xb, n, [q, k, v], [L.bq, L.bk, L.bv]);
    beforeAttention(l);
    attend(l);
    matmul(L.wo, att, n, xb2);
    if (L.postAttnNorm) rmsnorm(xb2, xb2, L.postAttnNorm, n, dim, c.normEps); // (Gemma 3)
    addInPlace(x, xb2, n * dim);
    rmsnorm(xb, x, L.ffnNorm, n, dim, c.normEps);
    matmuls([L.wGate, L.wUp], xb, n, [gate, up]);
    if (c.ffnAct === 'gelu') geglu(gate, up, n * c.hiddenDim); else swiglu(gate, up, n * c.hiddenDim);
    matmul(L.wDown, gate, n, xb2);
    if (L.postFfnNorm) rmsnorm(xb2, xb2, L.postFfnNorm, n, dim, c.normEps);
    addInPlace(x, xb2, n * dim);
  }
  parts.forEach((p) => p.seq.tokens.push(...p.tokens));
  // the logits of the rows asked for, one product for all of them
  const want = parts.map((p, j) => (p.logits === 'none' ? [] : p.logits === 'last' ? [rows[j] + p.tokens.length - 1] : p.tokens.map((_, i) => rows[j] + i)));
  const all = want.flat();
  if (!all.length) return parts.map(() => null);
  const h = new Float32Array(all.length * dim);
  all.forEach((r, i) => h.set(x.subarray(r * dim, (r + 1) * dim), i * dim));
  const hn = new Float32Array(all.length * dim);
  rmsnorm(hn, h, w.finalNorm, all.length, dim, c.normEps);
  const logits = new Float32Array(all.length * c.vocabSize);
  matmul(w.output, hn, all.length, logits);
  let at = 0;
  return want.map((ws) => { if (!ws.length) return null; const out = logits.slice(at * c.vocabSize, (at + ws.length) * c.vocabSize); at += ws.length; return out; });
}

/** out[t][r] += bias[r] for n rows (a product's bias, after a layer program wrote the product). */
function addBias(out: Float32Array, bias: Float32Array | null, n: number): void {
  if (!bias) return;
  for (let t = 0, o = 0; t < n; t++) for (let r = 0; r < bias.length; r++, o++) out[o] += bias[r];
}

/** Throws a clear error unless `tokens` may follow the `held` tokens of a sequence of model `c` (both backends). */
export function checkTokens(c: ModelConfig, held: number, tokens: number[]): void {
  if (tokens.length === 0) throw new Error('forward needs at least one token');
  if (held + tokens.length > c.maxSeqLen) throw new Error(`sequence of ${held + tokens.length} tokens exceeds the model's context length of ${c.maxSeqLen}`);
  for (const t of tokens) if (!Number.isInteger(t) || t < 0 || t >= c.vocabSize) throw new Error(`token id ${t} is outside the vocabulary (0..${c.vocabSize - 1})`);
}

/** Throws a clear error unless `steps` form one batched decode step (both backends): sequences of one
 *  model (`modelOf`), each once, each with a token that fits. */
export function checkBatch<S extends { length: number }>(steps: { seq: S; token: number }[], modelOf: (s: S) => unknown, c: ModelConfig): void {
  const model = modelOf(steps[0].seq), seen = new Set<S>();
  for (const { seq, token } of steps) {
    if (modelOf(seq) !== model) throw new Error('a batch runs sequences of one model');
    if (seen.has(seq)) throw new Error('a sequence appears twice in one batch');
    seen.add(seq);
    checkTokens(c, seq.length, [token]);
  }
}

/** One decode step of several sequences (one token each) in one forward pass: their logits. */
export function decodeBatch(steps: { seq: Session; token: number }[]): Float32Array[] {
  if (!steps.length) return [];
  const model = steps[0].seq.model;
  checkBatch(steps, (s) => s.model, model.config);
  return forwardParts(model, steps.map(({ seq, token }) => ({ seq, tokens: [token], logits: 'last' as const }))) as Float32Array[];
}

/** Quest's page scores of every query head for every page of a layer ([nH][pages] f32 in the wasm
 *  memory, returned as a pointer), split by pages across the worker threads: each KV head's key min/max
 *  are read once for its group. */
function allPageScores(rt: WasmRuntime, kv: LayerKV, q: Float32Array, nH: number): number {
  const hd = kv.headDim, np = kv.numPages, nKV = kv.nKV, group = nH / nKV;
  const qp = rt.scratchPtr('ps.q', nH * hd * 4), op = rt.scratchPtr('ps.all', nH * np * 4);
  rt.f32(qp, nH * hd).set(q.subarray(0, nH * hd));
  const pool = np * nKV >= 512 ? workerPool(rt) : null, parts = pool ? pool.size + 1 : 1, table = kv.tablePtr();
  const bf16 = kv.bf16 ? 1 : 0;
  const args = (share: number) => [...split(np, parts, share), np, nKV, group, hd, qp, kv.kmin.byteOffset, kv.kmax.byteOffset, table, nKV * hd * kv.pages.elementBytes, op, bf16];
  const local = () => { const a = args(0); pageScoreRange(rt.k, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12]); };
  if (pool) pool.run(OP_PAGE_SCORES, args, null, local); else local();
  return op;
}

/** The first of share's rows when n causal rows (positions start..start+n-1; row i sees start + i + 1
 *  keys) are split into `parts` runs of about equal work, at multiples of ATTEND_ROWS (share = parts: n). */
export function causalRowSplit(n: number, start: number, parts: number, share: number): number {
  if (share <= 0) return 0;
  if (share >= parts) return n;
  const work = (r: number) => r * (start + 1) + (r * (r - 1)) / 2, target = (work(n) * share) / parts;
  // smallest r with work(r) >= target: the root of r^2/2 + (start + 1/2) r = target
  const b = start + 0.5, r = Math.ceil(-b + Math.sqrt(b * b + 2 * target) - 1e-9);
  return Math.min(n, Math.round(r / ATTEND_ROWS) * ATTEND_ROWS);
}

/** A decode step's attention split by tokens across the threads (attendTokenPart: each key and value read
 *  once, the threads' shares equal whatever the head count), the parts merged here. q at qp ([nH][hd] in
 *  the wasm memory); selp: per head [token list pointer, count] (0: every head over tokens 0..count-1);
 *  count: the longest list. */
function attendByTokens(rt: WasmRuntime, pool: WorkerPool, kv: LayerKV, qp: number, att: Float32Array, nH: number, selp: number, count: number, scale: number): void {
  const hd = kv.headDim, group = nH / kv.nKV, parts = pool.size + 1;
  const outs = Array.from({ length: parts }, (_, i) => rt.scratchPtr(`at.o${i}`, nH * hd * 4));
  const stats = Array.from({ length: parts }, (_, i) => rt.scratchPtr(`at.s${i}`, nH * 8));
  const pp = Array.from({ length: parts }, (_, i) => rt.scratchPtr(`at.p${i}`, (group + 1) * (Math.ceil(count / parts) + 8) * 4));
  const bf16 = kv.bf16 ? 1 : 0, pageStride = kv.pageFloats * kv.pages.elementBytes, table = kv.tablePtr();
  const args = (share: number) => [share, parts, nH, group, hd, qp, outs[share], stats[share], kv.kPtr, kv.vPtr, table, pageStride, kv.pageSize, pp[share], selp, count, bf16];
  pool.run(OP_ATTEND_TOKENS, args, () => scale, () => attendTokenPart(rt.k, 0, parts, nH, group, hd, qp, outs[0], stats[0], kv.kPtr, kv.vPtr, table, pageStride, kv.pageSize, pp[0], scale, selp, count, rt.memory, bf16));
  mergeTokenParts(outs.map((o) => rt.f32(o, nH * hd)), stats.map((st) => rt.f32(st, 2 * nH)), nH, hd, att);
}

/** A decode step's attention over each head's selected tokens (null: all), the heads of a KV group that
 *  share a selection in one kernel call (their keys and values read once), split by heads across threads. */
function attendSelected(rt: WasmRuntime, kv: LayerKV, q: Float32Array, att: Float32Array, nH: number, sel: Selection | null, pos: number, scale: number): void {
  const hd = kv.headDim, group = nH / kv.nKV, qDim = nH * hd;
  // each distinct token list once in the wasm memory; per head [pointer, count]
  const lists = new Map<Int32Array, number>();
  let total = 0;
  if (sel) for (const t of sel) if (t && !lists.has(t)) { lists.set(t, total); total += t.length; }
  const pool = workerPool(rt), parts = pool ? pool.size + 1 : 1;
  const tp = rt.scratchPtr('sa.t', Math.max(4, total * 4)), selp = rt.scratchPtr('sa.sel', nH * 8);
  const qp = rt.scratchPtr('pf.q', qDim * 4), op = rt.scratchPtr('pf.o', qDim * 4);
  const pp = Array.from({ length: parts }, (_, i) => rt.scratchPtr(`pf.p${i}`, (group + 1) * (pos + 5) * 4));
  for (const [t, at] of lists) rt.i32(tp + at * 4, t.length).set(t);
  const table = rt.i32(selp, nH * 2);
  for (let h = 0; h < nH; h++) {
    const t = sel?.[h] ?? null;
    table[2 * h] = t ? tp + lists.get(t)! * 4 : 0; table[2 * h + 1] = t ? t.length : pos + 1;
  }
  rt.f32(qp, qDim).set(q.subarray(0, qDim));
  let longest = 0; for (let h = 0; h < nH; h++) longest = Math.max(longest, table[2 * h + 1]);
  if (pool && longest >= TOKEN_SPLIT) { attendByTokens(rt, pool, kv, qp, att, nH, selp, longest, scale); return; }
  const pt = kv.tablePtr();
  const bf16 = kv.bf16 ? 1 : 0, pageStride = kv.pageFloats * kv.pages.elementBytes;
  const args = (share: number) => [...split(nH, parts, share), 1, pos, nH, group, hd, qp, op, kv.kPtr, kv.vPtr, pt, pageStride, kv.pageSize, pp[share], 0, 0, selp, bf16];
  const local = () => { const a = args(0); attendHeads(rt.k, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], scale, a[15], a[16], a[17], rt.memory, bf16); };
  if (pool) pool.run(OP_ATTEND, args, () => scale, local); else local();
  att.set(rt.f32(op, qDim));
}
