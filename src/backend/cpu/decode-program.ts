// The plan step of a decode step's layer program (wasm/program.ts is the run step): for a model and a
// batch of n ≤ 4 tokens, the phases every thread runs between one layer's attention and the next, with
// each product's descriptor, chunk counters and each thread's private area laid out once in the
// WebAssembly memory. A decode step then hands the workers one program segment per layer (plus the
// attention's own hand-off) instead of one hand-off per product and elementwise step.
import type { Matrix } from '../../model/tensor.js';
import type { ModelConfig, ModelWeights } from '../../model/config.js';
import type { WasmRuntime } from '../wasm/runtime.js';
import { DTYPE_CODE, OP_PROGRAM, type WorkerPool } from '../wasm/pool.js';
import { GEMM_DESC, Q8_X_TOKENS, gemmRowUnit, gemvInPlace, initChunkCounters, quadBlockRows, quantisesX } from '../wasm/shared-ops.js';
import {
  BARRIER_WORDS, PHASE_WORDS, PH_ADD, PH_BARRIER, PH_COPY, PH_GEMV, PH_GLU, PH_LOAD_X, PH_NORM, PH_PREP, PH_STORE_X,
  PREP_F32, PREP_INT_Q8, PREP_INT_Q8K, PREP_ROUND_Q8, PREP_ROUND_Q8K, runProgram, type PrivateLayout,
} from '../wasm/program.js';
import { productRoundsX, wasmCopy } from './kernels.js';

/** The forward pass's activation buffers the program reads and writes (in the WebAssembly memory). */
export interface ProgramBuffers { x: Float32Array; q: Float32Array; k: Float32Array; v: Float32Array; att: Float32Array; gate: Float32Array; up: Float32Array; xb2: Float32Array }

type Phase = [op: number, ...args: number[]];
interface Product { W: Matrix; out: Float32Array }

const align = (n: number) => Math.ceil(n / 64) * 64;

export class DecodeProgram {
  private readonly phases: Phase[] = [];
  /** per segment: its first phase, and the products whose chunk counters it consumes */
  private readonly segments: { from: number; to: number; products: { counters: number; chunk: number; rows: number }[] }[] = [];
  private readonly descs: { at: number; words: number[] }[] = [];
  private readonly layout: PrivateLayout;
  private readonly parts: number;
  private base = 0; private privStride = 0; private scratchStride = 0; private scratch = 0; private barrier = 0; private phaseAt = 0;
  private allocated: { ptr: number; bytes: number }[] = [];

  private constructor(private readonly rt: WasmRuntime, private readonly pool: WorkerPool, private readonly c: ModelConfig,
                      readonly n: number, private readonly bufs: ProgramBuffers) {
    this.parts = pool.size + 1;
    const widest = n * Math.max(c.dim, c.nHeads * c.headDim, c.hiddenDim);
    let at = 0;
    const take = (bytes: number) => { const o = at; at += align(bytes); return o; };
    this.layout = { X: take(n * c.dim * 4), T: take(widest * 4), R: take(widest * 4), Q: take(widest * 2), S: take(widest / 4 + 64), bytes: 0 };
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
    const seg: { from: number; products: { counters: number; chunk: number; rows: number }[] } = { from: 0, products: [] };
    const endSegment = () => { this.segments.push({ from: seg.from, to: this.phases.length, products: seg.products }); seg.from = this.phases.length; seg.products = []; };
    // products of one input (already in T): its preparations, then one GEMV phase over them all
    const products = (ps: Product[]): boolean => {
      const modes = new Set<number>(), descWords: number[] = [];
      for (const { W, out } of ps) {
        const code = DTYPE_CODE[W.dtype];
        if (W.cols % 32 || !this.rt.owns(W.bytes) || code === undefined) return false;
        const fmt = productRoundsX(W), int = fmt !== null && quantisesX(code, W.rows, n);
        const mode = int ? (fmt === 'q8_k' ? PREP_INT_Q8K : PREP_INT_Q8) : fmt === null ? PREP_F32 : fmt === 'q8_k' ? PREP_ROUND_Q8K : PREP_ROUND_Q8;
        modes.add(mode);
        const quads = int && !gemvInPlace(code, n);
        const block = quads ? quadBlockRows(W.cols) : Math.max(4, Math.min(W.rows, (Math.floor(32768 / W.cols) >> 2) << 2));
        const scratchBytes = W.dtype === 'f32' ? 0 : quads ? (block / 4) * (W.cols / 32) * 272 : block * W.cols * 4;
        this.scratchStride = Math.max(this.scratchStride, align(scratchBytes));
        // (two chunks in each thread's region: a decode product's chunk is a microsecond or two of work, and
        // eight a region, as the product-by-product path takes, cost 4.5 instead of 4.0 ms of a step's 10)
        const unit = gemmRowUnit(code, n, int ? 1 : 0, block), chunk = Math.max(unit, Math.ceil(W.rows / (this.parts * 2) / unit) * unit);
        const counters = this.alloc(this.parts * 4);
        seg.products.push({ counters, chunk, rows: W.rows });
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
      this.phases.push([PH_GEMV, desc, ps.length]);
      return true;
    };
    const qkv = (l: number) => {
      const Lw = w.layers[l];
      this.phases.push([PH_NORM, norm(Lw.attnNorm), n, dim, eps]);
      return products([{ W: Lw.wq, out: bufs.q }, { W: Lw.wk, out: bufs.k }, { W: Lw.wv, out: bufs.v }]);
    };
    this.phases.push([PH_LOAD_X, bufs.x.byteOffset, n * dim]);
    if (!qkv(0)) return false;
    endSegment();
    for (let l = 0; l < L; l++) {
      const Lw = w.layers[l];
      this.phases.push([PH_COPY, bufs.att.byteOffset, n * c.nHeads * c.headDim]);
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
      endSegment();
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

  /** Runs segment s on every thread: s = 0 up to layer 0's q/k/v; s = l + 1 from layer l's attention
   *  output to layer l + 1's q/k/v (after the last layer: the residual stream back in `x`). */
  run(s: number): void {
    const seg = this.segments[s], parts = this.parts, rt = this.rt;
    for (const p of seg.products) initChunkCounters(rt.i32(p.counters, parts), parts, p.chunk, p.rows);
    rt.i32(this.barrier, BARRIER_WORDS).fill(0);
    const args = (share: number) => [this.phaseAt, seg.from, seg.to, parts, share, this.base + share * this.privStride, share * this.privStride,
      this.scratch + share * this.scratchStride, this.barrier, this.layout.X, this.layout.T, this.layout.R, this.layout.Q, this.layout.S];
    this.pool.run(OP_PROGRAM, args, null, () => runProgram(rt.k, rt.memory, this.phaseAt, seg.from, seg.to, parts, 0, this.base, 0, this.scratch, this.barrier, this.layout));
  }

  get segmentCount(): number { return this.segments.length; }

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
