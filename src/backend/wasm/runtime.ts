// The WebAssembly SIMD runtime of the CPU backend: one shared linear memory holding the model weights,
// the KV caches and the activations, a small allocator over it, and the compiled kernels.
// Where WebAssembly SIMD is missing, or data does not fit in the 4 GiB a wasm32 memory can address,
// callers fall back to the plain TypeScript kernels.
import { KERNELS_WASM_BASE64, KERNELS_WASM_FMA_BASE64 } from './kernels-wasm.js';

export interface KernelExports {
  gemm_f32(w: number, rows: number, cols: number, x: number, n: number, out: number, outStride: number): void;
  f16_to_f32(src: number, dst: number, n: number): void;
  bf16_to_f32(src: number, dst: number, n: number): void;
  q8_0_to_f32(src: number, dst: number, n: number): void;
  q4_0_to_f32(src: number, dst: number, n: number): void;
  q4_k_to_f32(src: number, dst: number, n: number): void;
  q5_k_to_f32(src: number, dst: number, n: number): void;
  q6_k_to_f32(src: number, dst: number, n: number): void;
  q4_1_to_f32(src: number, dst: number, n: number): void;
  q5_0_to_f32(src: number, dst: number, n: number): void;
  q5_1_to_f32(src: number, dst: number, n: number): void;
  iq4_nl_to_f32(src: number, dst: number, n: number): void;
  iq4_xs_to_f32(src: number, dst: number, n: number): void;
  q2_k_to_f32(src: number, dst: number, n: number): void;
  q3_k_to_f32(src: number, dst: number, n: number): void;
  gemv_q8_0(w: number, rows: number, cols: number, xq: number, xs: number, n: number, out: number, outStride: number): void;
  /** gemv_q8_0 for Q4_0 / Q5_0 weights */
  gemv_q4_0(w: number, rows: number, cols: number, xq: number, xs: number, n: number, out: number, outStride: number): void;
  gemv_q5_0(w: number, rows: number, cols: number, xq: number, xs: number, n: number, out: number, outStride: number): void;
  /** Q4_K weights by x from quantise_q8_k (xs: the scales, then the sums per 32) */
  gemv_q4_k(w: number, rows: number, cols: number, xq: number, xs: number, n: number, out: number, outStride: number): void;
  gemv_q6_k(w: number, rows: number, cols: number, xq: number, xs: number, n: number, out: number, outStride: number): void;
  quantise_q8_k(x: number, len: number, xq: number, xs: number, xsum: number): void;
  quantise_q8(x: number, len: number, xq: number, xs: number): void;
  /** x in place as llama.cpp's Q8_0 / Q8_1 activations (cpu/activations.ts) */
  round_q8(x: number, len: number): void;
  /** x in place as llama.cpp's Q8_K activations */
  round_q8_k(x: number, len: number): void;
  /** Q8_0 (kind 0) / Q4_0 (kind 1) rows as row octets (rows rounded up to 8 with zero rows) */
  octs_from_q(src: number, rows: number, cols: number, dst: number, kind: number): void;
  /** quantise_q8's x in tiles of 4 tokens for gemm_octs */
  tile_x(xq: number, xs: number, n: number, cols: number, xt: number, xst: number): void;
  /** row octets by x tiles; acc: 128 bytes of scratch */
  gemm_octs(w: number, rows: number, cols: number, xt: number, xst: number, n: number, out: number, outStride: number, acc: number): void;
  accumulate(dst: number, src: number, n: number): void;
  /** one token's nKV key and value rows (hd floats each, contiguous) into the cache (head g at + g *
   *  headStride bytes) and its page's key min/max (contiguous; set where first is 1) */
  kv_append(k: number, v: number, kd: number, vd: number, mn: number, mx: number, nKV: number, hd: number, headStride: number, first: number): void;
  rmsnorm(x: number, w: number, out: number, n: number, d: number, eps: number): void;
  glu(gate: number, up: number, n: number, act: number): void;
  gemm_f16(w: number, rows: number, cols: number, x: number, n: number, out: number, outStride: number): void;
  /** nq query heads of one KV head: out row j (stride outStride floats) = the heads' Quest scores of pages 0..np-1 */
  page_scores(q: number, nq: number, kmin: number, kmax: number, table: number, hd: number, np: number, stride: number, out: number, outStride: number, bf16: number): void;
  /** nq query heads sharing one KV head: q/out nq rows of hd; probs nq rows of n rounded up to 4 */
  attend(q: number, nq: number, kBase: number, vBase: number, table: number, pageStride: number, P: number, hd: number,
         tokens: number, n: number, scale: number, probs: number, out: number, bf16: number): void;
  /** causal prefill attention of R consecutive query rows x nq heads of one KV head: vector r * nq + j at
   *  q + r * qStride + j * hd * 4 (out likewise) sees tokens 0..count0 + r - 1; probs R * nq + 1 rows of
   *  (count0 + R - 1) rounded up to 4; bf16: 1 for a bf16 cache */
  attend_rows(q: number, nq: number, R: number, qStride: number, kBase: number, vBase: number, table: number, pageStride: number, P: number, hd: number,
              count0: number, scale: number, probs: number, out: number, bf16: number): void;
  /** attend over part of the tokens: tokens 0 means ids first..first+n-1; stats (not 0): per head [max, sum] */
  attend_part(q: number, nq: number, kBase: number, vBase: number, table: number, pageStride: number, P: number, hd: number,
              tokens: number, n: number, scale: number, probs: number, out: number, bf16: number, first: number, stats: number): void;
}

const PAGE = 65536;
const MAX_PAGES = 65536; // 4 GiB
const ALIGN = 64;
/** Leave headroom under 4 GiB so activations and caches still fit next to the weights. */
const WEIGHT_LIMIT = 3 * 2 ** 30;

function decodeBase64(s: string): Uint8Array<ArrayBuffer> {
  if (typeof Buffer !== "undefined") return new Uint8Array(Buffer.from(s, "base64"));
  const bin = atob(s); const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** The kernels with fused multiply-adds (relaxed SIMD), where this runtime has relaxed SIMD: Chrome and
 *  Node 22+ do; Node 20 has it behind a V8 flag, set here for the process (workers share it);
 *  QUEST_NO_FMA=1 keeps the plain kernels. Null: the plain kernels. */
function fusedKernels(): Uint8Array<ArrayBuffer> | null {
  const proc = (globalThis as { process?: { env: Record<string, string | undefined>; getBuiltinModule?: (id: string) => unknown } }).process;
  if (proc?.env.QUEST_NO_FMA === '1') return null;
  const bytes = decodeBase64(KERNELS_WASM_FMA_BASE64);
  if (WebAssembly.validate(bytes)) return bytes;
  const v8 = proc?.getBuiltinModule?.('node:v8') as { setFlagsFromString(flags: string): void } | undefined;
  if (!v8) return null;
  v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
  return WebAssembly.validate(bytes) ? bytes : null;
}

/** Node 20's V8 (11.x) compiles every call between wasm functions as a call (h2f, hsum in the inner
 *  loops); its wasm inlining is behind a flag, set here for the process before the kernels compile
 *  (decode products of SmolLM2-135M Q8_0: 7.5-9.3 -> 6.5-7.1 ms a token). Later V8s inline by default. */
function inlineWasmCalls(): void {
  const proc = (globalThis as { process?: { versions?: Record<string, string | undefined>; getBuiltinModule?: (id: string) => unknown } }).process;
  if (!proc?.versions?.v8?.startsWith('11.')) return;
  const v8 = proc.getBuiltinModule?.('node:v8') as { setFlagsFromString(flags: string): void } | undefined;
  v8?.setFlagsFromString('--experimental-wasm-inlining');
}

export class WasmRuntime {
  readonly memory: WebAssembly.Memory;
  readonly k: KernelExports;
  /** the compiled kernels' bytes, for workers to instantiate on the same memory */
  readonly moduleBytes: Uint8Array<ArrayBuffer>;
  /** whether the kernels are the variant with relaxed SIMD's fused multiply-adds */
  readonly fused: boolean;
  private top = 1024; // address 0 stays unused: it means "none" to the kernels
  private touched = 1024; // memory at and above this was never handed out: still zero from grow()
  private free: { ptr: number; size: number }[] = [];
  private buffers = new WeakSet<ArrayBufferLike>();
  private weightBytes = 0;
  private scratch = new Map<string, { ptr: number; size: number }>();

  constructor() {
    this.memory = new WebAssembly.Memory({ initial: 16, maximum: MAX_PAGES, shared: true });
    inlineWasmCalls();
    const fused = fusedKernels();
    this.fused = fused !== null;
    const bytes = fused ?? decodeBase64(KERNELS_WASM_BASE64);
    this.moduleBytes = bytes;
    const module = new WebAssembly.Module(bytes);
    this.k = new WebAssembly.Instance(module, { env: { memory: this.memory } }).exports as unknown as KernelExports;
    this.buffers.add(this.memory.buffer);
  }

  /** Whether a typed array's buffer is this memory (so the kernels can read it in place). */
  owns(a: ArrayBufferView): boolean { return this.buffers.has(a.buffer); }

  get buffer(): ArrayBufferLike { return this.memory.buffer; }

  /** Allocates `bytes` (64-byte aligned); -1 when the 4 GiB address space is exhausted. */
  alloc(bytes: number): number {
    const size = Math.ceil(Math.max(bytes, 1) / ALIGN) * ALIGN;
    for (let i = 0; i < this.free.length; i++) {
      const b = this.free[i];
      if (b.size >= size) {
        if (b.size - size >= ALIGN) { this.free[i] = { ptr: b.ptr + size, size: b.size - size }; } else this.free.splice(i, 1);
        return b.ptr;
      }
    }
    const end = this.top + size;
    if (end > MAX_PAGES * PAGE) return -1;
    const have = this.memory.buffer.byteLength;
    if (end > have) {
      try { this.memory.grow(Math.ceil((end - have) / PAGE)); } catch { return -1; }
      this.buffers.add(this.memory.buffer);
    }
    const ptr = this.top;
    this.top = end;
    this.touched = Math.max(this.touched, end);
    return ptr;
  }

  /** alloc() of zeroed memory: only what was handed out before is cleared (untouched pages stay
   *  untouched: a KV cache's unused capacity costs no page faults). */
  allocZeroed(bytes: number): number {
    const before = this.touched, ptr = this.alloc(bytes);
    if (ptr >= 0 && ptr < before) new Uint8Array(this.memory.buffer, ptr, Math.min(bytes, before - ptr)).fill(0);
    return ptr;
  }

  release(ptr: number, bytes: number): void {
    if (ptr <= 0) return;
    const size = Math.ceil(Math.max(bytes, 1) / ALIGN) * ALIGN;
    this.free.push({ ptr, size });
    // merge neighbours so freed KV caches can be reused by larger ones
    this.free.sort((a, b) => a.ptr - b.ptr);
    const merged: { ptr: number; size: number }[] = [];
    for (const b of this.free) {
      const last = merged[merged.length - 1];
      if (last && last.ptr + last.size === b.ptr) last.size += b.size; else merged.push({ ...b });
    }
    const tail = merged[merged.length - 1];
    if (tail && tail.ptr + tail.size === this.top) { this.top = tail.ptr; merged.pop(); }
    this.free = merged;
  }

  /** Room for model weights, or null when they should stay in ordinary memory. */
  allocWeights(bytes: number): Uint8Array | null {
    if (this.weightBytes + bytes > WEIGHT_LIMIT) return null;
    const ptr = this.alloc(bytes);
    if (ptr < 0) return null;
    this.weightBytes += bytes;
    return new Uint8Array(this.memory.buffer, ptr, bytes);
  }

  /** Returns a model file's space (LLM.dispose). */
  releaseWeights(bytes: Uint8Array): void {
    if (!this.owns(bytes)) return;
    this.release(bytes.byteOffset, bytes.byteLength);
    this.weightBytes -= bytes.byteLength;
  }

  f32(ptr: number, n: number): Float32Array { return new Float32Array(this.memory.buffer, ptr, n); }
  i32(ptr: number, n: number): Int32Array { return new Int32Array(this.memory.buffer, ptr, n); }

  /** A named scratch area of at least `bytes`, reused across calls (single-threaded use). */
  scratchPtr(name: string, bytes: number): number {
    const s = this.scratch.get(name);
    if (s && s.size >= bytes) return s.ptr;
    if (s) this.release(s.ptr, s.size);
    const size = Math.max(bytes, (s?.size ?? 0) * 2, 4096);
    const ptr = this.alloc(size);
    if (ptr < 0) throw new Error('out of WebAssembly memory for activations');
    this.scratch.set(name, { ptr, size });
    return ptr;
  }
}

let runtime: WasmRuntime | null | undefined;

/** The process-wide runtime, or null where WebAssembly SIMD / shared memory are unavailable
 *  (or QUEST_NO_WASM=1 asks for the TypeScript kernels). */
export function wasm(): WasmRuntime | null {
  if (runtime !== undefined) return runtime;
  const off = typeof process !== 'undefined' && process.env?.QUEST_NO_WASM === '1';
  try { runtime = off ? null : new WasmRuntime(); } catch { runtime = null; }
  return runtime;
}
