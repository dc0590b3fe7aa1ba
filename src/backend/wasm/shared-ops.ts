// Kernel loops that run identically on the calling thread and on the workers (one share each).
import type { KernelExports } from './runtime.js';
import { split } from './pool.js';

/** The SIMD converters to f32, by dtype code (pool.ts DTYPE_CODE). */
const CONVERTERS: Record<number, (k: KernelExports) => (src: number, dst: number, n: number) => void> = {
  1: (k) => k.f16_to_f32, 2: (k) => k.bf16_to_f32, 3: (k) => k.q8_0_to_f32, 4: (k) => k.q4_0_to_f32,
  5: (k) => k.q4_1_to_f32, 6: (k) => k.q5_0_to_f32, 7: (k) => k.q5_1_to_f32, 8: (k) => k.q2_k_to_f32, 9: (k) => k.q3_k_to_f32,
  10: (k) => k.q4_k_to_f32, 11: (k) => k.q5_k_to_f32, 12: (k) => k.q6_k_to_f32, 13: (k) => k.iq4_nl_to_f32, 14: (k) => k.iq4_xs_to_f32,
};

/** Products of up to this many tokens (decode steps) read Q8_0 weights as they are stored; more tokens
 *  (prefill) repack a block of rows at a time into row octets that every token of the chunk reuses. */
export const Q8_X_TOKENS = 4;

/** The decode kernels that multiply a weight type's codes by x quantised as llama.cpp does (Q8_0 x for
 *  Q8_0 / Q4_0 / Q5_0, Q8_K x for Q4_K / Q6_K), by the type's DTYPE_CODE. */
const GEMV: Record<number, (k: KernelExports) => KernelExports['gemv_q8_0']> = {
  3: (k) => k.gemv_q8_0, 4: (k) => k.gemv_q4_0, 6: (k) => k.gemv_q5_0, 10: (k) => k.gemv_q4_k, 12: (k) => k.gemv_q6_k,
};

/** Whether a product reads its weights in place (decode steps of the GEMV types) rather than through row
 *  octets (prefill). */
export const gemvInPlace = (dtype: number, n: number) => GEMV[dtype] !== undefined && n <= Q8_X_TOKENS;

/** Whether a product takes x quantised (integer dot products, as llama.cpp): decode steps of the GEMV
 *  types, and prefill of Q8_0 / Q4_0 through row octets (the other types' prefill converts rows to f32 and
 *  takes x rounded: cpu/activations.ts). The kernels take rows four at a time. */
export function quantisesX(dtype: number, rows: number, n: number): boolean {
  return rows % 4 === 0 && (dtype === 3 || dtype === 4 || gemvInPlace(dtype, n));
}

/** Rows of a block of row octets (kernels.wat octs_from_q): about 100 KB, which stays in L2 while the
 *  chunk's tokens pass over it; a multiple of 8. */
export function octBlockRows(cols: number): number { return Math.max(8, (Math.floor(49152 / cols) >> 3) << 3); }

/** Bytes of a block of `rows` rows (rounded up to 8) as row octets: 544 per octet and 32 columns. */
export const octBytes = (rows: number, cols: number) => Math.ceil(rows / 8) * (cols / 32) * 544;

/** Bytes of a thread's scratch for the octets path: a block of row octets, then gemm_octs's tile sums. */
export const octScratchBytes = (block: number, cols: number) => octBytes(block, cols) + 128;

/** x quantised (quantise_q8) in gemm_octs's tiles of 4 tokens (kernels.wat tile_x): the bytes of xt, xst. */
export const xTileBytes = (n: number, cols: number) => [Math.ceil(n / 4) * cols * 8, Math.ceil(n / 4) * (cols / 32) * 16];

/** This share's tokens (whole tiles of 4) of x [n][cols] quantised to Q8_0 (quantise_q8: xq, xs) and, where
 *  xt is not 0, put in gemm_octs's tiles (tile_x: xt, xst). */
export function prepareXShare(k: KernelExports, x: number, cols: number, n: number, xq: number, xs: number, xt: number, xst: number, parts: number, share: number): void {
  const [a, b] = split(n, parts, share, 4);
  if (b <= a) return;
  k.quantise_q8(x + a * cols * 4, (b - a) * cols, xq + a * cols * 2, xs + a * cols / 8);
  // (a tile's 4 tokens take 8 bytes a column in xt and 16 bytes a block in xst: 2 and cols / 8 a token)
  if (xt) k.tile_x(xq + a * cols * 2, xs + a * cols / 8, b - a, cols, xt + a * cols * 2, xst + a * cols / 8);
}

/** This share of gate[i] = act(gate[i]) * up[i], i < len (kernels.wat glu; act 0 SiLU, 1 GELU). */
export function gluShare(k: KernelExports, gate: number, up: number, len: number, act: number, parts: number, share: number): void {
  const [a, b] = split(len, parts, share, 16);
  if (b > a) k.glu(gate + a * 4, up + a * 4, b - a, act);
}

/** out[t*stride + r] = W[r] · x[t] for rows r in [r0, r1); non-f32 rows converted a block at a time into
 *  this thread's own scratch (dtype: pool.ts DTYPE_CODE). `xq`/`xs` (non-zero, see quantisesX): x
 *  quantised to Q8_0 (kernels.wat quantise_q8): decode steps of Q8_0 read the weights in place, four
 *  rows at a time; prefill repacks a block of rows into row octets and runs tiles of 8 rows x 4 tokens,
 *  x then in tiles (tile_x). */
export function gemmRange(k: KernelExports, dtype: number, wBase: number, rowBytes: number, r0: number, r1: number, cols: number,
                          x: number, n: number, out: number, stride: number, scratch: number, block: number, xq = 0, xs = 0): void {
  if (r1 <= r0) return;
  if (xq && gemvInPlace(dtype, n)) { GEMV[dtype](k)(wBase + r0 * rowBytes, r1 - r0, cols, xq, xs, n, out + r0 * 4, stride); return; }
  if (xq) {
    for (let r = r0; r < r1; r += block) {
      const nb = Math.min(block, r1 - r);
      k.octs_from_q(wBase + r * rowBytes, nb, cols, scratch, dtype === 4 ? 1 : 0);
      k.gemm_octs(scratch, nb, cols, xq, xs, n, out + r * 4, stride, scratch + octBytes(block, cols));
    }
    return;
  }
  if (dtype === 0) { k.gemm_f32(wBase + r0 * rowBytes, r1 - r0, cols, x, n, out + r0 * 4, stride); return; }
  // few tokens (decode): f16 converted in registers; more tokens: a converted block is reused by all of them
  if (dtype === 1 && n <= 4) { k.gemm_f16(wBase + r0 * rowBytes, r1 - r0, cols, x, n, out + r0 * 4, stride); return; }
  const convert = CONVERTERS[dtype](k);
  for (let r = r0; r < r1; r += block) {
    const nb = Math.min(block, r1 - r);
    convert(wBase + r * rowBytes, scratch, nb * cols);
    k.gemm_f32(scratch, nb, cols, x, n, out + r * 4, stride);
  }
}

/** Rows gemmRange takes together in the paths above: whole blocks where it converts or repacks rows into
 *  the scratch, else four (gemv_q8_0 reads rows in fours). */
export function gemmRowUnit(dtype: number, n: number, xq: number, block: number): number {
  const inPlace = xq ? gemvInPlace(dtype, n) : dtype === 0 || (dtype === 1 && n <= 4);
  return inPlace ? 4 : block;
}

/** A product's chunk counters (forEachChunk): one i32 per thread's region, the region's next chunk from the
 *  front in the low 16 bits and its end (exclusive) from the back in the high 16, both offset by
 *  CHUNK_BIAS so that failed attempts past either end never wrap. */
export const CHUNK_BIAS = 1024;
export function initChunkCounters(counters: Int32Array, parts: number, chunk: number, rows: number): void {
  const total = Math.ceil(rows / chunk), per = Math.ceil(total / parts);
  if (per + CHUNK_BIAS + parts >= 0x8000) throw new Error(`too many chunks per thread (${per}): take larger chunks`);
  for (let r = 0; r < parts; r++) {
    const count = Math.max(0, Math.min(per, total - r * per));
    counters[r] = ((CHUNK_BIAS + count) << 16) | CHUNK_BIAS;
  }
}

/** Runs fn(r0, r1) over the chunks of `chunk` rows that thread `share` of `parts` claims. Each thread
 *  owns a contiguous region of the rows (counters: initChunkCounters, in `mem`) and takes its chunks front
 *  to back; a thread whose region is done takes chunks from the back of the others'. So a thread that
 *  runs slower (a worker the OS preempted) holds nobody up, and each thread still streams one long run of
 *  rows, which the kernels' touches ahead and the hardware prefetchers follow (chunks handed out in turn,
 *  row runs alternating between threads: a decode step's products took 10.1-11.3 instead of 7.9-8.0 ms). */
export function forEachChunk(mem: Int32Array, counters: number, parts: number, share: number, chunk: number, rows: number, fn: (r0: number, r1: number) => void): void {
  const per = Math.ceil(Math.ceil(rows / chunk) / parts);
  for (let v = 0; v < parts; v++) {
    const region = (share + v) % parts, word = (counters >> 2) + region;
    for (;;) {
      // own region: from the front; another's: from the back (the two never take the same chunk)
      const old = v === 0 ? Atomics.add(mem, word, 1) : Atomics.sub(mem, word, 1 << 16);
      const front = old & 0xffff, back = old >>> 16;
      if (front >= back) break;
      const r0 = (region * per + (v === 0 ? front : back - 1) - CHUNK_BIAS) * chunk;
      fn(r0, Math.min(rows, r0 + chunk));
    }
  }
}

/** gemmRange (out stride = rows) over the chunks this thread claims (forEachChunk). */
export function gemmChunks(k: KernelExports, memory: WebAssembly.Memory, counters: number, parts: number, share: number, chunk: number, dtype: number,
                           wBase: number, rowBytes: number, rows: number, cols: number, x: number, n: number, out: number, scratch: number, block: number, xq = 0, xs = 0): void {
  forEachChunk(new Int32Array(memory.buffer), counters, parts, share, chunk, rows,
    (r0, r1) => gemmRange(k, dtype, wBase, rowBytes, r0, r1, cols, x, n, out, rows, scratch, block, xq, xs));
}

/** i32 words of one product's entry in a gemmSet list: counters, chunk, dtype, wBase, rowBytes, rows, cols,
 *  x, n, out, block, xq, xs (gemmChunks' arguments but the thread's own). */
export const GEMM_DESC = 13;

/** Several products of one input in one hand-off: this thread's chunks of each in turn (gemmChunks), the
 *  products listed at `desc` (GEMM_DESC words each); `scratch`: this thread's scratch. `delta`: added to
 *  the input pointers (x, xq, xs) where each thread reads its own copy of the input (program.ts). */
export function gemmSet(k: KernelExports, memory: WebAssembly.Memory, desc: number, count: number, parts: number, share: number, scratch: number, delta = 0): void {
  const m = new Int32Array(memory.buffer), at = (p: number) => (p ? p + delta : 0);
  for (let j = 0; j < count; j++) {
    const d = (desc >> 2) + j * GEMM_DESC;
    gemmChunks(k, memory, m[d], parts, share, m[d + 1], m[d + 2], m[d + 3], m[d + 4], m[d + 5], m[d + 6], at(m[d + 7]), m[d + 8], m[d + 9], scratch, m[d + 10], at(m[d + 11]), at(m[d + 12]));
  }
}

/** How many of heads h..h+most-1 share head h's token list (`selected`: per head [pointer, count] i32
 *  pairs in `mem`): a run of them is attended in one kernel call, each key and value read once. */
function sameListRun(mem: Int32Array, selected: number, h: number, most: number): number {
  const s = selected >> 2;
  for (let j = 1; j < most; j++) if (mem[s + 2 * (h + j)] !== mem[s + 2 * h] || mem[s + 2 * (h + j) + 1] !== mem[s + 2 * h + 1]) return j;
  return most;
}

/** Decode steps over at least this many keys a head split their attention by tokens across the threads
 *  (fewer: by heads). */
export const TOKEN_SPLIT = 1024;

/** Prefill query rows attended together (kernels.wat attend_rows): a thread's probs scratch for attendHeads
 *  holds ATTEND_ROWS * group + 1 rows of start + n + 4 floats. */
export const ATTEND_ROWS = 4;

/** Attention of n new tokens (positions start..start+n-1) for query heads [h0, h1), the heads of one KV
 *  head together where they attend the same tokens (each key and value read once for them). q and out
 *  are [n][nH][hd] f32 in the shared memory; probs is this thread's scratch ((ATTEND_ROWS x group + 1) x
 *  (start + n + 4) floats). Dense and causal when `selected` is 0; else (a decode step, n = 1) `selected` holds per query
 *  head [token list pointer, token count] (i32 pairs): the tokens a sparse policy chose, heads of a group
 *  sharing one list when their pointers are equal (pointer 0: tokens 0..count-1). When `received` is not
 *  0, the attention each token receives is summed into received[h][0..start+n) (row stride `recvStride`
 *  floats), which H2O-style policies need. `memory`: the shared memory (read for `selected`). `bf16`: 1 where
 *  the cache holds bf16 keys and values. */
export function attendHeads(k: KernelExports, h0: number, h1: number, n: number, start: number, nH: number, group: number, hd: number,
                            q: number, out: number, kPtr: number, vPtr: number, table: number, pageStride: number, P: number, probs: number, scale: number,
                            received = 0, recvStride = 0, selected = 0, memory: WebAssembly.Memory | null = null, bf16 = 0): void {
  const mem = selected && memory ? new Int32Array(memory.buffer) : null;
  for (let h = h0; h < h1;) {
    const g = Math.floor(h / group);
    let nq = Math.min(h1, (g + 1) * group) - h; // (this share's heads of KV head g)
    const headOff = g * P * hd * (bf16 ? 2 : 4);
    if (mem) {
      const tokens = mem[(selected >> 2) + 2 * h], count = mem[(selected >> 2) + 2 * h + 1];
      nq = sameListRun(mem, selected, h, nq);
      k.attend(q + h * hd * 4, nq, kPtr + headOff, vPtr + headOff, table, pageStride, P, hd, tokens, count, scale, probs, out + h * hd * 4, bf16);
      h += nq;
      continue;
    }
    // a prefill's rows ATTEND_ROWS at a time (each key and value read once for them), unless the policy
    // wants each row's weights (received): then, and for a decode step, one at a time
    for (let i = 0; i < n;) {
      const o = ((i * nH + h) * hd) * 4, count = start + i + 1, n4 = (count + 3) & ~3;
      if (!received && n > 1) {
        const rows = Math.min(ATTEND_ROWS, n - i);
        k.attend_rows(q + o, nq, rows, nH * hd * 4, kPtr + headOff, vPtr + headOff, table, pageStride, P, hd, count, scale, probs, out + o, bf16);
        i += rows;
        continue;
      }
      k.attend(q + o, nq, kPtr + headOff, vPtr + headOff, table, pageStride, P, hd, 0, count, scale, probs, out + o, bf16);
      if (received) for (let j = 0; j < nq; j++) k.accumulate(received + (h + j) * recvStride * 4, probs + j * n4 * 4, n4);
      i++;
    }
    h += nq;
  }
}

/** One thread's part of a decode step's attention split by tokens rather than heads: each of the `parts`
 *  threads takes a contiguous share of every head's tokens, so each key and value is read once by one
 *  thread (split by heads, a GQA group that straddles two threads is read by both, and 9 heads over 2
 *  threads leave one idle for a ninth of the time). Per head h: its tokens are `selected`'s [pointer,
 *  count] pair (as attendHeads), or where `selected` is 0 the ids 0..count-1; this share's out row is
 *  normalised over its tokens and stats[h] = [max score, sum of exp(score - max)] (mergeTokenParts).
 *  q: [nH][hd] f32; out: [nH][hd]; stats: [nH][2]. */
export function attendTokenPart(k: KernelExports, share: number, parts: number, nH: number, group: number, hd: number, q: number, out: number, stats: number,
                                kPtr: number, vPtr: number, table: number, pageStride: number, P: number, probs: number, scale: number,
                                selected: number, count: number, memory: WebAssembly.Memory, bf16: number): void {
  const mem = new Int32Array(memory.buffer), st = new Float32Array(memory.buffer);
  for (let h = 0; h < nH;) {
    const g = Math.floor(h / group);
    let nq = (g + 1) * group - h, tokens = 0, n = count;
    if (selected) {
      const s = selected >> 2;
      tokens = mem[s + 2 * h]; n = mem[s + 2 * h + 1];
      nq = sameListRun(mem, selected, h, nq);
    }
    const per = Math.ceil(n / parts), a = Math.min(n, share * per), b = Math.min(n, a + per);
    if (b > a) {
      k.attend_part(q + h * hd * 4, nq, kPtr + g * P * hd * (bf16 ? 2 : 4), vPtr + g * P * hd * (bf16 ? 2 : 4), table, pageStride, P, hd,
                    tokens ? tokens + a * 4 : 0, b - a, scale, probs, out + h * hd * 4, bf16, tokens ? 0 : a, stats + h * 8);
    } else for (let j = 0; j < nq; j++) { st[(stats >> 2) + 2 * (h + j)] = -Infinity; st[(stats >> 2) + 2 * (h + j) + 1] = 0; } // (no tokens here)
    h += nq;
  }
}

/** dst[h] = the softmax-weighted mix of the parts' rows (attendTokenPart): each part's row is normalised
 *  over its own tokens, so it counts by its sum of exp(score - its max), rescaled to the common max. */
export function mergeTokenParts(outs: Float32Array[], stats: Float32Array[], nH: number, hd: number, dst: Float32Array): void {
  const w = new Float64Array(outs.length);
  for (let h = 0; h < nH; h++) {
    let m = -Infinity;
    for (let s = 0; s < outs.length; s++) if (stats[s][2 * h + 1] > 0) m = Math.max(m, stats[s][2 * h]);
    let total = 0;
    for (let s = 0; s < outs.length; s++) { w[s] = stats[s][2 * h + 1] > 0 ? stats[s][2 * h + 1] * Math.exp(stats[s][2 * h] - m) : 0; total += w[s]; }
    for (let d = 0; d < hd; d++) {
      let v = 0;
      for (let s = 0; s < outs.length; s++) if (w[s] > 0) v += w[s] * outs[s][h * hd + d];
      dst[h * hd + d] = v / total;
    }
  }
}

/** Quest's page scores of pages [p0, p1) for every query head: out is [nH][np] f32, q [nH][hd]; the
 *  pages' key min/max of KV head g are read once for the group's heads (kernels.wat page_scores); `bf16`:
 *  1 where they are bf16 (`stride`: bytes between pages). */
export function pageScoreRange(k: KernelExports, p0: number, p1: number, np: number, nKV: number, group: number, hd: number,
                               q: number, kmin: number, kmax: number, table: number, stride: number, out: number, bf16 = 0): void {
  if (p1 <= p0) return;
  const eb = bf16 ? 2 : 4; // (bytes of a min / max element)
  for (let g = 0; g < nKV; g++) {
    k.page_scores(q + g * group * hd * 4, group, kmin + g * hd * eb, kmax + g * hd * eb, table + p0 * 4, hd, p1 - p0, stride,
                  out + (g * group * np + p0) * 4, np, bf16);
  }
}
