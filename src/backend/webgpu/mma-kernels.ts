// Prefill kernels on tensor cores, through WGSL subgroup matrices (Dawn's experimental
// chromium_experimental_subgroup_matrix, with shader-f16): f16 operands, f32 accumulation. A subgroup
// multiplies M x K by K x N blocks (the adapter's config, read at start-up, see device.ts); the values
// are opaque to the lanes, so everything else (conversion to f16, dequantisation, softmax) goes through
// workgroup memory. Chosen where the adapter has the feature; kernels.ts keeps the fallback for the rest.
import type { MatrixConfig } from './device.js';
import { weightAccess, type LinearSpec } from './kernels.js';

/** How this Dawn spells subgroup-matrix loads and stores: the majorness as a template argument (the
 *  current WGSL proposal), or as a bool argument (older; deprecated where the template form exists, and
 *  then every use prints a warning). Chosen per device by a self-test (mma-selftest.ts). */
export type MatrixSyntax = 'template' | 'bool';
/** A subgroup-matrix load of type `type` from `ptr` at element `offset`, rows `stride` elements apart. */
export const matrixLoad = (syntax: MatrixSyntax, type: string, ptr: string, offset: string, colMajor: boolean, stride: string) =>
  syntax === 'template' ? `subgroupMatrixLoad<${type}, ${colMajor ? 'col_major' : 'row_major'}>(${ptr}, ${offset}, ${stride})`
    : `subgroupMatrixLoad<${type}>(${ptr}, ${offset}, ${colMajor}, ${stride})`;
/** A row-major subgroup-matrix store. */
export const matrixStore = (syntax: MatrixSyntax, ptr: string, offset: string, value: string, stride: string) =>
  syntax === 'template' ? `subgroupMatrixStore<row_major>(${ptr}, ${offset}, ${value}, ${stride})`
    : `subgroupMatrixStore(${ptr}, ${offset}, ${value}, false, ${stride})`;

/** The kernels' directives. Offsets of subgroup-matrix loads and stores differ per subgroup (each owns
 *  a block of the tile); Tint's analysis wants them workgroup-uniform, which is stricter than the
 *  hardware needs (subgroup-uniform), so that diagnostic is off, as llama.cpp's WebGPU kernels do. */
const MMA_HEADER = 'enable f16;\nenable chromium_experimental_subgroup_matrix;\ndiagnostic(off, chromium.subgroup_matrix_uniformity);\n';

/** Workgroup tile of the product: BM tokens x BN weight rows, split into WM x WN blocks per subgroup;
 *  BK columns of K staged per step. */
export interface MmaTile { BM: number; BN: number; WM: number; WN: number; BK: number }
/** In order of preference (measured on the H200, docs/results.md); a product takes the first that fits. */
export const MMA_TILES: MmaTile[] = [
  { BM: 128, BN: 128, WM: 64, WN: 32, BK: 32 }, { BM: 128, BN: 128, WM: 64, WN: 64, BK: 32 }, { BM: 128, BN: 128, WM: 64, WN: 32, BK: 64 },
  { BM: 64, BN: 128, WM: 32, WN: 64, BK: 32 }, { BM: 128, BN: 64, WM: 64, WN: 32, BK: 32 }, { BM: 64, BN: 64, WM: 32, WN: 32, BK: 32 },
];

/** The tile a product of N rows uses on this config (the first whose BN divides N and BK divides K),
 *  or null where none fits (such products keep the fallback kernel). */
export function mmaTileFor(N: number, K: number, cfg: MatrixConfig, tiles: MmaTile[] = MMA_TILES): MmaTile | null {
  return tiles.find((t) => N % t.BN === 0 && K % t.BK === 0 && t.BK % cfg.K === 0 && t.WM % cfg.M === 0 && t.WN % cfg.N === 0) ?? null;
}

/** y[t][n] (+)= sum_k x[t][k] w[n][k] (+ bias[n]) for whole BM-token tiles (activation buffers are padded
 *  to the tile; rows past the chunk compute values nobody reads). Each K step, the workgroup converts a
 *  BM x 32 tile of x and dequantises a BN x 32 tile of weights to f16 in workgroup memory; each subgroup
 *  then multiplies its WM x WN block. The accumulators start from y (residual add) or the bias, so the
 *  result is stored straight from the subgroup matrices. */
export const linearMmaWgsl = (s: LinearSpec, cfg: MatrixConfig, t: MmaTile) => {
  const { M: SM, N: SN, K: SK } = cfg, BK = t.BK, LDS = BK + 8; // (rows padded against bank conflicts; 16-byte multiples)
  const load = matrixLoad.bind(null, cfg.syntax), store = matrixStore.bind(null, cfg.syntax);
  const TM = t.WM / SM, TN = t.WN / SN, SG = (t.BM / t.WM) * (t.BN / t.WN), THREADS = SG * 32;
  const blocks = Array.from({ length: TM * TN }, (_, b) => ({ b, i: Math.floor(b / TN), j: b % TN }));
  const res = `subgroup_matrix_result<f32, ${SN}, ${SM}>`;
  // 8 weights of row r from column k as f16: f16 weights are copied as they are stored
  const w8h = s.type === 'f16'
    ? `fn w8h(r: u32, k: u32) -> array<vec2<f16>, 4> { let u = wd[(r * K + k) / 8u];
  return array<vec2<f16>, 4>(bitcast<vec2<f16>>(u.x), bitcast<vec2<f16>>(u.y), bitcast<vec2<f16>>(u.z), bitcast<vec2<f16>>(u.w)); }`
    : `fn w8h(r: u32, k: u32) -> array<vec2<f16>, 4> { let w = w8(r, k);
  return array<vec2<f16>, 4>(vec2<f16>(w.a.xy), vec2<f16>(w.a.zw), vec2<f16>(w.b.xy), vec2<f16>(w.b.zw)); }`;
  return MMA_HEADER + weightAccess(s.type, s.K, 2) + w8h + /* wgsl */ `
const N: u32 = ${s.N}u;
const BM: u32 = ${t.BM}u; const BN: u32 = ${t.BN}u; const BK: u32 = ${BK}u; const LDS: u32 = ${LDS}u;
const THREADS: u32 = ${THREADS}u;
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
var<workgroup> stageX: array<f16, ${t.BM * LDS}>; // [BM tokens][BK k] (+ padding)
var<workgroup> stageW: array<f16, ${t.BN * LDS}>; // [BN rows][BK k]
${s.bias ? `var<workgroup> stageB: array<f32, ${SM * t.BN}>; // the tile's bias, repeated on ${SM} rows` : ''}
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let t0 = wid.y * BM; let o0 = wid.x * BN;
  let sg = tid / 32u; // this subgroup's block: tokens m0.., weight rows n0..
  let m0 = (sg / ${t.BN / t.WN}u) * ${t.WM}u; let n0 = (sg % ${t.BN / t.WN}u) * ${t.WN}u;
${s.bias ? `  for (var e = tid; e < ${SM}u * BN; e += THREADS) { stageB[e] = bias[o0 + e % BN]; }
  workgroupBarrier();` : ''}
${blocks.map(({ b, i, j }) => `  var acc${b} = ${s.add
    ? `${load(res, '&y', `(t0 + m0 + ${i * SM}u) * N + o0 + n0 + ${j * SN}u`, false, 'N')};`
    : s.bias ? `${load(res, '&stageB', `n0 + ${j * SN}u`, false, 'BN')};` : `${res}();`}`).join('\n')}
  for (var k0 = 0u; k0 < K; k0 += BK) {
    // stage x (f32 -> f16) and the weights (-> f16)
    for (var e = tid; e < BM * BK / 4u; e += THREADS) {
      let r = e / (BK / 4u); let q = e % (BK / 4u);
      let v = vec4<f16>(x[((t0 + r) * K + k0) / 4u + q]);
      let d = r * LDS + q * 4u;
      stageX[d] = v.x; stageX[d + 1u] = v.y; stageX[d + 2u] = v.z; stageX[d + 3u] = v.w;
    }
    for (var e = tid; e < BN * BK / 8u; e += THREADS) {
      let r = e / (BK / 8u); let q = e % (BK / 8u);
      let w = w8h(o0 + r, k0 + q * 8u);
      let d = r * LDS + q * 8u;
      for (var i = 0u; i < 4u; i++) { stageW[d + 2u * i] = w[i].x; stageW[d + 2u * i + 1u] = w[i].y; }
    }
    workgroupBarrier();
    for (var kk = 0u; kk < BK; kk += ${SK}u) {
${Array.from({ length: TM }, (_, i) => `      let a${i} = ${load(`subgroup_matrix_left<f16, ${SK}, ${SM}>`, '&stageX', `(m0 + ${i * SM}u) * LDS + kk`, false, 'LDS')};`).join('\n')}
${Array.from({ length: TN }, (_, j) => `      let b${j} = ${load(`subgroup_matrix_right<f16, ${SN}, ${SK}>`, '&stageW', `(n0 + ${j * SN}u) * LDS + kk`, true, 'LDS')};`).join('\n')}
${blocks.map(({ b, i, j }) => `      acc${b} = subgroupMatrixMultiplyAccumulate(a${i}, b${j}, acc${b});`).join('\n')}
    }
    workgroupBarrier();
  }
${blocks.map(({ b, i, j }) => `  ${store('&y', `(t0 + m0 + ${i * SM}u) * N + o0 + n0 + ${j * SN}u`, `acc${b}`, 'N')};`).join('\n')}
}`;
};

/** Query rows per subgroup and keys per tile of the tensor-core prefill attention. */
const ATT_ROWS = 16, ATT_KEYS = 64;
/** Subgroups (16 query rows each) per workgroup: fewer for wide heads, whose staged q take more room. */
const attSubgroups = (headDim: number) => (headDim > 128 ? 2 : 4);
/** Query rows per workgroup (the grid is ceil(n / rows) x heads). */
export const mmaAttentionRows = (headDim: number) => ATT_ROWS * attSubgroups(headDim);
/** Floats of score scratch the attention needs for a chunk of `rows` queries (binding 5). */
export const mmaAttentionScratch = (s: { nHeads: number; headDim: number }, rows: number) =>
  Math.ceil(rows / mmaAttentionRows(s.headDim)) * s.nHeads * attSubgroups(s.headDim) * ATT_KEYS * ATT_ROWS;

/** Workgroup memory of the tensor-core prefill attention: staged q and P (f16). */
const attWorkgroupBytes = (headDim: number) => ATT_ROWS * attSubgroups(headDim) * ((headDim + 8) + ATT_KEYS) * 2;

/** Whether the tensor-core prefill attention handles this shape on this config and device. */
export function mmaAttentionFits(s: { headDim: number; pageSize: number }, cfg: MatrixConfig, maxWorkgroupBytes: number): boolean {
  return attWorkgroupBytes(s.headDim) <= maxWorkgroupBytes && cfg.M === ATT_ROWS && cfg.N === ATT_ROWS
    && s.headDim % cfg.K === 0 && s.headDim % cfg.N === 0 && ATT_KEYS % cfg.K === 0 && s.pageSize % ATT_ROWS === 0 && s.headDim <= 256;
}

/** Causal prefill attention over the paged f16 cache (which already holds the chunk, with room for a
 *  whole 64-key tile past its end), on tensor cores, in two passes over the keys. A workgroup takes
 *  16-row query blocks of one head (one per subgroup), staged in workgroup memory as f16 scaled by
 *  log2(e)/sqrt(hd). Per 64-key tile each subgroup computes the transposed scores S^T = K Q^T (K as
 *  row-major left matrices read straight from the pages, where 16 keys of a head lie contiguous; Q^T as
 *  column-major right matrices from workgroup memory) into a storage scratch of its own, where two
 *  lanes per query row read them. Pass 1 finds each row's maximum over its keys (causal mask); pass 2
 *  recomputes the scores, writes P = exp2(s - max) (at most 1: f16 is safe) to workgroup memory, sums
 *  the row and accumulates O += P V (V blocks read from the pages as row-major right matrices); O is
 *  divided by the sum through the output rows at the end. Recomputing Q K^T costs a third more matrix
 *  work than one online-softmax pass, but the accumulators are never rescaled: result matrices are
 *  opaque, and, carried through a loop, they gave wrong results on the H200 when assigned inside
 *  branches, so every matrix operation here runs unconditionally (keys past the last query are masked). */
export const prefillAttentionMmaWgsl = (s: { nHeads: number; nKV: number; headDim: number; pageSize: number }, cfg: MatrixConfig) => {
  const { K: SK } = cfg, HD = s.headDim, SG = attSubgroups(HD), THREADS = 32 * SG, LDQ = HD + 8;
  const load = matrixLoad.bind(null, cfg.syntax), store = matrixStore.bind(null, cfg.syntax);
  const chans = Array.from({ length: HD / 16 }, (_, c) => c), chanK = Array.from({ length: HD / SK }, (_, j) => j);
  const keyBlocks = Array.from({ length: ATT_KEYS / 16 }, (_, b) => b), keyStepsPV = Array.from({ length: ATT_KEYS / SK }, (_, b) => b);
  const res = `subgroup_matrix_result<f32, 16, 16>`;
  // S^T of the tile's 64 keys into this subgroup's scratch, then visible to its lanes
  const scores = `${keyBlocks.map((b) => `    {
      let kb = keyAt(t0 + ${b * 16}u, g);
      var s = ${res}();
${chanK.map((j) => `      s = subgroupMatrixMultiplyAccumulate(${load(`subgroup_matrix_left<f16, ${SK}, 16>`, '&kc', `kb + ${j * SK}u`, false, 'HD')}, ${load(`subgroup_matrix_right<f16, 16, ${SK}>`, '&sq', `sg * 16u * LDQ + ${j * SK}u`, true, 'LDQ')}, s);`).join('\n')}
      ${store('&st', `sbase + ${b * 256}u`, 's', '16u')};
    }`).join('\n')}
    storageBarrier();`;
  return MMA_HEADER + 'enable subgroups;\n' + /* wgsl */ `
struct Step { start: u32, n: u32, total: u32, pad: u32 }
const NH: u32 = ${s.nHeads}u; const NKV: u32 = ${s.nKV}u; const G: u32 = ${s.nHeads / s.nKV}u;
const HD: u32 = ${HD}u; const P: u32 = ${s.pageSize}u; const QKV: u32 = ${(s.nHeads + 2 * s.nKV) * HD}u;
const BQ: u32 = ${ATT_ROWS * SG}u; const BKV: u32 = ${ATT_KEYS}u; const LDQ: u32 = ${LDQ}u; const THREADS: u32 = ${THREADS}u;
@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> kc: array<f16>;
@group(0) @binding(2) var<storage, read> vc: array<f16>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<uniform> step: Step;
@group(0) @binding(5) var<storage, read_write> st: array<f32>; // [workgroup][subgroup][64 keys][16 queries] scores
@group(0) @binding(6) var<storage, read> table: array<u32>; // physical page of each logical page
var<workgroup> sq: array<f16, ${ATT_ROWS * SG * LDQ}>;     // [BQ queries][HD] q, scaled
var<workgroup> sp: array<f16, ${ATT_ROWS * SG * ATT_KEYS}>; // [subgroup][16 queries][64 keys] P
// where key t of KV head g starts in the paged cache
fn keyAt(t: u32, g: u32) -> u32 { return ((table[t / P] * NKV + g) * P + t % P) * HD; }
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let h = wid.y; let g = h / G; let i0 = wid.x * BQ;
  let lastPos = step.start + min(step.n, i0 + BQ) - 1u;
  let sg = tid / 32u; let lane = tid % 32u;
  let scale = ${(Math.LOG2E / Math.sqrt(HD)).toPrecision(9)};
  for (var e = tid; e < BQ * HD / 4u; e += THREADS) {
    let r = e / (HD / 4u); let c = e % (HD / 4u);
    let q = vec4<f16>(qkv[(min(i0 + r, step.n - 1u) * QKV + h * HD) / 4u + c] * scale);
    let d = r * LDQ + c * 4u;
    sq[d] = q.x; sq[d + 1u] = q.y; sq[d + 2u] = q.z; sq[d + 3u] = q.w;
  }
  workgroupBarrier();
  // this lane's query row of the subgroup's block, and which half of the tile's keys it takes
  let row = lane / 2u; let half = lane % 2u;
  let qpos = step.start + i0 + sg * 16u + row;
  let sbase = ((wid.y * nwg.x + wid.x) * ${SG}u + sg) * BKV * 16u; // this subgroup's scores
  // pass 1: each row's maximum score
  var m = -1.0e30;
  for (var t0 = 0u; t0 <= lastPos; t0 += BKV) {
${scores}
    for (var c = 0u; c < BKV / 2u; c++) {
      let key = half * (BKV / 2u) + c;
      if (t0 + key <= qpos) { m = max(m, st[sbase + key * 16u + row]); }
    }
    storageBarrier(); // (read before the next tile's scores overwrite them)
  }
  m = max(m, subgroupShuffleXor(m, 1u));
  // pass 2: P, its row sums, O += P V
${chans.map((c) => `  var o${c} = ${res}();`).join('\n')}
  let prow = (sg * 16u + row) * BKV + half * (BKV / 2u);
  var l = 0.0;
  for (var t0 = 0u; t0 <= lastPos; t0 += BKV) {
${scores}
    for (var c = 0u; c < BKV / 2u; c++) {
      let key = half * (BKV / 2u) + c;
      var p = 0.0;
      if (t0 + key <= qpos) { p = exp2(st[sbase + key * 16u + row] - m); }
      l += p;
      sp[prow + c] = f16(p);
    }
    workgroupBarrier();
${keyStepsPV.map((b) => `    {
      let pa = ${load(`subgroup_matrix_left<f16, ${SK}, 16>`, '&sp', `sg * 16u * BKV + ${b * SK}u`, false, 'BKV')};
      let vb = keyAt(t0 + ${b * SK}u, g);
${chans.map((c) => `      o${c} = subgroupMatrixMultiplyAccumulate(pa, ${load(`subgroup_matrix_right<f16, 16, ${SK}>`, '&vc', `vb + ${c * 16}u`, false, 'HD')}, o${c});`).join('\n')}
    }`).join('\n')}
    workgroupBarrier();
    storageBarrier();
  }
  // O / l, through the output rows
  l += subgroupShuffleXor(l, 1u);
  let orow = (i0 + sg * 16u) * NH * HD + h * HD; // the block's first output element
${chans.map((c) => `  ${store('&out', `orow + ${c * 16}u`, `o${c}`, 'NH * HD')};`).join('\n')}
  storageBarrier();
  let inv = select(0.0, 1.0 / l, l > 0.0);
  for (var c = half * (HD / 2u); c < half * (HD / 2u) + HD / 2u; c++) { out[orow + row * NH * HD + c] *= inv; }
}`;
};
