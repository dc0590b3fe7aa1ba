// WGSL kernels of the decoder on WebGPU, one generator per kernel. Sizes that do not change within a
// model are baked in as constants (pipelines are specialised per shape); what changes per forward call
// (start position, token count) comes from one small `Step` uniform, so bind groups never change.
//
// Weights are stored as packed u32 (no shader-f16 needed):
//   f16  : [rows][cols] halves, two per u32
//   q8_0 : int8 values, four per u32, plus one f32 scale per 32 values
//   q4_0 : 4-bit values (stored value + 8), eight per u32 in column order, plus one f32 scale per 32
//   q4_1 : 4-bit codes as q4_0, plus an f32 (scale, min) per 32 (value = scale * code + min): Q4_K, Q4_1
//   q8_16: int8 codes as q8_0, plus an f32 (scale, min) per 16: every other llama.cpp type (Q6_K, Q5_K,
//          Q3_K, Q2_K, Q5_0/1, IQ4), and fused matrices of mixed types (model/quants.ts affineGroups)

export type GpuWeightType = 'f16' | 'q8_0' | 'q4_0' | 'q4_1' | 'q8_16';

/** Whether a type's scales buffer holds (scale, min) pairs. */
export const hasMins = (t: GpuWeightType) => t === 'q4_1' || t === 'q8_16';
/** The declaration of the scales binding for type t. */
export const scalesDecl = (t: GpuWeightType, binding: number) => `@group(0) @binding(${binding}) var<storage, read> ws: array<${hasMins(t) ? 'vec2<f32>' : 'f32'}>;`;
const I8X4_WGSL = 'fn i8x4(u: u32) -> vec4<f32> { return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(u << 24u, u << 16u, u << 8u, u)) >> vec4<u32>(24u)); }';

/** Workgroups for `threads` threads of a 64-wide 1-D kernel, as a 2-D grid when over the per-dimension limit. */
export function grid64(threads: number): [number, number] {
  const groups = Math.max(1, Math.ceil(threads / 64)), x = Math.min(groups, 65535);
  return [x, Math.ceil(groups / x)];
}

/** Entry point of the 64-wide 1-D kernels: `gid.x` is the thread index over a grid64() dispatch. */
const MAIN_1D = `@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let gid = vec3<u32>(g3.x + g3.y * nwg.x * 64u, 0u, 0u); // 2-D grids past 65535 workgroups`;

export const STEP_WGSL = /* wgsl */ `
struct Step { start: u32, n: u32, total: u32, pad: u32 }
`;

/** `w8(r, k)`: weights r, k..k+7 as f32 (k % 8 == 0). Bindings `wd` (data) and `ws` (scales). */
export function weightAccess(t: GpuWeightType, K: number, binding: number): string {
  // (auto layouts hold only the bindings a shader uses, so the f16 variant declares no scales)
  const scales = t === 'f16' ? '' : scalesDecl(t, binding + 1);
  const head = `struct W8 { a: vec4<f32>, b: vec4<f32> }\nconst K: u32 = ${K}u;\n`;
  switch (t) {
    case 'f16': return head + `@group(0) @binding(${binding}) var<storage, read> wd: array<vec4<u32>>;\n${scales}
fn w8(r: u32, k: u32) -> W8 {
  let u = wd[(r * K + k) / 8u];
  return W8(vec4<f32>(unpack2x16float(u.x), unpack2x16float(u.y)), vec4<f32>(unpack2x16float(u.z), unpack2x16float(u.w)));
}`;
    case 'q8_0': return head + `@group(0) @binding(${binding}) var<storage, read> wd: array<vec2<u32>>;\n${scales}
fn i8x4(u: u32) -> vec4<f32> { return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(u << 24u, u << 16u, u << 8u, u)) >> vec4<u32>(24u)); }
fn w8(r: u32, k: u32) -> W8 {
  let i = r * K + k; let u = wd[i / 8u]; let s = ws[i / 32u];
  return W8(i8x4(u.x) * s, i8x4(u.y) * s);
}`;
    case 'q4_0': return head + `@group(0) @binding(${binding}) var<storage, read> wd: array<u32>;\n${scales}
fn nib4(u: u32) -> vec4<f32> { return vec4<f32>(vec4<u32>(u, u >> 4u, u >> 8u, u >> 12u) & vec4<u32>(15u)) - 8.0; }
fn w8(r: u32, k: u32) -> W8 {
  let i = r * K + k; let u = wd[i / 8u]; let s = ws[i / 32u];
  return W8(nib4(u) * s, nib4(u >> 16u) * s);
}`;
    case 'q4_1': return head + `@group(0) @binding(${binding}) var<storage, read> wd: array<u32>;\n${scales}
fn nib4(u: u32) -> vec4<f32> { return vec4<f32>(vec4<u32>(u, u >> 4u, u >> 8u, u >> 12u) & vec4<u32>(15u)); }
fn w8(r: u32, k: u32) -> W8 {
  let i = r * K + k; let u = wd[i / 8u]; let s = ws[i / 32u];
  return W8(nib4(u) * s.x + s.y, nib4(u >> 16u) * s.x + s.y);
}`;
    case 'q8_16': return head + `@group(0) @binding(${binding}) var<storage, read> wd: array<vec2<u32>>;\n${scales}
${I8X4_WGSL}
fn w8(r: u32, k: u32) -> W8 {
  let i = r * K + k; let u = wd[i / 8u]; let s = ws[i / 16u];
  return W8(i8x4(u.x) * s.x + s.y, i8x4(u.y) * s.x + s.y);
}`;
  }
}

export interface LinearSpec {
  type: GpuWeightType; N: number; K: number; add: boolean; bias: boolean;
  /** computed on the input as it is loaded (x-stationary kernel only): RMSNorm with weight `nw`
   *  (binding 5) and `eps`, or SwiGLU of a [gate | up] input of 2K values per token */
  prologue?: { kind: 'rmsnorm'; eps: number } | { kind: 'glu'; act: GluAct };
  /** tensor-core many-token products only: x is stored as f16 (half the bytes each workgroup reads) */
  xHalf?: boolean;
}

/** The gate's activation of a gated feed-forward: SiLU (SwiGLU) or GELU in its tanh form (GeGLU, Gemma). */
export type GluAct = 'silu' | 'gelu';
/** act(g) * u as WGSL (g a plain name: it is repeated). GELU's 0.5 (1 + tanh(z)) is written as the
 *  sigmoid of 2z, like SiLU's, so that a large |g| gives 0 or g and never inf / inf. */
export const gluExpr = (act: GluAct, g: string, u: string) => act === 'gelu'
  ? `${g} / (1.0 + exp(-1.5957691216057308 * (${g} + 0.044715 * ${g} * ${g} * ${g}))) * ${u}`
  : `${g} / (1.0 + exp(-${g})) * ${u}`;

export const linearOut = (s: LinearSpec, idx: string, row: string, v: string) =>
  `{ let o = ${idx}; let val = ${v}${s.bias ? ` + bias[${row}]` : ''}; y[o] = ${s.add ? 'y[o] + val' : 'val'}; }`;

/** y[t][N] (=|+=) W[N][K] · x[t][K] (+ bias), for a few tokens t (wid.y): 8 rows per workgroup, a
 *  32-thread slice per row striding over K with 16-byte loads (up to eight in flight per thread), reduced by a
 *  subgroup sum where subgroups are 32 wide, else in workgroup memory. */
export const linearVecWgsl = (s: LinearSpec, subgroups = false) => (subgroups ? 'enable subgroups;\n' : '') + weightAccess(s.type, s.K, 2) + /* wgsl */ `
const N: u32 = ${s.N}u;
const U: u32 = K / 8u; // 8-weight units per row
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
${subgroups ? '' : 'var<workgroup> red: array<f32, 256>;'}
fn unit(r: u32, u: u32, xb: u32) -> f32 { let w = w8(r, u * 8u); return dot(w.a, x[xb + 2u * u]) + dot(w.b, x[xb + 2u * u + 1u]); }
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let r = wid.x * 8u + lid.x / 32u; let lane = lid.x % 32u; let xb = wid.y * (K / 4u);
  var acc = 0.0;
  if (r < N) {
    var u = lane;
    for (; u + 224u < U; u += 256u) {
      let a0 = unit(r, u, xb); let a1 = unit(r, u + 32u, xb); let a2 = unit(r, u + 64u, xb); let a3 = unit(r, u + 96u, xb);
      let a4 = unit(r, u + 128u, xb); let a5 = unit(r, u + 160u, xb); let a6 = unit(r, u + 192u, xb); let a7 = unit(r, u + 224u, xb);
      acc += ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    }
    for (; u + 96u < U; u += 128u) { acc += unit(r, u, xb) + unit(r, u + 32u, xb) + unit(r, u + 64u, xb) + unit(r, u + 96u, xb); }
    for (; u < U; u += 32u) { acc += unit(r, u, xb); }
  }
${subgroups ? `  acc = subgroupAdd(acc);
  if (lane == 0u && r < N) ${linearOut(s, 'wid.y * N + r', 'r', 'acc')}` : `  red[lid.x] = acc;
  workgroupBarrier();
  for (var s = 16u; s > 0u; s >>= 1u) { if (lane < s) { red[lid.x] += red[lid.x + s]; } workgroupBarrier(); }
  if (lane == 0u && r < N) ${linearOut(s, 'wid.y * N + r', 'r', 'red[lid.x]')}`}
}`;

/** Output rows per workgroup of linearThreadWgsl. */
export const THREAD_ROWS = 64;

/** y[t][N] (=|+=) W[N][K] · x[t][K] (+ bias), for a few tokens t (wid.y): one thread per output row, walking
 *  its whole row, with no workgroup memory and no barriers. Slow on a GPU (a warp's loads are 32 rows
 *  apart), but what a CPU adapter (SwiftShader, lavapipe) runs best: there a workgroup's threads are
 *  emulated, and a barrier makes the emulation switch between every one of them (about a millisecond for
 *  a 256-thread workgroup), which made a decode step of the default model take seconds. */
export const linearThreadWgsl = (s: LinearSpec) => weightAccess(s.type, s.K, 2) + /* wgsl */ `
const N: u32 = ${s.N}u;
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
@compute @workgroup_size(${THREAD_ROWS})
fn main(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let r = wid.x * ${THREAD_ROWS}u + lid; let xb = wid.y * (K / 4u);
  if (r >= N) { return; }
  var acc = 0.0;
  for (var k = 0u; k < K; k += 8u) { let w = w8(r, k); acc += dot(w.a, x[xb + k / 4u]) + dot(w.b, x[xb + k / 4u + 1u]); }
  ${linearOut(s, 'wid.y * N + r', 'r', 'acc')}
}`;

/** Rows per thread set of linearRowsWgsl (Q4_0 with float x: 4; its 32 weights per load hold 32 floats
 *  of x in registers, and more rows per thread set read that x fewer times; with int8 x, 2; measured on
 *  an H100). */
export const LINEAR_ROWS = 2;
export const linearRowsFor = (t: GpuWeightType, xq = false) => ((t === 'q4_0' || t === 'q4_1') && !xq ? 4 : LINEAR_ROWS);

/** Weights per 16-byte load of the x-stationary kernel: 8 f16, 16 int8 (half a Q8_0 block, plus its
 *  scale), 32 nibbles (a whole Q4_0 block, plus its scale). Wide loads are what reach the bandwidth. */
export const unitWeights = (t: GpuWeightType) => (t === 'f16' ? 8 : t === 'q8_0' || t === 'q8_16' ? 16 : 32);

/** Threads that split one row's K in linearRowsWgsl (a power of two, 32..256) and row sets per workgroup.
 *  Fewer threads per row where the last round of units would leave many idle (Q4_0 K = 11008: 344 units
 *  fill 67% of 2 x 256 threads, 90% of 3 x 128). */
export function rowsLayout(K: number, R = LINEAR_ROWS, type: GpuWeightType = 'f16') {
  const U = K / unitWeights(type), use = (tpr: number) => U / (tpr * Math.ceil(U / tpr));
  let TPR = Math.min(256, Math.max(32, 2 ** Math.ceil(Math.log2(U))));
  while (TPR > 32 && use(TPR) < 0.85 && use(TPR / 2) > use(TPR)) TPR /= 2;
  return { U, TPR, S: 256 / TPR, UPT: Math.ceil(U / TPR), rowsPerGroup: (256 / TPR) * R };
}

/** The dot product of one 16-byte unit of row \`row\` (unit u) with x registers xr[i * V ..]. */
function unitDot(t: GpuWeightType): string {
  const x = (j: number) => `xr[i * V + ${j}u]`;
  switch (t) {
    case 'f16': return `let w = wd[row * U + u];
      let d = dot(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), ${x(0)}) + dot(vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)), ${x(1)});`;
    case 'q8_0': return `let w = wd[row * U + u]; let sc = ws[(row * U + u) / 2u];
      let d = sc * (dot(i8x4(w.x), ${x(0)}) + dot(i8x4(w.y), ${x(1)}) + dot(i8x4(w.z), ${x(2)}) + dot(i8x4(w.w), ${x(3)}));`;
    case 'q4_0': return `let w = wd[row * U + u]; let sc = ws[row * U + u];
      let d = sc * (q4dot(w.x, ${x(0)}, ${x(1)}) + q4dot(w.y, ${x(2)}, ${x(3)}) + q4dot(w.z, ${x(4)}, ${x(5)}) + q4dot(w.w, ${x(6)}, ${x(7)}) - 8.0 * xs[i]);`;
    case 'q4_1': return `let w = wd[row * U + u]; let sm = ws[row * U + u];
      let d = sm.x * (q4dot(w.x, ${x(0)}, ${x(1)}) + q4dot(w.y, ${x(2)}, ${x(3)}) + q4dot(w.z, ${x(4)}, ${x(5)}) + q4dot(w.w, ${x(6)}, ${x(7)})) + sm.y * xs[i];`;
    case 'q8_16': return `let w = wd[row * U + u]; let sm = ws[row * U + u];
      let d = sm.x * (dot(i8x4(w.x), ${x(0)}) + dot(i8x4(w.y), ${x(1)}) + dot(i8x4(w.z), ${x(2)}) + dot(i8x4(w.w), ${x(3)})) + sm.y * xs[i];`;
  }
}

/** Q4_0 block times the int8-quantised x of the same 32 columns (xe/xo: even/odd columns of each word):
 *  8 integer 4-way dot products instead of 32 nibble conversions and float multiply-adds. */
const q4IntDot = (t: GpuWeightType) => `let w = wd[row * U + u]; let sc = ws[row * U + u];
      let lo = w & vec4<u32>(0x0f0f0f0fu); let hi = (w >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);
      let e = xe[i]; let o = xo[i];
      let id = (dot4I8Packed(lo.x, e.x) + dot4I8Packed(hi.x, o.x)) + (dot4I8Packed(lo.y, e.y) + dot4I8Packed(hi.y, o.y))
             + (dot4I8Packed(lo.z, e.z) + dot4I8Packed(hi.z, o.z)) + (dot4I8Packed(lo.w, e.w) + dot4I8Packed(hi.w, o.w));
      ${t === 'q4_1' ? 'let d = xd[i] * (sc.x * f32(id) + sc.y * f32(xs8[i] / 8)); // (code * scale + min; xs8: 8 x the sum of the int8 x)'
    : 'let d = sc * xd[i] * f32(id - xs8[i]);'}`;

/** The thread's units of a quantised x (quantiseXWgsl's layout) into registers. */
const q4LoadXq = (unit: string) => `  var xe: array<vec4<u32>, UPT>; var xo: array<vec4<u32>, UPT>; var xd: array<f32, UPT>; var xs8: array<i32, UPT>;
  for (var i = 0u; i < UPT; i++) {
    let u = wid.y * U * 3u + 3u * (${unit});
    xe[i] = x[u]; xo[i] = x[u + 1u]; let m = x[u + 2u]; xd[i] = bitcast<f32>(m.x); xs8[i] = bitcast<i32>(m.y);
  }
`;

/** q8_16 units (16 columns) times the quantised x in column order (quantiseXWgsl natural): one half of an
 *  x block per unit; the group's min multiplies the int8 sum of that half. */
const q8LoadXq = (unit: string) => `  var xw: array<vec4<u32>, UPT>; var xd: array<f32, UPT>; var xs16: array<i32, UPT>;
  for (var i = 0u; i < UPT; i++) {
    let u = ${unit}; let b = wid.y * (U / 2u) * 3u + 3u * (u / 2u); let h = u % 2u;
    xw[i] = x[b + h]; let m = x[b + 2u]; xd[i] = bitcast<f32>(m.x); xs16[i] = bitcast<i32>(select(m.z, m.w, h == 1u));
  }
`;
const Q8_INT_DOT = `let w = wd[row * U + u]; let sm = ws[row * U + u]; let e = xw[i];
      let id = (dot4I8Packed(w.x, e.x) + dot4I8Packed(w.y, e.y)) + (dot4I8Packed(w.z, e.z) + dot4I8Packed(w.w, e.w));
      let d = xd[i] * (sm.x * f32(id) + sm.y * f32(xs16[i]));`;

/** Vec4<u32> words per token of a quantised x of K columns (quantiseXWgsl). */
export const quantisedXWords = (K: number) => (K / 32) * 3;

/** Threads of a quantiseXWgsl workgroup (one 8-column word each). */
const QX_THREADS = 256;

/** quantiseXWgsl's grid for `rows` tokens of K columns. */
export const quantiseXGrid = (K: number, rows: number): [number, number] => [Math.ceil(K / 8 / QX_THREADS), rows];

/** x (after RMSNorm or SwiGLU, as the product's prologue would compute it) quantised to int8 per block of
 *  32 columns with one scale each, as llama.cpp does for its quantised products; read by Q4_0 products
 *  with integer dot products (linearRowsWgsl's xq). Per block three vec4<u32>: the even columns of each
 *  8-column word as bytes, the odd ones (the order of a Q4_0 word's low and high nibbles), then (scale
 *  as f32 bits, 8 x the sum of the int8 values: the nibbles' +8 offset, the sums of the first and of the
 *  second 16 values). `natural`: the first two vec4s hold the 32 values in column order instead (int8
 *  weights, q8_16). A thread per 8-column word, four to a block, meeting in workgroup memory for the
 *  block's maximum and sums; for RMSNorm each workgroup sums the squares of the whole row itself (no second
 *  pass), its loads issued all at once. (A thread per block, as before, ran each decode-step call for
 *  10.7-15.8 µs: one thread's 24 loads in a row, on 2-6 workgroups.) Grid: quantiseXGrid. */
export const quantiseXWgsl = (K: number, prologue?: LinearSpec['prologue'], natural = false) => {
  const loads = Math.ceil(K / 4 / QX_THREADS);
  // (the row's squares: every load first, then the sum, so that they are in flight together)
  const squares = Array.from({ length: loads }, (_, i) => {
    const at = `lid.x + ${i * QX_THREADS}u`;
    return (i + 1) * QX_THREADS <= K / 4 ? `  let s${i} = x[xb + ${at}];` : `  var s${i} = vec4<f32>(0.0); if (${at} < K / 4u) { s${i} = x[xb + ${at}]; }`;
  }).join('\n');
  return /* wgsl */ `
const K: u32 = ${K}u;
const NB: u32 = K / 32u;
const WG: u32 = ${QX_THREADS}u;
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> xq: array<u32>;
${prologue?.kind === 'rmsnorm' ? '@group(0) @binding(2) var<storage, read> nw: array<vec4<f32>>;' : ''}
var<workgroup> red: array<f32, WG>;
var<workgroup> amaxes: array<f32, WG>;
var<workgroup> sums: array<i32, WG>;
@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let word = wid.x * WG + lid.x; let tok = wid.y; let b = word / 4u; let w = word % 4u;
  let xb = tok * ${prologue?.kind === 'glu' ? '2u * ' : ''}(K / 4u);
${prologue?.kind === 'rmsnorm' ? `${squares}
  red[lid.x] = ${Array.from({ length: loads }, (_, i) => `dot(s${i}, s${i})`).join(' + ')};
  workgroupBarrier();
  for (var h = WG / 2u; h > 0u; h >>= 1u) { if (lid.x < h) { red[lid.x] += red[lid.x + h]; } workgroupBarrier(); }
  let inv = inverseSqrt(red[0] / f32(K) + ${prologue.eps.toExponential()});` : ''}
  let live = word < K / 8u;
  let at = xb + 2u * min(word, K / 8u - 1u);
  ${prologue?.kind === 'glu' ? `let g0 = x[at]; let g1 = x[at + 1u];
  let v0 = ${gluExpr(prologue.act, 'g0', 'x[at + K / 4u]')}; let v1 = ${gluExpr(prologue.act, 'g1', 'x[at + K / 4u + 1u]')};`
    : prologue?.kind === 'rmsnorm' ? `let n = 2u * min(word, K / 8u - 1u);
  let v0 = x[at] * inv * nw[n]; let v1 = x[at + 1u] * inv * nw[n + 1u];` : 'let v0 = x[at]; let v1 = x[at + 1u];'}
  let a = max(abs(v0), abs(v1));
  amaxes[lid.x] = max(max(a.x, a.y), max(a.z, a.w));
  workgroupBarrier();
  let first = lid.x & ~3u;
  let m = max(max(amaxes[first], amaxes[first + 1u]), max(amaxes[first + 2u], amaxes[first + 3u]));
  let sc = select(127.0 / m, 0.0, m == 0.0);
  let p = vec4<i32>(round(v0 * sc)); let q = vec4<i32>(round(v1 * sc));
  let t = p + q;
  sums[lid.x] = t.x + t.y + t.z + t.w;
  workgroupBarrier();
  if (!live) { return; }
  let dst = (tok * NB + b) * 12u;
  ${natural ? 'xq[dst + 2u * w] = pack4xI8(p); xq[dst + 2u * w + 1u] = pack4xI8(q);'
    : 'xq[dst + w] = pack4xI8(vec4<i32>(p.x, p.z, q.x, q.z)); xq[dst + 4u + w] = pack4xI8(vec4<i32>(p.y, p.w, q.y, q.w));'}
  if (w == 0u) {
    let lo = sums[first] + sums[first + 1u]; let hi = sums[first + 2u] + sums[first + 3u];
    xq[dst + 8u] = bitcast<u32>(m / 127.0); xq[dst + 9u] = bitcast<u32>(8 * (lo + hi));
    xq[dst + 10u] = bitcast<u32>(lo); xq[dst + 11u] = bitcast<u32>(hi);
  }
}`;
};

export interface RowsOptions {
  subgroups?: boolean;
  /** rows per thread set */
  rows?: number;
  /** (Q4_0, q4_1) x comes quantised to int8 (quantiseXWgsl) and blocks are integer dot products */
  xq?: boolean;
  /** grid (tokens, row blocks) instead of (row blocks, tokens): a batched step's tokens go fastest, so the
   *  workgroups that read the same weight rows for different tokens run side by side (L2) */
  tokensFirst?: boolean;
}

/** The constants of the kernels whose thread sets split K into 16-byte units of R rows. */
const rowSetConsts = (s: LinearSpec, c: { U: number; V: number; TPR: number; S: number; UPT: number; R: number }) => /* wgsl */ `
const N: u32 = ${s.N}u;
const K: u32 = ${s.K}u;
const U: u32 = ${c.U}u;     // 16-byte units of weights per row
const V: u32 = ${c.V}u;     // vec4s of x per unit
const TPR: u32 = ${c.TPR}u; // threads per row set
const S: u32 = ${c.S}u;     // row sets per workgroup
const UPT: u32 = ${c.UPT}u; // units per thread
const R: u32 = ${c.R}u;     // rows per set`;

/** y[t][N] (=|+=) W[N][K] · x[t][K] (+ bias) for a few tokens t (wid.y), "x-stationary": a set of TPR
 *  threads splits K into 16-byte units of weights, each thread loads its units' slice of x into
 *  registers once and then streams the same columns of R rows (R x UPT independent 16-byte loads per
 *  thread, TPR x 16 bytes contiguous per row and step); the R sums are reduced across the set at the
 *  end. 256 / TPR sets per workgroup. */
export const linearRowsWgsl = (s: LinearSpec, o: RowsOptions = {}) => {
  const { subgroups = false, rows: R = LINEAR_ROWS, xq = false, tokensFirst = false } = o;
  if (xq && ((s.type !== 'q4_0' && s.type !== 'q4_1' && s.type !== 'q8_16') || s.prologue)) throw new Error('linearRowsWgsl: a quantised x is for q4_0 / q4_1 / q8_16 products without a prologue');
  if (R > 8) throw new Error(`linearRowsWgsl: at most 8 rows per thread set (got ${R})`);
  const { U, TPR, S, UPT } = rowsLayout(s.K, R, s.type), full = U % TPR === 0, pro = s.prologue;
  const V = unitWeights(s.type) / 4;
  const unit = full ? 't + i * TPR' : 'min(t + i * TPR, U - 1u)';
  // x into registers, with the prologue (without xq)
  const xSection = () => `  var xr: array<vec4<f32>, ${UPT * V}>;
  for (var i = 0u; i < UPT; i++) {
    // (no branches: columns past K read the last unit and are zeroed, so lanes stay converged)
    let u = ${unit};
    for (var j = 0u; j < V; j++) {
      ${pro?.kind === 'glu' ? `let gt = x[xb + V * u + j]; xr[i * V + j] = ${gluExpr(pro.act, 'gt', 'x[xb + K / 4u + V * u + j]')};`
        : 'xr[i * V + j] = x[xb + V * u + j];'}
      ${full ? '' : 'xr[i * V + j] = select(vec4<f32>(0.0), xr[i * V + j], t + i * TPR < U);'}
    }
  }
${pro?.kind === 'rmsnorm' ? `  // RMSNorm of the token's x: sum of squares over the thread set, then scale the slice in registers
  var ss = 0.0;
  for (var i = 0u; i < UPT * V; i++) { ss += dot(xr[i], xr[i]); }
${subgroups ? `  ss = subgroupAdd(ss);
  if (tid % 32u == 0u) { nred[tid / 32u] = ss; }
  workgroupBarrier();
  var tot = 0.0;
  for (var w = 0u; w < TPR / 32u; w++) { tot += nred[rs * (TPR / 32u) + w]; }` : `  nred[tid] = ss;
  workgroupBarrier();
  for (var w = TPR / 2u; w > 0u; w >>= 1u) { if (t < w) { nred[tid] += nred[tid + w]; } workgroupBarrier(); }
  let tot = nred[rs * TPR];`}
  let inv = inverseSqrt(tot / f32(K) + ${pro.eps.toExponential()});
  for (var i = 0u; i < UPT; i++) {
    let u = ${unit};
    for (var j = 0u; j < V; j++) { xr[i * V + j] *= inv * nw[V * u + j]; }
  }
` : ''}${s.type === 'q4_0' || s.type === 'q4_1' ? `  // per unit: the sum of its x (the nibbles' offset), then x scaled by 16^-j for the in-place nibbles
  var xs: array<f32, UPT>;
  for (var i = 0u; i < UPT; i++) {
    for (var j = 0u; j < V; j++) { xs[i] += dot(xr[i * V + j], vec4<f32>(1.0)); xr[i * V + j] *= vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625); }
  }
` : s.type === 'q8_16' ? `  // per unit: the sum of its x (what the group's offset multiplies)
  var xs: array<f32, UPT>;
  for (var i = 0u; i < UPT; i++) { for (var j = 0u; j < V; j++) { xs[i] += dot(xr[i * V + j], vec4<f32>(1.0)); } }
` : ''}`;
  // (written with wid.x the row block and wid.y the token, then renamed for the grid's order)
  return (subgroups ? 'enable subgroups;\n' : '') + rowSetConsts(s, { U, V, TPR, S, UPT, R }) + (/* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<vec4<${xq ? 'u32' : 'f32'}>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> wd: array<vec4<u32>>;
${s.type === 'f16' ? '' : scalesDecl(s.type, 3)}
${(s.type === 'q8_0' || s.type === 'q8_16') && !xq ? I8X4_WGSL : ''}
${(s.type === 'q4_0' || s.type === 'q4_1') && !xq ? `// 8 nibbles times x, without integer-to-float conversions (a quarter-rate instruction, and 32 of them per
// 16 bytes made this product compute-bound): each nibble is masked in place (n * 16^j) and made a float
// by the 2^23 trick; x was scaled by 16^-j to match, and the -8 offset is -8 * (sum of the block's x).
const NIB = vec4<u32>(0xfu, 0xf0u, 0xf00u, 0xf000u);
fn q4dot(u: u32, a: vec4<f32>, b: vec4<f32>) -> f32 {
  let lo = bitcast<vec4<f32>>((vec4<u32>(u) & NIB) | vec4<u32>(0x4b000000u)) - 8388608.0;
  let hi = bitcast<vec4<f32>>((vec4<u32>(u >> 16u) & NIB) | vec4<u32>(0x4b000000u)) - 8388608.0;
  return dot(lo, a) + dot(hi, b);
}` : ''}
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
${subgroups ? 'var<workgroup> red: array<f32, 8u * R>;' : 'var<workgroup> red: array<f32, 256u * R>;\nvar<workgroup> red2: array<f32, 32u * R>;'}
${pro?.kind === 'rmsnorm' ? `@group(0) @binding(5) var<storage, read> nw: array<vec4<f32>>;\nvar<workgroup> nred: array<f32, ${subgroups ? 8 : 256}>;` : ''}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) g3: vec3<u32>) {
  let blk = g3.${tokensFirst ? 'y' : 'x'}; let tok = g3.${tokensFirst ? 'x' : 'y'};
  let tid = lid.x; let rs = tid / TPR; let t = tid % TPR;
  let xb = wid.y * (${pro?.kind === 'glu' ? '2u * ' : ''}K / 4u);
  let r0 = (wid.x * S + rs) * R;

${xq ? (s.type === 'q8_16' ? q8LoadXq(unit) : q4LoadXq(unit)) : xSection()}  var acc: array<f32, R>;
  for (var r = 0u; r < R; r++) {
    let row = min(r0 + r, N - 1u); // rows past N repeat the last one; they are not written
    for (var i = 0u; i < UPT; i++) {
      let u = ${unit};
      ${xq ? (s.type === 'q8_16' ? Q8_INT_DOT : q4IntDot(s.type)) : unitDot(s.type)}
      acc[r] += ${full ? 'd' : 'select(0.0, d, t + i * TPR < U)'};
    }
  }
${subgroups ? `  // warp sums, then the TPR / 32 warps of a set
  for (var r = 0u; r < R; r++) { acc[r] = subgroupAdd(acc[r]); }
  if (tid % 32u == 0u) { for (var r = 0u; r < R; r++) { red[(tid / 32u) * R + r] = acc[r]; } }
  workgroupBarrier();
  if (tid < S * R) {
    let st = tid / R; let r = tid % R; let row = (wid.x * S + st) * R + r;
    var sum = 0.0;
    for (var w = 0u; w < TPR / 32u; w++) { sum += red[(st * (TPR / 32u) + w) * R + r]; }
    if (row < N) ${linearOut(s, 'wid.y * N + row', 'row', 'sum')}
  }` : `  // red[r][set][t] -> sums of 8 -> one sum per (row, set)
  for (var r = 0u; r < R; r++) { red[r * 256u + tid] = acc[r]; }
  workgroupBarrier();
  if (tid < 32u * R) {
    var v = 0.0;
    for (var i = 0u; i < 8u; i++) { v += red[tid * 8u + i]; }
    red2[tid] = v;
  }
  workgroupBarrier();
  if (tid < S * R) {
    let r = tid / S; let st = tid % S; let row = (wid.x * S + st) * R + r;
    var sum = 0.0;
    for (var i = 0u; i < TPR / 8u; i++) { sum += red2[(r * S + st) * (TPR / 8u) + i]; }
    if (row < N) ${linearOut(s, 'wid.y * N + row', 'row', 'sum')}
  }`}
}`).replaceAll('wid.x', 'blk').replaceAll('wid.y', 'tok');
};

/** Output tile of the prefill product: tokens x weight rows (the grid is ceil(N / 128) x ceil(rows / 64)). */
export const MAT_TILE = { tokens: 64, rows: 128 } as const;

/** The same product for many tokens (prefill): 64-token x 128-row output tiles, 16-wide K steps through
 *  workgroup memory stored k-major as vec4s (a thread's 4 tokens and 2 x 4 rows are three 16-byte reads
 *  per k), 4 x 8 outputs per thread in named vec4 accumulators (an accumulator array indexed in loops
 *  would live in local memory). Rows past the chunk's tokens compute garbage that nobody reads
 *  (activation buffers are padded to 64 rows). */
export const linearMatWgsl = (s: LinearSpec) => {
  const acc = [0, 1, 2, 3].flatMap((i) => [0, 1].map((h) => `a${i}${h}`));
  const comp = ['x', 'y', 'z', 'w'];
  return weightAccess(s.type, s.K, 2) + /* wgsl */ `
const N: u32 = ${s.N}u;
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
var<workgroup> xs: array<vec4<f32>, 256>; // [16 k][16 quads of tokens]
var<workgroup> wt: array<vec4<f32>, 512>; // [16 k][32 quads of weight rows]
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let t0 = wid.y * 64u; let o0 = wid.x * 128u; let tx = lid.x % 16u; let ty = lid.x / 16u;
${acc.map((v) => `  var ${v} = vec4<f32>(0.0);`).join('\n')}
  // this thread's share of each K step: 4 k of one token, 8 k of one weight row
  let xr = lid.x / 4u; let xc = lid.x % 4u; let o = lid.x / 2u; let half = lid.x % 2u;
  for (var k0 = 0u; k0 < K; k0 += 16u) {
    let xv = x[((t0 + xr) * K + k0) / 4u + xc];
${[0, 1, 2, 3].map((c) => `    xs[(xc * 4u + ${c}u) * 16u + xr / 4u][xr % 4u] = xv.${comp[c]};`).join('\n')}
    var w = W8(vec4<f32>(0.0), vec4<f32>(0.0));
    if (o0 + o < N) { w = w8(o0 + o, k0 + half * 8u); }
${[0, 1, 2, 3, 4, 5, 6, 7].map((c) => `    wt[(half * 8u + ${c}u) * 32u + o / 4u][o % 4u] = w.${c < 4 ? 'a' : 'b'}.${comp[c % 4]};`).join('\n')}
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      let t = xs[kk * 16u + ty]; let b0 = wt[kk * 32u + tx]; let b1 = wt[kk * 32u + 16u + tx];
${[0, 1, 2, 3].map((i) => `      a${i}0 += t.${comp[i]} * b0; a${i}1 += t.${comp[i]} * b1;`).join('\n')}
    }
    workgroupBarrier();
  }
  // token t0 + 4 ty + i; weight rows o0 + 4 tx + j and o0 + 64 + 4 tx + j
${[0, 1, 2, 3].flatMap((i) => [0, 1].flatMap((h) => [0, 1, 2, 3].map((j) =>
    `  { let col = o0 + ${h * 64}u + tx * 4u + ${j}u; let row = t0 + ty * 4u + ${i}u; if (col < N) ${linearOut(s, 'row * N + col', 'col', `a${i}${h}.${comp[j]}`)} }`))).join('\n')}
}`;
};

/** Embedding rows of the chunk's tokens (dequantised like any weight), times `scale` (Gemma: sqrt(dim)). */
export const embedWgsl = (type: GpuWeightType, dim: number, scale = 1) => weightAccess(type, dim, 2) + STEP_WGSL + /* wgsl */ `
@group(0) @binding(0) var<storage, read> tokens: array<u32>;
@group(0) @binding(1) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> step: Step;
${MAIN_1D}
  let units = K / 8u; let i = gid.x / units; let u = gid.x % units;
  if (i >= step.n) { return; }
  let w = w8(tokens[i], u * 8u);${scale === 1 ? '' : `
  let s = ${scale.toPrecision(9)};`}
  x[(i * K) / 4u + 2u * u] = w.a${scale === 1 ? '' : ' * s'}; x[(i * K) / 4u + 2u * u + 1u] = w.b${scale === 1 ? '' : ' * s'};
}`;

/** The factor of the low half of an activation split into two f16s (x ≈ hi + lo / X_LO_SCALE). */
export const X_LO_SCALE = 2048;
/** An f32 split into two f16s for the tensor-core products: hi = x rounded to f16 (clamped to its range),
 *  lo = the remainder times 2^11, so hi + lo·2^-11 keeps ~22 of x's 24 bits (the remainder alone would
 *  mostly fall below f16's normal range). A row of K such values is stored as [K hi][K lo]. */
export const SPLIT_F16_WGSL = `
fn splitF16(v: f32) -> vec2<f16> {
  let c = clamp(v, -65504.0, 65504.0);
  // hi: c rounded to f16's 11 significant bits on its bit pattern (written as f32(f16(c)), the remainder
  // came out as zero on NVIDIA's Vulkan driver: the round trip folded away)
  let h = bitcast<f32>((bitcast<u32>(c) + 0x1000u) & 0xffffe000u);
  return vec2<f16>(f16(h), f16((c - h) * ${X_LO_SCALE}.0));
}`;

/** How a kernel writes the input of the products after it: f32; as split f16 rows (SPLIT_F16_WGSL: a
 *  batched step's tensor-core products); as f16 (a prefill chunk's tensor-core products, which round
 *  their input to f16 anyway: the same values, half the bytes each workgroup reads). */
export type ProductInput = 'f32' | 'split' | 'f16';
/** The output line of a kernel that writes `v` (f32) as row `row`'s element `i` of rows of `n` in `out`. */
const writeInput = (mode: ProductInput, out: string, row: string, n: string, i: string, v: string) => (mode === 'split'
  ? `let sv = splitF16(${v}); ${out}[${row} * 2u * ${n} + ${i}] = sv.x; ${out}[${row} * 2u * ${n} + ${n} + ${i}] = sv.y;`
  : `${out}[${row} * ${n} + ${i}] = ${mode === 'f16' ? `f16(${v})` : v};`);
/** RMSNorm of each row (or, with `last`, of the chunk's last row only, written as row 0); `add`: added
 *  to out instead of written (Gemma 3's post-norms, applied to a sublayer's output before the residual);
 *  `mode`: how the output is stored (ProductInput; not with `add`). */
export const rmsnormWgsl = (dim: number, eps: number, last: boolean, add = false, mode: ProductInput = 'f32') => (mode !== 'f32' ? 'enable f16;\n' : '') + STEP_WGSL + /* wgsl */ `
const D: u32 = ${dim}u;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<${mode !== 'f32' ? 'f16' : 'f32'}>;
${last ? '@group(0) @binding(3) var<uniform> step: Step;' : ''}
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let row = ${last ? 'step.n - 1u' : 'wid.x'}; let orow = ${last ? '0u' : 'wid.x'};
  var ss = 0.0;
  for (var i = lid.x; i < D; i += 256u) { let v = x[row * D + i]; ss += v * v; }
  red[lid.x] = ss;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) { if (lid.x < s) { red[lid.x] += red[lid.x + s]; } workgroupBarrier(); }
  let inv = inverseSqrt(red[0] / f32(D) + ${eps.toExponential()});
  for (var i = lid.x; i < D; i += 256u) {
    ${add ? 'out[orow * D + i] = out[orow * D + i] + x[row * D + i] * inv * w[i];' : writeInput(mode, 'out', 'orow', 'D', 'i', 'x[row * D + i] * inv * w[i]')}
  }
}${mode === 'split' ? SPLIT_F16_WGSL : ''}`;

/** (ropeDims: the channels of a head that RoPE rotates, default all) */
export interface HeadsSpec { nHeads: number; nKV: number; headDim: number; pageSize: number; ropeDims?: number }
const heads = (s: HeadsSpec) => `
const NH: u32 = ${s.nHeads}u; const NKV: u32 = ${s.nKV}u; const G: u32 = ${s.nHeads / s.nKV}u;
const HD: u32 = ${s.headDim}u; const HD2: u32 = ${s.headDim / 2}u; const P: u32 = ${s.pageSize}u;
const RD2: u32 = ${(s.ropeDims ?? s.headDim) / 2}u; // rotated pairs (the channels past 2 * RD2 pass through)
const QKV: u32 = ${(s.nHeads + 2 * s.nKV) * s.headDim}u;
`;

/** RoPE on the q and k heads of each token's fused qkv row, in place; cos/sin from a table that the CPU
 *  filled in float64 (every scaling variant is in the table). */
export const ropeWgsl = (s: HeadsSpec, neox: boolean) => STEP_WGSL + heads(s) + /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> rope: array<vec2<f32>>; // [pos][HD2] (cos, sin)
@group(0) @binding(2) var<uniform> step: Step;
${MAIN_1D}
  let per = (NH + NKV) * HD2; let i = gid.x / per; let r = gid.x % per; let h = r / HD2; let p = r % HD2;
  if (i >= step.n || p >= RD2) { return; }
  let cs = rope[(step.start + i) * HD2 + p];
  let b = i * QKV + h * HD;
  let a = b + ${neox ? 'p' : '2u * p'}; let c = b + ${neox ? 'p + RD2' : '2u * p + 1u'};
  let x0 = qkv[a]; let x1 = qkv[c];
  qkv[a] = x0 * cs.x - x1 * cs.y; qkv[c] = x0 * cs.y + x1 * cs.x;
}`;

/** Decode step (one token), in one pass: RoPE of q (into `qr`) and k, the token's k and v (f16) into
 *  the paged cache (its page through the sequence's page table), and the page's key min/max updated
 *  (set at the page's first slot). A thread owns one channel pair (2j, 2j + 1) of one head, so every
 *  u32 it writes is its own. `batched`: one decode step of each of several sequences (`rows`), their
 *  page tables side by side in `table`. */
export const ropeAppendWgsl = (s: HeadsSpec, neox: boolean, batched = false) => STEP_WGSL + heads(s) + /* wgsl */ `
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> rope: array<vec2<f32>>; // [pos][HD2] (cos, sin)
@group(0) @binding(2) var<storage, read_write> qr: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<u32>;
@group(0) @binding(4) var<storage, read_write> vc: array<u32>;
@group(0) @binding(5) var<storage, read_write> pmeta: array<u32>; // [page][kvHead][min, max][HD2]
@group(0) @binding(6) var<uniform> step: Step;${batched ? ' // (n: the rows of the batch)' : ''}
@group(0) @binding(7) var<storage, read> table: array<u32>; // physical page of each logical page${batched ? `
struct Row { pos: u32, row: u32, tableAt: u32, pad: u32 } // a sequence of the batch: its position, its row of qkv / q, its page table in \`table\`
@group(0) @binding(8) var<storage, read> rows: array<Row>;` : ''}
fn getMeta(i: u32) -> u32 { return pmeta[i]; }
fn setMeta(i: u32, v: u32) { pmeta[i] = v; }
${ropeAppendThreadWgsl(neox)}
${MAIN_1D}
${batched ? `  let per = (NH + 2u * NKV) * HD2; let bi = gid.x / per;
  if (bi >= step.n) { return; }
  let R = rows[bi]; ropeAppendThread((gid.x % per) / HD2, gid.x % HD2, R.pos, R.row, R.tableAt);`
  : `  if (gid.x / HD2 >= NH + 2u * NKV) { return; }
  ropeAppendThread(gid.x / HD2, gid.x % HD2, step.start, 0u, 0u);`}
}`;

/** WGSL: rot(b, c, pos), channel c of the rotated head that starts at b of \`qkv\` (cos/sin from \`rope\`),
 *  and ropeAppendThread(h, j, pos, row, tab), one thread of a decode step's RoPE + KV append: channel pair
 *  j of head h (a query head's into \`qr\`; a key's into \`kc\` with its page's min/max through
 *  getMeta / setMeta, which the kernel defines over its \`pmeta\`; a value's into \`vc\`) for the token at
 *  \`pos\` of qkv row \`row\`, its page through the table at \`tab\`. Shared by ropeAppendWgsl and the
 *  fused RoPE + append + Quest scores kernel (decode-attention.ts). */
export const ropeAppendThreadWgsl = (neox: boolean) => /* wgsl */ `fn rot(b: u32, c: u32, pos: u32) -> f32 {
  if (c >= 2u * RD2) { return qkv[b + c]; }
${neox ? `  let p = c % RD2; let cs = rope[pos * HD2 + p]; let x0 = qkv[b + p]; let x1 = qkv[b + p + RD2];
  return select(x0 * cs.x - x1 * cs.y, x0 * cs.y + x1 * cs.x, c >= RD2);`
  : `  let p = c / 2u; let cs = rope[pos * HD2 + p]; let x0 = qkv[b + 2u * p]; let x1 = qkv[b + 2u * p + 1u];
  return select(x0 * cs.x - x1 * cs.y, x0 * cs.y + x1 * cs.x, (c & 1u) == 1u);`}
}
fn ropeAppendThread(h: u32, j: u32, pos: u32, row: u32, tab: u32) {
  let b = row * QKV + h * HD;
  if (h < NH) { let o = row * NH * HD + h * HD; qr[o + 2u * j] = rot(b, 2u * j, pos); qr[o + 2u * j + 1u] = rot(b, 2u * j + 1u, pos); return; }
  let g = (h - NH) % NKV; let page = table[tab + pos / P]; let slot = pos % P;
  let dst = ((page * NKV + g) * P + slot) * HD2 + j;
  if (h >= NH + NKV) { vc[dst] = pack2x16float(vec2<f32>(qkv[b + 2u * j], qkv[b + 2u * j + 1u])); return; }
  let k = pack2x16float(vec2<f32>(rot(b, 2u * j, pos), rot(b, 2u * j + 1u, pos)));
  kc[dst] = k;
  // min/max of the stored (f16) keys
  let k2 = unpack2x16float(k); let mb = (page * NKV + g) * 2u * HD2;
  var mn = k2; var mx = k2;
  if (slot > 0u) { mn = min(mn, unpack2x16float(getMeta(mb + j))); mx = max(mx, unpack2x16float(getMeta(mb + HD2 + j))); }
  setMeta(mb + j, pack2x16float(mn)); setMeta(mb + HD2 + j, pack2x16float(mx));
}`;

/** Qwen3: each query and key head of the first step.n rows of qkv RMS-normalised in place, with the
 *  query-head weights nw[0..HD) or the key-head ones nw[HD..2HD) (before RoPE). A thread per head. */
export const headNormWgsl = (s: HeadsSpec, eps: number) => STEP_WGSL + heads(s) + /* wgsl */ `
@group(0) @binding(0) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> nw: array<f32>;
@group(0) @binding(2) var<uniform> step: Step;
${MAIN_1D}
  let row = gid.x / (NH + NKV); let h = gid.x % (NH + NKV);
  if (row >= step.n) { return; }
  let b = row * QKV + h * HD; let w = select(0u, HD, h >= NH);
  var ss = 0.0;
  for (var i = 0u; i < HD; i++) { let v = qkv[b + i]; ss += v * v; }
  let inv = inverseSqrt(ss / f32(HD) + ${eps.toExponential()});
  for (var i = 0u; i < HD; i++) { qkv[b + i] = qkv[b + i] * inv * nw[w + i]; }
}`;

/** Appends the chunk's k and v (f16) to the paged cache. */
export const kvAppendWgsl = (s: HeadsSpec) => STEP_WGSL + heads(s) + /* wgsl */ `
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read_write> kc: array<u32>;
@group(0) @binding(2) var<storage, read_write> vc: array<u32>;
@group(0) @binding(3) var<uniform> step: Step;
@group(0) @binding(4) var<storage, read> table: array<u32>; // physical page of each logical page
${MAIN_1D}
  let per = NKV * HD2; let i = gid.x / per; let r = gid.x % per; let g = r / HD2; let j = r % HD2;
  if (i >= step.n) { return; }
  let pos = step.start + i;
  let dst = ((table[pos / P] * NKV + g) * P + pos % P) * HD2 + j;
  let kb = i * QKV + NH * HD + g * HD + 2u * j; let vb = kb + NKV * HD;
  kc[dst] = pack2x16float(vec2<f32>(qkv[kb], qkv[kb + 1u]));
  vc[dst] = pack2x16float(vec2<f32>(qkv[vb], qkv[vb + 1u]));
}`;

/** min/max of channel pair j of KV head g over the first \`filled\` slots of physical page \`page\`. */
const PAGE_META_FN = /* wgsl */ `fn pageMeta(page: u32, filled: u32, g: u32, j: u32) {
  var mn = vec2<f32>(3.0e38); var mx = vec2<f32>(-3.0e38);
  for (var t = 0u; t < filled; t++) {
    let k2 = unpack2x16float(kc[((page * NKV + g) * P + t) * HD2 + j]);
    mn = min(mn, k2); mx = max(mx, k2);
  }
  let mb = (page * NKV + g) * 2u * HD2;
  pmeta[mb + j] = pack2x16float(mn); pmeta[mb + HD2 + j] = pack2x16float(mx);
}`;

/** Recomputes the key min/max of the pages the chunk touched (over their filled slots); logical pages
 *  through the page table. */
export const kvMetaWgsl = (s: HeadsSpec) => STEP_WGSL + heads(s) + /* wgsl */ `
@group(0) @binding(0) var<storage, read> kc: array<u32>;
@group(0) @binding(1) var<storage, read_write> pmeta: array<u32>; // [page][kvHead][min, max][HD2]
@group(0) @binding(2) var<uniform> step: Step;
@group(0) @binding(3) var<storage, read> table: array<u32>; // physical page of each logical page
${PAGE_META_FN}
${MAIN_1D}
  let per = NKV * HD2; let lp = step.start / P + gid.x / per; let r = gid.x % per; let g = r / HD2; let j = r % HD2;
  if (lp * P >= step.total) { return; }
  pageMeta(table[lp], min(P, step.total - lp * P), g, j);
}`;

/** Recomputes the key min/max of one physical page over its first \`filled\` slots (a page copied for a
 *  sequence that writes to it, or one rewound): step.start is the page, step.n the slots. */
export const pageMetaWgsl = (s: HeadsSpec) => STEP_WGSL + heads(s) + /* wgsl */ `
@group(0) @binding(0) var<storage, read> kc: array<u32>;
@group(0) @binding(1) var<storage, read_write> pmeta: array<u32>; // [page][kvHead][min, max][HD2]
@group(0) @binding(2) var<uniform> step: Step;
${PAGE_META_FN}
${MAIN_1D}
  let g = gid.x / HD2; let j = gid.x % HD2;
  if (g >= NKV || step.n == 0u) { return; }
  pageMeta(step.start, step.n, g, j);
}`;

/** 8 f16 channels (one 16-byte word of a packed K/V row) as two vec4s. */
export const UNPACK8_WGSL = /* wgsl */ `fn unpack8(w: vec4<u32>) -> array<vec4<f32>, 2> {
  return array<vec4<f32>, 2>(vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)), vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w)));
}
`;

/** rowSum(v, tid): a vec4 summed over the `lanes` consecutive threads of a row, through workgroup
 *  memory (`threads`: the workgroup size; callers are in uniform control flow). */
export const workgroupRowSumWgsl = (lanes: string, threads: string) => /* wgsl */ `var<workgroup> rowRed: array<vec4<f32>, ${threads}>;
fn rowSum(v: vec4<f32>, tid: u32) -> vec4<f32> {
  rowRed[tid] = v;
  workgroupBarrier();
  let b = tid - tid % ${lanes}; var s = vec4<f32>(0.0);
  for (var i = 0u; i < ${lanes}; i++) { s += rowRed[b + i]; }
  workgroupBarrier();
  return s;
}`;

/** Threads per query row of the prefill attention (each holds HD / TQ channels of q and of the output):
 *  up to 8, a power of two that divides the row's 8-channel units. */
export function prefillLayout(headDim: number): { TQ: number; U: number; queries: number } {
  const units = headDim / 8;
  let TQ = 1;
  while (TQ < 8 && units % (TQ * 2) === 0) TQ *= 2;
  return { TQ, U: units / TQ, queries: 256 / TQ };
}

/** The bindings every prefill attention kernel takes (this one and the tensor-core ones, mma-attention.ts):
 *  q/k/v rows of the chunk, the paged keys and values (`kv`: how a kernel reads them), the output, the step,
 *  the page table. */
export const prefillAttentionBindings = (kv = 'vec4<u32>') => `@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> kc: array<${kv}>;
@group(0) @binding(2) var<storage, read> vc: array<${kv}>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> step: Step;
@group(0) @binding(6) var<storage, read> table: array<u32>; // physical page of each logical page`;

/** Causal prefill attention over the paged cache (which already holds the chunk), flash style: a
 *  workgroup takes 256 / TQ query rows of one head; TQ threads share a row, each holding U 8-channel
 *  units of q and of the output in named vec4s (per-thread arrays of a whole head dim spilled to local
 *  memory); K/V tiles of 16 tokens (f16) go through workgroup memory; a tile's 16 scores are summed
 *  across the row's threads (subgroup shuffles where subgroups are 32 wide, else workgroup memory), then
 *  one online-softmax update per tile. `window` > 0: sliding-window attention (the query at position p
 *  sees keys p - window + 1 .. p; tiles before the workgroup's first window are not read). */
export const prefillAttentionWgsl = (s: HeadsSpec, subgroups = false, window = 0) => {
  const { TQ, U, queries: QW } = prefillLayout(s.headDim);
  const units = Array.from({ length: U }, (_, u) => u), blocks = [0, 1, 2, 3];
  const shuffle = subgroups && TQ > 1;
  return (shuffle ? 'enable subgroups;\n' : '') + STEP_WGSL + heads(s) + /* wgsl */ `
const BK: u32 = 16u;
const TQ: u32 = ${TQ}u;   // threads per query row
const QW: u32 = ${QW}u;   // query rows per workgroup
const UH: u32 = HD / 8u;  // 8-channel units per row
${prefillAttentionBindings()}
var<workgroup> ks: array<vec4<u32>, ${16 * s.headDim / 8}>; // [16 tokens][UH]
var<workgroup> vs: array<vec4<u32>, ${16 * s.headDim / 8}>;
${UNPACK8_WGSL}${shuffle || TQ === 1 ? '' : workgroupRowSumWgsl('TQ', '256')}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let tid = lid.x; let h = wid.y; let g = h / G; let part = tid % TQ;
  let i = wid.x * QW + tid / TQ; let valid = i < step.n; let pos = step.start + i;
  let lastPos = step.start + min(step.n, wid.x * QW + QW) - 1u;
  let scale = ${(1 / Math.sqrt(s.headDim)).toPrecision(9)};
  // this thread's units part * U .. part * U + U - 1 of q (scaled) and of the output
  let qb = (min(i, step.n - 1u) * QKV + h * HD) / 4u + part * ${U * 2}u;
${units.map((u) => `  let qa${u} = qkv[qb + ${2 * u}u] * scale; let qc${u} = qkv[qb + ${2 * u + 1}u] * scale; var oa${u} = vec4<f32>(0.0); var oc${u} = vec4<f32>(0.0);`).join('\n')}
  var m = -3.0e38; var l = 0.0;
  ${window ? `let firstPos = step.start + wid.x * QW;
  let t00 = select(0u, firstPos + 1u - ${window}u, firstPos + 1u > ${window}u) / BK * BK;` : 'let t00 = 0u;'}
  for (var t0 = t00; t0 <= lastPos; t0 += BK) {
    workgroupBarrier();
    for (var e = tid; e < BK * UH; e += 256u) {
      let t = t0 + e / UH;
      var kw = vec4<u32>(0u); var vw = vec4<u32>(0u);
      if (t <= lastPos) { let src = ((table[t / P] * NKV + g) * P + t % P) * UH + e % UH; kw = kc[src]; vw = vc[src]; }
      ks[e] = kw; vs[e] = vw;
    }
    workgroupBarrier();
    // the tile's 16 scores, 4 at a time, summed over the row's threads; keys after pos masked
    var sc: array<vec4<f32>, 4>;
    var mt = m;
    for (var b = 0u; b < 4u; b++) {
      var v = vec4<f32>(0.0);
      for (var j = 0u; j < 4u; j++) {
        let kb = (b * 4u + j) * UH + part * ${U}u; var d = 0.0;
${units.map((u) => `        { let k = unpack8(ks[kb + ${u}u]); d += dot(qa${u}, k[0]) + dot(qc${u}, k[1]); }`).join('\n')}
        v[j] = d;
      }
${TQ === 1 ? '' : shuffle ? Array.from({ length: Math.log2(TQ) }, (_, r) => `      v += subgroupShuffleXor(v, ${1 << r}u);`).join('\n') : '      v = rowSum(v, tid);'}
      let tb = t0 + b * 4u;
      let ts = vec4<u32>(tb, tb + 1u, tb + 2u, tb + 3u);
      v = select(vec4<f32>(-3.0e38), v, ${window ? `(ts <= vec4<u32>(pos)) & (ts + ${window}u > vec4<u32>(pos))` : 'ts <= vec4<u32>(pos)'});
      sc[b] = v;
      mt = max(mt, max(max(v.x, v.y), max(v.z, v.w)));
    }
    if (valid && mt > -1.0e38) {
      let c = exp(m - mt); l *= c; m = mt;
${units.map((u) => `      oa${u} *= c; oc${u} *= c;`).join('\n')}
      for (var b = 0u; b < 4u; b++) {
        let p = select(vec4<f32>(0.0), exp(sc[b] - vec4<f32>(m)), sc[b] > vec4<f32>(-1.0e38));
        l += (p.x + p.y) + (p.z + p.w);
        for (var j = 0u; j < 4u; j++) {
          let vb = (b * 4u + j) * UH + part * ${U}u; let pj = p[j];
${units.map((u) => `          { let w = unpack8(vs[vb + ${u}u]); oa${u} += pj * w[0]; oc${u} += pj * w[1]; }`).join('\n')}
        }
      }
    }
  }
  if (valid) {
    let ob = ((i * NH + h) * HD) / 4u + part * ${U * 2}u; let inv = 1.0 / l;
${units.map((u) => `    out[ob + ${2 * u}u] = oa${u} * inv; out[ob + ${2 * u + 1}u] = oc${u} * inv;`).join('\n')}
  }
}`;
};

/** h = act(gate) * up from the fused [gate | up] rows (`mode`: how h is stored, as rmsnormWgsl). */
export const gluWgsl = (hidden: number, act: GluAct, mode: ProductInput = 'f32') => (mode !== 'f32' ? 'enable f16;\n' : '') + STEP_WGSL + /* wgsl */ `
const H: u32 = ${hidden}u;
@group(0) @binding(0) var<storage, read> gu: array<f32>;
@group(0) @binding(1) var<storage, read_write> h: array<${mode !== 'f32' ? 'f16' : 'f32'}>;
@group(0) @binding(2) var<uniform> step: Step;
${MAIN_1D}
  let i = gid.x / H; let j = gid.x % H;
  if (i >= step.n) { return; }
  let g = gu[i * 2u * H + j];
  ${writeInput(mode, 'h', 'i', 'H', 'j', gluExpr(act, 'g', 'gu[i * 2u * H + H + j]'))}
}${mode === 'split' ? SPLIT_F16_WGSL : ''}`;

/** Index of the largest logit (lowest index on ties): greedy sampling without reading the logits back. */
export const argmaxWgsl = (vocab: number) => /* wgsl */ `
const V: u32 = ${vocab}u;
@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read_write> best: array<u32>;
var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let row = wid.x; // (a workgroup per row of logits: a batched step's rows)
  var v = -3.4e38; var idx = 0u;
  for (var i = lid.x; i < V; i += 256u) { let x = logits[row * V + i]; if (x > v) { v = x; idx = i; } }
  bv[lid.x] = v; bi[lid.x] = idx;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid.x < s) {
      let ov = bv[lid.x + s]; let oi = bi[lid.x + s];
      if (ov > bv[lid.x] || (ov == bv[lid.x] && oi < bi[lid.x])) { bv[lid.x] = ov; bi[lid.x] = oi; }
    }
    workgroupBarrier();
  }
  if (lid.x == 0u) { best[row] = bi[0]; }
}`;

/** Fills a buffer with pseudo-random f16 pairs in [-scale, scale] (benchmarks: random weights and KV). */
export const fillRandomWgsl = /* wgsl */ `
struct Fill { count: u32, seed: u32, scale: f32, f32s: u32 } // f32s = 1: one f32 per word, else two f16
@group(0) @binding(0) var<storage, read_write> data: array<u32>;
@group(0) @binding(1) var<uniform> prm: Fill;
fn hash(x: u32) -> u32 { var h = x * 747796405u + 2891336453u; h = ((h >> ((h >> 28u) + 4u)) ^ h) * 277803737u; return (h >> 22u) ^ h; }
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.x + gid.y * nwg.x * 256u;
  if (i >= prm.count) { return; }
  let a = f32(hash(i ^ prm.seed) & 0xffffu) / 32767.5 - 1.0;
  let b = f32(hash((i ^ prm.seed) + 0x9e3779b9u) & 0xffffu) / 32767.5 - 1.0;
  data[i] = select(pack2x16float(vec2<f32>(a, b) * prm.scale), bitcast<u32>(a * prm.scale), prm.f32s == 1u);
}`;

/** Tokens per workgroup of the batched matrix-vector product (its weights are read once per this many). */
export const BATCH_TOKENS = 8;

/** Rows per thread set of the batched product: each x unit read is used for this many rows (fewer for
 *  Q4_0, whose 32 weights per unit take 8 vec4 registers per row). */
const batchRows = (t: GpuWeightType) => (t === 'q4_0' || t === 'q4_1' ? 2 : 4);

/** y[t][N] (=|+=) W[N][K] · x[t][K] (+ bias) for the tokens of a batched decode step (step.n of them):
 *  as in linearRowsWgsl a set of TPR threads splits K into 16-byte units of R rows; each thread turns
 *  its units of the R rows into floats once (registers), then for each of BATCH_TOKENS tokens reads the
 *  same columns of that token's x once (through the cache) and uses them for all R rows. So the weights
 *  are read once per BATCH_TOKENS tokens instead of once per token, and x once per R rows. Accumulators
 *  are named variables (an array indexed in loops would live in local memory); sums across the set by
 *  subgroup adds where subgroups are 32 wide, else in workgroup memory one value at a time.
 *  Grid: batchGrid. */
export const linearBatchWgsl = (s: LinearSpec, subgroups = false) => {
  if (s.prologue) throw new Error('linearBatchWgsl: no prologue (RMSNorm / SwiGLU run before it)');
  const R = batchRows(s.type), TB = BATCH_TOKENS, { U, TPR, S, UPT } = rowsLayout(s.K, R, s.type), V = unitWeights(s.type) / 4;
  const rows = Array.from({ length: R }, (_, r) => r), toks = Array.from({ length: TB }, (_, b) => b), vs = Array.from({ length: V }, (_, j) => j);
  const acc = (r: number, b: number) => `a${r}_${b}`;
  // the unit of row r as V vec4s of weights w{r}_0..w{r}_{V-1}
  const dequant = (r: number) => {
    const row = `min(r0 + ${r}u, N - 1u)`;
    if (s.type === 'f16') return `    let u${r} = wd[${row} * U + u];
    let w${r}_0 = vec4<f32>(unpack2x16float(u${r}.x), unpack2x16float(u${r}.y)); let w${r}_1 = vec4<f32>(unpack2x16float(u${r}.z), unpack2x16float(u${r}.w));`;
    if (s.type === 'q8_0') return `    let u${r} = wd[${row} * U + u]; let s${r} = ws[(${row} * U + u) / 2u];
    let w${r}_0 = i8x4(u${r}.x) * s${r}; let w${r}_1 = i8x4(u${r}.y) * s${r}; let w${r}_2 = i8x4(u${r}.z) * s${r}; let w${r}_3 = i8x4(u${r}.w) * s${r};`;
    if (s.type === 'q8_16') return `    let u${r} = wd[${row} * U + u]; let s${r} = ws[${row} * U + u];
    let w${r}_0 = i8x4(u${r}.x) * s${r}.x + s${r}.y; let w${r}_1 = i8x4(u${r}.y) * s${r}.x + s${r}.y; let w${r}_2 = i8x4(u${r}.z) * s${r}.x + s${r}.y; let w${r}_3 = i8x4(u${r}.w) * s${r}.x + s${r}.y;`;
    // 4-bit: q4_0 (code - 8) * scale, q4_1 code * scale + min
    const sc = s.type === 'q4_1' ? `s${r}.x + s${r}.y` : `s${r}`, off = s.type === 'q4_1' ? '' : ' - 8.0';
    return `    let u${r} = wd[${row} * U + u]; let s${r} = ws[${row} * U + u];
${[0, 1, 2, 3].map((k) => `    let w${r}_${2 * k} = (vec4<f32>((vec4<u32>(u${r}[${k}]) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u))${off}) * ${sc};
    let w${r}_${2 * k + 1} = (vec4<f32>((vec4<u32>(u${r}[${k}]) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u))${off}) * ${sc};`).join('\n')}`;
  };
  const unit = U % TPR === 0 ? 't + i * TPR' : 'min(t + i * TPR, U - 1u)';
  const out = (r: number, b: number, v: string) => `{ let row = r0 + ${r}u; let tok = b0 + ${b}u; if (row < N && tok < step.n) ${linearOut(s, 'tok * N + row', 'row', v)} }`;
  return (subgroups ? 'enable subgroups;\n' : '') + STEP_WGSL + rowSetConsts(s, { U, V, TPR, S, UPT, R }) + /* wgsl */ `
const TB: u32 = ${TB}u;   // tokens per workgroup
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> wd: array<vec4<u32>>;
${s.type === 'f16' ? '' : scalesDecl(s.type, 3)}
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
@group(0) @binding(6) var<uniform> step: Step;
${s.type === 'q8_0' || s.type === 'q8_16' ? I8X4_WGSL : ''}
${subgroups ? `var<workgroup> red: array<f32, ${(256 / 32) * R * TB}>;` : 'var<workgroup> red: array<f32, 256>;\nvar<workgroup> sums: array<f32, ' + S * R * TB + '>;'}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let tid = lid.x; let rs = tid / TPR; let t = tid % TPR;
  let r0 = (wid.x * S + rs) * R; let b0 = wid.y * TB;
  // (tokens past step.n repeat the last one and rows past N the last row: not written)
${toks.map((b) => `  let xb${b} = min(b0 + ${b}u, step.n - 1u) * (K / 4u);`).join('\n')}
${rows.map((r) => toks.map((b) => `  var ${acc(r, b)} = 0.0;`).join(' ')).join('\n')}
  for (var i = 0u; i < UPT; i++) {
    let u = ${unit}; let ok = t + i * TPR < U;
${rows.map(dequant).join('\n')}
${toks.map((b) => `    {
${vs.map((j) => `      let x${j} = x[xb${b} + V * u + ${j}u];`).join('\n')}
${rows.map((r) => `      ${acc(r, b)} += select(0.0, ${vs.map((j) => `dot(w${r}_${j}, x${j})`).join(' + ')}, ok);`).join('\n')}
    }`).join('\n')}
  }
${subgroups ? `  // warp sums, then the TPR / 32 warps of a set
${rows.map((r) => toks.map((b) => `  ${acc(r, b)} = subgroupAdd(${acc(r, b)});`).join('\n')).join('\n')}
  if (tid % 32u == 0u) {
${rows.map((r) => toks.map((b) => `    red[(tid / 32u) * ${R * TB}u + ${r * TB + b}u] = ${acc(r, b)};`).join('\n')).join('\n')}
  }
  workgroupBarrier();
  if (t == 0u) {
${rows.map((r) => toks.map((b) => `    { var v = 0.0; for (var w = 0u; w < TPR / 32u; w++) { v += red[(rs * (TPR / 32u) + w) * ${R * TB}u + ${r * TB + b}u]; } ${out(r, b, 'v')} }`).join('\n')).join('\n')}
  }` : `  // one value at a time: a tree over each set's TPR threads
${rows.map((r) => toks.map((b) => `  red[tid] = ${acc(r, b)}; workgroupBarrier();
  for (var w = TPR / 2u; w > 0u; w >>= 1u) { if (t < w) { red[tid] += red[tid + w]; } workgroupBarrier(); }
  if (t == 0u) { sums[rs * ${R * TB}u + ${r * TB + b}u] = red[tid]; }
  workgroupBarrier();`).join('\n')).join('\n')}
  if (t == 0u) {
${rows.map((r) => toks.map((b) => `    ${out(r, b, `sums[rs * ${R * TB}u + ${r * TB + b}u]`)}`).join('\n')).join('\n')}
  }`}
}`;
};

/** Workgroups of linearBatchWgsl for N rows and `tokens` tokens. */
export const batchGrid = (N: number, K: number, type: GpuWeightType, tokens: number): [number, number] => {
  const R = batchRows(type), { S } = rowsLayout(K, R, type);
  return [Math.ceil(N / (S * R)), Math.ceil(tokens / BATCH_TOKENS)];
};
