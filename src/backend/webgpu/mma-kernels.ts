// Prefill kernels on tensor cores, through WGSL subgroup matrices (Dawn's experimental
// chromium_experimental_subgroup_matrix, with shader-f16): f16 operands, f32 accumulation. A subgroup
// multiplies M x K by K x N blocks (the adapter's config, read at start-up, see device.ts); the values
// are opaque to the lanes, so everything else (conversion to f16, dequantisation, softmax) goes through
// workgroup memory. Chosen where the adapter has the feature; kernels.ts keeps the fallback for the rest.
import { processEnv, type MatrixConfig } from './device.js';
import { grid64, SPLIT_F16_WGSL, STEP_WGSL, X_LO_SCALE, weightAccess, type GpuWeightType, type LinearSpec } from './kernels.js';

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
export interface MmaTile { BM: number; BN: number; WM: number; WN: number; BK: number; prefetch?: boolean }
/** In order of preference (H100, `bench:kernels --only prefill`, docs/results.md): each thread loads the next
 *  K step's x and weights into registers while the subgroups multiply the current one (prefetch); 64 x 64
 *  blocks per subgroup ran f16 and Q8_0 weights at 131–145 TFLOP/s, 64 x 32 blocks 99–124 (the kernels
 *  without prefetch: 60–69). */
export const MMA_TILES: MmaTile[] = [
  { BM: 128, BN: 128, WM: 64, WN: 64, BK: 32, prefetch: true }, { BM: 128, BN: 128, WM: 64, WN: 32, BK: 32, prefetch: true },
  { BM: 128, BN: 128, WM: 64, WN: 32, BK: 64, prefetch: true },
  { BM: 128, BN: 128, WM: 64, WN: 32, BK: 32 }, { BM: 128, BN: 128, WM: 64, WN: 64, BK: 32 }, { BM: 128, BN: 128, WM: 64, WN: 32, BK: 64 },
  { BM: 64, BN: 128, WM: 32, WN: 64, BK: 32 }, { BM: 128, BN: 64, WM: 64, WN: 32, BK: 32 }, { BM: 64, BN: 64, WM: 32, WN: 32, BK: 32 },
];
/** 4-bit weights take longer to decode into the staged tile: there the 64 x 32 blocks ran faster (120 vs 94 TFLOP/s). */
export const mmaTilesFor = (type: GpuWeightType, tiles: MmaTile[] = MMA_TILES): MmaTile[] =>
  (type === 'q4_0' || type === 'q4_1' ? [...tiles.filter((t) => t.WN <= 32), ...tiles.filter((t) => t.WN > 32)] : tiles);

/** The tile a product of N rows uses on this config (the first whose BN divides N and BK divides K),
 *  or null where none fits (such products keep the fallback kernel). */
export function mmaTileFor(N: number, K: number, cfg: MatrixConfig, tiles: MmaTile[] = MMA_TILES): MmaTile | null {
  return tiles.find((t) => N % t.BN === 0 && K % t.BK === 0 && t.BK % cfg.K === 0 && t.WM % cfg.M === 0 && t.WN % cfg.N === 0) ?? null;
}

/** `w8h(r, k)`: 8 weights of row r from column k as f16 (over weightAccess's `w8`; f16 weights are
 *  copied as they are stored). */
const w8h = (type: GpuWeightType) => (type === 'f16'
  ? `fn w8h(r: u32, k: u32) -> array<vec2<f16>, 4> { let u = wd[(r * K + k) / 8u];
  return array<vec2<f16>, 4>(bitcast<vec2<f16>>(u.x), bitcast<vec2<f16>>(u.y), bitcast<vec2<f16>>(u.z), bitcast<vec2<f16>>(u.w)); }`
  : `fn w8h(r: u32, k: u32) -> array<vec2<f16>, 4> { let w = w8(r, k);
  return array<vec2<f16>, 4>(vec2<f16>(w.a.xy), vec2<f16>(w.a.zw), vec2<f16>(w.b.xy), vec2<f16>(w.b.zw)); }`);

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
  const xUnits = Array.from({ length: Math.ceil((t.BM * BK) / 4 / THREADS) }, (_, u) => u), wUnits = Array.from({ length: Math.ceil((t.BN * BK) / 8 / THREADS) }, (_, u) => u);
  const res = `subgroup_matrix_result<f32, ${SN}, ${SM}>`;
  return MMA_HEADER + weightAccess(s.type, s.K, 2) + w8h(s.type) + /* wgsl */ `
const N: u32 = ${s.N}u;
const BM: u32 = ${t.BM}u; const BN: u32 = ${t.BN}u; const BK: u32 = ${BK}u; const LDS: u32 = ${LDS}u;
const THREADS: u32 = ${THREADS}u;
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
var<workgroup> stageX: array<f16, ${t.BM * LDS}>; // [BM tokens][BK k] (+ padding)
var<workgroup> stageW: array<f16, ${t.BN * LDS}>; // [BN rows][BK k]
${s.bias ? `var<workgroup> stageB: array<f32, ${SM * t.BN}>; // the tile's bias, repeated on ${SM} rows` : ''}
${t.prefetch ? `// this thread's share of a step's x (4 columns) and weights (8 columns), held in registers until staged
${xUnits.map((u) => `var<private> px${u}: vec4<f16>;`).join('\n')}
${wUnits.map((u) => `var<private> pw${u}: array<vec2<f16>, 4>;`).join('\n')}
fn prefetch(t0: u32, o0: u32, k0: u32, tid: u32) {
${xUnits.map((u) => `  if (${u * THREADS}u + tid < BM * BK / 4u) { let e = ${u * THREADS}u + tid; px${u} = vec4<f16>(x[((t0 + e / (BK / 4u)) * K + k0) / 4u + e % (BK / 4u)]); }`).join('\n')}
${wUnits.map((u) => `  if (${u * THREADS}u + tid < BN * BK / 8u) { let e = ${u * THREADS}u + tid; pw${u} = w8h(o0 + e / (BK / 8u), k0 + e % (BK / 8u) * 8u); }`).join('\n')}
}` : ''}
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
${t.prefetch ? `  prefetch(t0, o0, 0u, tid);
  for (var k0 = 0u; k0 < K; k0 += BK) {
    // the step's x and weights, loaded during the previous step, into workgroup memory; the next step's loaded
${xUnits.map((u) => `    if (${u * THREADS}u + tid < BM * BK / 4u) { let e = ${u * THREADS}u + tid; let d = e / (BK / 4u) * LDS + e % (BK / 4u) * 4u;
      stageX[d] = px${u}.x; stageX[d + 1u] = px${u}.y; stageX[d + 2u] = px${u}.z; stageX[d + 3u] = px${u}.w; }`).join('\n')}
${wUnits.map((u) => `    if (${u * THREADS}u + tid < BN * BK / 8u) { let e = ${u * THREADS}u + tid; let d = e / (BK / 8u) * LDS + e % (BK / 8u) * 8u;
      for (var i = 0u; i < 4u; i++) { stageW[d + 2u * i] = pw${u}[i].x; stageW[d + 2u * i + 1u] = pw${u}[i].y; } }`).join('\n')}
    prefetch(t0, o0, min(k0 + BK, K - BK), tid); // (the last step loads its own again: nobody reads it)` : `  for (var k0 = 0u; k0 < K; k0 += BK) {
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
    }`}
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

// ---- products of a batched decode step: a few tokens, every weight read once ----

/** Layout of the few-token product: WN weight rows per workgroup, its SG subgroups splitting K (each
 *  takes every SG-th CK-column step) and summing their partial results in workgroup memory at the end;
 *  `stage`: weights dequantised (or copied) into a per-subgroup tile in workgroup memory, the next step's
 *  held in registers meanwhile, instead of loaded as matrices straight from the weight buffer (f16 only). */
export interface SkinnyTile { WN: number; SG: number; CK: number; stage: boolean }
/** Token blocks (the config's M rows each) one workgroup multiplies with each weight tile, at most. */
export const SKINNY_BLOCKS = 4;
/** In order of preference. With x split into two f16 parts (session 17), eight subgroups on 32-column
 *  steps ran a whole batched step of the 7B shape fastest (H100, `bench:batch`, GPU ms per step against the
 *  128-column steps preferred before: 4 rows 18.2 vs 22.6, 16 rows 23.5 vs 30.5, 32 rows the same; session
 *  23); loading the weights as matrices straight from storage (stage: false) reached 11-15% of the read
 *  bandwidth (session 15). */
export const SKINNY_TILES: SkinnyTile[] = [
  { WN: 32, SG: 8, CK: 32, stage: true }, { WN: 32, SG: 4, CK: 128, stage: true }, { WN: 32, SG: 4, CK: 64, stage: true },
  { WN: 64, SG: 4, CK: 32, stage: true }, { WN: 32, SG: 4, CK: 32, stage: true }, { WN: 32, SG: 4, CK: 32, stage: false },
  // (small models: K = 576 splits into 18 steps of 32)
  { WN: 32, SG: 2, CK: 32, stage: true }, { WN: 32, SG: 1, CK: 32, stage: true }, { WN: 32, SG: 2, CK: 32, stage: false },
];
/** Token blocks per workgroup for a step of `rows` tokens. */
export const skinnyBlocks = (rows: number, cfg: MatrixConfig) => Math.min(SKINNY_BLOCKS, Math.ceil(rows / cfg.M));
const skinnyBytes = (t: SkinnyTile, blocks: number, cfg: MatrixConfig) => t.SG * blocks * cfg.M * t.WN * 4 + (t.stage ? t.SG * t.WN * (t.CK + 8) * 2 : 0);
/** The first tile that fits a product (N rows, K columns, weight type) of `rows` tokens on this config
 *  and workgroup-memory limit, or null (then the batched matrix-vector kernel runs). Weights other than
 *  f16 are always staged (dequantised on the way). */
export function skinnyTileFor(type: GpuWeightType, N: number, K: number, rows: number, cfg: MatrixConfig, maxWorkgroupBytes: number, tiles = SKINNY_TILES): SkinnyTile | null {
  const blocks = skinnyBlocks(rows, cfg);
  return tiles.find((t) => (t.stage || type === 'f16') && N % t.WN === 0 && t.WN % cfg.N === 0 && t.CK % cfg.K === 0 && t.CK % 8 === 0
    && K % (t.SG * t.CK) === 0 && (t.WN * t.CK) % (8 * 32) === 0 && skinnyBytes(t, blocks, cfg) <= maxWorkgroupBytes) ?? null;
}
/** Workgroups of linearSkinnyMmaWgsl. */
export const skinnyGrid = (N: number, rows: number, t: SkinnyTile, cfg: MatrixConfig): [number, number] =>
  [N / t.WN, Math.ceil(rows / (skinnyBlocks(rows, cfg) * cfg.M))];

/** y[t][n] (+)= sum_k x[t][k] w[n][k] (+ bias[n]) for the step.n tokens of a batched decode step, on
 *  tensor cores: x is read as two f16 parts (toHalfWgsl writes them, hi and lo·2^11: SPLIT_F16_WGSL),
 *  each multiplied into its own accumulators and added in the epilogue, so a sequence's product keeps
 *  nearly the precision of its f32 x, as when it runs alone (rows up to the token blocks' end are read,
 *  their results dropped). A workgroup holds `blocks` x M tokens against WN weight rows; its subgroups walk
 *  disjoint K steps, each multiplying the tokens' left matrices by the weights' right matrices (Wᵀ read
 *  column-major: a weight row's 16 or 8 columns lie contiguous), then add their partial sums through
 *  workgroup memory. So the weights are read once for up to blocks x M tokens, by many workgroups in
 *  flight (N / WN of them, SG subgroups each), which is what a matrix of a few thousand rows needs to
 *  stream at memory speed; the tensor cores make the arithmetic of 16-64 tokens free beside the reads. */
export const linearSkinnyMmaWgsl = (s: LinearSpec, cfg: MatrixConfig, t: SkinnyTile, blocks: number) => {
  const { M: SM, N: SN, K: SK } = cfg, load = matrixLoad.bind(null, cfg.syntax), store = matrixStore.bind(null, cfg.syntax);
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const TN = t.WN / SN, ROWS = blocks * SM, THREADS = t.SG * 32, STEPS = s.K / (t.SG * t.CK), LDS = t.CK + 8;
  const mats = range(blocks).flatMap((i) => range(TN).map((j) => ({ i, j })));
  const units = range((t.WN * t.CK) / 8 / 32); // 8-weight units of a step's tile each lane stages
  const left = `subgroup_matrix_left<f16, ${SK}, ${SM}>`, right = `subgroup_matrix_right<f16, ${SN}, ${SK}>`, res = `subgroup_matrix_result<f32, ${SN}, ${SM}>`;
  return MMA_HEADER + (t.stage ? weightAccess(s.type, s.K, 2) + w8h(s.type) : `const K: u32 = ${s.K}u;\n@group(0) @binding(2) var<storage, read> wh: array<f16>;`) + STEP_WGSL + /* wgsl */ `
const N: u32 = ${s.N}u; const WN: u32 = ${t.WN}u; const ROWS: u32 = ${ROWS}u; const CK: u32 = ${t.CK}u;
const SG: u32 = ${t.SG}u; const THREADS: u32 = ${THREADS}u; const LDS: u32 = ${LDS}u;
const XS: u32 = ${2 * s.K}u; // a row of x: [K hi][K lo]
@group(0) @binding(0) var<storage, read> xh: array<f16>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
@group(0) @binding(6) var<uniform> step: Step;
var<workgroup> red: array<f32, ${t.SG * ROWS * t.WN}>; // each subgroup's partial sums [ROWS][WN] (hi, then lo)
${t.stage ? `var<workgroup> stw: array<f16, ${t.SG * t.WN * LDS}>; // each subgroup's weight tile [WN][CK] (+ padding)
${units.map((u) => `var<private> pw${u}: array<vec2<f16>, 4>;`).join('\n')}
fn fetch(n0: u32, k0: u32, lane: u32) {
${units.map((u) => `  { let e = ${u * 32}u + lane; pw${u} = w8h(n0 + e / (CK / 8u), k0 + e % (CK / 8u) * 8u); }`).join('\n')}
}` : ''}
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let n0 = wid.x * WN; let t0 = wid.y * ROWS;
  let sg = tid / 32u; let lane = tid % 32u;
${mats.map(({ i, j }) => `  var acc${i}_${j} = ${res}(); var low${i}_${j} = ${res}();`).join('\n')}
${t.stage ? `  let wb = sg * WN * LDS;
  fetch(n0, sg * CK, lane);` : ''}
  for (var c = 0u; c < ${STEPS}u; c++) {
    let k0 = (c * SG + sg) * CK;
${t.stage ? `${units.map((u) => `    { let e = ${u * 32}u + lane; let d = wb + e / (CK / 8u) * LDS + e % (CK / 8u) * 8u;
      for (var w = 0u; w < 4u; w++) { stw[d + 2u * w] = pw${u}[w].x; stw[d + 2u * w + 1u] = pw${u}[w].y; } }`).join('\n')}
    workgroupBarrier();
    fetch(n0, min(k0 + SG * CK, K - CK), lane); // (the last step loads one again: nobody reads it)` : ''}
${range(t.CK / SK).map((kk) => `    {
${range(blocks).map((i) => `      let a${i} = ${load(left, '&xh', `(t0 + ${i * SM}u) * XS + k0 + ${kk * SK}u`, false, 'XS')};
      let l${i} = ${load(left, '&xh', `(t0 + ${i * SM}u) * XS + K + k0 + ${kk * SK}u`, false, 'XS')};`).join('\n')}
${range(TN).map((j) => `      let b${j} = ${t.stage ? load(right, '&stw', `wb + ${j * SN}u * LDS + ${kk * SK}u`, true, 'LDS') : load(right, '&wh', `(n0 + ${j * SN}u) * K + k0 + ${kk * SK}u`, true, 'K')};`).join('\n')}
${mats.map(({ i, j }) => `      acc${i}_${j} = subgroupMatrixMultiplyAccumulate(a${i}, b${j}, acc${i}_${j});
      low${i}_${j} = subgroupMatrixMultiplyAccumulate(l${i}, b${j}, low${i}_${j});`).join('\n')}
    }`).join('\n')}${t.stage ? '\n    workgroupBarrier();' : ''}
  }
  // the subgroups' partial sums through workgroup memory: the hi products, then the lo ones (scaled back)
${['acc', 'low'].map((a, pass) => `${mats.map(({ i, j }) => `  ${store('&red', `(sg * ROWS + ${i * SM}u) * WN + ${j * SN}u`, `${a}${i}_${j}`, 'WN')};`).join('\n')}
  workgroupBarrier();
  for (var e = tid; e < ROWS * WN; e += THREADS) {
    let tok = t0 + e / WN; let row = n0 + e % WN;
    if (tok < step.n) {
      var v = 0.0;
      for (var g = 0u; g < SG; g++) { v += red[g * ROWS * WN + e]; }
      let o = tok * N + row;
      ${pass === 0 ? `${s.add ? 'y[o] += v' : 'y[o] = v'}${s.bias ? ' + bias[row]' : ''}` : `y[o] += v * ${1 / X_LO_SCALE}`};
    }
  }${pass === 0 ? '\n  workgroupBarrier();' : ''}`).join('\n')}
}`;
};

/** xh = x split into two f16 parts (SPLIT_F16_WGSL: rows of [K hi][K lo]) for the step.n rows of K
 *  columns, the input of linearSkinnyMmaWgsl. Grid: toHalfGrid. */
export const toHalfWgsl = (K: number) => 'enable f16;\n' + STEP_WGSL + SPLIT_F16_WGSL + /* wgsl */ `
@group(0) @binding(0) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> xh: array<vec4<f16>>;
@group(0) @binding(6) var<uniform> step: Step;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g3: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = g3.x + g3.y * nwg.x * 64u;
  if (i < step.n * ${K / 4}u) {
    let v = x[i]; let a = splitF16(v.x); let b = splitF16(v.y); let c = splitF16(v.z); let d = splitF16(v.w);
    let o = i / ${K / 4}u * ${K / 2}u + i % ${K / 4}u; // (row r's hi at r * 2K, its lo K later; in vec4s)
    xh[o] = vec4<f16>(a.x, b.x, c.x, d.x); xh[o + ${K / 4}u] = vec4<f16>(a.y, b.y, c.y, d.y);
  }
}`;
/** Workgroups of toHalfWgsl. */
export const toHalfGrid = (rows: number, K: number) => grid64((rows * K) / 4);

/** Query rows per subgroup (the config's M). */
const ATT_ROWS = 16;
/** Padding of the workgroup-memory rows: 8 elements keeps them 16-byte multiples (matrix loads and stores)
 *  and puts the rows that the lanes of a quarter-warp read as vec4s on different banks. */
const PAD = 8;
/** How the tensor-core prefill attention is laid out: subgroups per workgroup (16 query rows each), keys
 *  per tile, and whether a tile's keys and values are staged in workgroup memory (shared by the
 *  subgroups) or read by each subgroup straight from the pages, and whether q is re-read from workgroup
 *  memory each tile instead of held in registers. */
export interface AttentionTune { sg: number; keys: number; stage: boolean; qShared: boolean }
/** Workgroup memory of a layout: per subgroup f32 rows for S and then O's tile, f16 rows for q and then
 *  P; the staged keys and values. */
const attWorkgroupBytes = (hd: number, t: AttentionTune) =>
  t.sg * ATT_ROWS * ((Math.max(t.keys, hd) + PAD) * (4 + 2) + (t.qShared ? (t.keys + PAD) * 2 : 0)) + (t.stage ? 2 * t.keys * (hd + PAD) * 2 : 0);
/** Whether a layout can run a head dim on a device: its workgroup memory, and staging that splits evenly. */
const tuneFits = (hd: number, t: AttentionTune, maxWorkgroupBytes: number) =>
  attWorkgroupBytes(hd, t) <= maxWorkgroupBytes && (!t.stage || ((t.keys * hd) / 8) % (32 * t.sg) === 0);
/** The layouts in order of preference (H100, `bench:kernels --only prefill-attention`, docs/results.md: two
 *  subgroups sharing staged 32-key tiles ran at 50 TFLOP/s, one subgroup reading the pages itself at 26–29). */
const ATT_TUNES: AttentionTune[] = [{ sg: 2, keys: 32, stage: true, qShared: false }, { sg: 1, keys: 32, stage: false, qShared: true }];
/** The layout for a head dim on this device (QUEST_MMA_ATTENTION_TUNE=sg,keys,stage,qShared picks one, for
 *  benchmarks), or null where none fits. */
export function attentionTune(headDim: number, maxWorkgroupBytes: number, env = processEnv().QUEST_MMA_ATTENTION_TUNE): AttentionTune | null {
  if (env) {
    const [sg, keys, stage, qShared] = env.split(',');
    return { sg: +sg, keys: +keys, stage: stage === '1', qShared: qShared === '1' };
  }
  return ATT_TUNES.find((t) => tuneFits(headDim, t, maxWorkgroupBytes)) ?? null;
}
/** Query rows per workgroup (the grid is ceil(n / rows) x heads). */
export const mmaAttentionRows = (t: AttentionTune) => ATT_ROWS * t.sg;

/** Whether the tensor-core prefill attention handles this shape on this config and device, and how. */
export function mmaAttentionFits(s: { headDim: number; pageSize: number }, cfg: MatrixConfig, maxWorkgroupBytes: number): AttentionTune | null {
  const t = attentionTune(s.headDim, maxWorkgroupBytes);
  const fits = t && tuneFits(s.headDim, t, maxWorkgroupBytes) && cfg.M === ATT_ROWS && cfg.N <= 16 && cfg.K <= 16
    && s.headDim % 8 === 0 && s.headDim % cfg.K === 0 && s.headDim % cfg.N === 0 && s.pageSize % 16 === 0 && s.headDim <= 256;
  return fits ? t : null;
}

/** Causal prefill attention over the paged f16 cache (which already holds the chunk), flash style, on
 *  tensor cores, in one pass over the keys. A workgroup takes 16-row query blocks of one head, one per
 *  subgroup; q (scaled by log2(e)/sqrt(hd), f16) is loaded once into left matrices. Per tile of 64 keys
 *  each subgroup (1) multiplies S = Q Kᵀ (Kᵀ as column-major right matrices read straight from the
 *  pages, where 16 keys of a head lie contiguous) and stores S to workgroup memory; (2) its lanes, two per
 *  query row, mask and read the row's scores, update the row's running maximum m and sum l (online
 *  softmax) and write P = exp2(s - m) as f16 (at most 1); (3) it multiplies the tile's P V into fresh
 *  result matrices (V as row-major right matrices from the pages) and stores them; (4) the lanes fold the
 *  tile into the output rows they hold in registers: O = O · exp2(m_old - m) + P V. Result matrices are
 *  opaque, so the rescaling happens in the lanes' registers, never on a matrix carried across tiles (on
 *  the H200 accumulators carried through a loop and assigned inside branches gave wrong results): every
 *  matrix operation runs unconditionally on fresh values, every loop bound is uniform; keys past a row's
 *  position are masked in (2). */
export const prefillAttentionMmaWgsl = (s: { nHeads: number; nKV: number; headDim: number; pageSize: number }, cfg: MatrixConfig, t: AttentionTune) => {
  const { N: SN, K: SK } = cfg, HD = s.headDim, SG = t.sg, THREADS = 32 * SG, ATT_KEYS = t.keys;
  const LDF = Math.max(ATT_KEYS, HD) + PAD, LDS = ATT_KEYS + PAD, LDO = HD + PAD, LDH = LDF, LDK = HD + PAD; // row strides (elements)
  const load = matrixLoad.bind(null, cfg.syntax), store = matrixStore.bind(null, cfg.syntax);
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const qSteps = range(HD / SK), keyBlocks = range(ATT_KEYS / SN), keySteps = range(ATT_KEYS / SK), chanBlocks = range(HD / SN);
  const sVecs = range(ATT_KEYS / 8), oVecs = range(HD / 8); // the vec4s of scores and of output a lane holds
  const P_ = t.qShared ? 'sp' : 'sh'; // where P goes
  const stageUnits = range(t.stage ? (ATT_KEYS * HD) / 8 / THREADS : 0); // 8-channel units of K and of V each thread stages
  const res = `subgroup_matrix_result<f32, ${SN}, 16>`, left = `subgroup_matrix_left<f16, ${SK}, 16>`, right = `subgroup_matrix_right<f16, ${SN}, ${SK}>`;
  // Kᵀ's and V's matrices: from the staged tile, or from the pages
  const kMatrix = (b: number, j: number) => (t.stage ? load(right, '&ks', `${b * SN * LDK + j * SK}u`, true, 'LDK')
    : load(right, '&kc', `kp${(b * SN) / 8} + ${j * SK}u`, true, 'HD'));
  const vMatrix = (b: number, c: number) => (t.stage ? load(right, '&vs', `${b * SK * LDK + c * SN}u`, false, 'LDK')
    : load(right, '&vc', `kp${(b * SK) / 8} + ${c * SN}u`, false, 'HD'));
  return MMA_HEADER + 'enable subgroups;\n' + STEP_WGSL + /* wgsl */ `
const NH: u32 = ${s.nHeads}u; const NKV: u32 = ${s.nKV}u; const G: u32 = ${s.nHeads / s.nKV}u;
const HD: u32 = ${HD}u; const P: u32 = ${s.pageSize}u; const QKV: u32 = ${(s.nHeads + 2 * s.nKV) * HD}u;
const BQ: u32 = ${ATT_ROWS * SG}u; const BKV: u32 = ${ATT_KEYS}u; const THREADS: u32 = ${THREADS}u;
const LDS: u32 = ${LDS}u; const LDO: u32 = ${LDO}u; const LDH: u32 = ${LDH}u; const LDK: u32 = ${LDK}u;
@group(0) @binding(0) var<storage, read> qkv: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> kc: array<${t.stage ? 'vec4<u32>' : 'f16'}>;
@group(0) @binding(2) var<storage, read> vc: array<${t.stage ? 'vec4<u32>' : 'f16'}>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<uniform> step: Step;
@group(0) @binding(6) var<storage, read> table: array<u32>; // physical page of each logical page
var<workgroup> sf: array<f32, ${SG * 16 * LDF}>; // per subgroup: [16 rows][keys] S, then [16 rows][HD] the tile's P V
var<workgroup> sh: array<f16, ${SG * 16 * LDH}>; // per subgroup: [16 rows][HD] q${t.qShared ? '' : ', then [16 rows][keys] P'}
${t.qShared ? `var<workgroup> sp: array<f16, ${SG * 16 * LDS}>; // per subgroup: [16 rows][keys] P` : ''}
${t.stage ? `var<workgroup> ks: array<f16, ${ATT_KEYS * LDK}>; // the tile's keys [keys][HD]
var<workgroup> vs: array<f16, ${ATT_KEYS * LDK}>; // and values` : ''}
// where key t of KV head g starts in the paged cache
fn keyAt(t: u32, g: u32) -> u32 { return ((table[t / P] * NKV + g) * P + t % P) * HD; }
${t.stage ? `// this thread's share of a tile's keys and values (8 channels each), held in registers until they are staged
${stageUnits.map((u) => `var<private> kw${u}: vec4<u32>; var<private> vw${u}: vec4<u32>;`).join('\n')}
fn prefetch(t0: u32, g: u32, tid: u32) {
${stageUnits.map((u) => `  { let e = ${u * THREADS}u + tid; let src = keyAt(t0 + e / (HD / 8u), g) / 8u + e % (HD / 8u); kw${u} = kc[src]; vw${u} = vc[src]; }`).join('\n')}
}` : ''}
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let h = wid.y; let g = h / G; let i0 = wid.x * BQ;
  let lastPos = step.start + min(step.n, i0 + BQ) - 1u;
  let sg = tid / 32u; let lane = tid % 32u;
  let fb = sg * 16u * ${LDF}u; let hb = sg * 16u * LDH; // this subgroup's rows of sf and sh
  // this lane's query row and which half of each 8 keys / 8 channels it takes (4 consecutive ones)
  let row = lane / 2u; let half = lane % 2u;
  let i = i0 + sg * 16u + row; let qpos = step.start + i;
  let scale = ${(Math.LOG2E / Math.sqrt(HD)).toPrecision(9)};
  for (var c = half; c < HD / 4u; c += 2u) {
    let q = vec4<f16>(qkv[(min(i, step.n - 1u) * QKV + h * HD) / 4u + c] * scale);
    let d = hb + row * LDH + c * 4u;
    sh[d] = q.x; sh[d + 1u] = q.y; sh[d + 2u] = q.z; sh[d + 3u] = q.w;
  }
  workgroupBarrier();
${t.qShared ? '' : qSteps.map((j) => `  let q${j} = ${load(left, '&sh', `hb + ${j * SK}u`, false, 'LDH')};`).join('\n')}
  let pb = ${t.qShared ? 'sg * 16u * LDS' : 'hb'}; // this subgroup's rows of P
${oVecs.map((j) => `  var o${j} = vec4<f32>(0.0);`).join('\n')}
  var m = -1.0e30; var l = 0.0;${t.stage ? '\n  prefetch(0u, g, tid);' : ''}
  for (var t0 = 0u; t0 <= lastPos; t0 += BKV) {
    workgroupBarrier(); // (the lanes are done with the previous tile's P V in sf${t.stage ? ', and with its keys and values' : ''})
${t.stage ? `    // the tile's keys and values, loaded during the previous tile, into workgroup memory; the next tile's loaded
${stageUnits.map((u) => `    { let d = (${u * THREADS}u + tid) / (HD / 8u) * LDK + (${u * THREADS}u + tid) % (HD / 8u) * 8u;
      for (var w = 0u; w < 4u; w++) {
        let kp = bitcast<vec2<f16>>(kw${u}[w]); let vp = bitcast<vec2<f16>>(vw${u}[w]);
        ks[d + 2u * w] = kp.x; ks[d + 2u * w + 1u] = kp.y; vs[d + 2u * w] = vp.x; vs[d + 2u * w + 1u] = vp.y;
      } }`).join('\n')}
    workgroupBarrier();
    prefetch(t0 + BKV, g, tid);` : ''}
    // (1) S = Q Kᵀ${t.stage ? '' : `; where each 8 keys of the tile start in the pages
${range(ATT_KEYS / 8).map((r) => `    let kp${r} = keyAt(t0 + ${8 * r}u, g);`).join('\n')}`}
${keyBlocks.map((b) => `    var sm${b} = ${res}();`).join('\n')}
${qSteps.map((j) => `    {${t.qShared ? `
      let q${j} = ${load(left, '&sh', `hb + ${j * SK}u`, false, 'LDH')};` : ''}
${keyBlocks.map((b) => `      let k${b} = ${kMatrix(b, j)};`).join('\n')}
${keyBlocks.map((b) => `      sm${b} = subgroupMatrixMultiplyAccumulate(q${j}, k${b}, sm${b});`).join('\n')}
    }`).join('\n')}
${keyBlocks.map((b) => `    ${store('&sf', `fb + ${b * SN}u`, `sm${b}`, 'LDS')};`).join('\n')}
    workgroupBarrier();
    // (2) this lane's keys 8j + 4 half .. + 3 of its row: masked scores, the new maximum, P
    let sr = fb + row * LDS + half * 4u;
    let kt = t0 + half * 4u;
${sVecs.map((j) => `    let s${j} = select(vec4<f32>(-1.0e30), vec4<f32>(sf[sr + ${8 * j}u], sf[sr + ${8 * j + 1}u], sf[sr + ${8 * j + 2}u], sf[sr + ${8 * j + 3}u]),
      vec4<u32>(kt + ${8 * j}u, kt + ${8 * j + 1}u, kt + ${8 * j + 2}u, kt + ${8 * j + 3}u) <= vec4<u32>(qpos));`).join('\n')}
    var mt = m;
${sVecs.map((j) => `    mt = max(mt, max(max(s${j}.x, s${j}.y), max(s${j}.z, s${j}.w)));`).join('\n')}
    mt = max(mt, subgroupShuffleXor(mt, 1u));
    let alpha = exp2(m - mt); m = mt; l *= alpha;
    let pr = pb + row * LDS + half * 4u;
${sVecs.map((j) => `    { let p = select(vec4<f32>(0.0), exp2(s${j} - vec4<f32>(m)), s${j} > vec4<f32>(-1.0e29)); l += (p.x + p.y) + (p.z + p.w);
      let ph = vec4<f16>(p); ${P_}[pr + ${8 * j}u] = ph.x; ${P_}[pr + ${8 * j + 1}u] = ph.y; ${P_}[pr + ${8 * j + 2}u] = ph.z; ${P_}[pr + ${8 * j + 3}u] = ph.w; }`).join('\n')}
    workgroupBarrier();
    // (3) the tile's P V, over S's rows in sf (read by now)
${keySteps.map((b) => `    let p${b} = ${load(left, `&${P_}`, `pb + ${b * SK}u`, false, 'LDS')};`).join('\n')}
${range(Math.ceil(chanBlocks.length / 4)).map((cg) => {
    const cs = chanBlocks.slice(cg * 4, cg * 4 + 4); // four channel blocks at a time: independent accumulators
    return `    {
${cs.map((c) => `      var a${c} = ${res}();`).join('\n')}
${keySteps.map((b) => `${cs.map((c) => `      let v${b}_${c} = ${vMatrix(b, c)};`).join('\n')}
${cs.map((c) => `      a${c} = subgroupMatrixMultiplyAccumulate(p${b}, v${b}_${c}, a${c});`).join('\n')}`).join('\n')}
${cs.map((c) => `      ${store('&sf', `fb + ${c * SN}u`, `a${c}`, 'LDO')};`).join('\n')}
    }`;
  }).join('\n')}
    workgroupBarrier();
    // (4) O = O alpha + P V on this lane's channels 8j + 4 half .. + 3
    let orow = fb + row * LDO + half * 4u;
${oVecs.map((j) => `    o${j} = o${j} * alpha + vec4<f32>(sf[orow + ${8 * j}u], sf[orow + ${8 * j + 1}u], sf[orow + ${8 * j + 2}u], sf[orow + ${8 * j + 3}u]);`).join('\n')}
  }
  l += subgroupShuffleXor(l, 1u);
  if (i < step.n) {
    let inv = 1.0 / l; let ob = (i * NH + h) * (HD / 4u) + half;
${oVecs.map((j) => `    out[ob + ${2 * j}u] = o${j} * inv;`).join('\n')}
  }
}`;
};
