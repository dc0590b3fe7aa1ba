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

/** Subgroup-matrix kernels keep every workgroup variable a multiple of 16 bytes: NVIDIA's Vulkan driver
 *  misplaced matrix loads from workgroup memory behind a 4-byte variable (mma-attention.ts). */
/** The kernels' directives. Offsets of subgroup-matrix loads and stores differ per subgroup (each owns
 *  a block of the tile); Tint's analysis wants them workgroup-uniform, which is stricter than the
 *  hardware needs (subgroup-uniform), so that diagnostic is off, as llama.cpp's WebGPU kernels do. */
export const MMA_HEADER = 'enable f16;\nenable chromium_experimental_subgroup_matrix;\ndiagnostic(off, chromium.subgroup_matrix_uniformity);\n';

/** Workgroup tile of the product: BM tokens x BN weight rows, split into WM x WN blocks per subgroup;
 *  BK columns of K staged per step. */
export interface MmaTile {
  BM: number; BN: number; WM: number; WN: number; BK: number; prefetch?: boolean;
  /** Two staged tiles in turn (with prefetch): a K step writes one while the last step's is read, so one
   *  barrier per step instead of two. The barriers cost a quarter of the 7B gate+up product, yet this
   *  ran slower (H100, session 29: 133 against 185 TFLOP/s; twice the workgroup memory), so no default
   *  tile uses it; `bench/kernel-ablation` compares. */
  double?: boolean;
  /** Workgroups walk the output in groups of this many token tiles, weight tiles slowest within a group
   *  (as Triton's grouped ordering), so a weight tile is read from memory once per group, not once per
   *  token tile; undefined: token tiles slowest (each x tile shared by the workgroups in flight). */
  group?: number;
}
/** In order of preference (H100, `bench:kernels --only prefill`, docs/results.md): each thread loads the next
 *  K step's x and weights into registers while the subgroups multiply the current one (prefetch); 64 x 64
 *  blocks per subgroup ran f16 and Q8_0 weights at 131–145 TFLOP/s, 64 x 32 blocks 99–124 (the kernels
 *  without prefetch: 60–69). Session 29 (`bench/kernel-ablation`, the 7B gate+up product, f16): 185
 *  TFLOP/s as before, 198 with workgroups grouped by 8 token tiles, 217 with x stored as f16 too. */
export const MMA_TILES: MmaTile[] = [
  { BM: 128, BN: 128, WM: 64, WN: 64, BK: 32, prefetch: true, group: 8 }, { BM: 128, BN: 128, WM: 64, WN: 32, BK: 32, prefetch: true },
  { BM: 128, BN: 128, WM: 64, WN: 32, BK: 64, prefetch: true },
  { BM: 128, BN: 128, WM: 64, WN: 32, BK: 32 }, { BM: 128, BN: 128, WM: 64, WN: 64, BK: 32 }, { BM: 128, BN: 128, WM: 64, WN: 32, BK: 64 },
  { BM: 64, BN: 128, WM: 32, WN: 64, BK: 32 }, { BM: 128, BN: 64, WM: 64, WN: 32, BK: 32 }, { BM: 64, BN: 64, WM: 32, WN: 32, BK: 32 },
];
/** 4-bit weights take longer to decode into the staged tile: there the 64 x 32 blocks ran faster (120 vs 94 TFLOP/s). */
export const mmaTilesFor = (type: GpuWeightType, tiles: MmaTile[] = MMA_TILES): MmaTile[] =>
  (type === 'q4_0' || type === 'q4_1' ? [...tiles.filter((t) => t.WN <= 32), ...tiles.filter((t) => t.WN > 32)] : tiles);

/** The tile a product of N rows uses on this config (the first whose BN divides N and BK divides K),
 *  or null where none fits (such products keep the fallback kernel). */
export function mmaTileFor(N: number, K: number, cfg: MatrixConfig, maxWorkgroupBytes: number, tiles: MmaTile[] = MMA_TILES): MmaTile | null {
  return tiles.find((t) => N % t.BN === 0 && K % t.BK === 0 && t.BK % cfg.K === 0 && t.WM % cfg.M === 0 && t.WN % cfg.N === 0
    && mmaTileBytes(t, cfg) <= maxWorkgroupBytes) ?? null;
}
/** Workgroup memory of a tile's kernel: the staged x and weights (twice where double), the bias rows. */
export const mmaTileBytes = (t: MmaTile, cfg: MatrixConfig) => (t.double ? 2 : 1) * (t.BM + t.BN) * (t.BK + 8) * 2 + cfg.M * t.BN * 4;

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
  if (t.double && !t.prefetch) throw new Error('a double-staged product tile needs prefetch');
  const BUFS = t.double ? 2 : 1;
  const load = matrixLoad.bind(null, cfg.syntax), store = matrixStore.bind(null, cfg.syntax);
  const TM = t.WM / SM, TN = t.WN / SN, SG = (t.BM / t.WM) * (t.BN / t.WN), THREADS = SG * 32;
  const blocks = Array.from({ length: TM * TN }, (_, b) => ({ b, i: Math.floor(b / TN), j: b % TN }));
  const xUnits = Array.from({ length: Math.ceil((t.BM * BK) / 4 / THREADS) }, (_, u) => u), wUnits = Array.from({ length: Math.ceil((t.BN * BK) / 8 / THREADS) }, (_, u) => u);
  const res = `subgroup_matrix_result<f32, ${SN}, ${SM}>`;
  return MMA_HEADER + weightAccess(s.type, s.K, 2) + w8h(s.type) + /* wgsl */ `
const N: u32 = ${s.N}u;
const BM: u32 = ${t.BM}u; const BN: u32 = ${t.BN}u; const BK: u32 = ${BK}u; const LDS: u32 = ${LDS}u;
const THREADS: u32 = ${THREADS}u;
@group(0) @binding(0) var<storage, read> x: array<vec4<${s.xHalf ? 'f16' : 'f32'}>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
var<workgroup> stageX: array<f16, ${BUFS * t.BM * LDS}>; // [BM tokens][BK k] (+ padding)${t.double ? ', twice' : ''}
var<workgroup> stageW: array<f16, ${BUFS * t.BN * LDS}>; // [BN rows][BK k]${t.double ? ', twice' : ''}
${s.bias ? `var<workgroup> stageB: array<f32, ${SM * t.BN}>; // the tile's bias, repeated on ${SM} rows` : ''}
${t.prefetch ? `// this thread's share of a step's x (4 columns) and weights (8 columns), held in registers until staged
${xUnits.map((u) => `var<private> px${u}: vec4<f16>;`).join('\n')}
${wUnits.map((u) => `var<private> pw${u}: array<vec2<f16>, 4>;`).join('\n')}
fn prefetch(t0: u32, o0: u32, k0: u32, tid: u32) {
${xUnits.map((u) => `  if (${u * THREADS}u + tid < BM * BK / 4u) { let e = ${u * THREADS}u + tid; px${u} = vec4<f16>(x[((t0 + e / (BK / 4u)) * K + k0) / 4u + e % (BK / 4u)]); }`).join('\n')}
${wUnits.map((u) => `  if (${u * THREADS}u + tid < BN * BK / 8u) { let e = ${u * THREADS}u + tid; pw${u} = w8h(o0 + e / (BK / 8u), k0 + e % (BK / 8u) * 8u); }`).join('\n')}
}` : ''}
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>${t.group ? ', @builtin(num_workgroups) nwg: vec3<u32>' : ''}) {
${t.group ? `  // grouped order: workgroup f takes token tile f % G + the group's first, weight tile (f / G) within the group
  let f = wid.y * nwg.x + wid.x; let perGroup = ${t.group}u * nwg.x; let g0 = f / perGroup * ${t.group}u;
  let G = min(${t.group}u, nwg.y - g0); let r = f - g0 * nwg.x;
  let t0 = (g0 + r % G) * BM; let o0 = r / G * BN;` : '  let t0 = wid.y * BM; let o0 = wid.x * BN;'}
  let sg = tid / 32u; // this subgroup's block: tokens m0.., weight rows n0..
  let m0 = (sg / ${t.BN / t.WN}u) * ${t.WM}u; let n0 = (sg % ${t.BN / t.WN}u) * ${t.WN}u;
${s.bias ? `  for (var e = tid; e < ${SM}u * BN; e += THREADS) { stageB[e] = bias[o0 + e % BN]; }
  workgroupBarrier();` : ''}
${blocks.map(({ b, i, j }) => `  var acc${b} = ${s.add
    ? `${load(res, '&y', `(t0 + m0 + ${i * SM}u) * N + o0 + n0 + ${j * SN}u`, false, 'N')};`
    : s.bias ? `${load(res, '&stageB', `n0 + ${j * SN}u`, false, 'BN')};` : `${res}();`}`).join('\n')}
${t.prefetch ? `  prefetch(t0, o0, 0u, tid);
  for (var k0 = 0u; k0 < K; k0 += BK) {
    // the step's x and weights, loaded during the previous step, into workgroup memory; the next step's loaded${t.double ? `
    // (steps alternate between the two staged tiles: this one was last read two steps ago, before the last barrier)
    let xb = (k0 / BK) % 2u * BM * LDS; let wb = (k0 / BK) % 2u * BN * LDS;` : `
    let xb = 0u; let wb = 0u;`}
${xUnits.map((u) => `    if (${u * THREADS}u + tid < BM * BK / 4u) { let e = ${u * THREADS}u + tid; let d = xb + e / (BK / 4u) * LDS + e % (BK / 4u) * 4u;
      stageX[d] = px${u}.x; stageX[d + 1u] = px${u}.y; stageX[d + 2u] = px${u}.z; stageX[d + 3u] = px${u}.w; }`).join('\n')}
${wUnits.map((u) => `    if (${u * THREADS}u + tid < BN * BK / 8u) { let e = ${u * THREADS}u + tid; let d = wb + e / (BK / 8u) * LDS + e % (BK / 8u) * 8u;
      for (var i = 0u; i < 4u; i++) { stageW[d + 2u * i] = pw${u}[i].x; stageW[d + 2u * i + 1u] = pw${u}[i].y; } }`).join('\n')}
    prefetch(t0, o0, min(k0 + BK, K - BK), tid); // (the last step loads its own again: nobody reads it)` : `  for (var k0 = 0u; k0 < K; k0 += BK) {
    let xb = 0u; let wb = 0u;
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
${Array.from({ length: TM }, (_, i) => `      let a${i} = ${load(`subgroup_matrix_left<f16, ${SK}, ${SM}>`, '&stageX', `xb + (m0 + ${i * SM}u) * LDS + kk`, false, 'LDS')};`).join('\n')}
${Array.from({ length: TN }, (_, j) => `      let b${j} = ${load(`subgroup_matrix_right<f16, ${SN}, ${SK}>`, '&stageW', `wb + (n0 + ${j * SN}u) * LDS + kk`, true, 'LDS')};`).join('\n')}
${blocks.map(({ b, i, j }) => `      acc${b} = subgroupMatrixMultiplyAccumulate(a${i}, b${j}, acc${b});`).join('\n')}
    }${t.double ? '' : `
    workgroupBarrier();`}
  }
${blocks.map(({ b, i, j }) => `  ${store('&y', `(t0 + m0 + ${i * SM}u) * N + o0 + n0 + ${j * SN}u`, `acc${b}`, 'N')};`).join('\n')}
}`;
};

// ---- products of a batched decode step: a few tokens, every weight read once ----

/** Layout of the few-token product: WN weight rows per workgroup, its SG subgroups splitting K (each
 *  takes every SG-th CK-column step) and summing their partial results in workgroup memory at the end;
 *  `stage`: weights dequantised (or copied) into a per-subgroup tile in workgroup memory, the next step's
 *  held in registers meanwhile, instead of loaded as matrices straight from the weight buffer (f16 only). */
export interface SkinnyTile {
  WN: number; SG: number; CK: number; stage: boolean;
  /** x's matrices for the next K step loaded before this step's products (hides their L2 latency behind
   *  the products, at the cost of holding two steps' x matrices). */
  xAhead?: boolean;
  /** x's tiles staged in workgroup memory beside the weights' (16-byte loads from x, then matrix loads
   *  from workgroup memory), instead of loaded as matrices straight from x: Dawn compiles matrix loads
   *  from storage to 16-bit loads (session 33), which left these kernels at 45% of the read bandwidth. */
  xStage?: boolean;
}
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
  // x staged too (session 34; not yet measured, so last)
  { WN: 32, SG: 4, CK: 32, stage: true, xStage: true }, { WN: 64, SG: 4, CK: 32, stage: true, xStage: true },
  { WN: 32, SG: 8, CK: 16, stage: true, xStage: true }, { WN: 32, SG: 4, CK: 64, stage: true, xStage: true },
];
/** Layouts written `WN,SG,CK,stage[,xa|xs]` (stage 1 or 0; xa: xAhead, xs: xStage), several joined by `;`; null for none. */
export function parseSkinnyTiles(spec: string | undefined): SkinnyTile[] | null {
  if (!spec) return null;
  return spec.split(';').map((one) => {
    const f = one.split(','), [WN, SG, CK, stage] = f.slice(0, 4).map(Number);
    if (![WN, SG, CK].every((v) => Number.isInteger(v) && v > 0) || (stage !== 0 && stage !== 1) || (f[4] !== undefined && f[4] !== 'xa' && f[4] !== 'xs') || (f[4] === 'xs' && stage !== 1))
      throw new Error(`a few-token product layout is WN,SG,CK,stage[,xa|xs] (e.g. 32,8,32,1,xa; xs needs stage 1), got "${one}"`);
    return { WN, SG, CK, stage: stage === 1, ...(f[4] === 'xa' ? { xAhead: true } : f[4] === 'xs' ? { xStage: true } : {}) };
  });
}
/** Token blocks per workgroup for a step of `rows` tokens. */
export const skinnyBlocks = (rows: number, cfg: MatrixConfig) => Math.min(SKINNY_BLOCKS, Math.ceil(rows / cfg.M));
const skinnyBytes = (t: SkinnyTile, blocks: number, cfg: MatrixConfig) => t.SG * blocks * cfg.M * t.WN * 4 + (t.stage ? t.SG * t.WN * (t.CK + 8) * 2 : 0)
  + (t.xStage ? t.SG * 2 * blocks * cfg.M * (t.CK + 8) * 2 : 0);
/** The first tile that fits a product (N rows, K columns, weight type) of `rows` tokens on this config
 *  and workgroup-memory limit, or null (then the batched matrix-vector kernel runs). Weights other than
 *  f16 are always staged (dequantised on the way). */
export function skinnyTileFor(type: GpuWeightType, N: number, K: number, rows: number, cfg: MatrixConfig, maxWorkgroupBytes: number, tiles = SKINNY_TILES): SkinnyTile | null {
  const blocks = skinnyBlocks(rows, cfg);
  return tiles.find((t) => (t.stage || type === 'f16') && (!t.xStage || (t.stage && (2 * blocks * cfg.M * t.CK) % (8 * 32) === 0)) && N % t.WN === 0 && t.WN % cfg.N === 0 && t.CK % cfg.K === 0 && t.CK % 8 === 0
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
  // x's left matrix of token block i at K step k0 + kk * SK: the hi part, or the lo part K further on
  const xLoad = (i: number, kk: number, k0: string, lo: boolean) => (t.xStage
    ? load(left, '&stx', `xb + ${(lo ? ROWS : 0) + i * SM}u * LDS + ${kk * SK}u`, false, 'LDS')
    : load(left, '&xh', `(t0 + ${i * SM}u) * XS + ${lo ? 'K + ' : ''}${k0} + ${kk * SK}u`, false, 'XS'));
  const xUnits = t.xStage ? range((2 * ROWS * t.CK) / 8 / 32) : []; // 8-value units of a step's x tile (hi, then lo) each lane stages
  const xLoads = (hi: (i: number, kk: number) => string, lo: (i: number, kk: number) => string, k0: string) =>
    range(t.CK / SK).flatMap((kk) => range(blocks).map((i) => `${hi(i, kk)}${xLoad(i, kk, k0, false)}; ${lo(i, kk)}${xLoad(i, kk, k0, true)};`)).join('\n');
  const left = `subgroup_matrix_left<f16, ${SK}, ${SM}>`, right = `subgroup_matrix_right<f16, ${SN}, ${SK}>`, res = `subgroup_matrix_result<f32, ${SN}, ${SM}>`;
  return MMA_HEADER + (t.stage ? weightAccess(s.type, s.K, 2) + w8h(s.type) : `const K: u32 = ${s.K}u;\n@group(0) @binding(2) var<storage, read> wh: array<f16>;`) + STEP_WGSL + /* wgsl */ `
const N: u32 = ${s.N}u; const WN: u32 = ${t.WN}u; const ROWS: u32 = ${ROWS}u; const CK: u32 = ${t.CK}u;
const SG: u32 = ${t.SG}u; const THREADS: u32 = ${THREADS}u; const LDS: u32 = ${LDS}u;
const XS: u32 = ${2 * s.K}u; // a row of x: [K hi][K lo]
${t.xStage ? '@group(0) @binding(0) var<storage, read> xv: array<vec4<u32>>; // (8 f16 a unit)' : '@group(0) @binding(0) var<storage, read> xh: array<f16>;'}
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
@group(0) @binding(6) var<uniform> step: Step;
var<workgroup> red: array<f32, ${t.SG * ROWS * t.WN}>; // each subgroup's partial sums [ROWS][WN] (hi, then lo)
${t.stage ? `var<workgroup> stw: array<f16, ${t.SG * t.WN * LDS}>; // each subgroup's weight tile [WN][CK] (+ padding)
${t.xStage ? `var<workgroup> stx: array<f16, ${t.SG * 2 * ROWS * LDS}>; // each subgroup's x tile [hi, lo][ROWS][CK] (+ padding)
${xUnits.map((u) => `var<private> px${u}: vec4<u32>;`).join('\n')}` : ''}
${units.map((u) => `var<private> pw${u}: array<vec2<f16>, 4>;`).join('\n')}
fn fetch(n0: u32, t0: u32, k0: u32, lane: u32) {
${units.map((u) => `  { let e = ${u * 32}u + lane; pw${u} = w8h(n0 + e / (CK / 8u), k0 + e % (CK / 8u) * 8u); }`).join('\n')}
${xUnits.map((u) => `  { let e = ${u * 32}u + lane; let r = e / (CK / 8u); px${u} = xv[((t0 + r % ROWS) * XS + r / ROWS * K + k0 + e % (CK / 8u) * 8u) / 8u]; }`).join('\n')}
}` : ''}
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let n0 = wid.x * WN; let t0 = wid.y * ROWS;
  let sg = tid / 32u; let lane = tid % 32u;
${mats.map(({ i, j }) => `  var acc${i}_${j} = ${res}(); var low${i}_${j} = ${res}();`).join('\n')}
${t.stage ? `  let wb = sg * WN * LDS;${t.xStage ? ' let xb = sg * 2u * ROWS * LDS;' : ''}
  fetch(n0, t0, sg * CK, lane);` : ''}
${t.xAhead ? xLoads((i, kk) => `  var xa${i}_${kk} = `, (i, kk) => `  var xl${i}_${kk} = `, 'sg * CK') : ''}
  for (var c = 0u; c < ${STEPS}u; c++) {
    let k0 = (c * SG + sg) * CK;${t.xAhead ? `
${xLoads((i, kk) => `    let a${i}_${kk} = xa${i}_${kk}; xa${i}_${kk} = `, (i, kk) => `    let l${i}_${kk} = xl${i}_${kk}; xl${i}_${kk} = `, 'min(k0 + SG * CK, K - CK)')}` : ''}
${t.stage ? `${units.map((u) => `    { let e = ${u * 32}u + lane; let d = wb + e / (CK / 8u) * LDS + e % (CK / 8u) * 8u;
      for (var w = 0u; w < 4u; w++) { stw[d + 2u * w] = pw${u}[w].x; stw[d + 2u * w + 1u] = pw${u}[w].y; } }`).join('\n')}
${xUnits.map((u) => `    { let e = ${u * 32}u + lane; let d = xb + e / (CK / 8u) * LDS + e % (CK / 8u) * 8u;
      for (var w = 0u; w < 4u; w++) { let h2 = bitcast<vec2<f16>>(px${u}[w]); stx[d + 2u * w] = h2.x; stx[d + 2u * w + 1u] = h2.y; } }`).join('\n')}
    workgroupBarrier();
    fetch(n0, t0, min(k0 + SG * CK, K - CK), lane); // (the last step loads one again: nobody reads it)` : ''}
${range(t.CK / SK).map((kk) => `    {
${range(blocks).map((i) => (t.xAhead ? `      let a${i} = a${i}_${kk}; let l${i} = l${i}_${kk};` : `      let a${i} = ${xLoad(i, kk, 'k0', false)};
      let l${i} = ${xLoad(i, kk, 'k0', true)};`)).join('\n')}
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
