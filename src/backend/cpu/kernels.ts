// CPU kernels of the forward pass, on Float32Array. The weight products work on any Matrix dtype by
// dequantising one weight row at a time and reusing it for every token of the batch.
import type { Matrix } from '../../model/tensor.js';
import { wasm, type WasmRuntime } from '../wasm/runtime.js';
import { workerPool, OP_GEMM_SET, OP_PREPARE_X, OP_GLU, DTYPE_CODE } from '../wasm/pool.js';
import { activationFormat, activationBlock, roundActivations, type ActivationFormat } from './activations.js';
import { GEMM_DESC, gemmSet, gemmRange, initChunkCounters, gemmRowUnit, quantisesX, octBlockRows, octScratchBytes, xTileBytes, gemvInPlace, prepareXShare, gluShare } from '../wasm/shared-ops.js';

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

/** out[t, r] = W[r] · x[t] (+ bias[r]) for tokens t < n and rows r in [r0, r1).
 *  Four weight rows at a time: each activation value loaded once serves four products (~1.5x). */
export function matmulRows(W: Matrix, x: Float32Array, n: number, out: Float32Array, bias: Float32Array | null,
                           r0: number, r1: number, scratch: Float32Array): void {
  const cols = W.cols, rows = W.rows;
  let r = r0;
  for (; r + 4 <= r1; r += 4) {
    const w0 = W.row(r, scratch.subarray(0, cols)), w1 = W.row(r + 1, scratch.subarray(cols, 2 * cols));
    const w2 = W.row(r + 2, scratch.subarray(2 * cols, 3 * cols)), w3 = W.row(r + 3, scratch.subarray(3 * cols, 4 * cols));
    const b0 = bias ? bias[r] : 0, b1 = bias ? bias[r + 1] : 0, b2 = bias ? bias[r + 2] : 0, b3 = bias ? bias[r + 3] : 0;
    for (let t = 0; t < n; t++) {
      const xo = t * cols;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let i = 0; i < cols; i++) {
        const xv = x[xo + i];
        s0 += w0[i] * xv; s1 += w1[i] * xv; s2 += w2[i] * xv; s3 += w3[i] * xv;
      }
      const o = t * rows + r;
      out[o] = s0 + b0; out[o + 1] = s1 + b1; out[o + 2] = s2 + b2; out[o + 3] = s3 + b3;
    }
  }
  for (; r < r1; r++) {
    const w = W.row(r, scratch.subarray(0, cols));
    const b = bias ? bias[r] : 0;
    for (let t = 0; t < n; t++) out[t * rows + r] = dot(w, 0, x, t * cols, cols) + b;
  }
}

const scratchByCols = new Map<number, Float32Array>();
function scratchFor(cols: number): Float32Array {
  let s = scratchByCols.get(cols);
  if (!s) { s = new Float32Array(4 * cols); scratchByCols.set(cols, s); }
  return s;
}

let integerActivations = true;
/** Products of quantised weights take their input rounded to 8 bits as llama.cpp's do (activations.ts:
 *  Q8_0, Q8_1 or Q8_K by weight type; the Q8_0 / Q4_0 kernels multiply the integers themselves). On by
 *  default. Off: f32 inputs everywhere, bit-for-bit closer to float64 (an element within rounding of a
 *  quantisation tie can round either way and move a logit by ~1e-2). */
export function setIntegerActivations(on: boolean): void { integerActivations = on; }

/** out[n x W.rows] = x[n x W.cols] · Wᵀ (+ bias) */
export function matmul(W: Matrix, x: Float32Array, n: number, out: Float32Array, bias: Float32Array | null = null): void {
  matmuls([W], x, n, [out], [bias]);
}

/** Several products of the same input (q/k/v, gate/up): x is rounded (activations.ts) and, on the SIMD
 *  path, copied into the wasm memory and quantised once for all of them. */
export function matmuls(Ws: Matrix[], x: Float32Array, n: number, outs: Float32Array[], biases: (Float32Array | null | undefined)[] = []): void {
  const rt = wasm();
  const prepared = new Map<string, PreparedX>(), planned: PlannedProduct[] = [];
  Ws.forEach((W, i) => {
    const fmt = productActivations(W);
    const simd = !!rt && W.cols % 32 === 0 && rt.owns(W.bytes);
    // the integer kernels (Q8_0 / Q4_0 / Q5_0 with Q8_0 x, Q4_K / Q6_K with Q8_K x) quantise x themselves
    const int = simd && fmt && quantisesX(DTYPE_CODE[W.dtype], W.rows, n) ? fmt : null;
    const key = int ? `int.${int}` : fmt ?? 'f32';
    let p = prepared.get(key);
    if (!p) { p = { key, x, round: int ? null : fmt }; prepared.set(key, p); }
    if (simd) planned.push(planWasm(rt!, W, n, outs[i], biases[i] ?? null, p, int, planned.length));
    else matmulRows(W, roundedX(p, n * W.cols), n, outs[i], biases[i] ?? null, 0, W.rows, scratchFor(W.cols));
  });
  if (planned.length) runPlanned(rt!, planned, n);
}

/** The format a product rounds its input to (null: x as it is). */
function productActivations(W: Matrix): ActivationFormat | null {
  const f = integerActivations ? activationFormat(W.dtype) : null;
  return f && W.cols % activationBlock(f) === 0 ? f : null;
}

/** The TypeScript path's input: x, or x rounded to the product's format (once per call and format). */
function roundedX(p: PreparedX, len: number): Float32Array {
  if (!p.round) return p.x;
  if (!p.rounded) { p.rounded = new Float32Array(len); roundActivations(p.round, p.x, len, p.rounded); }
  return p.rounded;
}

/** A product's input: x, the format it is rounded to (none where the integer kernels quantise it
 *  themselves), its copy in the wasm memory (xp), and x quantised for the integer kernels (xq values as
 *  i16; xs: Q8_0's scale per 32, or Q8_K's per 256 followed by the sums per 32), and for the row octets
 *  kernel, in its tiles of 4 tokens (xt, xst). */
interface PreparedX { key: string; x: Float32Array; round: ActivationFormat | null; rounded?: Float32Array; xp?: number; xq?: number; xs?: number; xt?: number; xst?: number }

/** A product on the SIMD path, ready to run: its input prepared (x in the wasm memory, quantised where
 *  an integer kernel takes it) and where its rows go (op: `out` itself where it lies in the wasm memory). */
interface PlannedProduct { W: Matrix; out: Float32Array; bias: Float32Array | null; op: number; code: number; xp: number; xq: number; xs: number; block: number; scratchBytes: number }

/** Rows a product takes at a time (gemmRange's `block`), and the scratch each thread needs for them: a
 *  block of rows repacked as row octets (`octs`: 2 bytes a weight + scales), or converted to f32. */
export function productBlocks(W: Matrix, octs: boolean): { block: number; scratchBytes: number } {
  const { rows, cols } = W;
  const block = octs ? octBlockRows(cols) : Math.max(4, Math.min(rows, (Math.floor(32768 / cols) >> 2) << 2));
  return { block, scratchBytes: W.dtype === 'f32' ? 0 : octs ? octScratchBytes(block, cols) : block * cols * 4 };
}

/** Prepares one product of the SIMD path: weights read in place from the wasm memory; non-f32 rows are
 *  converted to f32 a block at a time (a block stays in cache while every token of the batch uses it),
 *  or repacked as row octets for the integer kernel. `slot`: its place among the products run together. */
function planWasm(rt: WasmRuntime, W: Matrix, n: number, out: Float32Array, bias: Float32Array | null, prepared: PreparedX, int: ActivationFormat | null, slot: number): PlannedProduct {
  const { rows, cols } = W, q8 = int !== null; // (x quantised for an integer kernel)
  const code = DTYPE_CODE[W.dtype];
  const octs = q8 && !gemvInPlace(code, n);
  const { block, scratchBytes } = productBlocks(W, octs);
  // (an output in the wasm memory is written in place; a bias is added after)
  const op = rt.owns(out) ? out.byteOffset : rt.scratchPtr(`mm.out${slot}`, n * rows * 4);
  // (each format's x has its own scratch: a call's products may take different formats)
  if (prepared.xp === undefined && !prepared.round && rt.owns(prepared.x)) prepared.xp = prepared.x.byteOffset; // (read in place)
  if (prepared.xp === undefined) {
    prepared.xp = rt.scratchPtr(`mm.x.${prepared.key}`, n * cols * 4);
    rt.f32(prepared.xp, n * cols).set(prepared.x.subarray(0, n * cols));
    if (prepared.round === 'q8_k') rt.k.round_q8_k(prepared.xp, n * cols);
    else if (prepared.round) rt.k.round_q8(prepared.xp, n * cols); // (Q8_0 and Q8_1 take the same values)
  }
  if (int && prepared.xq === undefined) {
    const len = n * cols, xq = prepared.xq = rt.scratchPtr(`mm.xq.${prepared.key}`, len * 2);
    if (int === 'q8_k') {
      const xs = prepared.xs = rt.scratchPtr(`mm.xs.${prepared.key}`, (len / 256 + len / 32) * 4);
      rt.k.quantise_q8_k(prepared.xp, len, xq, xs, xs + len / 64); // (the sums after the len / 256 scales)
    } else {
      prepared.xs = rt.scratchPtr(`mm.xs.${prepared.key}`, len / 8);
      if (octs) {
        const [tb, sb] = xTileBytes(n, cols);
        prepared.xt = rt.scratchPtr(`mm.xt.${prepared.key}`, tb); prepared.xst = rt.scratchPtr(`mm.xst.${prepared.key}`, sb);
      }
      prepareX(rt, prepared.xp, cols, n, xq, prepared.xs, prepared.xt ?? 0, prepared.xst ?? 0);
    }
  }
  const [xq, xs] = !q8 ? [0, 0] : octs ? [prepared.xt!, prepared.xst!] : [prepared.xq!, prepared.xs!];
  return { W, out, bias, op, code, xp: prepared.xp, xq, xs, block, scratchBytes };
}

/** x quantised to Q8_0 (and, for the row octets kernel, put in its tiles: xt not 0), a prefill chunk's
 *  tokens split across the threads: alone, the calling thread spent ~6% of a prefill here while the workers
 *  waited. */
function prepareX(rt: WasmRuntime, x: number, cols: number, n: number, xq: number, xs: number, xt: number, xst: number): void {
  splitAcrossThreads(rt, n * cols, OP_PREPARE_X, (parts) => [x, cols, n, xq, xs, xt, xst, parts],
    (parts) => prepareXShare(rt.k, x, cols, n, xq, xs, xt, xst, parts, 0));
}

/** An elementwise pool op (its arguments `args(parts)`, then the share) on every thread where it has enough
 *  elements to pay for the hand-off (2^15), else on this thread alone; `local(parts)` runs share 0 here. */
function splitAcrossThreads(rt: WasmRuntime, elements: number, op: number, args: (parts: number) => number[], local: (parts: number) => void): void {
  const pool = elements >= 1 << 15 ? workerPool(rt) : null;
  if (!pool) { local(1); return; }
  const parts = pool.size + 1;
  pool.run(op, (share) => [...args(parts), share], null, () => local(parts));
}

/** Runs the products of one input (q/k/v, gate/up) in one hand-off to the worker threads: each thread
 *  takes its chunks of every product in turn (gemmSet), so the threads meet once, not once a product. */
function runPlanned(rt: WasmRuntime, ps: PlannedProduct[], n: number): void {
  const work = ps.reduce((a, p) => a + n * p.W.rows * p.W.cols, 0);
  const pool = work >= 1 << 16 ? workerPool(rt) : null; // small products: dispatch costs more than it saves
  const parts = pool ? pool.size + 1 : 1;
  const stride = Math.ceil(Math.max(0, ...ps.map((p) => p.scratchBytes)) / 64) * 64; // (per thread)
  const scratch = stride ? rt.scratchPtr('mm.w', parts * stride) : 0;
  if (!pool) {
    for (const p of ps) gemmRange(rt.k, p.code, p.W.bytes.byteOffset, p.W.rowBytes, 0, p.W.rows, p.W.cols, p.xp, n, p.op, p.W.rows, scratch, p.block, p.xq, p.xs);
  } else {
    const desc = rt.scratchPtr('mm.set', ps.length * GEMM_DESC * 4), counters = rt.scratchPtr('mm.counters', ps.length * parts * 4);
    const d = rt.i32(desc, ps.length * GEMM_DESC);
    ps.forEach((p, j) => {
      // rows in chunks of whole units of gemmRange's path, about eight in each thread's region (gemmChunks)
      const rows = p.W.rows, unit = gemmRowUnit(p.code, n, p.xq, p.block), chunk = Math.max(unit, Math.ceil(rows / (parts * 8) / unit) * unit);
      const c = counters + j * parts * 4;
      initChunkCounters(rt.i32(c, parts), parts, chunk, rows);
      d.set([c, chunk, p.code, p.W.bytes.byteOffset, p.W.rowBytes, rows, p.W.cols, p.xp, n, p.op, p.block, p.xq, p.xs], j * GEMM_DESC);
    });
    pool.run(OP_GEMM_SET, (share) => [desc, ps.length, parts, share, scratch + share * stride], null, () => gemmSet(rt.k, rt.memory, desc, ps.length, parts, 0, scratch));
  }
  for (const { out, op, bias, W } of ps) {
    if (op !== out.byteOffset || !rt.owns(out)) out.set(rt.f32(op, n * W.rows));
    if (bias) for (let t = 0; t < n; t++) for (let r = 0; r < W.rows; r++) out[t * W.rows + r] += bias[r];
  }
}

/** The format a product's input is rounded to, as a float64 reference must model it (null: exact x). */
export function productRoundsX(W: Matrix): ActivationFormat | null { return productActivations(W); }

/** A forward pass's activation buffer: in the WebAssembly memory where the SIMD kernels run (products,
 *  norms and SwiGLU then read and write it in place: no copies in and out), else an ordinary array. Named
 *  areas are reused by the next pass: what outlives a pass must be copied out. */
export function activations(name: string, len: number): Float32Array {
  const rt = wasm();
  return rt ? rt.f32(rt.scratchPtr(`act.${name}`, len * 4), len) : new Float32Array(len);
}

/** A weight vector (a norm's) copied once into the WebAssembly memory, for the kernels that read it there
 *  (its address; -1 where the memory is full). */
const inWasm = new WeakMap<Float32Array, number>();
const releaseCopy = new FinalizationRegistry<{ ptr: number; bytes: number }>(({ ptr, bytes }) => wasm()?.release(ptr, bytes));
export function wasmCopy(rt: WasmRuntime, a: Float32Array): number {
  if (rt.owns(a)) return a.byteOffset;
  let p = inWasm.get(a);
  if (p === undefined) {
    p = rt.alloc(a.byteLength);
    if (p < 0) return -1;
    rt.f32(p, a.length).set(a);
    inWasm.set(a, p);
    releaseCopy.register(a, { ptr: p, bytes: a.byteLength });
  }
  return p;
}

/** RMSNorm of n rows of length d. */
export function rmsnorm(out: Float32Array, x: Float32Array, w: Float32Array, n: number, d: number, eps: number): void {
  const rt = wasm();
  if (rt && d % 4 === 0 && rt.owns(x) && rt.owns(out)) {
    const wp = wasmCopy(rt, w);
    if (wp >= 0) { rt.k.rmsnorm(x.byteOffset, wp, out.byteOffset, n, d, eps); return; }
  }
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
  if (gluWasm(gate, up, n, 0)) return;
  for (let i = 0; i < n; i++) { const g = gate[i]; gate[i] = (g / (1 + Math.exp(-g))) * up[i]; }
}

/** gate[i] = gelu(gate[i]) * up[i], gelu in its tanh form (Gemma's GeGLU) */
export function geglu(gate: Float32Array, up: Float32Array, n: number): void {
  if (gluWasm(gate, up, n, 1)) return;
  for (let i = 0; i < n; i++) {
    const g = gate[i];
    gate[i] = 0.5 * g * (1 + Math.tanh(0.7978845608028654 * (g + 0.044715 * g * g * g))) * up[i];
  }
}

/** The SIMD kernel (kernels.wat glu) through scratch: copying costs far less than an exp per element. */
function gluWasm(gate: Float32Array, up: Float32Array, n: number, act: number): boolean {
  const rt = wasm();
  if (!rt || n % 4 !== 0) return false;
  if (rt.owns(gate) && rt.owns(up)) {
    // (a prefill chunk's elements split across the threads)
    const g = gate.byteOffset, u = up.byteOffset;
    splitAcrossThreads(rt, n, OP_GLU, (parts) => [g, u, n, act, parts], (parts) => gluShare(rt.k, g, u, n, act, parts, 0));
    return true;
  }
  const gp = rt.scratchPtr('glu.g', n * 4), up4 = rt.scratchPtr('glu.u', n * 4);
  rt.f32(gp, n).set(gate.subarray(0, n)); rt.f32(up4, n).set(up.subarray(0, n));
  rt.k.glu(gp, up4, n, act);
  gate.set(rt.f32(gp, n));
  return true;
}

export function addInPlace(x: Float32Array, y: Float32Array, n: number): void {
  const rt = wasm();
  if (rt && n % 4 === 0 && rt.owns(x) && rt.owns(y)) { rt.k.accumulate(x.byteOffset, y.byteOffset, n); return; }
  for (let i = 0; i < n; i++) x[i] += y[i];
}
