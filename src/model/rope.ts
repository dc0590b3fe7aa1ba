// Rotary position embedding: the inverse frequencies (with the scaling variants models use) and the
// rotation itself in either pairing layout.
import type { ModelConfig, RopeScaling, RopeStyle } from './config.js';

/** Inverse frequency per rotated pair, scaling applied. */
export function ropeInvFreq(headDim: number, theta: number, scaling: RopeScaling): Float64Array {
  const half = headDim / 2;
  const f = new Float64Array(half);
  for (let i = 0; i < half; i++) f[i] = 1 / Math.pow(theta, (2 * i) / headDim);
  switch (scaling.type) {
    case 'none': break;
    case 'linear': for (let i = 0; i < half; i++) f[i] /= scaling.factor; break;
    case 'freq-factors': for (let i = 0; i < half; i++) f[i] /= scaling.factors[i]; break;
    case 'llama3': {
      // Llama 3.1: long wavelengths are slowed by `factor`, short ones kept, a smooth blend between.
      const { factor, lowFreqFactor, highFreqFactor, originalMaxPositions } = scaling;
      const lowWl = originalMaxPositions / lowFreqFactor, highWl = originalMaxPositions / highFreqFactor;
      for (let i = 0; i < half; i++) {
        const wl = (2 * Math.PI) / f[i];
        if (wl < highWl) continue;
        if (wl > lowWl) { f[i] /= factor; continue; }
        const smooth = (originalMaxPositions / wl - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
        f[i] = (1 - smooth) * (f[i] / factor) + smooth * f[i];
      }
      break;
    }
  }
  return f;
}

export class Rope {
  readonly invFreq: Float64Array;
  private cos = new Float32Array(0);
  private sin = new Float32Array(0);
  private cached = 0;
  constructor(readonly headDim: number, readonly style: RopeStyle, theta: number, scaling: RopeScaling) {
    this.invFreq = ropeInvFreq(headDim, theta, scaling);
  }
  static forConfig(c: ModelConfig): Rope { return new Rope(c.headDim, c.ropeStyle, c.ropeTheta, c.ropeScaling); }

  private ensure(pos: number): void {
    if (pos < this.cached) return;
    const half = this.headDim / 2;
    const n = Math.max(pos + 1, this.cached * 2, 1024);
    const cos = new Float32Array(n * half), sin = new Float32Array(n * half);
    for (let p = 0; p < n; p++) for (let i = 0; i < half; i++) {
      const a = p * this.invFreq[i];
      cos[p * half + i] = Math.cos(a); sin[p * half + i] = Math.sin(a);
    }
    this.cos = cos; this.sin = sin; this.cached = n;
  }

  /** Rotates `nHeads` heads stored from x[o] on at position `pos`. */
  apply(x: Float32Array, o: number, nHeads: number, pos: number): void {
    this.ensure(pos);
    const hd = this.headDim, half = hd / 2, cb = pos * half;
    const cos = this.cos, sin = this.sin;
    for (let h = 0; h < nHeads; h++) {
      const b = o + h * hd;
      if (this.style === 'interleaved') {
        for (let i = 0; i < half; i++) {
          const c = cos[cb + i], s = sin[cb + i];
          const x0 = x[b + 2 * i], x1 = x[b + 2 * i + 1];
          x[b + 2 * i] = x0 * c - x1 * s; x[b + 2 * i + 1] = x0 * s + x1 * c;
        }
      } else {
        for (let i = 0; i < half; i++) {
          const c = cos[cb + i], s = sin[cb + i];
          const x0 = x[b + i], x1 = x[b + i + half];
          x[b + i] = x0 * c - x1 * s; x[b + i + half] = x0 * s + x1 * c;
        }
      }
    }
  }
}
