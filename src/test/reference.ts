// An independent float64 Llama forward pass for tests: no paging, no shared kernels, the textbook
// formulas written out again. The engine is checked against it.
import type { ModelConfig, ModelWeights } from '../model/config.js';
import { ropeInvFreq, ropeMagnitude } from '../model/rope.js';

type Mat = Float64Array; // row-major

function toF64(m: { toF32(): Float32Array }): Float64Array { return Float64Array.from(m.toF32()); }

export interface RefWeights {
  embed: Mat; output: Mat; finalNorm: Float64Array;
  layers: { attnNorm: Float64Array; ffnNorm: Float64Array; wq: Mat; wk: Mat; wv: Mat; wo: Mat; bq: Float64Array | null; bk: Float64Array | null; bv: Float64Array | null;
    qNorm: Float64Array | null; kNorm: Float64Array | null; postAttnNorm: Float64Array | null; postFfnNorm: Float64Array | null; gate: Mat; up: Mat; down: Mat }[];
}

export function refWeights(w: ModelWeights): RefWeights {
  const f = (a: Float32Array | null) => (a ? Float64Array.from(a) : null);
  return {
    embed: toF64(w.embed), output: toF64(w.output), finalNorm: Float64Array.from(w.finalNorm),
    layers: w.layers.map((l) => ({
      attnNorm: Float64Array.from(l.attnNorm), ffnNorm: Float64Array.from(l.ffnNorm),
      wq: toF64(l.wq), wk: toF64(l.wk), wv: toF64(l.wv), wo: toF64(l.wo), bq: f(l.bq), bk: f(l.bk), bv: f(l.bv), qNorm: f(l.qNorm), kNorm: f(l.kNorm),
      postAttnNorm: f(l.postAttnNorm ?? null), postFfnNorm: f(l.postFfnNorm ?? null),
      gate: toF64(l.wGate), up: toF64(l.wUp), down: toF64(l.wDown),
    })),
  };
}

function linear(W: Mat, x: Float64Array, rows: number, cols: number, b: Float64Array | null = null): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) { let s = b ? b[r] : 0; for (let c = 0; c < cols; c++) s += W[r * cols + c] * x[c]; y[r] = s; }
  return y;
}

export function refRmsnorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let ss = 0; for (const v of x) ss += v * v;
  const s = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => v * s * w[i]);
}

/** Rotates one head (length hd) at position pos. */
export function refRope(x: Float64Array, pos: number, c: Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeStyle' | 'ropeScaling' | 'ropeDims'>): Float64Array {
  // (the first ropeDims channels rotate, pairs within them; the rest pass through)
  const hd = c.headDim, half = (c.ropeDims ?? hd) / 2, inv = ropeScalingFreqs(c), mag = ropeMagnitude(c.ropeScaling);
  const y = Float64Array.from(x);
  for (let i = 0; i < half; i++) {
    const a = pos * inv[i], cs = Math.cos(a) * mag, sn = Math.sin(a) * mag;
    const [i0, i1] = c.ropeStyle === 'interleaved' ? [2 * i, 2 * i + 1] : [i, i + half];
    y[i0] = x[i0] * cs - x[i1] * sn; y[i1] = x[i0] * sn + x[i1] * cs;
  }
  return y;
}

function ropeScalingFreqs(c: Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling' | 'ropeDims'>): Float64Array {
  return ropeInvFreq(c.ropeDims ?? c.headDim, c.ropeTheta, c.ropeScaling);
}

/** Round half to even, like WGSL's round(). */
function roundEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** x as the GPU's Q4_0 products see it with integer dot products: int8 per block of 32, scale max|x| / 127. */
export function refQuantiseX(x: Float64Array): Float64Array {
  const y = new Float64Array(x.length);
  for (let b = 0; b < x.length; b += 32) {
    let m = 0; for (let i = b; i < Math.min(b + 32, x.length); i++) m = Math.max(m, Math.abs(x[i]));
    if (m === 0) continue;
    for (let i = b; i < Math.min(b + 32, x.length); i++) y[i] = roundEven(x[i] * (127 / m)) * (m / 127);
  }
  return y;
}

/** x as the CPU's quantised products take it, in llama.cpp's activation formats (written from ggml's
 *  quantize_row_q8_0 / q8_1 / q8_K_ref): Q8_0 / Q8_1 per 32, q = x·127/max|x| rounded half to even, the
 *  scale max|x|/127 stored as f16; Q8_K per 256, iscale = -127 / (the signed value of largest magnitude)
 *  and q = min(127, round(iscale·x)) in f32, the scale 1/iscale. */
export function refRoundActivations(x: Float64Array, format: 'q8_0' | 'q8_1' | 'q8_k'): Float64Array {
  const y = new Float64Array(x.length), f = Math.fround;
  const B = format === 'q8_k' ? 256 : 32;
  for (let b = 0; b < x.length; b += B) {
    if (format !== 'q8_k') {
      let m = 0; for (let i = b; i < b + B; i++) m = Math.max(m, Math.abs(x[i]));
      if (m === 0) continue;
      const d = f16Value(f(m / 127));
      for (let i = b; i < b + B; i++) y[i] = roundEven(x[i] * (127 / m)) * d;
    } else {
      let max = 0; for (let i = b; i < b + B; i++) if (Math.abs(x[i]) > Math.abs(max)) max = x[i];
      if (max === 0) continue;
      const is = f(-127 / max);
      for (let i = b; i < b + B; i++) y[i] = Math.min(127, roundEven(f(is * x[i]))) * f(1 / is);
    }
  }
  return y;
}

/** The f16 value nearest to v (ties to even), by its definition: 11 significant bits, normal exponents
 *  from -14. */
function f16Value(v: number): number {
  if (v === 0) return 0;
  let e = Math.floor(Math.log2(Math.abs(v)));
  if (2 ** e > Math.abs(v)) e--; // (log2 may round up just below a power of two)
  const ulp = 2 ** (Math.max(-14, e) - 10);
  return roundEven(v / ulp) * ulp;
}

export interface RefOptions {
  /** positions whose products take their input quantised to int8 per block: true, as the GPU's integer
   *  products do (refQuantiseX); a format, as the CPU's (refRoundActivations) */
  quantiseX?: (pos: number) => boolean | 'q8_0' | 'q8_1' | 'q8_k' | null;
  /** Quest at positions >= `from` (decode steps) in layers >= `denseLayers`: pages of `pageSize` keys
   *  scored by Σ_i max(q_i·max_i, q_i·min_i) from the keys' per-channel min/max, the scores of a KV group's
   *  heads summed, the top max(3, ceil(budget / pageSize)) pages kept (the current page always, ties to
   *  the earlier page), attention over their tokens only */
  quest?: { from: number; budget: number; pageSize: number; denseLayers: number };
  /** what the cache keeps of each key (after RoPE) and value element (a bf16 cache rounds them) */
  kvStore?: (x: number) => number;
}

/** The tokens Quest keeps for KV head g's query heads qs at position pos (RefOptions.quest). */
function refQuestTokens(qs: Float64Array[], Ks: Float64Array[], g: number, hd: number, pos: number, o: NonNullable<RefOptions['quest']>): Set<number> {
  const P = o.pageSize, np = Math.ceil((pos + 1) / P), k = Math.max(3, Math.ceil(o.budget / P));
  const all = new Set(Array.from({ length: pos + 1 }, (_, t) => t));
  if (k >= np) return all;
  const score = Array.from({ length: np }, (_, p) => {
    let s = 0;
    for (const q of qs) for (let i = 0; i < hd; i++) {
      let lo = Infinity, hi = -Infinity;
      for (let t = p * P; t < Math.min(pos + 1, (p + 1) * P); t++) { lo = Math.min(lo, Ks[t][g * hd + i]); hi = Math.max(hi, Ks[t][g * hd + i]); }
      s += Math.max(q[i] * lo, q[i] * hi);
    }
    return s;
  });
  const current = Math.floor(pos / P);
  const order = Array.from({ length: np }, (_, p) => p).filter((p) => p !== current).sort((a, b) => score[b] - score[a] || a - b);
  const pages = [current, ...order.slice(0, k - 1)];
  return new Set(pages.flatMap((p) => Array.from({ length: Math.min(P, pos + 1 - p * P) }, (_, j) => p * P + j)));
}

/** Logits of every position of `tokens`, all in float64. */
export function refForward(c: ModelConfig, W: RefWeights, tokens: number[], opts: RefOptions = {}): Float64Array[] {
  const { dim, headDim: hd, nHeads: nH, nKVHeads: nKV, hiddenDim } = c;
  const Ks: Float64Array[][] = W.layers.map(() => []), Vs: Float64Array[][] = W.layers.map(() => []);
  const out: Float64Array[] = [];
  tokens.forEach((tok, pos) => {
    const form = opts.quantiseX?.(pos); // a product's input
    const qx = form === true ? refQuantiseX : form ? (v: Float64Array) => refRoundActivations(v, form) : (v: Float64Array) => v;
    let x = W.embed.slice(tok * dim, tok * dim + dim).map((v) => v * (c.embedScale ?? 1)); // (Gemma scales it)
    W.layers.forEach((L, l) => {
      // sliding windows (Mistral, Gemma 3's local layers): key t is seen while pos - t < window; those
      // layers may rotate with their own base (Gemma 3)
      const windowed = c.slidingWindow !== undefined && (c.windowLayers === undefined || c.windowLayers[l]);
      const window = windowed ? c.slidingWindow! : Infinity;
      const rc = windowed && c.localRope ? { ...c, ropeTheta: c.localRope.theta, ropeScaling: c.localRope.scaling } : c;
      const scale = c.attnScale ?? 1 / Math.sqrt(hd);
      const h = qx(refRmsnorm(x, L.attnNorm, c.normEps));
      const q = linear(L.wq, h, nH * hd, dim, L.bq), k = linear(L.wk, h, nKV * hd, dim, L.bk), v = linear(L.wv, h, nKV * hd, dim, L.bv);
      const heads = (a: Float64Array, n: number) => Array.from({ length: n }, (_, i) => a.slice(i * hd, i * hd + hd));
      // (Qwen3: each query and key head RMS-normalised before RoPE)
      const hn = (z: Float64Array, w: Float64Array | null) => (w ? refRmsnorm(z, w, c.normEps) : z);
      const qh = heads(q, nH).map((z) => refRope(hn(z, L.qNorm), pos, rc)), kh = heads(k, nKV).map((z) => refRope(hn(z, L.kNorm), pos, rc)), vh = heads(v, nKV);
      const keep = opts.kvStore ?? ((z: number) => z);
      Ks[l].push(Float64Array.from(kh.flatMap((z) => Array.from(z)), keep)); Vs[l].push(v.map(keep));
      const att = new Float64Array(nH * hd);
      const quest = opts.quest && pos >= opts.quest.from && l >= opts.quest.denseLayers ? opts.quest : null, G = nH / nKV;
      const kept = quest ? Array.from({ length: nKV }, (_, g) => refQuestTokens(qh.slice(g * G, (g + 1) * G), Ks[l], g, hd, pos, quest)) : null;
      for (let hq = 0; hq < nH; hq++) {
        const g = Math.floor(hq / (nH / nKV));
        const s = Ks[l].map((K, t) => {
          let d = 0; for (let i = 0; i < hd; i++) d += qh[hq][i] * K[g * hd + i];
          return pos - t < window && (!kept || kept[g].has(t)) ? d * scale : -Infinity;
        });
        const m = Math.max(...s), e = s.map((z) => Math.exp(z - m)), sum = e.reduce((a, b) => a + b, 0);
        for (let t = 0; t < s.length; t++) for (let i = 0; i < hd; i++) att[hq * hd + i] += (e[t] / sum) * Vs[l][t][g * hd + i];
      }
      void vh;
      let o = linear(L.wo, qx(att), dim, nH * hd);
      if (L.postAttnNorm) o = refRmsnorm(o, L.postAttnNorm, c.normEps);
      x = x.map((z, i) => z + o[i]);
      const h2 = qx(refRmsnorm(x, L.ffnNorm, c.normEps));
      const gt = linear(L.gate, h2, hiddenDim, dim), u = linear(L.up, h2, hiddenDim, dim);
      const act = gt.map((z, i) => (c.ffnAct === 'gelu' ? 0.5 * z * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3))) : z / (1 + Math.exp(-z))) * u[i]);
      let d = linear(L.down, qx(act), dim, hiddenDim);
      if (L.postFfnNorm) d = refRmsnorm(d, L.postFfnNorm, c.normEps);
      x = x.map((z, i) => z + d[i]);
    });
    out.push(linear(W.output, qx(refRmsnorm(x, W.finalNorm, c.normEps)), c.vocabSize, dim));
  });
  return out;
}

export function argmax64(v: ArrayLike<number>, o = 0, n = v.length - o): number {
  let b = 0; for (let i = 1; i < n; i++) if (v[o + i] > v[o + b]) b = i; return b;
}
