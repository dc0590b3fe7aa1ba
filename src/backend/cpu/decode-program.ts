// The plan step of a decode step's layer program (wasm/program.ts is the run step): for a model and a
// batch of n ≤ 4 tokens, the phases every thread runs between one layer's attention and the next, with
// each product's descriptor, chunk counters and each thread's private area laid out once in the
// WebAssembly memory. A decode step then hands the workers the whole step at once where every layer's
// attention is dense (the program runs it too, after a callback on the calling thread has applied RoPE and
// appended the key), else one stretch of the program from one sparse layer's attention to the next's
// (which the engine runs as before), instead of one hand-off per product and per attention.
import type { Matrix } from '../../model/tensor.js';
import type { ModelConfig, ModelWeights } from '../../model/config.js';
import type { WasmRuntime } from '../wasm/runtime.js';
import { DTYPE_CODE, OP_PROGRAM, type WorkerPool } from '../wasm/pool.js';
import { GEMM_DESC, Q8_X_TOKENS, TOKEN_SPLIT, gemmRowUnit, gemvInPlace, initChunkCounters, quantisesX } from '../wasm/shared-ops.js';
import {
  ATTN_WORDS, BARRIER_WORDS, PHASE_WORDS, PH_ADD, PH_ATTEND, PH_BARRIER, PH_CALLBACK, PH_COPY, PH_GEMV, PH_GLU, PH_LOAD_X, PH_NORM, PH_PREP, PH_STORE_X,
  PREP_F32, PREP_INT_Q8, PREP_INT_Q8K, PREP_ROUND_Q8, PREP_ROUND_Q8K, runProgram, type PrivateLayout,
} from '../wasm/program.js';
import { productBlocks, productRoundsX, wasmCopy } from './kernels.js';

/** A layer's KV cache as the program's attention reads it (Session.programCache), once this step's
 *  key and value are appended: keys attended, K and V page 0, page table, bytes between pages, page size,
 *  1 for a bf16 cache. */
export type AttentionCache = [count: number, kPtr: number, vPtr: number, table: number, pageStride: number, pageSize: number, bf16: number];

/** The forward pass's activation buffers the program reads and writes (in the WebAssembly memory). */
export interface ProgramBuffers { x: Float32Array; q: Float32Array; k: Float32Array; v: Float32Array; att: Float32Array; gate: Float32Array; up: Float32Array; xb2: Float32Array }

type Phase = [op: number, ...args: number[]];
interface Product { W: Matrix; out: Float32Array }

const align = (n: number) => Math.ceil(n / 64) * 64;

/** Keys a layer's attention inside the program reads at most (longer contexts attend outside it): each
 *  thread's scratch holds (group + 1) floats a key of its share, sized at plan time (1.3 MB a thread for a
 *  group of 4 heads at 128K on two threads). */
const MAX_KEYS = 131072;

export class DecodeProgram {
  private readonly phases: Phase[] = [];
  /** per phase: the products whose chunk counters it consumes (GEMV phases) */
  private readonly counters: { counters: number; chunk: number; rows: number }[][] = [];
  /** per layer: the phase after its q/k/v products, and the first after its attention */
  private readonly qkvEnd: number[] = [];
  private readonly attnEnd: number[] = [];
  /** per layer: its attention block (ATTN_WORDS) */
  private attnBlocks = 0;
  private readonly descs: { at: number; words: number[] }[] = [];
  private readonly layout: PrivateLayout;
  /** the most keys a layer's attention inside the program may read (each thread's scratch holds its share) */
  readonly maxKeys: number;
  private readonly parts: number;
  private base = 0; private privStride = 0; private scratchStride = 0; private scratch = 0; private barrier = 0; private phaseAt = 0;
  private allocated: { ptr: number; bytes: number }[] = [];

  private constructor(private readonly rt: WasmRuntime, private readonly pool: WorkerPool, private readonly c: ModelConfig,
                      readonly n: number, private readonly bufs: ProgramBuffers) {
    this.parts = pool.size + 1;
    const widest = n * Math.max(c.dim, c.nHeads * c.headDim, c.hiddenDim);
    let at = 0;
    const take = (bytes: number) => { const o = at; at += align(bytes); return o; };
    // (A: attend's probabilities and token offsets for a group's heads: below TOKEN_SPLIT keys, or this
    // thread's share of the longest context; O / ST: its part of a token-split attention)
    const group = c.nHeads / c.nKVHeads, keys = Math.max(TOKEN_SPLIT, Math.ceil(Math.min(c.maxSeqLen, MAX_KEYS) / this.parts));
    this.maxKeys = keys * this.parts;
    this.layout = { X: take(n * c.dim * 4), T: take(widest * 4), R: take(widest * 4), Q: take(widest * 2), S: take(widest / 4 + 64),
                    A: take((group + 1) * (keys + 8) * 4), O: take(c.nHeads * c.headDim * 4), ST: take(c.nHeads * 8), bytes: 0 };
    this.layout.bytes = at;
  }

  /** The program for `n` tokens a step, or null where a step must take the product-by-product path
   *  (no worker threads, weights outside the wasm memory, more than Q8_X_TOKENS tokens, an input format
   *  this plan does not prepare). */
  static plan(rt: WasmRuntime, pool: WorkerPool | null, c: ModelConfig, w: ModelWeights, n: number, bufs: ProgramBuffers): DecodeProgram | null {
    if (!pool || n > Q8_X_TOKENS || c.dim % 4 || c.hiddenDim % 4) return null;
    if (Object.values(bufs).some((b) => !rt.owns(b))) return null;
    const p = new DecodeProgram(rt, pool, c, n, bufs);
    try {
      if (!p.build(w)) { p.dispose(); return null; }
    } catch (e) { p.dispose(); throw e; }
    return p;
  }

  /** Whether this program was planned for these buffers (they move when an activation area grows). */
  matches(n: number, bufs: ProgramBuffers): boolean {
    return n === this.n && (Object.keys(bufs) as (keyof ProgramBuffers)[]).every((k) => bufs[k].byteOffset === this.bufs[k].byteOffset);
  }

  private alloc(bytes: number): number {
    const ptr = this.rt.alloc(bytes);
    if (ptr < 0) throw new Error('out of WebAssembly memory for the decode program');
    this.allocated.push({ ptr, bytes });
    return ptr;
  }

  private build(w: ModelWeights): boolean {
    const { c, n, bufs } = this, L = c.nLayers, dim = c.dim, eps = c.normEps;
    this.privStride = this.layout.bytes;
    this.base = this.alloc(this.parts * this.privStride);
    const norm = (v: Float32Array) => { const p = wasmCopy(this.rt, v); if (p < 0) throw new Error('out of WebAssembly memory for a norm weight'); return p; };
    this.attnBlocks = this.alloc(L * ATTN_WORDS * 4);
    // products of one input (already in T): its preparations, then one GEMV phase over them all
    const products = (ps: Product[]): boolean => {
      const modes = new Set<number>(), descWords: number[] = [], counted: { counters: number; chunk: number; rows: number }[] = [];
      for (const { W, out } of ps) {
        const code = DTYPE_CODE[W.dtype];
        if (W.cols % 32 || !this.rt.owns(W.bytes) || code === undefined) return false;
        const fmt = productRoundsX(W), int = fmt !== null && quantisesX(code, W.rows, n);
        const mode = int ? (fmt === 'q8_k' ? PREP_INT_Q8K : PREP_INT_Q8) : fmt === null ? PREP_F32 : fmt === 'q8_k' ? PREP_ROUND_Q8K : PREP_ROUND_Q8;
        modes.add(mode);
        const octs = int && !gemvInPlace(code, n);
        const { block, scratchBytes } = productBlocks(W, octs);
        this.scratchStride = Math.max(this.scratchStride, align(scratchBytes));
        // (two chunks in each thread's region: a decode product's chunk is a microsecond or two of work, and
        // eight a region, as the product-by-product path takes, cost 4.5 instead of 4.0 ms of a step's 10)
        const unit = gemmRowUnit(code, n, int ? 1 : 0, block), chunk = Math.max(unit, Math.ceil(W.rows / (this.parts * 2) / unit) * unit);
        const counters = this.alloc(this.parts * 4);
        counted.push({ counters, chunk, rows: W.rows });
        const priv = this.base, x = mode === PREP_ROUND_Q8 || mode === PREP_ROUND_Q8K ? priv + this.layout.R : priv + this.layout.T;
        descWords.push(counters, chunk, code, W.bytes.byteOffset, W.rowBytes, W.rows, W.cols, x, n, out.byteOffset, block,
                       int ? priv + this.layout.Q : 0, int ? priv + this.layout.S : 0);
      }
      // (one rounded copy and one quantised copy per input: two formats of a kind would overwrite each other)
      if ((modes.has(PREP_ROUND_Q8) && modes.has(PREP_ROUND_Q8K)) || (modes.has(PREP_INT_Q8) && modes.has(PREP_INT_Q8K))) return false;
      const len = n * ps[0].W.cols;
      for (const mode of modes) if (mode !== PREP_F32) this.phases.push([PH_PREP, len, mode]);
      const desc = this.alloc(descWords.length * 4);
      this.descs.push({ at: desc, words: descWords });
      this.counters[this.phases.length] = counted;
      this.phases.push([PH_GEMV, desc, ps.length]);
      return true;
    };
    // layer l's q/k/v products, then its attention: the callback (RoPE, KV append, the attention block)
    // between barriers, then the heads split across the threads
    const qkv = (l: number) => {
      const Lw = w.layers[l];
      this.phases.push([PH_NORM, norm(Lw.attnNorm), n, dim, eps]);
      if (!products([{ W: Lw.wq, out: bufs.q }, { W: Lw.wk, out: bufs.k }, { W: Lw.wv, out: bufs.v }])) return false;
      this.qkvEnd[l] = this.phases.length;
      this.phases.push([PH_BARRIER], [PH_CALLBACK, l], [PH_BARRIER], [PH_ATTEND, this.attnBlocks + l * ATTN_WORDS * 4], [PH_BARRIER]);
      this.attnEnd[l] = this.phases.length;
      return true;
    };
    this.phases.push([PH_LOAD_X, bufs.x.byteOffset, n * dim]);
    if (!qkv(0)) return false;
    for (let l = 0; l < L; l++) {
      const Lw = w.layers[l];
      this.phases.push([PH_COPY, bufs.att.byteOffset, n * c.nHeads * c.headDim, this.attnBlocks + l * ATTN_WORDS * 4]);
      if (!products([{ W: Lw.wo, out: bufs.xb2 }])) return false;
      this.phases.push([PH_BARRIER]);
      this.phases.push([PH_ADD, bufs.xb2.byteOffset, n, dim, Lw.postAttnNorm ? norm(Lw.postAttnNorm) : 0, eps]);
      this.phases.push([PH_NORM, norm(Lw.ffnNorm), n, dim, eps]);
      if (!products([{ W: Lw.wGate, out: bufs.gate }, { W: Lw.wUp, out: bufs.up }])) return false;
      this.phases.push([PH_BARRIER]);
      this.phases.push([PH_GLU, bufs.gate.byteOffset, bufs.up.byteOffset, n * c.hiddenDim, c.ffnAct === 'gelu' ? 1 : 0]);
      if (!products([{ W: Lw.wDown, out: bufs.xb2 }])) return false;
      this.phases.push([PH_BARRIER]);
      this.phases.push([PH_ADD, bufs.xb2.byteOffset, n, dim, Lw.postFfnNorm ? norm(Lw.postFfnNorm) : 0, eps]);
      if (l + 1 < L) { if (!qkv(l + 1)) return false; } else this.phases.push([PH_STORE_X, bufs.x.byteOffset, n * dim]);
    }
    // into the shared memory: the phases, the descriptors, the weight scratch and the barrier
    this.phaseAt = this.alloc(this.phases.length * PHASE_WORDS * 4);
    const words = this.rt.i32(this.phaseAt, this.phases.length * PHASE_WORDS), f64 = new Float64Array(this.rt.buffer, this.phaseAt, this.phases.length * PHASE_WORDS / 2);
    this.phases.forEach(([op, ...a], i) => {
      words[i * PHASE_WORDS] = op;
      // (eps, the last argument of NORM and ADD, as an f64 in words 6-7)
      const ints = op === PH_NORM || op === PH_ADD ? a.slice(0, -1) : a;
      ints.forEach((v, j) => { words[i * PHASE_WORDS + 1 + j] = v; });
      if (ints.length !== a.length) f64[i * PHASE_WORDS / 2 + 3] = a[a.length - 1];
    });
    for (const d of this.descs) this.rt.i32(d.at, d.words.length).set(d.words);
    this.scratch = this.scratchStride ? this.alloc(this.parts * this.scratchStride) : 0;
    this.barrier = this.alloc(BARRIER_WORDS * 4);
    this.rt.i32(this.barrier, BARRIER_WORDS).fill(0);
    return true;
  }

  /** Runs a decode step's layers on every thread. `inside(l)`: whether layer l's attention runs in the
   *  program (a dense step: then `cache(l)`, called once the key is appended, says where the cache is);
   *  otherwise the program stops after layer l's q/k/v and `attend(l)` runs it on the calling thread (the
   *  policies' own paths). `before(l)`: what precedes layer l's attention (biases, RoPE, KV append). */
  step(inside: (l: number) => boolean, cache: (l: number) => AttentionCache, before: (l: number) => void, attend: (l: number) => void): void {
    const c = this.c, blocks = this.rt.i32(this.attnBlocks, c.nLayers * ATTN_WORDS), scale = new Float32Array(blocks.buffer, blocks.byteOffset, blocks.length);
    const callback = (l: number) => {
      before(l);
      const b = l * ATTN_WORDS;
      blocks.set(cache(l), b);
      blocks.set([c.nHeads, c.nHeads / c.nKVHeads, c.headDim, this.bufs.q.byteOffset, this.bufs.att.byteOffset], b + 7);
      scale[b + 12] = c.attnScale ?? 1 / Math.sqrt(c.headDim);
    };
    let from = 0;
    for (let l = 0; l < c.nLayers; l++) {
      if (inside(l)) continue;
      blocks[l * ATTN_WORDS] = 0; // (no keys in the program: its COPY takes the engine's attention output as it is)
      this.runRange(from, this.qkvEnd[l], callback);
      before(l); attend(l);
      from = this.attnEnd[l];
    }
    this.runRange(from, this.phases.length, callback);
  }

  /** Phases [from, to) on every thread (their products' chunk counters reset first). */
  private runRange(from: number, to: number, callback: (l: number) => void): void {
    const parts = this.parts, rt = this.rt;
    for (let i = from; i < to; i++) for (const p of this.counters[i] ?? []) initChunkCounters(rt.i32(p.counters, parts), parts, p.chunk, p.rows);
    rt.i32(this.barrier, BARRIER_WORDS).fill(0);
    const { X, T, R, Q, S, A, O, ST, bytes } = this.layout;
    const args = (share: number) => [this.phaseAt, from, to, parts, share, this.base + share * this.privStride, share * this.privStride,
      this.scratch + share * this.scratchStride, this.barrier, X, T, R, Q, S, A, O, ST, bytes];
    this.pool.run(OP_PROGRAM, args, null, () => runProgram(rt.k, rt.memory, this.phaseAt, from, to, parts, 0, this.base, 0, this.scratch, this.barrier, this.layout, callback));
  }

  dispose(): void {
    for (const a of this.allocated) this.rt.release(a.ptr, a.bytes);
    this.allocated = [];
  }
}

const programs = new WeakMap<ModelWeights, Map<number, DecodeProgram | null>>();
const releasePrograms = new FinalizationRegistry<Map<number, DecodeProgram | null>>((m) => m.forEach((p) => p?.dispose()));

/** The layer program of a model's decode steps of n tokens, planned at first use and kept with the
 *  weights; null where steps take the product-by-product path (see DecodeProgram.plan; QUEST_NO_PROGRAM=1
 *  turns programs off, for comparisons). */
export function decodeProgram(rt: WasmRuntime | null, pool: WorkerPool | null, c: ModelConfig, w: ModelWeights, n: number, bufs: ProgramBuffers): DecodeProgram | null {
  if (!rt || !pool || n > Q8_X_TOKENS || (typeof process !== 'undefined' && process.env?.QUEST_NO_PROGRAM === '1')) return null;
  let byN = programs.get(w);
  if (!byN) { byN = new Map(); programs.set(w, byN); releasePrograms.register(w, byN); }
  let p = byN.get(n);
  if (p === null) return null;
  if (p && !p.matches(n, bufs)) { p.dispose(); p = undefined; }
  if (!p) { p = DecodeProgram.plan(rt, pool, c, w, n, bufs); byN.set(n, p); }
  return p;
}
