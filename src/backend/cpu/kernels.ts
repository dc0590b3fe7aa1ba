// CPU kernels of the forward pass, on Float32Array. The weight products work on any Matrix dtype by
// dequantising one weight row at a time and reusing it for every token of the batch.
import type { Matrix } from '../../model/tensor.js';

/** a[ao..ao+n) · b[bo..bo+n) */
export function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, n: number): number {
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[ao + i] * b[bo + i];
    s1 += a[ao + i + 1] * b[bo + i + 1];
    s2 += a[ao + i + 2] * b[bo + i + 2];
    s3 += a[ao + i + 3] * b[bo + i + 3];
  }
  for (; i < n; i++) s0 += a[ao + i] * b[bo + i];
  return s0 + s1 + s2 + s3;
}

/** out[t, r] = W[r] · x[t] (+ bias[r]) for tokens t < n and rows r in [r0, r1). */
export function matmulRows(W: Matrix, x: Float32Array, n: number, out: Float32Array, bias: Float32Array | null,
                           r0: number, r1: number, scratch: Float32Array): void {
  const cols = W.cols, rows = W.rows;
  for (let r = r0; r < r1; r++) {
    const w = W.row(r, scratch);
    const b = bias ? bias[r] : 0;
    for (let t = 0; t < n; t++) out[t * rows + r] = dot(w, 0, x, t * cols, cols) + b;
  }
}

const scratchByCols = new Map<number, Float32Array>();
function scratchFor(cols: number): Float32Array {
  let s = scratchByCols.get(cols);
  if (!s) { s = new Float32Array(cols); scratchByCols.set(cols, s); }
  return s;
}

/** out[n x W.rows] = x[n x W.cols] · Wᵀ (+ bias) */
export function matmul(W: Matrix, x: Float32Array, n: number, out: Float32Array, bias: Float32Array | null = null): void {
  matmulRows(W, x, n, out, bias, 0, W.rows, scratchFor(W.cols));
}

/** RMSNorm of n rows of length d. */
export function rmsnorm(out: Float32Array, x: Float32Array, w: Float32Array, n: number, d: number, eps: number): void {
  for (let t = 0; t < n; t++) {
    const o = t * d;
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[o + i] * x[o + i];
    const s = 1 / Math.sqrt(ss / d + eps);
    for (let i = 0; i < d; i++) out[o + i] = x[o + i] * s * w[i];
  }
}

/** In-place softmax over v[o..o+n). */
export function softmax(v: Float32Array, o: number, n: number): void {
  let max = -Infinity;
  for (let i = 0; i < n; i++) if (v[o + i] > max) max = v[o + i];
  let sum = 0;
  for (let i = 0; i < n; i++) { const e = Math.exp(v[o + i] - max); v[o + i] = e; sum += e; }
  const inv = 1 / sum;
  for (let i = 0; i < n; i++) v[o + i] *= inv;
}

/** gate[i] = silu(gate[i]) * up[i] */
export function swiglu(gate: Float32Array, up: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) { const g = gate[i]; gate[i] = (g / (1 + Math.exp(-g))) * up[i]; }
}

export function addInPlace(x: Float32Array, y: Float32Array, n: number): void {
  for (let i = 0; i < n; i++) x[i] += y[i];
}
