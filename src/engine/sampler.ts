// Next-token sampling: greedy, temperature, top-k, top-p, with a seeded generator for reproducibility.

export interface SamplingOptions {
  temperature?: number; // 0 = greedy
  topK?: number;        // 0 = off
  topP?: number;        // 1 = off
  seed?: number;
}

/** mulberry32: small, fast, seedable. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function argmax(v: ArrayLike<number>, o = 0, n = v.length - o): number {
  let best = 0, bv = -Infinity;
  for (let i = 0; i < n; i++) if (v[o + i] > bv) { bv = v[o + i]; best = i; }
  return best;
}

export function validateSampling(s: SamplingOptions): void {
  if (s.temperature !== undefined && !(s.temperature >= 0 && Number.isFinite(s.temperature))) throw new Error(`temperature must be >= 0, got ${s.temperature}`);
  if (s.topK !== undefined && !(Number.isInteger(s.topK) && s.topK >= 0)) throw new Error(`top-k must be an integer >= 0, got ${s.topK}`);
  if (s.topP !== undefined && !(s.topP > 0 && s.topP <= 1)) throw new Error(`top-p must be in (0, 1], got ${s.topP}`);
}

export class Sampler {
  private readonly random: () => number;
  constructor(private readonly opts: SamplingOptions = {}) {
    validateSampling(opts);
    this.random = rng(opts.seed ?? (Math.random() * 2 ** 32) >>> 0);
  }

  sample(logits: Float32Array): number {
    const temp = this.opts.temperature ?? 1;
    if (temp === 0) return argmax(logits);
    const n = logits.length;
    let idx = Array.from({ length: n }, (_, i) => i);
    const topK = this.opts.topK ?? 0;
    if (topK > 0 && topK < n) idx = idx.sort((a, b) => logits[b] - logits[a]).slice(0, topK);
    else idx.sort((a, b) => logits[b] - logits[a]);
    const max = logits[idx[0]];
    let probs = idx.map((i) => Math.exp((logits[i] - max) / temp));
    let sum = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / sum);
    const topP = this.opts.topP ?? 1;
    if (topP < 1) {
      let cum = 0, cut = probs.length;
      for (let i = 0; i < probs.length; i++) { cum += probs[i]; if (cum >= topP) { cut = i + 1; break; } }
      idx = idx.slice(0, cut); probs = probs.slice(0, cut);
      sum = probs.reduce((a, b) => a + b, 0); probs = probs.map((p) => p / sum);
    }
    let r = this.random();
    for (let i = 0; i < probs.length; i++) { r -= probs[i]; if (r <= 0) return idx[i]; }
    return idx[idx.length - 1];
  }
}
