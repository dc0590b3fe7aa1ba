// Kernels for the attention policies that plan on the CPU (StreamingLLM, H2O, TOVA, the oracles): the
// policy decides on the CPU which tokens each query head reads (the plan), the GPU reads them (the run).
//  - tokenListAttentionWgsl: decode attention of each query head over its own list of tokens, leaving
//    the softmax weights behind for the policies that watch them (H2O, TOVA);
//  - exactScoresWgsl: q·k·scale of every query head against every token (the oracles' selection);
//  - receivedRowsWgsl + receivedColsWgsl: the attention each token received from a chunk of queries
//    (summed over the queries), which H2O starts from after a dense prefill.
// These serve evaluations: one workgroup per head and plain loops, not the tuned streaming of
// decode-attention.ts. K/V pages are f16 pairs in u32 ([page][kvHead][slot][hd/2]), read through the
// sequence's page table. References: test/webgpu-planned.test.ts (float64).

export interface PlannedShape { nHeads: number; nKV: number; headDim: number; pageSize: number }

const WG = 128;

const shapeWgsl = (s: PlannedShape) => /* wgsl */ `
const NH: u32 = ${s.nHeads}u;
const NKV: u32 = ${s.nKV}u;
const G: u32 = ${s.nHeads / s.nKV}u;
const HD: u32 = ${s.headDim}u;
const HD2: u32 = ${s.headDim / 2}u;
const P: u32 = ${s.pageSize}u;
const WG: u32 = ${WG}u;
// the first u32 (a pair of f16 channels) of token t's row of KV head g
fn rowOf(t: u32, g: u32) -> u32 { return ((table[t / P] * NKV + g) * P + t % P) * HD2; }
`;

function checkShape(s: PlannedShape): void {
  if (s.headDim % 2 !== 0 || s.headDim > 2 * WG || s.nHeads % s.nKV !== 0) throw new Error(`planned attention needs an even head dim up to ${2 * WG} and query heads a multiple of KV heads (got ${s.headDim}, ${s.nHeads}/${s.nKV})`);
}

/** Per-call values of the token-list attention: where the layer's per-head list headers start in
 *  `lists`, the batch row of q and out, and the softmax scale. */
export const listParams = (header: number, row: number, scale: number): ArrayBuffer => {
  const b = new ArrayBuffer(16);
  new Uint32Array(b, 0, 2).set([header, row]);
  new Float32Array(b, 8, 1)[0] = scale;
  return b;
};

/**
 * out[h] = softmax(q_h·K_Lᵀ·scale) · V_L over the tokens L of head h's list; probs[h][i] keeps the
 * weight of the list's i-th token. `lists` holds, from `header`, (token offset, count, probs offset) per
 * head, and the token ids at those offsets. One workgroup per query head.
 */
export function tokenListAttentionWgsl(s: PlannedShape): string {
  checkShape(s);
  return /* wgsl */ `
struct Params { header: u32, row: u32, scale: f32, pad: u32 }
@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<u32>;
@group(0) @binding(3) var<storage, read> vc: array<u32>;
@group(0) @binding(4) var<storage, read> table: array<u32>;
@group(0) @binding(5) var<storage, read> lists: array<u32>;
@group(0) @binding(6) var<storage, read_write> probs: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;
${shapeWgsl(s)}
var<workgroup> qs: array<f32, HD>;
var<workgroup> red: array<f32, WG>;
var<workgroup> acc: array<vec2<f32>, WG>;
@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let h = wid.x; let g = h / G; let tid = lid.x;
  let hb = prm.header + 3u * h; let off = lists[hb]; let cnt = lists[hb + 1u]; let po = lists[hb + 2u];
  let qo = (prm.row * NH + h) * HD;
  for (var d = tid; d < HD; d += WG) { qs[d] = q[qo + d] * prm.scale; }
  workgroupBarrier();
  // scores, and their maximum
  var mx = -3.0e38;
  for (var i = tid; i < cnt; i += WG) {
    let b = rowOf(lists[off + i], g);
    var sc = 0.0;
    for (var w = 0u; w < HD2; w++) { let k = unpack2x16float(kc[b + w]); sc += qs[2u * w] * k.x + qs[2u * w + 1u] * k.y; }
    probs[po + i] = sc; mx = max(mx, sc);
  }
  red[tid] = mx;
  workgroupBarrier();
  for (var o = WG / 2u; o > 0u; o >>= 1u) { if (tid < o) { red[tid] = max(red[tid], red[tid + o]); } workgroupBarrier(); }
  let M = red[0];
  workgroupBarrier();
  var sum = 0.0;
  for (var i = tid; i < cnt; i += WG) { let e = exp(probs[po + i] - M); probs[po + i] = e; sum += e; }
  red[tid] = sum;
  workgroupBarrier();
  for (var o = WG / 2u; o > 0u; o >>= 1u) { if (tid < o) { red[tid] += red[tid + o]; } workgroupBarrier(); }
  let inv = 1.0 / red[0];
  for (var i = tid; i < cnt; i += WG) { probs[po + i] *= inv; }
  storageBarrier();
  workgroupBarrier();
  // weighted V: a lane per channel pair, PARTS threads per lane over interleaved tokens
  let PARTS = WG / HD2; let lane = tid % HD2; let part = tid / HD2;
  var a = vec2<f32>(0.0);
  if (part < PARTS) {
    for (var i = part; i < cnt; i += PARTS) { a += probs[po + i] * unpack2x16float(vc[rowOf(lists[off + i], g) + lane]); }
  }
  acc[tid] = a;
  workgroupBarrier();
  if (tid < HD2) {
    var t = vec2<f32>(0.0);
    for (var r = 0u; r < PARTS; r++) { t += acc[r * HD2 + tid]; }
    out[qo + 2u * tid] = t.x; out[qo + 2u * tid + 1u] = t.y;
  }
}`;
}

/** scores[h][t] = q_h·k_t·scale for t < n (n and the row of q in `prm`). Dispatch (ceil(n / 64), nHeads). */
export function exactScoresWgsl(s: PlannedShape): string {
  checkShape(s);
  return /* wgsl */ `
struct Params { n: u32, row: u32, scale: f32, pad: u32 }
@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<u32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;
${shapeWgsl(s)}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x; let h = gid.y;
  if (t >= prm.n) { return; }
  let qo = (prm.row * NH + h) * HD; let b = rowOf(t, h / G);
  var sc = 0.0;
  for (var w = 0u; w < HD2; w++) { let k = unpack2x16float(kc[b + w]); sc += q[qo + 2u * w] * k.x + q[qo + 2u * w + 1u] * k.y; }
  scores[h * prm.n + t] = sc * prm.scale;
}`;
}

/** Per-call values of the received-attention kernels: the chunk's first position and size, the row
 *  stride of q (its rows are the qkv rows of a prefill, or decode rows of q alone), the layer's offset
 *  into `received` ([layer][head][cap]) and cap, the softmax scale. */
export const receivedParams = (start: number, n: number, qStride: number, layerOffset: number, cap: number, scale: number): ArrayBuffer => {
  const b = new ArrayBuffer(32);
  new Uint32Array(b, 0, 5).set([start, n, qStride, layerOffset, cap]);
  new Float32Array(b, 20, 1)[0] = scale;
  return b;
};

const RECEIVED_PARAMS = /* wgsl */ `
struct Params { start: u32, n: u32, qStride: u32, layer: u32, cap: u32, scale: f32, pad0: u32, pad1: u32 }
@group(0) @binding(0) var<uniform> prm: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<u32>;
`;

/** Row statistics of a chunk's causal attention: lse[h][i] = log Σ_{t ≤ start+i} exp(q_i·k_t·scale).
 *  Dispatch (n, nHeads), a workgroup per query row and head. */
export function receivedRowsWgsl(s: PlannedShape): string {
  checkShape(s);
  return RECEIVED_PARAMS + /* wgsl */ `
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
${shapeWgsl(s)}
var<workgroup> rm: array<f32, WG>;
var<workgroup> rl: array<f32, WG>;
@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let i = wid.x; let h = wid.y; let tid = lid.x; let g = h / G;
  let qo = i * prm.qStride + h * HD; let last = prm.start + i;
  var m = -3.0e38; var l = 0.0;
  for (var t = tid; t <= last; t += WG) {
    let b = rowOf(t, g);
    var sc = 0.0;
    for (var w = 0u; w < HD2; w++) { let k = unpack2x16float(kc[b + w]); sc += q[qo + 2u * w] * k.x + q[qo + 2u * w + 1u] * k.y; }
    sc *= prm.scale;
    let mn = max(m, sc); l = l * exp(m - mn) + exp(sc - mn); m = mn;
  }
  rm[tid] = m; rl[tid] = l;
  workgroupBarrier();
  for (var o = WG / 2u; o > 0u; o >>= 1u) {
    if (tid < o) {
      let m2 = rm[tid + o]; let mn = max(rm[tid], m2);
      rl[tid] = rl[tid] * exp(rm[tid] - mn) + rl[tid + o] * exp(m2 - mn); rm[tid] = mn;
    }
    workgroupBarrier();
  }
  if (tid == 0u) { lse[h * prm.n + i] = rm[0] + log(rl[0]); }
}`;
}

/** received[layer][h][t] += Σ_i softmax_i(t) over the chunk's queries i that see token t (from the row
 *  statistics). Dispatch (ceil((start + n) / 64), nHeads), a thread per token. */
export function receivedColsWgsl(s: PlannedShape): string {
  checkShape(s);
  return RECEIVED_PARAMS + /* wgsl */ `
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> received: array<f32>;
${shapeWgsl(s)}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let t = gid.x; let h = gid.y;
  if (t >= prm.start + prm.n) { return; }
  let b = rowOf(t, h / G);
  var sum = 0.0;
  for (var i = select(0u, t - prm.start, t > prm.start); i < prm.n; i++) {
    let qo = i * prm.qStride + h * HD;
    var sc = 0.0;
    for (var w = 0u; w < HD2; w++) { let k = unpack2x16float(kc[b + w]); sc += q[qo + 2u * w] * k.x + q[qo + 2u * w + 1u] * k.y; }
    sum += exp(sc * prm.scale - lse[h * prm.n + i]);
  }
  let at = prm.layer + h * prm.cap + t;
  received[at] += sum;
}`;
}
