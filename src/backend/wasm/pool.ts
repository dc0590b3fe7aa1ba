// Worker threads over the shared WebAssembly memory: each worker instantiates the same kernels on the
// same memory, so a weight product or a prefill attention is split by rows / heads with no copying.
// Dispatch is a few Atomics on a control block in that memory (microseconds, not postMessage round trips);
// the calling thread does its own share and then waits for the others.
import { Worker } from 'node:worker_threads';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { WasmRuntime } from './runtime.js';

export const OP_GEMM_SET = 1;  // args: desc, count, parts, share, scratch (shared-ops gemmSet: the products of one input)
export const OP_ATTEND = 2;    // args: h0, h1, n, start, nH, group, hd, q, out, kPtr, vPtr, table, pageStride, P, probs, received, recvStride, selected, bf16; scale (f32) in the last slot
export const OP_PAGE_SCORES = 3; // args: p0, p1, np, nKV, group, hd, q, kmin, kmax, table, stride, out, bf16
export const OP_ATTEND_TOKENS = 4; // args: share, parts, nH, group, hd, q, out, stats, kPtr, vPtr, table, pageStride, P, probs, selected, count, bf16; scale (f32) in the last slot
export const OP_PROGRAM = 5; // args: phases, from, to, parts, share, priv, delta, scratch, barrier, X, T, R, Q, S, A, O, ST, bytes (program.ts runProgram)
export const OP_PREPARE_X = 6; // args: x, cols, n, xq, xs, xt, xst, parts, share (shared-ops prepareXShare)
export const OP_GLU = 7; // args: gate, up, len, act, parts, share (shared-ops gluShare)
export const DTYPE_CODE = {
  f32: 0, f16: 1, bf16: 2, q8_0: 3, q4_0: 4, q4_1: 5, q5_0: 6, q5_1: 7, q2_k: 8, q3_k: 9, q4_k: 10, q5_k: 11, q6_k: 12, iq4_nl: 13, iq4_xs: 14,
} as const;
export const SLOTS = 32; // i32 per worker control block: [0] seq, [1] done, [2] op, [3..] args
export const SEQ = 0, DONE = 1, OP = 2, ARG = 3;

export class WorkerPool {
  private readonly workers: Worker[] = [];
  private readonly ctrl: Int32Array[] = [];
  private readonly ctrlF: Float32Array[] = [];
  private seq = 0;
  readonly size: number; // workers besides the calling thread

  constructor(private readonly rt: WasmRuntime, workers: number) {
    const base = rt.alloc(workers * SLOTS * 4);
    if (base < 0) throw new Error('no room for the worker control block');
    const script = fileURLToPath(new URL('./worker.js', import.meta.url));
    for (let i = 0; i < workers; i++) {
      const ptr = base + i * SLOTS * 4;
      this.ctrl.push(rt.i32(ptr, SLOTS)); this.ctrlF.push(rt.f32(ptr, SLOTS));
      const w = new Worker(script, { workerData: { memory: rt.memory, ctrl: ptr, wasm: rt.moduleBytes } });
      w.unref(); // never keeps the process alive
      this.workers.push(w);
    }
    this.size = workers;
  }

  /** Runs `op` split in `parts` = size + 1 shares: share i's args come from argsFor(i); share 0 runs here. */
  run(op: number, argsFor: (share: number) => number[], f32Arg: ((share: number) => number) | null, local: () => void): void {
    this.seq++;
    for (let i = 0; i < this.size; i++) {
      const c = this.ctrl[i], a = argsFor(i + 1);
      c[OP] = op; c[SLOTS - 2] = 0;
      for (let j = 0; j < a.length; j++) c[ARG + j] = a[j];
      if (f32Arg) this.ctrlF[i][SLOTS - 1] = f32Arg(i + 1);
      Atomics.store(c, SEQ, this.seq);
      Atomics.notify(c, SEQ);
    }
    // (a failure here still waits for the workers: a layer program's workers stop at their next barrier,
    // and none may still be running when the next hand-off resets the barrier)
    let failed = false, error: unknown;
    try { local(); } catch (e) { failed = true; error = e; }
    for (let i = 0; i < this.size; i++) {
      const c = this.ctrl[i];
      // (spin: the worker's share ends within microseconds of ours; waking from a wait costs more)
      const until = performance.now() + 2;
      while (Atomics.load(c, DONE) !== this.seq && performance.now() < until) { /* spin */ }
      while (Atomics.load(c, DONE) !== this.seq) Atomics.wait(c, DONE, Atomics.load(c, DONE), 1000);
      if (c[SLOTS - 2] === -1 && !failed) { failed = true; error = new Error('a compute worker failed'); }
    }
    if (failed) throw error;
  }

  /** Wakes every worker without handing it an op: what a caller's notify looks like when it comes late
   *  (preempted between its store and its notify). Workers must sleep on (pool.test checks it). */
  wakeAll(): void { for (const c of this.ctrl) Atomics.notify(c, SEQ); }
}

let pool: WorkerPool | null | undefined;

/** The process-wide pool (QUEST_THREADS sets the total thread count; 1 = no workers). */
export function workerPool(rt: WasmRuntime): WorkerPool | null {
  if (pool !== undefined) return pool;
  const env = typeof process !== 'undefined' ? Number(process.env?.QUEST_THREADS) : NaN;
  const threads = Number.isInteger(env) && env > 0 ? env : Math.min(availableParallelism(), 8);
  try { pool = threads > 1 ? new WorkerPool(rt, threads - 1) : null; } catch { pool = null; }
  return pool;
}

/** Splits [0, n) into `parts` contiguous ranges, each a multiple of `align` except the last. */
export function split(n: number, parts: number, share: number, align = 1): [number, number] {
  const per = Math.ceil(n / parts / align) * align;
  const a = Math.min(n, share * per), b = Math.min(n, a + per);
  return [a, b];
}
