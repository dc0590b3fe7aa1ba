// A model's fingerprint: what a saved KV cache depends on. Two models whose configs, tensor layouts or
// weights differ get different fingerprints, so a session file is never continued by another model
// (a fine-tune of the same architecture included: weight bytes are sampled from every tensor).
// Pure TypeScript (the browser bundle computes it too): FNV-1a over the config and the samples.
import type { ModelConfig, ModelWeights } from './config.js';
import type { Matrix } from './tensor.js';

/** 64-bit FNV-1a, as two 32-bit halves with different offsets (enough to tell models apart). */
class Fnv {
  private a = 0x811c9dc5; private b = 0x01000193 ^ 0x9e3779b9;
  bytes(u: Uint8Array): this {
    let a = this.a, b = this.b;
    for (let i = 0; i < u.length; i++) { a = Math.imul(a ^ u[i], 0x01000193); b = Math.imul(b ^ u[i], 0x01000193) ^ (a >>> 7); }
    this.a = a; this.b = b;
    return this;
  }
  text(s: string): this { return this.bytes(new TextEncoder().encode(s)); }
  hex(): string { return (this.a >>> 0).toString(16).padStart(8, '0') + (this.b >>> 0).toString(16).padStart(8, '0'); }
}

const SAMPLE = 256;

export function modelFingerprint(config: ModelConfig, weights: ModelWeights): string {
  const h = new Fnv();
  const { ropeScaling, ...rest } = config;
  h.text(JSON.stringify(rest)).text(JSON.stringify({ ...ropeScaling, factors: undefined }));
  if (ropeScaling.type === 'freq-factors') h.bytes(new Uint8Array(ropeScaling.factors.buffer, ropeScaling.factors.byteOffset, ropeScaling.factors.byteLength));
  const mat = (name: string, m: Matrix) => {
    h.text(`${name}:${m.dtype}:${m.rows}x${m.cols}`);
    const b = m.bytes, n = b.byteLength;
    for (const at of [0, Math.floor(n / 2), Math.max(0, n - SAMPLE)]) h.bytes(b.subarray(at, Math.min(n, at + SAMPLE)));
  };
  const vec = (name: string, v: Float32Array | null) => { h.text(name); if (v) h.bytes(new Uint8Array(v.buffer, v.byteOffset, v.byteLength)); };
  mat('embed', weights.embed); mat('output', weights.output); vec('final', weights.finalNorm);
  weights.layers.forEach((L, l) => {
    for (const k of ['wq', 'wk', 'wv', 'wo', 'wGate', 'wUp', 'wDown'] as const) mat(`${l}.${k}`, L[k]);
    for (const k of ['attnNorm', 'ffnNorm', 'bq', 'bk', 'bv'] as const) vec(`${l}.${k}`, L[k]);
  });
  return h.hex();
}
