// The Q4_0 products of a batched decode step on 8-bit tensor cores (WGSL subgroup matrices i8 -> i32),
// with each token's x quantised to int8 (quantiseXWgsl) exactly as the integer-dot-product kernel
// (int8-batch.ts) and a solo step take it: a block's integer sum of code x int8 x is the same integer, on
// tensor cores instead of 8 dot4I8Packed per token and row, and the block's value, scale x x's scale x
// (sum - 8 x x's sum), is added as there. Only the order of the f32 sums over blocks differs.
//
// A workgroup of SG subgroups holds 16 tokens (one block of rows of the matrices) against WN weight rows;
// its subgroups take disjoint blocks of 32 columns, BPI at a time (an iteration). Per iteration a subgroup
// stages its blocks in workgroup memory (x's int8 words as they are, the weights' nibbles unpacked to
// bytes in x's column order: even columns, then odd), multiplies each block into a 16 x 16 result matrix
// per 16 rows, stores it, and its lanes (one weight row each) fold every block's integer sums into f32
// with the block's scales. The next iteration's loads are in registers meanwhile. Subgroups' partial sums
// meet in workgroup memory at the end.
import { type Int8MatrixConfig } from './device.js';
import { linearOut, STEP_WGSL, type LinearSpec } from './kernels.js';
import { matrixLoad, matrixStore } from './mma-kernels.js';

/** A layout: SG subgroups (each its own blocks of K), BPI blocks per iteration, WN weight rows. */
export interface Int8MmaLayout { SG: number; BPI: number; WN: number }
export const INT8_MMA_LAYOUT: Int8MmaLayout = { SG: 4, BPI: 2, WN: 32 };

/** "SG,BPI,WN" (QUEST_INT8_MMA_LAYOUT, bench:kernels --int8-mma). */
export function parseInt8MmaLayout(v: string | undefined): Int8MmaLayout | null {
  if (!v) return null;
  const [SG, BPI, WN] = v.split(',').map(Number);
  if (![SG, BPI, WN].every((x) => Number.isInteger(x) && x > 0) || WN !== 32 || SG > 8 || BPI > 8 || BPI % 2 !== 0)
    throw new Error(`an int8 tensor-core layout is SG,BPI,WN with WN = 32 (one row a lane), SG 1-8, BPI 2, 4, 6 or 8, got "${v}"`);
  return { SG, BPI, WN };
}

/** Words of a staged row of 32 int8 (8) plus padding (rows 16 bytes apart, off the same banks). */
const LA = 12;
const TOKENS = 16;

/** Whether the kernel handles a product: 4-bit Q4_0 weights, rows a whole number of WN, blocks a whole
 *  number of iterations, an iteration's loads a whole number per lane (BPI even); workgroup memory
 *  within the limit. */
export function int8MmaFits(s: { type: string; N: number; K: number }, lay: Int8MmaLayout, maxWorkgroupBytes: number): boolean {
  return s.type === 'q4_0' && s.N % lay.WN === 0 && s.K % (32 * lay.SG * lay.BPI) === 0 && (lay.BPI * TOKENS * 3) % 32 === 0
    && (lay.BPI * lay.WN) % 32 === 0 && int8MmaBytes(lay) <= maxWorkgroupBytes;
}

const wgWords = (lay: Int8MmaLayout) => {
  const TN = lay.WN / 16;
  return { wa: lay.BPI * TOKENS * LA, wb: lay.BPI * lay.WN * LA, wr: Math.max(lay.BPI * TN * 256, TOKENS * lay.WN), sx: lay.BPI * TOKENS, sw: lay.BPI * lay.WN };
};
/** Bytes of workgroup memory. */
export const int8MmaBytes = (lay: Int8MmaLayout) => { const w = wgWords(lay); return 4 * lay.SG * (w.wa + w.wb + w.wr + 2 * w.sx + w.sw); };

/** Workgroups for N rows and `tokens` tokens: (token blocks, row tiles), token blocks fastest, so the
 *  workgroups that read the same weights for different tokens run side by side (L2). */
export const int8MmaGrid = (N: number, tokens: number, lay: Int8MmaLayout): [number, number] => [Math.ceil(tokens / TOKENS), N / lay.WN];

/** y[t][N] (=|+=) W[N][K] · xq[t] (+ bias) for the step.n tokens of a batched decode step; W Q4_0
 *  (nibbles 8 to a u32 word, a block's four words one vec4; a scale per block), xq as quantiseXWgsl writes
 *  it (per block: the even columns' bytes, the odd columns', then scale, 8 x the int8 sum). */
export const linearInt8MmaWgsl = (s: LinearSpec, cfg: Int8MatrixConfig, lay: Int8MmaLayout) => {
  if (s.type !== 'q4_0') throw new Error(`linearInt8MmaWgsl: Q4_0 weights only (got ${s.type})`);
  if (s.prologue) throw new Error('linearInt8MmaWgsl: no prologue (quantiseXWgsl applies it)');
  const { SG, BPI, WN } = lay, TN = WN / 16, U = s.K / 32, ITER = U / (SG * BPI), THREADS = SG * 32, w = wgWords(lay);
  const e = cfg.units === 'words' ? 1 : 4; // (counted units per word in matrix loads)
  const load = matrixLoad.bind(null, cfg.syntax), store = matrixStore.bind(null, cfg.syntax);
  const range = (n: number) => Array.from({ length: n }, (_, i) => i);
  const AU = (BPI * TOKENS * 3) / 32; // x's vec4 units a lane loads per iteration (e, o, scales of a token's block)
  const BU = (BPI * WN) / 32; // weight blocks a lane loads per iteration
  if (!Number.isInteger(AU) || !Number.isInteger(BU)) throw new Error('linearInt8MmaWgsl: BPI x 16 x 3 and BPI x WN must be multiples of 32');
  const left = 'subgroup_matrix_left<i8, 32, 16>', right = 'subgroup_matrix_right<i8, 16, 32>', res = 'subgroup_matrix_result<i32, 16, 16>';
  return 'enable chromium_experimental_subgroup_matrix;\ndiagnostic(off, chromium.subgroup_matrix_uniformity);\n' + STEP_WGSL + /* wgsl */ `
const N: u32 = ${s.N}u; const U: u32 = ${U}u; const SG: u32 = ${SG}u; const BPI: u32 = ${BPI}u; const WN: u32 = ${WN}u;
const LA: u32 = ${LA}u; const THREADS: u32 = ${THREADS}u;
@group(0) @binding(0) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> wd: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> ws: array<f32>;
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
@group(0) @binding(6) var<uniform> step: Step;
// per subgroup: x's blocks [BPI][16 tokens][LA words], the weights' [BPI][WN rows][LA], the result
// matrices [BPI][TN][16 x 16] (at the end the subgroups' partial sums [16][WN]), x's scales and sums
// [BPI][16], the weights' scales [BPI][WN]
var<workgroup> wa: array<i32, ${SG * w.wa}>;
var<workgroup> wb: array<i32, ${SG * w.wb}>;
var<workgroup> wr: array<i32, ${SG * w.wr}>;
var<workgroup> sx: array<f32, ${SG * w.sx}>;
var<workgroup> ss: array<i32, ${SG * w.sx}>;
var<workgroup> sw: array<f32, ${SG * w.sw}>;
${range(AU).map((i) => `var<private> pa${i}: vec4<u32>;`).join('\n')}
${range(BU).map((i) => `var<private> pb${i}: vec4<u32>; var<private> pw${i}: f32;`).join('\n')}
// this lane's loads for iteration 'it' (clamped past the last: nobody reads those)
fn fetch(it: u32, sg: u32, lane: u32, t0: u32, n0: u32) {
  let b0 = (min(it, ${ITER - 1}u) * SG + sg) * BPI;
${range(AU).map((i) => `  { let u = ${i * 32}u + lane; let j = u / 48u; let tok = min(t0 + u / 3u % 16u, step.n - 1u); pa${i} = x[(tok * U + b0 + j) * 3u + u % 3u]; }`).join('\n')}
${range(BU).map((i) => `  { let u = ${i * 32}u + lane; let j = u / WN; let at = (n0 + u % WN) * U + b0 + j; pb${i} = wd[at]; pw${i} = ws[at]; }`).join('\n')}
}
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let t0 = wid.x * 16u; let n0 = wid.y * WN;
  let sg = tid / 32u; let lane = tid % 32u;
  let ab = sg * ${w.wa}u; let bb = sg * ${w.wb}u; let rb = sg * ${w.wr}u; let xb = sg * ${w.sx}u; let wbase = sg * ${w.sw}u;
  // this lane's sums: weight row n0 + lane, token t0 + i
${range(TOKENS).map((i) => `  var acc${i} = 0.0;`).join('\n')}
  fetch(0u, sg, lane, t0, n0);
  for (var it = 0u; it < ${ITER}u; it++) {
    // stage this iteration's blocks
${range(AU).map((i) => `    { let u = ${i * 32}u + lane; let j = u / 48u; let tok = u / 3u % 16u; let part = u % 3u; let v = pa${i};
      if (part == 2u) { sx[xb + j * 16u + tok] = bitcast<f32>(v.x); ss[xb + j * 16u + tok] = bitcast<i32>(v.y); }
      else { let d = ab + (j * 16u + tok) * LA + part * 4u; wa[d] = bitcast<i32>(v.x); wa[d + 1u] = bitcast<i32>(v.y); wa[d + 2u] = bitcast<i32>(v.z); wa[d + 3u] = bitcast<i32>(v.w); } }`).join('\n')}
${range(BU).map((i) => `    { let u = ${i * 32}u + lane; let j = u / WN; let r = u % WN; let d = bb + (j * WN + r) * LA;
      let lo = bitcast<vec4<i32>>(pb${i} & vec4<u32>(0x0f0f0f0fu)); let hi = bitcast<vec4<i32>>((pb${i} >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu));
      wb[d] = lo.x; wb[d + 1u] = lo.y; wb[d + 2u] = lo.z; wb[d + 3u] = lo.w; wb[d + 4u] = hi.x; wb[d + 5u] = hi.y; wb[d + 6u] = hi.z; wb[d + 7u] = hi.w;
      sw[wbase + j * WN + r] = pw${i}; }`).join('\n')}
    workgroupBarrier();
    fetch(it + 1u, sg, lane, t0, n0);
    // each block's integer sums, 16 rows at a time
${range(BPI).map((j) => `    { let a = ${load(left, '&wa', `(ab + ${j * TOKENS * LA}u) * ${e}u`, false, `${LA * e}u`)};
${range(TN).map((t) => `      ${store('&wr', `rb + ${(j * TN + t) * 256}u`, `subgroupMatrixMultiplyAccumulate(a, ${load(right, '&wb', `(bb + ${(j * WN + t * 16) * LA}u) * ${e}u`, true, `${LA * e}u`)}, ${res}())`, '16u')};`).join('\n')} }`).join('\n')}
    workgroupBarrier();
    // folded into this lane's row: scale x x's scale x (sum - 8 x x's sum), per block
${range(BPI).map((j) => `    { let s = sw[wbase + ${j * WN}u + lane]; let rj = rb + (${j * TN}u + lane / 16u) * 256u + lane % 16u;
${range(TOKENS).map((i) => `      acc${i} += s * sx[xb + ${j * 16 + i}u] * f32(wr[rj + ${i * 16}u] - ss[xb + ${j * 16 + i}u]);`).join('\n')} }`).join('\n')}
    workgroupBarrier();
  }
  // the subgroups' partial sums (as f32 bits in wr), then each output once
${range(TOKENS).map((i) => `  wr[rb + ${i}u * WN + lane] = bitcast<i32>(acc${i});`).join('\n')}
  workgroupBarrier();
  for (var q = tid; q < 16u * WN; q += THREADS) {
    let tok = t0 + q / WN; let row = n0 + q % WN;
    if (tok < step.n) {
      var v = 0.0;
      for (var g = 0u; g < SG; g++) { v += bitcast<f32>(wr[g * ${w.wr}u + q]); }
      ${linearOut(s, 'tok * N + row', 'row', 'v')}
    }
  }
}`;
};
