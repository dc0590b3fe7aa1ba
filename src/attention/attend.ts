// Attention of one query head over the KV cache: every token up to a position (dense), or a given
// ascending list of tokens (sparse policies). Softmax over exactly the attended tokens.
import { dot } from '../backend/cpu/kernels.js';
import { fromBf16, type LayerKV } from '../kv/paged-cache.js';
import { wasm } from '../backend/wasm/runtime.js';

/**
 * out[oo..oo+hd) = softmax(q·Kᵀ·scale) · V over the tokens attended by query head q (KV head g).
 * tokens === null: tokens 0..count-1, read page by page. Leaves the probabilities in probs[0..n).
 * Returns n, the number of tokens attended.
 */
export function attendHead(q: Float32Array, qo: number, kv: LayerKV, g: number, tokens: Int32Array | null, count: number,
                           scale: number, out: Float32Array, oo: number, probs: Float32Array | null): number {
  const hd = kv.headDim;
  const n = tokens ? tokens.length : count;
  const rt = wasm();
  if (rt && kv.inWasm && hd % 4 === 0) {
    // SIMD kernel over the cache in place; q, the token list and the results go through scratch
    const qp = rt.scratchPtr('att.q', hd * 4), op = rt.scratchPtr('att.o', hd * 4), pp = rt.scratchPtr('att.p', 2 * (n + 4) * 4);
    const tp = tokens ? rt.scratchPtr('att.t', n * 4) : 0;
    rt.f32(qp, hd).set(q.subarray(qo, qo + hd));
    if (tokens) rt.i32(tp, n).set(tokens);
    const eb = kv.pages.elementBytes, headOff = g * kv.pageSize * hd * eb, pageStride = kv.pageFloats * eb;
    rt.k.attend(qp, 1, kv.kPtr + headOff, kv.vPtr + headOff, kv.tablePtr(), pageStride, kv.pageSize, hd, tp, n, scale, pp, op, kv.bf16 ? 1 : 0);
    out.set(rt.f32(op, hd), oo);
    if (probs) probs.set(rt.f32(pp, n));
    return n;
  }
  if (!probs) probs = new Float32Array(n);
  let max = -Infinity;
  if (tokens) {
    for (let i = 0; i < n; i++) {
      const s = keyDot(q, qo, kv, kv.offset(tokens[i], g)) * scale;
      probs[i] = s; if (s > max) max = s;
    }
  } else {
    const P = kv.pageSize;
    for (let base = 0; base < n; base += P) {
      const o = kv.offset(base, g), m = Math.min(P, n - base);
      for (let j = 0; j < m; j++) {
        const s = keyDot(q, qo, kv, o + j * hd) * scale;
        probs[base + j] = s; if (s > max) max = s;
      }
    }
  }
  let sum = 0;
  for (let i = 0; i < n; i++) { const e = Math.exp(probs[i] - max); probs[i] = e; sum += e; }
  const inv = 1 / sum;
  for (let d = 0; d < hd; d++) out[oo + d] = 0;
  for (let i = 0; i < n; i++) {
    const p = (probs[i] *= inv);
    const o = kv.offset(tokens ? tokens[i] : i, g);
    if (kv.bf16) for (let d = 0; d < hd; d++) out[oo + d] += p * fromBf16(kv.v[o + d]);
    else { const V = kv.v; for (let d = 0; d < hd; d++) out[oo + d] += p * V[o + d]; }
  }
  return n;
}

/** q[qo..qo+hd) · the key at element o of the layer's K (bf16 keys widened one by one) */
function keyDot(q: Float32Array, qo: number, kv: LayerKV, o: number): number {
  const hd = kv.headDim;
  if (!kv.bf16) return dot(q, qo, kv.k as Float32Array, o, hd);
  let s = 0;
  for (let i = 0; i < hd; i++) s += q[qo + i] * fromBf16(kv.k[o + i]);
  return s;
}

/** Exact attention scores q·k·scale of one query head against tokens 0..count-1 (into `scores`). */
export function headScores(q: Float32Array, qo: number, kv: LayerKV, g: number, count: number, scale: number, scores: Float32Array): void {
  for (let t = 0; t < count; t++) scores[t] = keyDot(q, qo, kv, kv.offset(t, g)) * scale;
}

/** Tokens of the given pages (ascending page ids), clipped to `length` tokens. */
export function pagesToTokens(pages: number[] | Int32Array, pageSize: number, length: number): Int32Array {
  let n = 0;
  for (const p of pages) n += Math.min(pageSize, length - p * pageSize);
  const out = new Int32Array(n);
  let i = 0;
  for (const p of pages) for (let t = p * pageSize, e = Math.min(length, t + pageSize); t < e; t++) out[i++] = t;
  return out;
}

/** Indices of the k largest values (ties broken by lower index), returned in ascending index order.
 *  `force` indices are always kept and count towards k. Finds the k-th largest value by quickselect
 *  on a copy, then collects by one scan: O(n) (a decode step ranks thousands of pages per layer). */
export function topKIndices(values: ArrayLike<number>, k: number, force: number[] = []): number[] {
  const n = values.length;
  if (k >= n) return Array.from({ length: n }, (_, i) => i);
  if (selectScratch.length < n) { selectScratch = new Float64Array(Math.max(n, 2 * selectScratch.length)); forcedMark = new Uint8Array(selectScratch.length); }
  const c = selectScratch, mark = forcedMark;
  let nForced = 0;
  for (const i of force) if (i >= 0 && i < n && !mark[i]) { mark[i] = 1; nForced++; }
  const m = Math.max(0, k - nForced);
  let nc = 0;
  for (let i = 0; i < n; i++) if (!mark[i]) c[nc++] = rank(values[i]);
  const threshold = m > 0 ? kthLargest(c, nc, m) : Infinity;
  let above = 0;
  for (let i = 0; i < n; i++) if (!mark[i] && rank(values[i]) > threshold) above++;
  let ties = m - above; // values equal to the threshold: the lowest indices
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    if (mark[i]) { out.push(i); mark[i] = 0; continue; }
    const v = rank(values[i]);
    if (v > threshold || (v === threshold && ties-- > 0)) out.push(i);
  }
  return out;
}

let forcedMark = new Uint8Array(0);
let selectScratch = new Float64Array(0);
/** NaN ranks lowest. */
const rank = (v: number): number => (v === v ? v : -Infinity);

/** The m-th largest (1-based) of c[0..n), reordering c (Hoare quickselect, median of three). */
function kthLargest(c: Float64Array, n: number, m: number): number {
  let lo = 0, hi = n - 1;
  const want = m - 1; // index in descending order
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const a = c[lo], b = c[mid], d = c[hi];
    const pivot = a > b ? (b > d ? b : a > d ? d : a) : (a > d ? a : b > d ? d : b);
    let i = lo, j = hi;
    while (i <= j) {
      while (c[i] > pivot) i++;
      while (c[j] < pivot) j--;
      if (i <= j) { const t = c[i]; c[i] = c[j]; c[j] = t; i++; j--; }
    }
    if (want <= j) hi = j; else if (want >= i) lo = i; else return c[want];
  }
  return c[want];
}
