// One sequence on WebGPU: its paged KV cache in GPU buffers and the forward pass as one command buffer
// per chunk (every kernel of every layer in one compute pass; one readback of the logits, or of the
// argmax for greedy decoding). Same semantics as the CPU Session: prefill dense, decode steps use
// Quest from `denseLayers` on (the page selection happens on the GPU, nothing is read back).
import { DEFAULT_ATTENTION, validateAttentionOptions, type AttentionOptions } from '../attention/policy.js';
import { createPolicy } from '../attention/create.js';
import { MIN_PAGES } from '../attention/quest.js';
import { exactScoresWgsl, listParams, receivedColsWgsl, receivedParams, receivedRowsWgsl, tokenListAttentionWgsl } from '../backend/webgpu/planned-attention.js';
import { GpuStepPlanner } from './gpu-planner.js';
import { DecodeAttention, readBuffer, type AttnRow, type LayerBuffers, type SharedPages } from '../backend/webgpu/decode-attention.js';
import { GpuPageStore } from '../backend/webgpu/gpu-pages.js';
import { PageAllocator, PageTable, sharedPrefixGroups } from '../kv/page-table.js';
import type { PassProfiler } from '../backend/webgpu/pass-profiler.js';
import { hasSubgroups32, matrixConfig, processEnv, throwDeviceError } from '../backend/webgpu/device.js';
import { toHalfGrid, toHalfWgsl } from '../backend/webgpu/mma-kernels.js';
import { mmaAttentionFits, mmaAttentionRows, prefillAttentionWgslFor, type AttentionTune } from '../backend/webgpu/mma-attention.js';
import * as K from '../backend/webgpu/kernels.js';
import { storageUsage, type GpuLinear, type GpuModel } from '../backend/webgpu/model.js';
import { checkBatch, checkTokens, type ForwardOptions, type KVLayout } from './session.js';
import { saveSession, type SessionFileOptions } from './session-file.js';
import type { AheadSteps, BatchStep } from './batcher.js';
import { concatF32 } from '../model/tensor.js';
import { windowOf } from '../model/config.js';

/** Tokens per prefill submission, largest first: a large chunk reads the weights fewer times and gives
 *  the attention kernel more workgroups; the runner takes the largest whose activation buffers each fit
 *  one storage binding (QUEST_PREFILL_CHUNK overrides). Multiples of 128: products read whole tiles. */
const CHUNKS = [2048, 1024, 512, 256];
/** QUEST_PREFILL_CHUNK may also ask for larger chunks (benchmarks: 4096 ran within the spread of 2048 for
 *  the 7B shape's 32K prompt on an H100, session 28). */
const FORCED_CHUNKS = [8192, 4096, ...CHUNKS];
const VEC_ROWS = 4; // chunks of up to this many tokens run matrix-vector products (and fuse prologues)
/** Rows from which a batched step's f16 products run on tensor cores (H100, 7B f16, GPU ms per step,
 *  matrix-vector / tensor cores: 2 rows 11.3 / 18.2, 4 rows 19.3 / 18.2, 8 rows 37.3 / 20.3). */
const MMA_BATCH_ROWS = 4;
/** Sequences in one batched decode step, at most. */
export const MAX_BATCH = 64;
/** Decode steps that may be in flight at once in greedy decoding (the readback buffers form a ring). */
export const GREEDY_DEPTH = 3;
const RING = GREEDY_DEPTH + 1;

/** Steps with up to `depth` in flight (greedy decoding: the GPU runs step t while the host records step
 *  t + 1): yields each step's result in order, submitting the next one first; where the consumer stops
 *  early, the steps it did not take are waited for and undone (`undo(n)`). */
async function* stepsInFlight<T>(depth: number, more: () => boolean, submit: () => Promise<T>, undo: (n: number) => void): AsyncGenerator<T> {
  const steps: Promise<T>[] = [];
  try {
    while (steps.length < depth && more()) steps.push(submit());
    while (steps.length) {
      const x = await steps.shift()!;
      if (more()) steps.push(submit()); // keep the GPU busy while the consumer handles x
      yield x;
    }
  } finally {
    if (steps.length) {
      await Promise.allSettled(steps);
      undo(steps.length);
    }
  }
}

/** What a forward leaves to read back: every row's logits, the last row's, its argmax, or nothing
 *  (encodeChunk also takes 'all+argmax': every row's logits and each row's argmax, a batched step). */
type Want = 'all' | 'last' | 'argmax' | 'none';

type Prologue = { kind: 'rmsnorm'; weight: GPUBuffer } | { kind: 'glu'; act: K.GluAct };

/** Activation buffers and pipelines shared by all sessions of a model: every submission is a whole
 *  forward that leaves nothing in them for a later one (greedy steps in flight pass their token through
 *  a buffer of their own session), so sessions may interleave on the queue. */
export class GpuRunner {
  readonly x: GPUBuffer; readonly xb: GPUBuffer; readonly qkv: GPUBuffer; readonly att: GPUBuffer;
  readonly gu: GPUBuffer; readonly h: GPUBuffer; readonly qrot: GPUBuffer; readonly xl: GPUBuffer; readonly logits1: GPUBuffer;
  readonly tokens: GPUBuffer; readonly step: GPUBuffer; readonly best: GPUBuffer;
  /** a product's input quantised to int8 (Q4_0 products with integer dot products) */
  readonly xq: GPUBuffer;
  private logitsAll: GPUBuffer | null = null;
  readonly decode: DecodeAttention;
  readonly maxPages: number;
  /** the KV pages of every sequence of this runner: one store, so that a batched decode step reads all
   *  its sequences' pages in one dispatch per kernel */
  readonly pages: PageAllocator;
  readonly store: GpuPageStore;
  /** a batched step's page tables ([row][maxPages]) and rows (position, row, table offset) */
  readonly batchTable: GPUBuffer; readonly batchRows: GPUBuffer;

  /** the layout of the tensor-core prefill attention, null where it does not run */
  readonly mmaAttention: AttentionTune | null;
  /** tokens per prefill submission (activation buffers hold this many rows) */
  readonly chunk: number;
  /** a prompt's next chunk is queued while one runs (QUEST_PREFILL_AHEAD=0: each is waited for, and timed) */
  readonly prefillAhead = processEnv().QUEST_PREFILL_AHEAD !== '0';
  /** tokens per submission when every position's logits are wanted (their buffer is chunk x vocabulary) */
  readonly logitsChunk: number;

  constructor(readonly m: GpuModel, readonly pageSize: number) {
    const c = m.config, d = m.device;
    const buf = (floats: number) => d.createBuffer({ size: Math.max(16, floats * 4), usage: storageUsage() });
    const qkvN = (c.nHeads + 2 * c.nKVHeads) * c.headDim;
    const maxBinding = d.limits.maxStorageBufferBindingSize, widest = Math.max(qkvN, 2 * c.hiddenDim, c.dim) * 4;
    const forced = Number(processEnv().QUEST_PREFILL_CHUNK);
    this.chunk = FORCED_CHUNKS.includes(forced) && forced * widest <= maxBinding ? forced : CHUNKS.find((n) => n * widest <= maxBinding) ?? CHUNKS[CHUNKS.length - 1];
    this.logitsChunk = CHUNKS.find((n) => n <= this.chunk && n * c.vocabSize * 4 <= maxBinding) ?? 128;
    const ROWS = this.chunk;
    this.x = buf(ROWS * c.dim); this.xb = buf(ROWS * c.dim); this.qkv = buf(ROWS * qkvN);
    this.att = buf(ROWS * c.nHeads * c.headDim); this.qrot = buf(Math.min(ROWS, MAX_BATCH) * c.nHeads * c.headDim); this.gu = buf(ROWS * 2 * c.hiddenDim); this.h = buf(ROWS * c.hiddenDim);
    this.xl = buf(c.dim); this.logits1 = buf(c.vocabSize); this.tokens = buf(ROWS); this.best = buf(MAX_BATCH);
    this.mmaAttention = this.usesMmaAttention;
    this.xq = buf(MAX_BATCH * 4 * K.quantisedXWords(Math.max(c.dim, c.hiddenDim, c.nHeads * c.headDim)));
    this.step = d.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    this.maxPages = Math.ceil(c.maxSeqLen / pageSize);
    this.decode = new DecodeAttention(d, { nHeads: c.nHeads, nKV: c.nKVHeads, headDim: c.headDim, pageSize, maxPages: this.maxPages },
      this.maxPages, { q: this.qrot, out: this.att });
    this.store = new GpuPageStore(m, pageSize);
    this.pages = new PageAllocator(this.store, true); // (kept between requests: see releaseKV)
    this.batchTable = buf(MAX_BATCH * this.maxPages); this.batchRows = buf(MAX_BATCH * 4);
  }

  private batchViews: LayerBuffers[] = [];
  private batchViewsGeneration = -1;
  /** Layer l's K/V/metadata with the batch's page tables (rebuilt when the store grew). */
  batchView(l: number): LayerBuffers {
    if (this.batchViewsGeneration !== this.store.generation) {
      this.decode.forget(this.batchViews);
      this.batchViews = this.store.layers.map((x) => ({ ...x, table: this.batchTable }));
      this.batchViewsGeneration = this.store.generation;
    }
    return this.batchViews[l];
  }

  private xhBuf: GPUBuffer | null = null;
  /** a batched step's product input as two f16 parts per value (the tensor-core few-token products; a
   *  token block past the last sequence is read too), made by the first step that uses it */
  get xh(): GPUBuffer {
    const c = this.m.config;
    return this.xhBuf ??= this.m.device.createBuffer({ size: (MAX_BATCH + 16) * Math.max(c.dim, c.hiddenDim, c.nHeads * c.headDim) * 4, usage: storageUsage() });
  }

  // readback buffers of batched steps, kept between steps (creating a mapped buffer of a batch's logits
  // each step cost more than the copy): taken while a step reads back, given back after
  private stagingFree: GPUBuffer[] = [];
  takeStaging(bytes: number): GPUBuffer {
    const i = this.stagingFree.findIndex((b) => b.size >= bytes);
    if (i >= 0) return this.stagingFree.splice(i, 1)[0];
    return this.m.device.createBuffer({ size: bytes, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
  }
  giveStaging(b: GPUBuffer): void { this.stagingFree.push(b); if (this.stagingFree.length > 2) this.stagingFree.shift()!.destroy(); }

  /** Timestamp queries around each forward's compute pass (benchmarks, one session at a time; needs
   *  'timestamp-query'); one read buffer per step that may be in flight. */
  timing: { set: GPUQuerySet; resolve: GPUBuffer; reads: GPUBuffer[] } | null = null;
  /** With a profiler set, every dispatch of the next forwards is timed on its own (bench/gpu-profile). */
  profiler: PassProfiler | null = null;
  enableTiming(): void {
    const d = this.m.device;
    this.timing ??= {
      set: d.createQuerySet({ type: 'timestamp', count: 2 }),
      resolve: d.createBuffer({ size: 16, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC }),
      reads: Array.from({ length: RING }, () => d.createBuffer({ size: 16, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ })),
    };
  }

  /** How prefill attention runs on tensor cores (subgroup matrices) here; null: the fallback kernel. */
  get usesMmaAttention(): AttentionTune | null {
    const mc = matrixConfig(this.m.device), c = this.m.config;
    // (QUEST_MMA_ATTENTION=0 keeps the fallback kernel, to compare)
    return processEnv().QUEST_MMA_ATTENTION === '0' || mc === null ? null : mmaAttentionFits({ headDim: c.headDim, pageSize: this.pageSize }, mc, this.m.device.limits.maxComputeWorkgroupStorageSize);
  }

  logitsRows(): GPUBuffer {
    this.logitsAll ??= this.m.device.createBuffer({ size: this.logitsChunk * this.m.config.vocabSize * 4, usage: storageUsage() });
    return this.logitsAll;
  }

  /** Frees the KV cache's GPU memory if no sequence holds it (it is otherwise kept after the last
   *  sequence ends, so the next request does not create it again); whether it did. */
  releaseKV(): boolean { return this.pages.releaseStore(); }

  dispose(): void {
    for (const b of [this.x, this.xb, this.qkv, this.qrot, this.att, this.gu, this.h, this.xl, this.logits1, this.tokens, this.step, this.best, this.xq, this.xhBuf, this.logitsAll, this.batchTable, this.batchRows, ...this.stagingFree]) b?.destroy();
    this.store.dispose();
  }
}

export interface GpuForwardOptions extends ForwardOptions {
  /** return only the argmax of the last logits (greedy decoding; 4 bytes read back instead of the vocabulary) */
  argmax?: boolean;
}

export class GpuSession {
  readonly attention: AttentionOptions;
  /** the runner's pages (shared with forks and the other sequences) and this sequence's table over them */
  readonly store: GpuPageStore;
  readonly table: PageTable;
  private tableBuf: GPUBuffer;
  private tableVersion = -1;
  private views: LayerBuffers[] = [];
  /** the token ids the sequence holds (-1 briefly, for a greedy step's input still on the GPU) */
  readonly tokens: number[] = [];
  private viewsGeneration = -1;
  private len = 0;
  /** cached bind groups: a tree of maps keyed by the call's label, pipeline and buffers in turn (object
   *  keys: no key string built per dispatch, a cost the CPU pays ~400 times a batched step) */
  private groups: BindTree = new Map();
  private staging: GPUBuffer | null = null;
  /** the CPU-planned policies' half of a decode step (null: dense or Quest, which run on the GPU alone) */
  private readonly planner: GpuStepPlanner | null;
  /** attention received per [layer][head][token] in dense attention, summed on the GPU (H2O and recording sequences) */
  private received: GPUBuffer | null = null;
  private receivedCap = 0;
  /** sums not yet handed to the policy; what was handed so far (the policy gets differences) */
  private receivedDirty = false;
  private handed: Float32Array | null = null;
  private recording = false;
  private lse: GPUBuffer | null = null;

  /** `shareWith`: start as a fork of that sequence, sharing its KV pages (copy-on-write). */
  constructor(readonly runner: GpuRunner, attention: Partial<AttentionOptions> = {}, shareWith?: GpuSession) {
    this.attention = { ...DEFAULT_ATTENTION, ...attention };
    validateAttentionOptions(this.attention);
    const a = this.attention;
    if (a.policy === 'quest' && a.gqa !== 'group-sum') throw new Error(`WebGPU Quest selects pages per KV group by summed scores (gqa group-sum), not "${a.gqa}"`);
    if (a.pageSize !== runner.pageSize) throw new Error(`page size ${a.pageSize} differs from the model's GPU page size ${runner.pageSize}`);
    const c = runner.m.config, policy = a.policy === 'quest' ? null : createPolicy(a);
    if (policy?.wantsPrefillScores && shareWith && !shareWith.recording) throw new Error('fork to a policy that needs prefill scores: call recordPrefillScores() before the prefill');
    this.planner = policy ? new GpuStepPlanner(runner.m.device, policy, { nLayers: c.nLayers, nHeads: c.nHeads, nKV: c.nKVHeads, headDim: c.headDim, pageSize: runner.pageSize, denseLayers: a.denseLayers,
      windowed: Array.from({ length: c.nLayers }, (_, l) => windowOf(c, l) > 0) }) : null;
    this.store = runner.store;
    if (shareWith) { this.table = shareWith.table.fork(); this.len = shareWith.len; this.tokens.push(...shareWith.tokens); }
    else this.table = new PageTable(runner.pages, runner.pageSize);
    // the attention each token received in dense attention: a recording sequence's forks start from it,
    // and H2O starts from it
    if (shareWith?.recording) { this.recording = true; this.received = shareWith.copyReceived(); this.receivedCap = shareWith.receivedCap; this.receivedDirty = true; }
    else if (policy?.wantsPrefillScores) this.growReceived(this.len);
    // (entries past the sequence's pages: the tensor-core prefill attention reads whole 64-key tiles)
    this.tableBuf = runner.m.device.createBuffer({ size: (runner.maxPages + Math.ceil(64 / runner.pageSize) + 1) * 4, usage: storageUsage() });
  }

  get length(): number { return this.len; }
  get model() { return this.runner.m; }
  /** Whether decode steps are planned on the CPU (policies other than dense and Quest): no greedy steps
   *  in flight and no batched steps for such a sequence. */
  get planned(): boolean { return this.planner !== null; }

  /** Keeps the attention each token receives in dense attention, so that forks to H2O-like policies
   *  start from it (as Session.recordPrefillScores). */
  recordPrefillScores(): void { this.recording = true; this.growReceived(this.len); }

  /** Makes the received-attention buffer hold `tokens` tokens per head (zeros for the new ones). */
  private growReceived(tokens: number): void {
    const c = this.model.config, d = this.model.device;
    if (this.received && this.receivedCap >= tokens) return;
    const cap = Math.max(64, 2 ** Math.ceil(Math.log2(Math.max(1, tokens))));
    const next = d.createBuffer({ size: c.nLayers * c.nHeads * cap * 4, usage: storageUsage() });
    if (this.received) {
      const enc = d.createCommandEncoder();
      for (let r = 0; r < c.nLayers * c.nHeads; r++) enc.copyBufferToBuffer(this.received, r * this.receivedCap * 4, next, r * cap * 4, this.receivedCap * 4);
      d.queue.submit([enc.finish()]);
      this.received.destroy();
      if (this.handed) { // (what was handed over, laid out like the new buffer)
        const was = this.handed, old = this.receivedCap;
        this.handed = new Float32Array(c.nLayers * c.nHeads * cap);
        for (let r = 0; r < c.nLayers * c.nHeads; r++) this.handed.set(was.subarray(r * old, (r + 1) * old), r * cap);
      }
    }
    this.received = next; this.receivedCap = cap;
  }

  private copyReceived(): GPUBuffer {
    const d = this.model.device, src = this.received!, dst = d.createBuffer({ size: src.size, usage: storageUsage() });
    const enc = d.createCommandEncoder();
    enc.copyBufferToBuffer(src, 0, dst, 0, src.size);
    d.queue.submit([enc.finish()]);
    return dst;
  }

  private uniforms = new Map<string, GPUBuffer>();
  private uniform(key: string, bytes: number): GPUBuffer {
    let u = this.uniforms.get(key);
    if (!u) { u = this.model.device.createBuffer({ size: bytes, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST }); this.uniforms.set(key, u); }
    return u;
  }
  /** the received-attention kernels' uniform of layer l; the exact-scores kernel's */
  private receivedUniform(l: number): GPUBuffer { return this.uniform(`recv${l}`, 32); }
  private exactParams(): GPUBuffer { return this.uniform('exact', 16); }

  /** Hands the attention received since the last hand-over to an H2O-like policy (before a planned step). */
  private async handOverReceived(): Promise<void> {
    const policy = this.planner?.policy;
    if (!policy?.wantsPrefillScores || !this.receivedDirty || !this.received) return;
    const c = this.model.config, cap = this.receivedCap, n = this.len;
    const now = new Float32Array(await readBuffer(this.model.device, this.received, this.received.size));
    throwDeviceError();
    const diff = new Float32Array(n);
    for (let l = 0; l < c.nLayers; l++) for (let h = 0; h < c.nHeads; h++) {
      const at = (l * c.nHeads + h) * cap;
      for (let t = 0; t < n; t++) diff[t] = now[at + t] - (this.handed ? this.handed[at + t] : 0);
      policy.observePrefill!(l, h, diff, n);
    }
    this.handed = now;
    this.receivedDirty = false;
  }
  /** bytes of one page of KV (K, V and key min/max of every layer) */
  get pageBytes(): number { return this.model.config.nLayers * (2 * this.store.kvPageBytes + this.store.metaPageBytes); }

  /** This sequence under another attention policy, sharing its KV pages (nothing is copied; a page
   *  either sequence later writes to is copied first). */
  fork(attention: Partial<AttentionOptions> = {}): GpuSession {
    return new GpuSession(this.runner, { ...this.attention, ...attention }, this);
  }

  /** Rewinds to the first `length` tokens (not while greedy steps are in flight). */
  truncate(length: number): void {
    if (!Number.isInteger(length) || length < 0) throw new Error(`truncate needs a token count >= 0, got ${length}`);
    if (this.received && length < this.len) throw new Error(`a ${this.attention.policy} sequence cannot be rewound: its policy has seen attention from the tokens it would drop`);
    if (length >= this.len) return;
    this.table.truncate(length);
    this.len = length;
    this.tokens.length = Math.min(this.tokens.length, length);
  }

  /** Writes the sequence (tokens, KV pages, page min/max) to a session file (engine/session-file.ts). */
  save(path: string, o: SessionFileOptions = {}): Promise<void> {
    const c = this.model.config;
    return saveSession(this, path, this.model.fingerprint, `${c.arch} ${c.nLayers} layers x ${c.dim}`, o);
  }

  /** How this sequence's KV pages are stored (session files must match it to be loaded). */
  kvLayout(): KVLayout {
    const c = this.model.config;
    return { kv: 'f16', nLayers: c.nLayers, nKV: c.nKVHeads, headDim: c.headDim, pageSize: this.runner.pageSize, kPageBytes: this.store.kvPageBytes, metaPageBytes: this.store.metaPageBytes };
  }

  /** Runs of consecutive logical pages first..first+count-1 that are consecutive physical pages too. */
  private runs(first: number, count: number): { at: number; phys: number; n: number }[] {
    const out: { at: number; phys: number; n: number }[] = [];
    for (let i = 0; i < count; i++) {
      const p = this.table.pages[first + i], last = out[out.length - 1];
      if (last && last.phys + last.n === p) last.n++; else out.push({ at: i, phys: p, n: 1 });
    }
    return out;
  }

  /** Logical pages first..first+count-1 of one layer: their K pages, then V pages, then key min/max. */
  async readPages(layer: number, first: number, count: number): Promise<Uint8Array> {
    await this.drain();
    const d = this.model.device, L = this.store.layers[layer], kb = this.store.kvPageBytes, mb = this.store.metaPageBytes;
    const size = count * (2 * kb + mb), staging = d.createBuffer({ size, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
    const enc = d.createCommandEncoder();
    for (const r of this.runs(first, count)) {
      enc.copyBufferToBuffer(L.k, r.phys * kb, staging, r.at * kb, r.n * kb);
      enc.copyBufferToBuffer(L.v, r.phys * kb, staging, (count + r.at) * kb, r.n * kb);
      enc.copyBufferToBuffer(L.meta, r.phys * mb, staging, 2 * count * kb + r.at * mb, r.n * mb);
    }
    d.queue.submit([enc.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = new Uint8Array(staging.getMappedRange().slice(0));
    staging.unmap(); staging.destroy();
    throwDeviceError();
    return out;
  }

  /** The inverse of readPages (pages made writable by adoptTokens). */
  writePages(layer: number, first: number, count: number, data: Uint8Array): void {
    const q = this.model.device.queue, L = this.store.layers[layer], kb = this.store.kvPageBytes, mb = this.store.metaPageBytes;
    for (const r of this.runs(first, count)) {
      q.writeBuffer(L.k, r.phys * kb, data, r.at * kb, r.n * kb);
      q.writeBuffer(L.v, r.phys * kb, data, (count + r.at) * kb, r.n * kb);
      q.writeBuffer(L.meta, r.phys * mb, data, 2 * count * kb + r.at * mb, r.n * mb);
    }
  }

  /** Pages first..first+count-1 of one layer taken from a mapped staging buffer (loading a session file
   *  reads the file straight into `bytes`, laid out as readPages gives them, then `extra` bytes): one
   *  GPU copy on commit(), no copy on the CPU. */
  stagePages(layer: number, first: number, count: number, extra: number): { bytes: Uint8Array; commit(): void; discard(): void } {
    const d = this.model.device, kb = this.store.kvPageBytes, mb = this.store.metaPageBytes, size = count * (2 * kb + mb) + extra;
    const staging = d.createBuffer({ size: Math.ceil(size / 4) * 4, usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC, mappedAtCreation: true });
    return {
      bytes: new Uint8Array(staging.getMappedRange(), 0, size),
      commit: () => {
        staging.unmap();
        const L = this.store.layers[layer], enc = d.createCommandEncoder();
        for (const r of this.runs(first, count)) {
          enc.copyBufferToBuffer(staging, r.at * kb, L.k, r.phys * kb, r.n * kb);
          enc.copyBufferToBuffer(staging, (count + r.at) * kb, L.v, r.phys * kb, r.n * kb);
          enc.copyBufferToBuffer(staging, 2 * count * kb + r.at * mb, L.meta, r.phys * mb, r.n * mb);
        }
        d.queue.submit([enc.finish()]);
        staging.destroy();
      },
      discard: () => { staging.unmap(); staging.destroy(); },
    };
  }

  /** An empty session takes `tokens` as held, with pages for them (whose contents writePages fills). */
  adoptTokens(tokens: number[]): void {
    if (this.len !== 0) throw new Error('adoptTokens needs an empty session');
    this.table.reserve(0, tokens.length);
    this.syncTable();
    this.len = tokens.length;
    this.tokens.push(...tokens);
  }

  /** Every layer's buffers with this sequence's page table (rebuilt when the family's storage grew). */
  private get kv(): LayerBuffers[] {
    if (this.viewsGeneration !== this.store.generation) {
      this.runner.decode.forget(this.views);
      this.groups.clear();
      this.views = this.store.layers.map((l) => ({ ...l, table: this.tableBuf }));
      this.viewsGeneration = this.store.generation;
    }
    return this.views;
  }

  dispose(): void {
    this.planner?.dispose();
    for (const b of [this.received, this.lse, ...this.uniforms.values()]) b?.destroy();
    this.received = null; this.lse = null; this.uniforms.clear();
    this.runner.decode.forget(this.views);
    this.views = []; this.groups.clear();
    this.table.dispose();
    this.tableBuf.destroy();
    this.staging?.destroy(); this.staging = null;
    for (const b of this.ring) b.destroy();
    this.ring = [];
    this.nextToken?.destroy(); this.nextToken = null;
  }

  /** Runs `tokens` after what the session holds; resolves to logits ([vocab] or [n x vocab]), or with
   *  `argmax` to a one-element array holding the greedy token. */
  async forward(tokens: number[], opts: GpuForwardOptions = {}): Promise<Float32Array> {
    checkTokens(this.model.config, this.len, tokens);
    const mode = opts.logits ?? 'last';
    const most = mode === 'all' ? this.runner.logitsChunk : this.runner.chunk;
    const chunk = Math.min(most, Math.max(1, opts.chunk ?? most));
    const parts: Float32Array[] = [];
    this.table.makeRoom(this.len, tokens.length); // (the store grows once for a long prompt, as on the CPU)
    for (let s = 0; s < tokens.length; s += chunk) {
      const piece = tokens.slice(s, s + chunk), last = s + chunk >= tokens.length;
      const want = mode === 'all' ? 'all' : mode === 'last' && last ? (opts.argmax ? 'argmax' : 'last') : 'none';
      const out = await this.runChunk(piece, want, opts.dense === true);
      this.tokens.push(...piece);
      if (out) parts.push(out);
      opts.onProgress?.(Math.min(tokens.length, s + chunk), tokens.length);
    }
    return mode === 'none' ? new Float32Array(0) : concatF32(parts);
  }

  /** Encodes one chunk's forward pass into `pass`; with `batch`, the rows are instead one decode step of
   *  each of these sequences (this one among them). A decode step planned layer by layer (the oracles)
   *  yields after each sparse layer's scores: the caller submits, plans that layer and resumes the
   *  generator with a new pass. */
  private *encodeChunk(pass: GPUComputePassEncoder, n: number, want: Want | 'all+argmax', dense: boolean, batch: GpuSession[] | null = null): Generator<number, void, GPUComputePassEncoder> {
    const m = this.model, c = m.config, r = this.runner;
    const start = this.len, total = start + n;
    let current: GPUComputePipeline | null = null;
    const run = (pipe: GPUComputePipeline, key: string, bufs: (GPUBuffer | null)[], x: number | [number, number], y = 1) => {
      if (Array.isArray(x)) [x, y] = x;
      if (pipe !== current) { pass.setPipeline(pipe); current = pipe; }
      pass.setBindGroup(0, this.bind(pipe, key, bufs)); pass.dispatchWorkgroups(x, y);
    };
    // A batched decode step reads each weight once for many sequences. f16 weights, where the adapter has
    // subgroup matrices: tensor-core products from MMA_BATCH_ROWS sequences, x split into two f16 parts so that each
    // sequence keeps (nearly) its solo precision (H100, batch 16 of the 7B shape: GPU time per step 36.6 ->
    // 20.5 ms with x as one f16, which changed 1 of 64 greedy answers of bench:serve against the sequence
    // alone). Otherwise, from VEC_ROWS + 1 sequences, the batched SIMT kernel; products whose x is
    // quantised to int8 (Q4_0 etc. with integer dot products) take x exactly as a solo step does: 4-bit
    // weights through the batched int8 kernel (int8-batch.ts), others through the matrix-vector kernels, a
    // token per workgroup (which ran faster than the batched float kernel on the H200 at batch 16-32:
    // 2.2-2.8x). QUEST_BATCH_PRODUCT=mma|batch|vec forces one for every type.
    const forced = processEnv().QUEST_BATCH_PRODUCT, hasMma = matrixConfig(m.device) !== null;
    const mmaFor = (l: GpuLinear) => hasMma && (forced === 'mma' || (!forced && l.type === 'f16'));
    const batched = batch !== null && (n > VEC_ROWS || (n >= MMA_BATCH_ROWS && mmaFor(m.layers[0].gateUp)));
    const skinnyOf = (l: GpuLinear, add: boolean) => (batched && mmaFor(l) ? m.skinnyProduct(l, add, n) : null);
    const vecBatchOf = (l: GpuLinear) => batched && (forced === 'vec' || (forced !== 'batch' && m.quantisesX(l)));
    // a prefill chunk's tensor-core products take their input as f16 where the kernel before them wrote it so
    const x16 = (l: GpuLinear) => m.prefillX16 && n > VEC_ROWS && !batched && m.mmaTile(l) !== null;
    const linear = (l: GpuLinear, x: GPUBuffer, y: GPUBuffer, rows: number, add: boolean, pro?: Prologue, xHalf = false) => {
      const skinny = rows > 1 ? skinnyOf(l, add) : null;
      if (skinny) {
        // (x given as r.xh is f16 already: the RMSNorm or SwiGLU kernel before wrote it so)
        if (x !== r.xh) run(m.pipeline(`tohalf:${l.K}`, () => toHalfWgsl(l.K)), 'tohalf', [x, r.xh, null, null, null, null, r.step], toHalfGrid(rows, l.K));
        run(skinny.pipe, 'linS', [r.xh, y, l.data, l.type === 'f16' ? null : l.scales, l.bias, null, r.step], skinny.grid);
        return;
      }
      const vecBatch = vecBatchOf(l);
      if (batched && rows > 1 && !vecBatch) {
        run(m.batchPipeline(l, add), 'linB', [x, y, l.data, l.type === 'f16' ? null : l.scales, l.bias, null, r.step], K.batchGrid(l.N, l.K, l.type, rows));
        return;
      }
      const many = rows > VEC_ROWS && !vecBatch, spec = pro?.kind === 'rmsnorm' ? { kind: 'rmsnorm' as const, eps: c.normEps } : pro;
      const nw = pro?.kind === 'rmsnorm' ? pro.weight : null;
      if (!many && m.quantisesX(l)) {
        // x (with the prologue) quantised to int8 first, then the product by integer dot products
        const natural = l.type === 'q8_16'; // (int8 weights: x in column order; 4-bit: even / odd columns)
        run(m.pipeline(`quantx:${l.K}:${pro?.kind ?? ''}:${natural}`, () => K.quantiseXWgsl(l.K, spec, natural)), 'quantx', [x, r.xq, nw], K.quantiseXGrid(l.K, rows));
        // 4-bit weights of a batch: each block applied to many tokens in registers (QUEST_BATCH_PRODUCT=vec: not)
        const int8 = batched && rows > 1 && forced !== 'vec' ? m.int8BatchProduct(l, add, rows) : null;
        if (int8) { run(int8.pipe, 'linI', [r.xq, y, l.data, l.scales, l.bias, null, r.step], int8.grid); return; }
        // (a batch's tokens go fastest in the grid: each weight block is read from memory once for all of them)
        const blocks = Math.ceil(l.N / m.vecRowsPerGroup(l)), first = rows > 1 && m.tokensFirstGrid;
        run(m.linearPipeline(l, add, false, undefined, false, first), 'linV', [r.xq, y, l.data, l.scales, l.bias], first ? rows : blocks, first ? blocks : rows);
        return;
      }
      const pipe = m.linearPipeline(l, add, many, spec, xHalf), tile = many ? m.mmaTile(l) ?? { BN: K.MAT_TILE.rows, BM: K.MAT_TILE.tokens } : null;
      run(pipe, many ? 'linM' : 'linV', [x, y, l.data, l.type === 'f16' ? null : l.scales, l.bias, nw],
        tile ? Math.ceil(l.N / tile.BN) : Math.ceil(l.N / m.vecRowsPerGroup(l)), tile ? Math.ceil(rows / tile.BM) : rows);
    };
    // decode steps and short chunks: RMSNorm and SwiGLU run inside the products that read their output,
    // and (one token) RoPE, the KV append and the page min/max are one kernel
    const fuse = n <= VEC_ROWS && m.fusesPrologues && !batched, oneStep = n === 1;
    // (a batch's products on int8 x take RMSNorm / SwiGLU in the kernel that quantises x, as one token does)
    const fusedInto = (l: GpuLinear) => fuse || (batched && vecBatchOf(l) && m.fusesPrologues);
    const rms = m.pipeline('rms', () => K.rmsnormWgsl(c.dim, c.normEps, false));
    /** y = W · rmsnorm(x) for the chunk's rows of x */
    const normed = (weight: GPUBuffer, l: GpuLinear, y: GPUBuffer) => {
      if (fusedInto(l)) linear(l, r.x, y, n, false, { kind: 'rmsnorm', weight });
      else if (skinnyOf(l, false)) { run(m.pipeline('rmsh', () => K.rmsnormWgsl(c.dim, c.normEps, false, false, 'split')), 'rmsh', [r.x, weight, r.xh], n); linear(l, r.xh, y, n, false); }
      else if (x16(l)) { run(m.pipeline('rms16', () => K.rmsnormWgsl(c.dim, c.normEps, false, false, 'f16')), 'rms16', [r.x, weight, r.xb], n); linear(l, r.xb, y, n, false, undefined, true); }
      else { run(rms, 'rms', [r.x, weight, r.xb], n); linear(l, r.xb, y, n, false); }
    };
    const hs = { nHeads: c.nHeads, nKV: c.nKVHeads, headDim: c.headDim, pageSize: r.pageSize, ropeDims: c.ropeDims };
    const wt = m.embed.type;
    run(m.pipeline(`embed:${wt}`, () => K.embedWgsl(wt, c.dim, c.embedScale ?? 1)), 'embed', [r.tokens, r.x, m.embed.data, wt === 'f16' ? null : m.embed.scales, r.step], K.grid64((n * c.dim) / 8));
    const rope = m.pipeline('rope', () => K.ropeWgsl(hs, c.ropeStyle === 'neox'));
    const append = m.pipeline('kvappend', () => K.kvAppendWgsl(hs)), meta = m.pipeline('kvmeta', () => K.kvMetaWgsl(hs));
    const ropeAppend = m.pipeline('ropeappend', () => K.ropeAppendWgsl(hs, c.ropeStyle === 'neox'));
    // prefill attention on tensor cores where the adapter has subgroup matrices, else the fallback kernel
    // (sliding-window layers run the fallback kernel, which skips the tiles before the window)
    const mmaAtt = r.mmaAttention;
    const prefillOf = (window: number) => (mmaAtt && !window
      ? { pipe: m.pipeline('prefill-mma', () => prefillAttentionWgslFor(hs, matrixConfig(m.device)!, mmaAtt)), rows: mmaAttentionRows(mmaAtt) }
      : { pipe: m.pipeline(`prefill:${window}`, () => K.prefillAttentionWgsl(hs, hasSubgroups32(m.device), window)), rows: K.prefillLayout(c.headDim).queries });
    const act = c.ffnAct ?? 'silu', glu = m.pipeline('glu', () => K.gluWgsl(c.hiddenDim, act));
    // Gemma 3: a sublayer's output RMS-normalised before it is added to the residual
    const postNorm = m.pipeline('rmsadd', () => K.rmsnormWgsl(c.dim, c.normEps, false, true));
    /** x += W · input, or x += rmsnorm(W · input) where the layer has a post-norm */
    const residual = (l: GpuLinear, input: GPUBuffer, post: GPUBuffer | null, pro?: Prologue, xHalf = false) => {
      if (!post) { linear(l, input, r.x, n, true, pro, xHalf); return; }
      linear(l, input, r.xb, n, false, pro, xHalf);
      run(postNorm, 'post', [r.xb, post, r.x], n);
    };
    const nPages = Math.ceil(total / r.pageSize), touched = nPages - Math.floor(start / r.pageSize);
    const a = this.attention, keep = Math.max(MIN_PAGES, Math.ceil(a.budget / r.pageSize));
    r.decode.resetBatch();
    const sharedMemo = new Map<string, SharedPages[]>(); // (a batched step's shared-prefix groups, per set of dense rows)
    const rowsMemo = new Map<string, AttnRow[]>(), denseUpTo = batch ? Math.max(...batch.map((seq) => seq.attention.denseLayers)) : 0;
    const layers = this.kv;
    const scale = 1 / Math.sqrt(c.headDim), planner = this.planner;
    const ps = { nHeads: c.nHeads, nKV: c.nKVHeads, headDim: c.headDim, pageSize: r.pageSize };
    // the attention each token receives, summed per head (H2O's start; forks of a recording sequence):
    // for every dense attention of a recording sequence, else for the dense chunks only
    const received = this.received, reportAll = this.recording, reportChunk = received !== null && (n > 1 || dense);
    const report = (l: number, q: GPUBuffer, qStride: number) => {
      const d = m.device, u = this.receivedUniform(l);
      d.queue.writeBuffer(u, 0, receivedParams(start, n, qStride, l * c.nHeads * this.receivedCap, this.receivedCap, scale));
      this.lse ??= d.createBuffer({ size: c.nHeads * r.chunk * 4, usage: storageUsage() });
      run(m.pipeline('recvRows', () => receivedRowsWgsl(ps)), `recvR${l}`, [u, q, layers[l].k, layers[l].table, this.lse], n, c.nHeads);
      run(m.pipeline('recvCols', () => receivedColsWgsl(ps)), `recvC${l}`, [u, q, layers[l].k, layers[l].table, this.lse, received], Math.ceil(total / 64), c.nHeads);
      this.receivedDirty = true;
    };
    if (planner?.midStep && oneStep && !dense) m.device.queue.writeBuffer(this.exactParams(), 0, listParams(total, 0, scale));
    for (let l = 0; l < m.layers.length; l++) {
      const L = m.layers[l];
      const kv = layers[l];
      // a sliding-window layer attends densely to its window (already sparse: no policy), with its RoPE
      const window = windowOf(c, l), ropeTable = window ? m.ropeTableLocal : m.ropeTable;
      const policyLayer = !dense && !window && l >= a.denseLayers;
      normed(L.attnNorm, L.qkv, r.qkv);
      if (L.qkNorm) {
        run(m.pipeline('headnorm', () => K.headNormWgsl(hs, c.normEps)), 'headNorm', [r.qkv, L.qkNorm, r.step],
          K.grid64((batch ? batch.length : n) * (c.nHeads + c.nKVHeads)));
      }
      if (batch) {
        // one RoPE + append and one attention call for all the batch's sequences: each row at its
        // position, through its own page table, over its own pages, under its own budget
        const view = r.batchView(l);
        run(m.pipeline('ropeappendB', () => K.ropeAppendWgsl(hs, c.ropeStyle === 'neox', true)), 'ropeAppendB',
          [r.qkv, ropeTable, r.qrot, view.k, view.v, view.meta, r.step, view.table, r.batchRows], K.grid64((batch.length * (c.nHeads + 2 * c.nKVHeads) * c.headDim) / 2));
        // the rows' attention calls: the same for every layer past the densest sequence's dense layers
        // (one array per kind of layer, so the attention plans it once a step)
        const rowsKey = `${window}:${Math.min(l, denseUpTo)}`;
        let rows = rowsMemo.get(rowsKey);
        if (!rows) {
          rows = batch.map((seq, b) => {
            const sa = seq.attention, pages = Math.ceil((seq.len + 1) / r.pageSize), sk = Math.max(MIN_PAGES, Math.ceil(sa.budget / r.pageSize));
            return { seqLen: seq.len + 1, budgetPages: sa.policy === 'quest' && !window && l >= sa.denseLayers && sk < pages ? sk : 0, tableAt: b * r.maxPages, row: b, window };
          });
          rowsMemo.set(rowsKey, rows);
        }
        // forks of one context (a document asked several questions) read the pages they share once: dense
        // rows, and Quest rows (each attending to the shared pages it selected) in groups of their own
        const kind = rows.map((row) => (row.window ? 0 : row.budgetPages === 0 ? 1 : 2)), key = kind.join('');
        let shared = sharedMemo.get(key);
        if (!shared) {
          const tables = batch.map((seq) => seq.table.pages), pages = rows.map((row) => Math.ceil(row.seqLen / r.pageSize));
          shared = [1, 2].flatMap((k) => sharedPrefixGroups(tables, pages, kind.map((x) => x === k)));
          sharedMemo.set(key, shared);
        }
        r.decode.encodeRows(pass, view, rows, undefined, { shared });
        current = null;
      } else if (oneStep) {
        const plannedLayer = planner !== null && policyLayer;
        const sparse = !plannedLayer && policyLayer && a.policy === 'quest' && keep < nPages;
        // Quest's page scores in the RoPE / append dispatch (one dependent dispatch fewer)
        const scored = sparse && r.decode.fusesScores;
        if (scored) {
          run(r.decode.ropeScores(c.ropeDims ?? c.headDim, c.ropeStyle === 'neox'), 'ropeScores', [r.qkv, ropeTable, r.qrot, kv.k, kv.v, kv.meta, r.step, kv.table, r.decode.scoreBuffer], r.decode.ropeScoresGrid(nPages));
        } else run(ropeAppend, 'ropeAppend', [r.qkv, ropeTable, r.qrot, kv.k, kv.v, kv.meta, r.step, kv.table], K.grid64((c.nHeads + 2 * c.nKVHeads) * c.headDim / 2));
        if (plannedLayer && planner.midStep) {
          // the oracles: this layer's exact scores, read back and planned before the layer goes on
          run(m.pipeline('exactScores', () => exactScoresWgsl(ps)), 'exact', [this.exactParams(), r.qrot, kv.k, kv.table, planner.scoresFor(start)], Math.ceil(total / 64), c.nHeads);
          pass = yield l;
          current = null;
        }
        if (plannedLayer && planner.planned(l)) {
          run(m.pipeline('tokenList', () => tokenListAttentionWgsl(ps)), `list${l}`, [planner.params[l], r.qrot, kv.k, kv.v, kv.table, planner.lists, planner.probs, r.att], c.nHeads);
        } else {
          r.decode.encodeRows(pass, kv, [{ seqLen: total, budgetPages: sparse ? keep : 0, window }], undefined, { scored });
          current = null;
          if (!sparse && !plannedLayer && !window && (reportAll || reportChunk)) report(l, r.qrot, c.nHeads * c.headDim);
        }
      } else {
        run(rope, 'rope', [r.qkv, ropeTable, r.step], K.grid64((n * (c.nHeads + c.nKVHeads) * c.headDim) / 2));
        run(append, 'append', [r.qkv, kv.k, kv.v, r.step, kv.table], K.grid64((n * c.nKVHeads * c.headDim) / 2));
        run(meta, 'meta', [kv.k, kv.meta, r.step, kv.table], K.grid64((touched * c.nKVHeads * c.headDim) / 2));
        const prefill = prefillOf(window);
        run(prefill.pipe, 'prefill', [r.qkv, kv.k, kv.v, r.att, r.step, null, kv.table], Math.ceil(n / prefill.rows), c.nHeads);
        if (received && !window) report(l, r.qkv, (c.nHeads + 2 * c.nKVHeads) * c.headDim);
      }
      residual(L.wo, r.att, L.postAttnNorm);
      normed(L.ffnNorm, L.gateUp, r.gu);
      if (fusedInto(L.down)) residual(L.down, r.gu, L.postFfnNorm, { kind: 'glu', act });
      else if (skinnyOf(L.down, true)) { run(m.pipeline('gluh', () => K.gluWgsl(c.hiddenDim, act, 'split')), 'gluh', [r.gu, r.xh, r.step], K.grid64(n * c.hiddenDim)); residual(L.down, r.xh, L.postFfnNorm); }
      else if (x16(L.down)) { run(m.pipeline('glu16', () => K.gluWgsl(c.hiddenDim, act, 'f16')), 'glu16', [r.gu, r.h, r.step], K.grid64(n * c.hiddenDim)); residual(L.down, r.h, L.postFfnNorm, undefined, true); }
      else { run(glu, 'glu', [r.gu, r.h, r.step], K.grid64(n * c.hiddenDim)); residual(L.down, r.h, L.postFfnNorm); }
    }
    if (want === 'all' || want === 'all+argmax') {
      run(rms, 'rms', [r.x, m.finalNorm, r.xb], n);
      linear(m.output, r.xb, r.logitsRows(), n, false);
      if (want === 'all+argmax') run(m.pipeline('argmax', () => K.argmaxWgsl(c.vocabSize)), 'argmax', [r.logitsRows(), r.best], n);
    } else if (want !== 'none') {
      // the last row's logits (one token: its row is x itself, normalised inside the product)
      if (oneStep && fuse) linear(m.output, r.x, r.logits1, 1, false, { kind: 'rmsnorm', weight: m.finalNorm });
      else {
        run(m.pipeline('rmslast', () => K.rmsnormWgsl(c.dim, c.normEps, true)), 'rmslast', [r.x, m.finalNorm, r.xl, r.step], 1);
        linear(m.output, r.xl, r.logits1, 1, false);
      }
      if (want === 'argmax') run(m.pipeline('argmax', () => K.argmaxWgsl(c.vocabSize)), 'argmax', [r.logits1, r.best], 1);
    }
  }

  /** Writes the step uniform and tokens for a chunk of n tokens at the current position; grows the cache. */
  private prepareChunk(tokens: number[] | null, n: number): void {
    const r = this.runner, d = this.model.device;
    this.table.reserve(this.len, n); // (new pages; a shared last page copied first)
    this.syncTable();
    if (this.received) this.growReceived(this.len + n);
    d.queue.writeBuffer(r.step, 0, new Uint32Array([this.len, n, this.len + n, 0]));
    if (tokens) d.queue.writeBuffer(r.tokens, 0, new Uint32Array(tokens));
  }

  /** Mirrors the page table into its GPU buffer when it changed (queued before the next forward). */
  private syncTable(): void {
    if (this.tableVersion === this.table.version) return;
    this.model.device.queue.writeBuffer(this.tableBuf, 0, new Uint32Array(this.table.pages));
    this.tableVersion = this.table.version;
  }

  /** Benchmarks: a context of n tokens with random keys and values (and their page min/max) without a
   *  prefill; decode speed does not depend on the values. */
  async fillRandomContext(n: number, seed = 7): Promise<void> {
    if (this.len !== 0) throw new Error('fillRandomContext needs an empty session');
    const m = this.model, c = m.config, r = this.runner, d = m.device;
    this.table.reserve(0, n);
    this.syncTable();
    for (const l of this.kv) { m.fillRandom(l.k, l.k.size / 4, seed++, 1); m.fillRandom(l.v, l.v.size / 4, seed++, 1); }
    d.queue.writeBuffer(r.step, 0, new Uint32Array([0, n, n, 0]));
    const hs = { nHeads: c.nHeads, nKV: c.nKVHeads, headDim: c.headDim, pageSize: r.pageSize };
    const meta = m.pipeline('kvmeta', () => K.kvMetaWgsl(hs));
    const enc = d.createCommandEncoder(), pass = enc.beginComputePass();
    pass.setPipeline(meta);
    for (const l of this.kv) {
      pass.setBindGroup(0, this.bind(meta, 'meta', [l.k, l.meta, r.step, l.table]));
      pass.dispatchWorkgroups(...K.grid64((Math.ceil(n / r.pageSize) * c.nKVHeads * c.headDim) / 2));
    }
    pass.end();
    d.queue.submit([enc.finish()]);
    await d.queue.onSubmittedWorkDone();
    throwDeviceError();
    this.len = n;
  }

  /** Records a chunk's forward pass (and, with timing on, the pass's timestamps into read slot `slot`). */
  private recordChunk(enc: GPUCommandEncoder, n: number, want: Want, slot: number, dense = false): void {
    this.recordPass(enc, slot, (pass) => only(this.encodeChunk(pass, n, want, dense)));
  }

  /** One compute pass recorded by `encode` (timing the CPU's recording, and with timing on, the pass's
   *  timestamps into read slot `slot`). */
  private recordPass(enc: GPUCommandEncoder, slot: number, encode: (pass: GPUComputePassEncoder) => void): void {
    const prof = this.runner.profiler;
    if (prof) { encode(prof.pass(enc)); prof.finish(enc); return; } // (each dispatch timed on its own)
    const t = slot >= 0 ? this.runner.timing : null, tEncode = performance.now();
    const pass = enc.beginComputePass(t ? { timestampWrites: { querySet: t.set, beginningOfPassWriteIndex: 0, endOfPassWriteIndex: 1 } } : undefined);
    encode(pass);
    pass.end();
    this.lastEncodeMs = performance.now() - tEncode;
    if (t) { enc.resolveQuerySet(t.set, 0, 2, t.resolve, 0); enc.copyBufferToBuffer(t.resolve, 0, t.reads[slot], 0, 16); }
  }

  private async runChunk(tokens: number[], want: Want, dense = false): Promise<Float32Array | null> {
    const d = this.model.device, c = this.model.config, n = tokens.length, r = this.runner;
    const planner = n === 1 && !dense ? this.planner : null, pos = this.len;
    // (a greedy pipeline's steps in flight use the shared buffers; a prompt's chunk in flight may stay so,
    // queued before this one, except for a planned step, which reads back as it goes)
    if (planner) { await this.drain(); await this.handOverReceived(); planner.beginStep(pos); } else await this.lastStep;
    this.prepareChunk(tokens, n);
    // a prompt's chunk with nothing to read back is left in flight while the next one is queued (below);
    // it writes no timestamps (the runner's read slots would be mapped by two sequences' chunks at once)
    const pipelined = want === 'none' && !planner && !this.runner.profiler && this.runner.prefillAhead, slot = pipelined ? -1 : 0;
    let enc = d.createCommandEncoder();
    if (planner?.midStep) enc = await this.recordPlanned(enc, want, planner, pos);
    else this.recordChunk(enc, n, want, slot, dense);
    const probBytes = planner?.probBytes() ?? 0;
    const probs = probBytes ? d.createBuffer({ size: probBytes, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ }) : null;
    if (probs) enc.copyBufferToBuffer(planner!.probs, 0, probs, 0, probBytes);
    const observe = async () => {
      if (!probs) return;
      await probs.mapAsync(GPUMapMode.READ);
      planner!.observe(pos, new Float32Array(probs.getMappedRange().slice(0)));
      probs.unmap(); probs.destroy();
    };
    const bytes = want === 'all' ? n * c.vocabSize * 4 : want === 'last' ? c.vocabSize * 4 : want === 'argmax' ? 4 : 0;
    let staging: GPUBuffer | null = null;
    if (bytes) {
      if (!this.staging || this.staging.size < bytes) {
        this.staging?.destroy();
        this.staging = d.createBuffer({ size: Math.max(bytes, c.vocabSize * 4), usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
      }
      staging = this.staging;
      enc.copyBufferToBuffer(want === 'all' ? r.logitsRows() : want === 'argmax' ? r.best : r.logits1, 0, staging, 0, bytes);
    }
    d.queue.submit([enc.finish()]);
    this.len += n;
    if (pipelined) {
      // the next chunk is recorded and queued while this one runs (no gap on the GPU between chunks): this
      // waits only for the chunk before it
      const prev = this.chunkInFlight;
      this.chunkInFlight = d.queue.onSubmittedWorkDone().then(() => { throwDeviceError(); return null; }, (e: unknown) => e);
      if (prev) { const e = await prev; if (e) throw e; }
      return null;
    }
    if (!staging) { await d.queue.onSubmittedWorkDone(); await this.readTiming(slot); await observe(); throwDeviceError(); return null; }
    const out = await this.readBack(staging, bytes, slot);
    await observe();
    await this.drain(); // (the chunk before this one finished first: only its error, if any, is left)
    return want === 'argmax' ? Float32Array.of(new Uint32Array(out)[0]) : new Float32Array(out);
  }

  /** Records a decode step planned layer by layer: at each sparse layer the work so far is submitted,
   *  that layer's exact scores are read back and planned, and recording goes on in a new encoder
   *  (returned, to be finished by the caller). */
  private async recordPlanned(enc: GPUCommandEncoder, want: Want, planner: GpuStepPlanner, pos: number): Promise<GPUCommandEncoder> {
    const d = this.model.device, bytes = planner.scoreBytes(pos);
    const staging = d.createBuffer({ size: bytes, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
    try {
      let pass = enc.beginComputePass();
      const encoding = this.encodeChunk(pass, 1, want, false);
      for (let at = encoding.next(); !at.done; at = encoding.next(pass)) {
        pass.end();
        enc.copyBufferToBuffer(planner.scores!, 0, staging, 0, bytes);
        d.queue.submit([enc.finish()]);
        await staging.mapAsync(GPUMapMode.READ);
        planner.planLayer(at.value, pos, new Float32Array(staging.getMappedRange().slice(0)));
        staging.unmap();
        throwDeviceError();
        enc = d.createCommandEncoder();
        pass = enc.beginComputePass();
      }
      pass.end();
      return enc;
    } finally { staging.destroy(); }
  }

  /** One decode step of several sequences of one runner (one token each) in one forward pass: their
   *  logits, or for a step with `argmax` a one-element array holding its greedy token (computed on the
   *  GPU: 4 bytes read back instead of the vocabulary). The weight products read the weights once for
   *  all rows. */
  static async decodeBatch(steps: BatchStep<GpuSession>[]): Promise<Float32Array[]> {
    if (!steps.length) return [];
    const lead = steps[0].seq, r = lead.runner, d = lead.model.device, c = lead.model.config, n = steps.length;
    await GpuSession.admitBatch(steps);
    const batch = steps.map((x) => x.seq);
    GpuSession.writeBatchRows(batch);
    d.queue.writeBuffer(r.tokens, 0, new Uint32Array(steps.map((x) => x.token)));
    const enc = d.createCommandEncoder();
    const greedy = steps.map((x) => x.argmax === true), anyGreedy = greedy.includes(true), anySampled = greedy.includes(false);
    lead.recordPass(enc, 0, (pass) => only(lead.encodeChunk(pass, n, anyGreedy ? 'all+argmax' : 'all', false, batch)));
    // read back: every row's logits where any row samples on the CPU, then the rows' greedy tokens
    const tokensAt = anySampled ? n * c.vocabSize * 4 : 0, bytes = tokensAt + (anyGreedy ? n * 4 : 0); // (bytes)
    const staging = r.takeStaging(bytes);
    if (anySampled) enc.copyBufferToBuffer(r.logitsRows(), 0, staging, 0, tokensAt);
    if (anyGreedy) enc.copyBufferToBuffer(r.best, 0, staging, tokensAt, n * 4);
    d.queue.submit([enc.finish()]);
    for (const { seq, token } of steps) { seq.len += 1; seq.tokens.push(token); }
    const all = await lead.readBack(staging, bytes, 0);
    r.giveStaging(staging);
    const best = new Uint32Array(all, tokensAt, anyGreedy ? n : 0), rows = new Float32Array(all, 0, tokensAt / 4);
    // (views of one fresh copy)
    return steps.map((_, b) => (greedy[b] ? Float32Array.of(best[b]) : rows.subarray(b * c.vocabSize, (b + 1) * c.vocabSize)));
  }

  /** The checks before a batched step (size, one model, no sequence twice, tokens in the vocabulary, no
   *  sequence that runs alone), then waits for the rows' work still in flight. */
  private static async admitBatch(steps: BatchStep<GpuSession>[]): Promise<void> {
    const r = steps[0].seq.runner, n = steps.length;
    if (n > Math.min(r.chunk, MAX_BATCH)) throw new Error(`a batch holds at most ${Math.min(r.chunk, MAX_BATCH)} sequences, got ${n}`);
    checkBatch(steps, (s) => s.runner, steps[0].seq.model.config);
    for (const { seq } of steps) if (seq.planned || seq.received) throw new Error(`a ${seq.attention.policy} sequence${seq.recording ? ' that records prefill scores' : ''} runs its decode steps alone on WebGPU, not in a batch`);
    for (const { seq } of steps) await seq.drain();
  }

  /** A batched step's rows for the GPU (queued writes, so steps still in flight keep theirs): each row's
   *  page for the new token, the rows' page tables side by side, each row's position, row and table offset. */
  private static writeBatchRows(batch: GpuSession[]): void {
    const r = batch[0].runner, d = batch[0].model.device;
    for (const seq of batch) { seq.table.reserve(seq.len, 1); seq.syncTable(); }
    batch.forEach((seq, b) => d.queue.writeBuffer(r.batchTable, b * r.maxPages * 4, new Uint32Array(seq.table.pages)));
    d.queue.writeBuffer(r.batchRows, 0, Uint32Array.from(batch.flatMap((seq, b) => [seq.len, b, b * r.maxPages, 0])));
    d.queue.writeBuffer(r.step, 0, new Uint32Array([0, batch.length, 0, 0]));
  }

  /** Greedy decoding of a batch with up to `depth` steps in flight, as greedy() does for one sequence: each
   *  row's input token at step t + 1 is its argmax of step t, copied on the GPU, so the CPU records and
   *  submits step t + 1 while the GPU runs step t instead of waiting for step t's readback (a batched step
   *  otherwise costs the GPU's time plus the host's). Row b starts from `first[b]` (a token already known);
   *  yields each step's tokens in row order, at most `maxSteps` steps, fewer where a row reaches the context
   *  length. A consumer that stops early (break) gets the steps it did not take undone in every row. */
  static async *greedyBatch(seqs: GpuSession[], first: number[], maxSteps: number, depth = GREEDY_DEPTH): AsyncGenerator<number[]> {
    if (!seqs.length) return;
    if (first.length !== seqs.length) throw new Error(`greedyBatch needs one first token per sequence (${seqs.length}), got ${first.length}`);
    if (depth < 1 || depth > GREEDY_DEPTH) throw new Error(`greedy depth must be 1..${GREEDY_DEPTH}, got ${depth}`);
    const d = seqs[0].model.device, c = seqs[0].model.config, n = seqs.length;
    await GpuSession.admitBatch(seqs.map((seq, b) => ({ seq, token: first[b] })));
    // the batch's chain of tokens: each step's argmax, the next step's input (a buffer of its own, as other
    // forwards may use the runner's token buffers between two steps)
    const chain = GpuSession.chainBuffer(d, n);
    let submitted = 0, last: Promise<number[]> | null = null;
    try {
      yield* stepsInFlight(depth, () => submitted < maxSteps && seqs.every((seq) => seq.len < c.maxSeqLen),
        () => (last = GpuSession.submitBatchStep(seqs, submitted++ === 0 ? first : null, chain, last)), (k) => { for (const seq of seqs) seq.rollback(k); });
    } finally {
      chain.destroy();
    }
  }

  /** A chain's token buffer (greedyBatch, ahead): each row's argmax, the next step's input. */
  private static chainBuffer(d: GPUDevice, rows: number): GPUBuffer { return d.createBuffer({ size: Math.max(16, rows * 4), usage: storageUsage() }); }

  /** Chained greedy steps for continuous batching (StepBatcher): a batch of known tokens, then steps whose
   *  input tokens are the step before's argmax, copied on the GPU into the next step's tokens (as
   *  greedyBatch does), each chain with a buffer of its own. */
  static readonly ahead: AheadSteps<GpuSession> = {
    fits: (seqs, steps) => seqs.every((seq) => seq.len + steps <= seq.model.config.maxSeqLen),
    start: async (steps) => {
      await GpuSession.admitBatch(steps);
      const seqs = steps.map((x) => x.seq), d = seqs[0].model.device;
      const buffer = GpuSession.chainBuffer(d, seqs.length);
      const first = GpuSession.submitBatchStep(seqs, steps.map((x) => x.token), buffer, null);
      return { first, chained: { rows: seqs, inputs: first, tokens: GpuSession.submitBatchStep(seqs, null, buffer, first), handle: buffer } };
    },
    extend: (from) => ({ rows: from.rows, inputs: from.tokens, tokens: GpuSession.submitBatchStep(from.rows, null, from.handle as GPUBuffer, from.tokens), handle: from.handle }),
    undo: (seq) => seq.rollback(1),
    end: (last) => { void last.tokens.catch(() => undefined).then(() => (last.handle as GPUBuffer).destroy()); },
  };

  /** Submits one greedy step of a batch (greedyBatch): its tokens given, or the chain's (the argmax of the
   *  step before, `prev`, whose tokens then fill in the rows' token lists once read back). */
  private static submitBatchStep(seqs: GpuSession[], tokens: number[] | null, chain: GPUBuffer, prev: Promise<number[]> | null): Promise<number[]> {
    const lead = seqs[0], r = lead.runner, d = lead.model.device, n = seqs.length;
    GpuSession.writeBatchRows(seqs);
    if (tokens) d.queue.writeBuffer(r.tokens, 0, Uint32Array.from(tokens));
    const enc = d.createCommandEncoder();
    if (!tokens) enc.copyBufferToBuffer(chain, 0, r.tokens, 0, n * 4);
    const slot = lead.ringNext++ % RING;
    lead.recordPass(enc, slot, (pass) => only(lead.encodeChunk(pass, n, 'all+argmax', false, seqs)));
    const staging = r.takeStaging(n * 4);
    enc.copyBufferToBuffer(r.best, 0, chain, 0, n * 4);
    enc.copyBufferToBuffer(r.best, 0, staging, 0, n * 4);
    d.queue.submit([enc.finish()]);
    seqs.forEach((seq, b) => {
      const at = seq.tokens.length;
      seq.tokens.push(tokens ? tokens[b] : -1);
      if (!tokens) void prev?.then((t) => { if (seq.tokens.length > at) seq.tokens[at] = t[b]; }, () => undefined);
      seq.len += 1;
    });
    const done = lead.readBack(staging, n * 4, slot).then((b) => { r.giveStaging(staging); return Array.from(new Uint32Array(b)); });
    for (const seq of seqs) seq.lastStep = done.catch(() => undefined); // (a failed step rejects for whoever awaits it, once)
    return done;
  }

  /** The first `bytes` of a staging buffer once the GPU is done (and the timing of read slot `slot`). */
  private async readBack(staging: GPUBuffer, bytes: number, slot: number): Promise<ArrayBuffer> {
    // (both maps at once: each waits for the device to be polled, one after the other cost a step ~1 ms)
    await Promise.all([staging.mapAsync(GPUMapMode.READ, 0, bytes), this.readTiming(slot)]);
    const out = staging.getMappedRange(0, bytes).slice(0);
    staging.unmap();
    throwDeviceError();
    return out;
  }

  // ---- greedy decoding with steps in flight ----
  private ring: GPUBuffer[] = [];
  private ringNext = 0;
  private nextToken: GPUBuffer | null = null;
  private lastStep: Promise<unknown> = Promise.resolve();

  /** Greedy decoding that keeps up to `depth` steps in flight: each step takes its input token from the
   *  previous step's argmax on the GPU, so the CPU records step t + 1 while the GPU runs step t (nothing
   *  waits on a readback between them). Yields `first` (a token already known, e.g. the prefill's
   *  argmax), then the token of each step it runs, at most `maxSteps`, ending early at the context
   *  length. A consumer that stops early (break) gets the steps it did not take undone: they are waited
   *  for and the sequence is cut back (rollback). */
  async *greedy(first: number, maxSteps: number, depth = GREEDY_DEPTH): AsyncGenerator<number> {
    const c = this.model.config;
    if (!Number.isInteger(first) || first < 0 || first >= c.vocabSize) throw new Error(`token id ${first} is outside the vocabulary (0..${c.vocabSize - 1})`);
    if (depth < 1 || depth > GREEDY_DEPTH) throw new Error(`greedy depth must be 1..${GREEDY_DEPTH}, got ${depth}`);
    await this.drain();
    yield first;
    let submitted = 0;
    yield* stepsInFlight(depth, () => submitted < maxSteps && this.len < c.maxSeqLen,
      () => this.submitGreedyStep(submitted++ === 0 ? first : null), (n) => this.rollback(n));
  }

  /** Submits one decode step whose token is `token`, or the argmax the previous step left on the GPU. */
  private submitGreedyStep(token: number | null): Promise<number> {
    const d = this.model.device, r = this.runner;
    if (this.ring.length === 0) this.ring = Array.from({ length: RING }, () => d.createBuffer({ size: 16, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ }));
    this.nextToken ??= d.createBuffer({ size: 16, usage: storageUsage() });
    const slot = this.ringNext++ % RING, staging = this.ring[slot];
    this.prepareChunk(token === null ? null : [token], 1);
    // the input token: known, or the previous step's argmax once it is read back
    const at = this.tokens.length;
    this.tokens.push(token ?? -1);
    if (token === null) void this.lastStep.then((t) => { if (typeof t === 'number' && this.tokens.length > at) this.tokens[at] = t; });
    const enc = d.createCommandEncoder();
    // the chain's token lives in this session's own buffer: other sessions' forwards may run between two
    // steps and overwrite the runner's shared argmax and token buffers
    if (token === null) enc.copyBufferToBuffer(this.nextToken, 0, r.tokens, 0, 4);
    this.recordChunk(enc, 1, 'argmax', slot);
    enc.copyBufferToBuffer(r.best, 0, this.nextToken, 0, 4);
    enc.copyBufferToBuffer(r.best, 0, staging, 0, 4);
    d.queue.submit([enc.finish()]);
    this.len += 1;
    const done = this.readBack(staging, 4, slot).then((b) => new Uint32Array(b)[0]);
    this.lastStep = done.catch(() => undefined); // (a failed step rejects for whoever awaits it, once)
    return done;
  }

  /** A prompt's chunk queued and not yet waited for: resolves to its error, if any (rethrown by drain). */
  private chunkInFlight: Promise<unknown> | null = null;

  /** Waits for greedy steps and a prompt's chunk still in flight (the queue runs them in order). */
  private async drain(): Promise<void> {
    await this.lastStep;
    const c = this.chunkInFlight;
    this.chunkInFlight = null;
    if (c) { const e = await c; if (e) throw e; }
  }

  /** Drops the last n tokens (greedy steps a consumer did not take). */
  private rollback(n: number): void { this.truncate(this.len - n); }

  /** GPU time of the last forward's compute pass (ms; NaN unless the runner has timing on). */
  lastGpuMs = NaN;
  /** CPU time spent encoding the last forward's commands (ms). */
  lastEncodeMs = NaN;

  private async readTiming(slot: number): Promise<void> {
    const t = this.runner.timing;
    if (!t) return;
    const b = t.reads[slot];
    await b.mapAsync(GPUMapMode.READ);
    const ns = new BigUint64Array(b.getMappedRange().slice(0));
    b.unmap();
    this.lastGpuMs = Number(ns[1] - ns[0]) / 1e6;
  }

  /** A cached bind group: buffer i at binding i, null for a binding the shader does not declare. */
  private bind(pipe: GPUComputePipeline, key: string, bufs: (GPUBuffer | null)[]): GPUBindGroup {
    let node = this.groups;
    for (const k of [key, pipe, ...bufs]) {
      let next = node.get(k) as BindTree | undefined;
      if (!next) { next = new Map(); node.set(k, next); }
      node = next;
    }
    let g = node.get(GROUP) as GPUBindGroup | undefined;
    if (!g) {
      const entries = bufs.flatMap((buffer, binding) => (buffer ? [{ binding, resource: { buffer } }] : []));
      g = this.model.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries });
      node.set(GROUP, g);
    }
    return g;
  }
}

/** A tree of cached bind groups (GpuSession.bind): each level keyed by the next part of a call. */
type BindTree = Map<unknown, BindTree | GPUBindGroup>;
/** The key under which a BindTree node holds its bind group. */
const GROUP = Symbol('bind group');

/** Runs an encoding that must not stop for planning (a chunk, a batched step, a step planned up front). */
function only(encoding: Generator<number, void, GPUComputePassEncoder>): void {
  if (!encoding.next().done) throw new Error('a decode step planned layer by layer must run through runChunk');
}

/** One decode step of several WebGPU sequences in one forward pass (GpuSession.decodeBatch). */
export const gpuDecodeBatch = (steps: BatchStep<GpuSession>[]) => GpuSession.decodeBatch(steps);
