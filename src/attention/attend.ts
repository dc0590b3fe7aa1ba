// Attention of one query head over the KV cache: every token up to a position (dense), or a given
// ascending list of tokens (sparse policies). Softmax over exactly the attended tokens.
import { dot } from '../backend/cpu/kernels.js';
import type { LayerKV } from '../kv/paged-cache.js';
import { wasm } from '../backend/wasm/runtime.js';

/**
 * out[oo..oo+hd) = softmax(q·Kᵀ·scale) · V over the tokens attended by query head q (KV head g).
 * tokens === null: tokens 0..count-1, read page by page. Leaves the probabilities in probs[0..n).
 * Returns n, the number of tokens attended.
 */
export function attendHead(q: Float32Array, qo: number, kv: LayerKV, g: number, tokens: Int32Array | null, count: number,
                           scale: number, out: Float32Array, oo: number, probs: Float32Array | null): number {
  const hd = kv.headDim, K = kv.k, V = kv.v;
  const n = tokens ? tokens.length : count;
  const rt = wasm();
  if (rt && kv.inWasm && hd % 4 === 0) {
    // SIMD kernel over the cache in place; q, the token list and the results go through scratch
    const qp = rt.scratchPtr('att.q', hd * 4), op = rt.scratchPtr('att.o', hd * 4), pp = rt.scratchPtr('att.p', 2 * (n + 4) * 4);
    const tp = tokens ? rt.scratchPtr('att.t', n * 4) : 0;
    rt.f32(qp, hd).set(q.subarray(qo, qo + hd));
    if (tokens) rt.i32(tp, n).set(tokens);
    const headOff = g * kv.pageSize * hd * 4, pageStride = kv.pageFloats * 4;
    rt.k.attend(qp, 1, kv.kPtr + headOff, kv.vPtr + headOff, kv.tablePtr(), pageStride, kv.pageSize, hd, tp, n, scale, pp, op);
    out.set(rt.f32(op, hd), oo);
    if (probs) probs.set(rt.f32(pp, n));
    return n;
  }
  if (!probs) probs = new Float32Array(n);
  let max = -Infinity;
  if (tokens) {
    for (let i = 0; i < n; i++) {
      const s = dot(q, qo, K, kv.offset(tokens[i], g), hd) * scale;
      probs[i] = s; if (s > max) max = s;
    }
  } else {
    const P = kv.pageSize;
    for (let base = 0; base < n; base += P) {
      const o = kv.offset(base, g), m = Math.min(P, n - base);
      for (let j = 0; j < m; j++) {
        const s = dot(q, qo, K, o + j * hd, hd) * scale;
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
    for (let d = 0; d < hd; d++) out[oo + d] += p * V[o + d];
  }
  return n;
}

/** Exact attention scores q·k·scale of one query head against tokens 0..count-1 (into `scores`). */
export function headScores(q: Float32Array, qo: number, kv: LayerKV, g: number, count: number, scale: number, scores: Float32Array): void {
  const hd = kv.headDim;
  for (let t = 0; t < count; t++) scores[t] = dot(q, qo, kv.k, kv.offset(t, g), hd) * scale;
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
 *  `force` indices are always kept and count towards k. A size-k min-heap: O(n log k). */
export function topKIndices(values: ArrayLike<number>, k: number, force: number[] = []): number[] {
  const n = values.length;
  if (k >= n) return Array.from({ length: n }, (_, i) => i);
  const forced = force.filter((i, j) => i >= 0 && i < n && force.indexOf(i) === j);
  const m = Math.max(0, k - forced.length);
  const heap = new Int32Array(m); // indices; heap[0] is the worst kept
  let size = 0;
  const worse = (a: number, b: number) => values[a] < values[b] || (values[a] === values[b] && a > b);
  const down = (i: number) => {
    for (;;) {
      const l = 2 * i + 1, r = l + 1;
      let w = i;
      if (l < size && worse(heap[l], heap[w])) w = l;
      if (r < size && worse(heap[r], heap[w])) w = r;
      if (w === i) return;
      const t = heap[i]; heap[i] = heap[w]; heap[w] = t; i = w;
    }
  };
  for (let i = 0; i < n && m > 0; i++) {
    if (forced.includes(i)) continue;
    if (size < m) {
      let c = size++; heap[c] = i;
      while (c > 0) { const p = (c - 1) >> 1; if (!worse(heap[c], heap[p])) break; const t = heap[c]; heap[c] = heap[p]; heap[p] = t; c = p; }
    } else if (worse(heap[0], i)) { heap[0] = i; down(0); }
  }
  return [...forced, ...Array.from(heap.subarray(0, size))].sort((a, b) => a - b);
}
