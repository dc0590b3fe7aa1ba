// Rotary position embedding: the inverse frequencies (with the scaling variants models use) and the
// rotation itself in either pairing layout.
import type { ModelConfig, RopeScaling, RopeStyle } from './config.js';

/** Inverse frequency per rotated pair, scaling applied (headDim: the rotated channels). */
export function ropeInvFreq(headDim: number, theta: number, scaling: RopeScaling): Float64Array {
  const half = headDim / 2;
  const f = new Float64Array(half);
  for (let i = 0; i < half; i++) f[i] = 1 / Math.pow(theta, (2 * i) / headDim);
  switch (scaling.type) {
    case 'none': break;
    case 'linear': for (let i = 0; i < half; i++) f[i] /= scaling.factor; break;
    case 'freq-factors': case 'longrope': for (let i = 0; i < half; i++) f[i] /= scaling.factors[i]; break;
    case 'yarn': {
      // the pair index where a wavelength turns `rotations` times over the original context
      const { factor, originalMaxPositions: ctx, betaFast, betaSlow } = scaling;
      const corr = (rotations: number) => (headDim * Math.log(ctx / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
      const low = Math.max(0, Math.floor(corr(betaFast))), high = Math.min(headDim - 1, Math.ceil(corr(betaSlow)));
      for (let i = 0; i < half; i++) {
        const keep = 1 - Math.min(1, Math.max(0, (i - low) / Math.max(0.001, high - low)));
        f[i] = (f[i] / factor) * (1 - keep) + f[i] * keep;
      }
      break;
    }
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

/** What cos and sin are multiplied by (YaRN's attention scaling; 1 otherwise). */
export const ropeMagnitude = (scaling: RopeScaling) => (scaling.type === 'yarn' || scaling.type === 'longrope' ? scaling.attnFactor : 1);

export class Rope {
  readonly invFreq: Float64Array;
  readonly magnitude: number;
  private cos = new Float32Array(0);
  private sin = new Float32Array(0);
  private cached = 0;
  /** (rotDims: the channels of each head that rotate, the first ones; the rest pass through) */
  constructor(readonly headDim: number, readonly style: RopeStyle, theta: number, scaling: RopeScaling, readonly rotDims = headDim) {
    this.invFreq = ropeInvFreq(rotDims, theta, scaling);
    this.magnitude = ropeMagnitude(scaling);
  }
  static forConfig(c: ModelConfig): Rope { return new Rope(c.headDim, c.ropeStyle, c.ropeTheta, c.ropeScaling, c.ropeDims ?? c.headDim); }

  private ensure(pos: number): void {
    if (pos < this.cached) return;
    const half = this.rotDims / 2;
    const n = Math.max(pos + 1, this.cached * 2, 1024);
    const cos = new Float32Array(n * half), sin = new Float32Array(n * half);
    for (let p = 0; p < n; p++) for (let i = 0; i < half; i++) {
      const a = p * this.invFreq[i];
      cos[p * half + i] = Math.cos(a) * this.magnitude; sin[p * half + i] = Math.sin(a) * this.magnitude;
    }
    this.cos = cos; this.sin = sin; this.cached = n;
  }

  /** Rotates `nHeads` heads stored from x[o] on at position `pos`. */
  apply(x: Float32Array, o: number, nHeads: number, pos: number): void {
    this.ensure(pos);
    const hd = this.headDim, half = this.rotDims / 2, cb = pos * half;
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
