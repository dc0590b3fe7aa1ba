// A decode step's layer program: the phases of a step (each layer's q/k/v products, a dense layer's
// attention, output projection, residual, norm, feed-forward) run by every thread in one hand-off, the
// threads meeting at spin barriers in the shared memory instead of returning to the calling thread after
// each product. Small elementwise steps (norms, SwiGLU, residual adds, quantising a product's input) are
// computed by every thread into its own private area: a few microseconds each, cheaper than a meeting.
// The plan (which phases, which buffers) is built once per model and batch size by
// cpu/decode-program.ts; this file is the run step, identical on the calling thread and the workers.
import type { KernelExports } from './runtime.js';
import { TOKEN_SPLIT, attendHeads, attendTokenPart, gemmSet, mergeTokenParts } from './shared-ops.js';
import { split } from './pool.js';

/** i32 words of one phase: [op, args...]; eps (f64) in words 6-7. */
export const PHASE_WORDS = 8;

export const PH_LOAD_X = 1;  // (src, len): X <- shared src
export const PH_STORE_X = 2; // (dst, len): shared dst <- X (thread 0 only)
export const PH_NORM = 3;    // (w, n, d; eps): T <- rmsnorm(X)
export const PH_ADD = 4;     // (src, n, d, normW; eps): X += src, or X += rmsnorm(src) * normW where normW is set
export const PH_GLU = 5;     // (gate, up, len, act): T <- act(gate) * up
export const PH_COPY = 6;    // (src, len, block): T <- shared src, or, where attention block `block` split its keys, the parts merged
export const PH_PREP = 7;    // (len, mode): a product's input from T (PREP_* below)
export const PH_GEMV = 8;    // (desc, count): the products listed at desc (shared-ops gemmSet), inputs private
export const PH_BARRIER = 9; // (): every thread waits for the others
export const PH_CALLBACK = 10; // (arg): the calling thread runs the step's callback (RoPE, KV append: JavaScript), the others skip it
export const PH_ATTEND = 11;   // (block): a dense decode step's attention (ATTN_* words at block): query heads split across the
                               // threads, or from TOKEN_SPLIT keys on the keys, each thread's part in its own O / ST

/** Words of a layer's attention block (PH_ATTEND), written by the callback once the step's key is in the
 *  cache: keys attended (count), K and V page 0, page table, bytes between pages, page size, bf16 cache,
 *  heads, group, head size, q, out, scale (f32). */
export const ATTN_WORDS = 16;

/** How a product takes its input (T): as it is, rounded as llama.cpp's activations (into R), or quantised
 *  for the integer kernels (into Q / S; the Q8_0 scales stored as f16, as llama.cpp's blocks). */
export const PREP_F32 = 0, PREP_ROUND_Q8 = 1, PREP_ROUND_Q8K = 2, PREP_INT_Q8 = 3, PREP_INT_Q8K = 4;

/** Byte offsets of a thread's private area's parts (the plan sizes them): the residual stream X, the
 *  current input T, its rounded copy R, quantised values Q and scales S, the attention's scratch A, and
 *  its part of a token-split attention: rows O and softmax statistics ST (which every thread reads). */
export interface PrivateLayout { X: number; T: number; R: number; Q: number; S: number; A: number; O: number; ST: number; bytes: number }

/** Words of the barrier block: arrivals, generation, abort flag. */
export const BARRIER_WORDS = 4;

/** Waits until all `parts` threads arrived (generation barrier); throws where a thread failed. */
function barrier(m: Int32Array, b: number, parts: number): void {
  const gen = Atomics.load(m, b + 1);
  if (Atomics.add(m, b, 1) === parts - 1) {
    Atomics.store(m, b, 0);
    Atomics.add(m, b + 1, 1);
    Atomics.notify(m, b + 1);
    return;
  }
  // (spin: the others arrive within microseconds; a futex wake costs more)
  const until = performance.now() + 2;
  while (Atomics.load(m, b + 1) === gen) {
    if (Atomics.load(m, b + 2)) throw new Error('another thread of the layer program failed');
    if (performance.now() > until) Atomics.wait(m, b + 1, gen, 1);
  }
}

/** Runs phases [from, to) of the program at `phases` as thread `share` of `parts`. `priv`: this
 *  thread's private area (layout at `layout`: X, T, R, Q, S offsets as i32 words); `delta`: its
 *  distance from thread 0's, which the products' descriptors name; `scratch`: its weight scratch. */
export function runProgram(k: KernelExports, memory: WebAssembly.Memory, phases: number, from: number, to: number, parts: number, share: number,
                           priv: number, delta: number, scratch: number, barrierAt: number, layout: PrivateLayout,
                           callback: ((arg: number) => void) | null = null): void {
  const m = new Int32Array(memory.buffer), f = new Float32Array(memory.buffer), d64 = new Float64Array(memory.buffer);
  const X = priv + layout.X, T = priv + layout.T, R = priv + layout.R, Q = priv + layout.Q, S = priv + layout.S;
  const b = barrierAt >> 2;
  try {
    for (let i = from; i < to; i++) {
      const p = (phases >> 2) + i * PHASE_WORDS, op = m[p], eps = d64[(p + 6) >> 1];
      switch (op) {
        case PH_LOAD_X: f.copyWithin(X >> 2, m[p + 1] >> 2, (m[p + 1] >> 2) + m[p + 2]); break;
        case PH_STORE_X: if (share === 0) f.copyWithin(m[p + 1] >> 2, X >> 2, (X >> 2) + m[p + 2]); break;
        case PH_NORM: k.rmsnorm(X, m[p + 1], T, m[p + 2], m[p + 3], eps); break;
        case PH_ADD:
          if (m[p + 4]) { k.rmsnorm(m[p + 1], m[p + 4], T, m[p + 2], m[p + 3], eps); k.accumulate(X, T, m[p + 2] * m[p + 3]); }
          else k.accumulate(X, m[p + 1], m[p + 2] * m[p + 3]);
          break;
        case PH_GLU: f.copyWithin(T >> 2, m[p + 1] >> 2, (m[p + 1] >> 2) + m[p + 3]); k.glu(T, m[p + 2], m[p + 3], m[p + 4]); break;
        case PH_COPY:
          if (m[p + 3] && m[m[p + 3] >> 2] >= TOKEN_SPLIT) mergeParts(f, m, m[p + 3] >> 2, parts, priv - delta, layout, T);
          else f.copyWithin(T >> 2, m[p + 1] >> 2, (m[p + 1] >> 2) + m[p + 2]);
          break;
        case PH_PREP: prepare(k, f, m[p + 1], m[p + 2], T, R, Q, S); break;
        case PH_GEMV: gemmSet(k, memory, m[p + 1], m[p + 2], parts, share, scratch, delta); break;
        case PH_BARRIER: barrier(m, b, parts); break;
        case PH_CALLBACK: if (share === 0) callback!(m[p + 1]); break;
        case PH_ATTEND: {
          const a = m[p + 1] >> 2, nH = m[a + 7];
          if (m[a] >= TOKEN_SPLIT) {
            attendTokenPart(k, share, parts, nH, m[a + 8], m[a + 9], m[a + 10], priv + layout.O, priv + layout.ST, m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5],
                            priv + layout.A, f[a + 12], 0, m[a], memory, m[a + 6]);
            break;
          }
          const [h0, h1] = split(nH, parts, share);
          attendHeads(k, h0, h1, 1, m[a] - 1, nH, m[a + 8], m[a + 9], m[a + 10], m[a + 11], m[a + 1], m[a + 2], m[a + 3], m[a + 4], m[a + 5],
                      priv + layout.A, f[a + 12], 0, 0, 0, null, m[a + 6]);
          break;
        }
        default: throw new Error(`unknown layer program phase ${op}`);
      }
    }
  } catch (e) {
    Atomics.store(m, b + 2, 1); // (the others stop waiting at their next barrier)
    Atomics.notify(m, b + 1);
    throw e;
  }
}

/** T <- the threads' parts of a token-split attention (O rows, ST statistics of thread s at base0 + s *
 *  layout.bytes), merged by their softmax statistics as the engine merges them (mergeTokenParts). */
function mergeParts(f: Float32Array, m: Int32Array, a: number, parts: number, base0: number, layout: PrivateLayout, T: number): void {
  const nH = m[a + 7], hd = m[a + 9];
  const at = (s: number, off: number, len: number) => f.subarray((base0 + s * layout.bytes + off) >> 2, ((base0 + s * layout.bytes + off) >> 2) + len);
  const outs = [], stats = [];
  for (let s = 0; s < parts; s++) { outs.push(at(s, layout.O, nH * hd)); stats.push(at(s, layout.ST, 2 * nH)); }
  mergeTokenParts(outs, stats, nH, hd, f.subarray(T >> 2, (T >> 2) + nH * hd));
}

/** A product's input from T (len floats): see PREP_*. */
function prepare(k: KernelExports, f: Float32Array, len: number, mode: number, T: number, R: number, Q: number, S: number): void {
  if (mode === PREP_ROUND_Q8 || mode === PREP_ROUND_Q8K) {
    f.copyWithin(R >> 2, T >> 2, (T >> 2) + len);
    if (mode === PREP_ROUND_Q8) k.round_q8(R, len); else k.round_q8_k(R, len);
  } else if (mode === PREP_INT_Q8) {
    k.quantise_q8(T, len, Q, S);
  } else if (mode === PREP_INT_Q8K) k.quantise_q8_k(T, len, Q, S, S + len / 64);
}
