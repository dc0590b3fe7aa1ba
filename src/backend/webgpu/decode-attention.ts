// Decode attention on WebGPU for one layer: dense (flash-decoding, split over the sequence) and Quest
// (page scores from per-page key min/max, top-k page selection on the GPU, sparse attention over the
// selected pages). K/V pages and page metadata are f16 stored as packed u32 (no shader-f16 needed).
// GQA-aware: a workgroup reads each KV page once for all query heads of its group, and Quest selects
// one page set per KV group (scores summed over the group's heads, as on the CPU).
//
// Layouts (per layer):
//   k, v   : [page][kvHead][slot][hd/2] u32     meta: [page][kvHead][2][hd/2] u32 (min then max)
//   q      : [nH][hd] f32                       out : [nH][hd] f32

export interface AttnShape { nHeads: number; nKV: number; headDim: number; pageSize: number; maxPages: number }

const CHUNK_PAGES = 8; // pages per workgroup of the partial-attention kernel
const WG = 128;

const common = (s: AttnShape) => /* wgsl */ `
const NH: u32 = ${s.nHeads}u;
const NKV: u32 = ${s.nKV}u;
const G: u32 = ${s.nHeads / s.nKV}u;
const HD: u32 = ${s.headDim}u;
const HD2: u32 = ${s.headDim / 2}u;
const P: u32 = ${s.pageSize}u;
const CHUNK: u32 = ${CHUNK_PAGES}u;
const WG: u32 = ${WG}u;
struct Params { seqLen: u32, nPages: u32, k: u32, sparse: u32, scale: f32, nChunks: u32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<uniform> prm: Params;
`;

/** Kernel 1: Quest page scores, summed over the query heads of each KV group; current page forced.
 *  8 threads per page read its min/max rows as 16-byte words (coalesced) and reduce in workgroup memory. */
export const scoresWgsl = (s: AttnShape) => common(s) + /* wgsl */ `
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> pmeta: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;
var<workgroup> red: array<f32, 64>;
const W4: u32 = HD2 / 4u; // 16-byte words per min (or max) row
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let p = wid.x * 8u + lid.x / 8u; let lane = lid.x % 8u; let g = wid.y;
  var s = 0.0;
  if (p < prm.nPages) {
    let mb = (p * NKV + g) * 2u * W4;
    for (var i = lane; i < W4; i += 8u) {
      let mn4 = pmeta[mb + i]; let mx4 = pmeta[mb + W4 + i];
      for (var w = 0u; w < 4u; w++) {
        let mn = unpack2x16float(mn4[w]); let mx = unpack2x16float(mx4[w]); let ch = 2u * (4u * i + w);
        for (var j = 0u; j < G; j++) {
          let qb = (g * G + j) * HD + ch;
          let q2 = vec2<f32>(q[qb], q[qb + 1u]);
          let m = max(q2 * mx, q2 * mn);
          s += m.x + m.y;
        }
      }
    }
  }
  red[lid.x] = s;
  workgroupBarrier();
  for (var w = 4u; w > 0u; w >>= 1u) { if (lane < w) { red[lid.x] += red[lid.x + w]; } workgroupBarrier(); }
  if (lane == 0u && p < prm.nPages) {
    // the page of the current token is always kept
    scores[g * prm.nPages + p] = select(red[lid.x], 3.0e38, p == prm.nPages - 1u);
  }
}`;

/** Kernel 2: top-k pages per KV group by radix select (four 8-bit digits, a 256-bin histogram in
 *  workgroup memory per digit) on order-preserving u32 keys; no readback. */
export const topkWgsl = (s: AttnShape) => common(s) + /* wgsl */ `
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> sel: array<u32>;
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> prefix: u32;
var<workgroup> need: u32;
var<workgroup> taken: atomic<u32>;
var<workgroup> ties: atomic<u32>;
fn key(x: f32) -> u32 { let b = bitcast<u32>(x); return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u); }
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let g = wid.x; let n = prm.nPages; let base = g * n; let k = prm.k;
  if (lid.x == 0u) { prefix = 0u; need = k; atomicStore(&taken, 0u); atomicStore(&ties, 0u); }
  var mask = 0u;
  for (var digit = 0u; digit < 4u; digit++) {
    let shift = 24u - 8u * digit;
    atomicStore(&hist[lid.x], 0u);
    workgroupBarrier();
    let pre = prefix;
    for (var i = lid.x; i < n; i += 256u) {
      let kk = key(scores[base + i]);
      if ((kk & mask) == pre) { atomicAdd(&hist[(kk >> shift) & 255u], 1u); }
    }
    workgroupBarrier();
    if (lid.x == 0u) {
      // the digit where the count from the top reaches the k still needed
      var cum = 0u;
      for (var b = 255i; b >= 0i; b--) {
        let c = atomicLoad(&hist[u32(b)]);
        if (cum + c >= need) { prefix = pre | (u32(b) << shift); need = need - cum; break; }
        cum += c;
      }
    }
    mask |= 255u << shift;
    workgroupBarrier();
  }
  // prefix is now the k-th largest key: take everything above it, then ties up to k
  let t = prefix;
  for (var i = lid.x; i < n; i += 256u) {
    if (key(scores[base + i]) > t) { let o = atomicAdd(&taken, 1u); sel[g * k + o] = i; }
  }
  workgroupBarrier();
  let above = atomicLoad(&taken);
  for (var i = lid.x; i < n; i += 256u) {
    if (key(scores[base + i]) == t) { let o = atomicAdd(&ties, 1u); if (above + o < k) { sel[g * k + above + o] = i; } }
  }
}`;

/** Kernel 3: partial attention of one KV group over a chunk of pages (all pages, or the selected ones):
 *  per query head of the group, the chunk's max score, sum of exp and exp-weighted V. K and V rows are
 *  read as 16-byte words; every query head of the group uses each read. */
export const partialWgsl = (s: AttnShape) => common(s) + /* wgsl */ `
const HD8: u32 = HD / 8u;     // 16-byte words per K/V row
const SL: u32 = WG / HD8;     // token slices of the weighted-V phase
const NV: u32 = ${Math.ceil((CHUNK_PAGES * s.pageSize) / (WG / (s.headDim / 8)))}u; // V rows per thread
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kc: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> vc: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> sel: array<u32>;
@group(0) @binding(5) var<storage, read_write> part: array<f32>; // [nH][nChunks][2 + HD]
var<workgroup> qs: array<vec4<f32>, ${(s.nHeads / s.nKV) * s.headDim / 4}>;
var<workgroup> sc: array<f32, ${(s.nHeads / s.nKV) * CHUNK_PAGES * s.pageSize}>;
var<workgroup> pages: array<u32, ${CHUNK_PAGES}>;
var<workgroup> red: array<f32, ${WG * (s.nHeads / s.nKV)}>;
var<workgroup> vred: array<vec4<f32>, ${WG * 2}>; // [slice][HD / 4]
fn unpack8(w: vec4<u32>) -> array<vec4<f32>, 2> {
  return array<vec4<f32>, 2>(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)));
}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let c = wid.x; let g = wid.y; let tid = lid.x;
  for (var i = tid; i < G * HD / 4u; i += WG) { qs[i] = q[g * G * HD / 4u + i]; }
  if (tid < CHUNK) {
    let idx = c * CHUNK + tid;
    var p = 0xffffffffu;
    if (prm.sparse == 1u) { if (idx < prm.k) { p = sel[g * prm.k + idx]; } }
    else if (idx < prm.nPages) { p = idx; }
    pages[tid] = p;
  }
  workgroupBarrier();
  // scores: one token per thread per step, every query head of the group from one read of the key
  for (var t = tid; t < CHUNK * P; t += WG) {
    let p = pages[t / P]; let tok = p * P + (t % P);
    let valid = p != 0xffffffffu && tok < prm.seqLen;
    var acc: array<f32, G>;
    if (valid) {
      let kb = ((p * NKV + g) * P + (t % P)) * HD8;
      for (var i = 0u; i < HD8; i++) {
        let k8 = unpack8(kc[kb + i]);
        for (var j = 0u; j < G; j++) { acc[j] += dot(qs[(j * HD) / 4u + 2u * i], k8[0]) + dot(qs[(j * HD) / 4u + 2u * i + 1u], k8[1]); }
      }
    }
    for (var j = 0u; j < G; j++) { sc[j * CHUNK * P + t] = select(-3.0e38, acc[j] * prm.scale, valid); }
  }
  // the weighted-V phase's rows are requested now, so that their latency hides behind the softmax
  let w8i = tid % HD8; let sl = tid / HD8;
  var vv: array<vec4<u32>, NV>;
  for (var r = 0u; r < NV; r++) {
    let t = sl + r * SL;
    if (t < CHUNK * P) { let p = pages[t / P]; if (p != 0xffffffffu) { vv[r] = vc[((p * NKV + g) * P + (t % P)) * HD8 + w8i]; } }
  }
  workgroupBarrier();
  // softmax statistics of all heads of the group at once: one tree reduction for the maxima, one for the sums
  var mj: array<f32, G>;
  for (var j = 0u; j < G; j++) {
    mj[j] = -3.0e38;
    for (var t = tid; t < CHUNK * P; t += WG) { mj[j] = max(mj[j], sc[j * CHUNK * P + t]); }
    red[tid * G + j] = mj[j];
  }
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w /= 2u) {
    if (tid < w) { for (var j = 0u; j < G; j++) { red[tid * G + j] = max(red[tid * G + j], red[(tid + w) * G + j]); } }
    workgroupBarrier();
  }
  for (var j = 0u; j < G; j++) { mj[j] = red[j]; }
  workgroupBarrier();
  for (var j = 0u; j < G; j++) {
    var l = 0.0;
    for (var t = tid; t < CHUNK * P; t += WG) {
      let s = sc[j * CHUNK * P + t];
      let e = select(0.0, exp(s - mj[j]), s > -1.0e38);
      sc[j * CHUNK * P + t] = e; l += e;
    }
    red[tid * G + j] = l;
  }
  workgroupBarrier();
  for (var w = WG / 2u; w > 0u; w /= 2u) {
    if (tid < w) { for (var j = 0u; j < G; j++) { red[tid * G + j] += red[(tid + w) * G + j]; } }
    workgroupBarrier();
  }
  if (tid == 0u) { for (var j = 0u; j < G; j++) { let pb = ((g * G + j) * prm.nChunks + c) * (2u + HD); part[pb] = mj[j]; part[pb + 1u] = red[j]; } }
  workgroupBarrier();
  // weighted V: HD8 threads cover a row (one 16-byte word each), SL slices of the tokens run side by side
  var accA: array<vec4<f32>, G>; var accB: array<vec4<f32>, G>;
  for (var r = 0u; r < NV; r++) {
    let t = sl + r * SL;
    if (t >= CHUNK * P) { break; }
    let v8 = unpack8(vv[r]); // rows of missing pages are zero, and so are their weights
    for (var j = 0u; j < G; j++) { let e = sc[j * CHUNK * P + t]; accA[j] += e * v8[0]; accB[j] += e * v8[1]; }
  }
  for (var j = 0u; j < G; j++) {
    vred[sl * (HD / 4u) + 2u * w8i] = accA[j]; vred[sl * (HD / 4u) + 2u * w8i + 1u] = accB[j];
    workgroupBarrier();
    let pb = ((g * G + j) * prm.nChunks + c) * (2u + HD);
    for (var d = tid; d < HD / 4u; d += WG) {
      var sum = vec4<f32>(0.0);
      for (var k = 0u; k < SL; k++) { sum += vred[k * (HD / 4u) + d]; }
      part[pb + 2u + 4u * d] = sum.x; part[pb + 3u + 4u * d] = sum.y; part[pb + 4u + 4u * d] = sum.z; part[pb + 5u + 4u * d] = sum.w;
    }
    workgroupBarrier();
  }
}`;

/** Kernel 4: combine the chunks' partial softmax (flash-decoding reduction). */
export const reduceWgsl = (s: AttnShape) => common(s) + /* wgsl */ `
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(${Math.min(256, s.headDim)})
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let h = wid.x;
  for (var d = lid.x; d < HD; d += ${Math.min(256, s.headDim)}u) {
    var M = -3.0e38;
    for (var c = 0u; c < prm.nChunks; c++) { M = max(M, part[(h * prm.nChunks + c) * (2u + HD)]); }
    var L = 0.0; var o = 0.0;
    for (var c = 0u; c < prm.nChunks; c++) {
      let pb = (h * prm.nChunks + c) * (2u + HD);
      let w = select(0.0, exp(part[pb] - M), part[pb + 1u] > 0.0);
      L += part[pb + 1u] * w; o += part[pb + 2u + d] * w;
    }
    out[h * HD + d] = o / L;
  }
}`;

export interface LayerBuffers { k: GPUBuffer; v: GPUBuffer; meta: GPUBuffer }

/** Pipelines and scratch for decode attention of one shape; `encode` records one call into a pass. */
export class DecodeAttention {
  private readonly pipes: Record<'scores' | 'topk' | 'partial' | 'reduce', GPUComputePipeline>;
  readonly q: GPUBuffer; readonly out: GPUBuffer;
  private readonly scores: GPUBuffer; private readonly sel: GPUBuffer; private readonly part: GPUBuffer;
  private readonly params: GPUBuffer[] = [];
  private paramIndex = 0;
  // Bind groups are cached per (uniform slot, layer, kernel) and never dropped: dawn.node has been seen
  // to crash when the garbage collector finalises GPU objects while work is in flight.
  private readonly groups = new Map<string, GPUBindGroup>();
  private readonly layerIds = new WeakMap<LayerBuffers, number>();
  private layerCount = 0;

  /** `io`: the q and out buffers to use (the decoder's activations) instead of own ones. */
  constructor(readonly device: GPUDevice, readonly s: AttnShape, maxSelectedPages: number, io?: { q: GPUBuffer; out: GPUBuffer }) {
    if (s.nHeads % s.nKV !== 0 || s.headDim % 8 !== 0) throw new Error(`decode attention needs query heads a multiple of KV heads and a head dim that is a multiple of 8 (got ${s.nHeads}/${s.nKV}, ${s.headDim})`);
    const mk = (code: string) => device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
    this.pipes = { scores: mk(scoresWgsl(s)), topk: mk(topkWgsl(s)), partial: mk(partialWgsl(s)), reduce: mk(reduceWgsl(s)) };
    const buf = (size: number, usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST) => device.createBuffer({ size: Math.max(16, size), usage });
    this.q = io?.q ?? buf(s.nHeads * s.headDim * 4); this.out = io?.out ?? buf(s.nHeads * s.headDim * 4);
    this.scores = buf(s.nKV * s.maxPages * 4); this.sel = buf(s.nKV * Math.max(1, maxSelectedPages) * 4);
    const maxChunks = Math.ceil(s.maxPages / CHUNK_PAGES);
    this.part = buf(s.nHeads * maxChunks * (2 + s.headDim) * 4);
  }

  /** Bytes of one layer's K, V and metadata buffers for `pages` pages. */
  static layerBytes(s: AttnShape, pages: number) {
    const kv = pages * s.nKV * s.pageSize * (s.headDim / 2) * 4;
    return { kv, meta: pages * s.nKV * s.headDim * 4 };
  }

  /** Uniforms are written ahead of a batch of encodes (each encode uses its own buffer). */
  private last = '';
  private paramsFor(seqLen: number, k: number, sparse: boolean, scale: number): { buf: GPUBuffer; slot: number } {
    // the layers of one decode step share their parameters: reuse the slot just written
    const key = `${seqLen}:${k}:${sparse}`;
    if (this.paramIndex > 0 && key === this.last) return { buf: this.params[this.paramIndex - 1], slot: this.paramIndex - 1 };
    this.last = key;
    const nPages = Math.ceil(seqLen / this.s.pageSize);
    const nChunks = Math.ceil((sparse ? k : nPages) / CHUNK_PAGES);
    if (this.paramIndex >= this.params.length) this.params.push(this.device.createBuffer({ size: 32, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST }));
    const b = this.params[this.paramIndex++];
    const data = new ArrayBuffer(32), u = new Uint32Array(data), f = new Float32Array(data);
    u[0] = seqLen; u[1] = nPages; u[2] = k; u[3] = sparse ? 1 : 0; f[4] = scale; u[5] = nChunks;
    this.device.queue.writeBuffer(b, 0, data);
    return { buf: b, slot: this.paramIndex - 1 };
  }

  /** Starts a new batch of encodes (uniform buffers are reused from the start). */
  resetBatch(): void { this.paramIndex = 0; this.last = ''; }

  /** Records one decode-attention call. budgetPages = 0 (or >= the page count): dense. */
  encode(pass: GPUComputePassEncoder, layer: LayerBuffers, seqLen: number, budgetPages: number): void {
    const s = this.s, nPages = Math.ceil(seqLen / s.pageSize);
    if (nPages > s.maxPages) throw new Error(`sequence of ${seqLen} tokens exceeds the ${s.maxPages} pages allocated`);
    const sparse = budgetPages > 0 && budgetPages < nPages;
    const k = sparse ? budgetPages : nPages;
    const { buf: prm, slot } = this.paramsFor(seqLen, k, sparse, 1 / Math.sqrt(s.headDim));
    if (!this.layerIds.has(layer)) this.layerIds.set(layer, ++this.layerCount);
    const lid = this.layerIds.get(layer)!;
    const bind = (pipe: GPUComputePipeline, bufs: GPUBuffer[]) => {
      const key = `${slot}:${lid}:${pipe === this.pipes.scores ? 's' : pipe === this.pipes.topk ? 't' : pipe === this.pipes.partial ? 'p' : 'r'}`;
      let g = this.groups.get(key);
      if (!g) {
        g = this.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [prm, ...bufs].map((buffer, binding) => ({ binding, resource: { buffer } })) });
        this.groups.set(key, g);
      }
      return g;
    };
    if (sparse) {
      pass.setPipeline(this.pipes.scores); pass.setBindGroup(0, bind(this.pipes.scores, [this.q, layer.meta, this.scores]));
      pass.dispatchWorkgroups(Math.ceil(nPages / 8), s.nKV);
      pass.setPipeline(this.pipes.topk); pass.setBindGroup(0, bind(this.pipes.topk, [this.scores, this.sel]));
      pass.dispatchWorkgroups(s.nKV);
    }
    const nChunks = Math.ceil(k / CHUNK_PAGES);
    pass.setPipeline(this.pipes.partial); pass.setBindGroup(0, bind(this.pipes.partial, [this.q, layer.k, layer.v, this.sel, this.part]));
    pass.dispatchWorkgroups(nChunks, s.nKV);
    pass.setPipeline(this.pipes.reduce); pass.setBindGroup(0, bind(this.pipes.reduce, [this.part, this.out]));
    pass.dispatchWorkgroups(s.nHeads);
  }

  /** Reads the selected page ids of the last sparse call (tests). */
  async readSelection(k: number): Promise<Uint32Array> { return new Uint32Array(await readBuffer(this.device, this.sel, this.s.nKV * k * 4)); }
}

export async function readBuffer(device: GPUDevice, src: GPUBuffer, size: number): Promise<ArrayBuffer> {
  const dst = device.createBuffer({ size, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
  const enc = device.createCommandEncoder();
  enc.copyBufferToBuffer(src, 0, dst, 0, size);
  device.queue.submit([enc.finish()]);
  await dst.mapAsync(GPUMapMode.READ);
  const out = dst.getMappedRange().slice(0);
  dst.unmap(); dst.destroy();
  return out;
}
