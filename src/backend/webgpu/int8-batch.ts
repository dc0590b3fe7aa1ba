// The 4-bit weight products of a batched decode step, with each token's x quantised to int8
// (quantiseXWgsl) as a solo step quantises it: each weight block is read and unpacked once and then
// applied to all of a workgroup's tokens in registers.
//
// The matrix-vector kernel (linearRowsWgsl with xq) runs one token per workgroup, so 16 tokens read
// every weight block 16 times: from the L2 cache, since the tokens' workgroups run side by side, but
// 16 x 50 MB of L2 reads for the 7B shape's gate+up product (140 µs on an H100, where reading the 50 MB
// once from memory takes ~17 µs). Here the L2 sees the weights once per TB tokens.
import { hasMins, linearOut, scalesDecl, STEP_WGSL, type GpuWeightType, type LinearSpec } from './kernels.js';

/** A layout of linearBatchInt8Wgsl: R weight rows per 32-thread set (one subgroup), TB tokens per
 *  workgroup; `spread`: the set's lanes split into TB tokens x 32 / TB block lanes (each lane one token,
 *  R accumulators) instead of every lane holding all TB tokens' sums (R x TB accumulators). */
export interface Int8BatchLayout { R: number; TB: number; spread?: boolean }

/** The default layout for rows of K columns: 8 tokens a workgroup; 2 rows a set, 4 for long rows (whose
 *  many blocks per thread amortise 4 rows' x loads; H100, 16 tokens, µs: gate+up 22016 x 4096 78.5 (R2)
 *  vs 86.5 (R4), down 4096 x 11008 58.2 vs 43.0, qkv and wo equal; `npm run bench:kernels -- --only
 *  batch-products --types q4_0`). QUEST_INT8_BATCH=R,TB picks one for every product. */
export const int8BatchLayout = (K: number): Int8BatchLayout => ({ R: K > 8192 ? 4 : 2, TB: 8 });

/** Row sets (32 threads each) per workgroup. */
const SETS = 8;

export const int8BatchTypes = (t: GpuWeightType) => t === 'q4_0' || t === 'q4_1';

/** "R,TB[,spread]" (QUEST_INT8_BATCH, bench:kernels --int8). */
export function parseInt8Batch(v: string | undefined): Int8BatchLayout | null {
  if (!v) return null;
  const [r, tb, how] = v.split(','), R = Number(r), TB = Number(tb), spread = how === 'spread';
  if (!(R >= 1 && R <= 8 && TB >= 1 && TB <= 32 && Number.isInteger(R) && Number.isInteger(TB)) || (how !== undefined && !spread) || (spread && 32 % TB !== 0)) {
    throw new Error(`QUEST_INT8_BATCH: expected "R,TB[,spread]" (rows 1-8, tokens 1-32, spread: tokens dividing 32), got "${v}"`);
  }
  return spread ? { R, TB, spread } : { R, TB };
}

/** Both layouts' bindings: the quantised x, y, the weights' nibbles and scales, the bias, the step (its n). */
const bindings = (s: LinearSpec) => /* wgsl */ `@group(0) @binding(0) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<storage, read> wd: array<vec4<u32>>;
${scalesDecl(s.type, 3)}
${s.bias ? '@group(0) @binding(4) var<storage, read> bias: array<f32>;' : ''}
@group(0) @binding(6) var<uniform> step: Step;`;

/** The integer dot product of a block's nibbles (as int8 words: low nibbles `lo` = even columns, high
 *  `hi` = odd) with the token's int8 x (e: even columns, o: odd). */
const blockDot = (lo: string, hi: string) => `dot4I8Packed(${lo}.x, e.x) + dot4I8Packed(${hi}.x, o.x) + dot4I8Packed(${lo}.y, e.y) + dot4I8Packed(${hi}.y, o.y)
        + dot4I8Packed(${lo}.z, e.z) + dot4I8Packed(${hi}.z, o.z) + dot4I8Packed(${lo}.w, e.w) + dot4I8Packed(${hi}.w, o.w)`;

/** A block's contribution from that integer dot product id{r}: q4_0 sum (code - 8) x = id - 8 sum(x);
 *  q4_1 scale * id + min * sum(x) (xs8 is 8 x the int8 sum). */
const blockValueOf = (t: GpuWeightType, r: number) => (hasMins(t) ? `xd * (s${r}.x * f32(id${r}) + s${r}.y * f32(xs8 / 8))` : `s${r} * xd * f32(id${r} - xs8)`);

/** y[t][N] (=|+=) W[N][K] · xq[t] (+ bias) for the step.n tokens of a batched decode step, W in 4-bit
 *  blocks of 32 (q4_0: (code - 8) * scale; q4_1: code * scale + min) and xq each token's x quantised by
 *  quantiseXWgsl (per block: even-column bytes, odd-column bytes, then scale and 8 x the int8 sum).
 *  A set of 32 threads (one subgroup) owns R rows; its threads stride over the rows' blocks (a block =
 *  one 16-byte load of 32 nibbles); each thread unpacks its block of the R rows to int8 words once, then
 *  for each of the workgroup's TB tokens loads that block of the token's xq (shared by the R rows and,
 *  through L1, by the workgroup's 8 sets) and takes 8 packed integer dot products per row. Sums are
 *  reduced across the set at the end: subgroup adds where subgroups are 32 wide, else workgroup memory.
 *  Tokens past step.n repeat the last one and rows past N the last row: neither is written.
 *  Grid (tokens fastest, so the workgroups sharing a weight block run side by side): int8BatchGrid. */
export const linearBatchInt8Wgsl = (s: LinearSpec, lay: Int8BatchLayout, subgroups = false) => {
  if (!int8BatchTypes(s.type)) throw new Error(`linearBatchInt8Wgsl: 4-bit weights only (got ${s.type})`);
  if (s.prologue) throw new Error('linearBatchInt8Wgsl: no prologue (quantiseXWgsl applies it)');
  if (s.K % 32 !== 0) throw new Error(`linearBatchInt8Wgsl: K must be a multiple of 32 (got ${s.K})`);
  if (lay.spread) return spreadWgsl(s, lay, subgroups);
  const { R, TB } = lay, U = s.K / 32, UPT = Math.ceil(U / 32), full = U % 32 === 0;
  const rows = Array.from({ length: R }, (_, r) => r), toks = Array.from({ length: TB }, (_, b) => b);
  const acc = (r: number, b: number) => `a${r}_${b}`;
  const blockValue = (r: number) => blockValueOf(s.type, r);
  const out = (r: number, b: number, v: string) => `{ let row = r0 + ${r}u; let tok = b0 + ${b}u; if (row < N && tok < step.n) ${linearOut(s, 'tok * N + row', 'row', v)} }`;
  return (subgroups ? 'enable subgroups;\n' : '') + STEP_WGSL + /* wgsl */ `
const N: u32 = ${s.N}u;
const U: u32 = ${U}u;     // blocks of 32 per row
const UPT: u32 = ${UPT}u; // blocks per thread
const R: u32 = ${R}u;     // rows per set
const TB: u32 = ${TB}u;   // tokens per workgroup
${bindings(s)}
${subgroups ? '' : 'var<workgroup> red: array<f32, 256>;'}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let tid = lid.x; let t = tid % 32u;
  let b0 = wid.x * TB; let r0 = (wid.y * ${SETS}u + tid / 32u) * R;
${toks.map((b) => `  let xb${b} = min(b0 + ${b}u, step.n - 1u) * U * 3u;`).join('\n')}
${rows.map((r) => `  let wr${r} = min(r0 + ${r}u, N - 1u) * U;`).join('\n')}
${rows.map((r) => toks.map((b) => `var ${acc(r, b)} = 0.0;`).join(' ')).map((l) => `  ${l}`).join('\n')}
  for (var i = 0u; i < UPT; i++) {
    let u = ${full ? 't + i * 32u' : 'min(t + i * 32u, U - 1u)'};${full ? '' : ' let ok = t + i * 32u < U;'}
${rows.map((r) => `    let w${r} = wd[wr${r} + u]; let s${r} = ws[wr${r} + u];
    let lo${r} = w${r} & vec4<u32>(0x0f0f0f0fu); let hi${r} = (w${r} >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);`).join('\n')}
${toks.map((b) => `    {
      let e = x[xb${b} + 3u * u]; let o = x[xb${b} + 3u * u + 1u]; let m = x[xb${b} + 3u * u + 2u];
      let xd = bitcast<f32>(m.x); let xs8 = bitcast<i32>(m.y);
${rows.map((r) => `      let id${r} = ${blockDot(`lo${r}`, `hi${r}`)};
      ${acc(r, b)} += ${full ? blockValue(r) : `select(0.0, ${blockValue(r)}, ok)`};`).join('\n')}
    }`).join('\n')}
  }
${subgroups ? rows.map((r) => toks.map((b) => `  { let v = subgroupAdd(${acc(r, b)}); if (t == ${(r * TB + b) % 32}u) ${out(r, b, 'v')} }`).join('\n')).join('\n')
    : `  // one sum at a time: a tree over each set's 32 threads
${rows.map((r) => toks.map((b) => `  red[tid] = ${acc(r, b)}; workgroupBarrier();
  for (var w = 16u; w > 0u; w >>= 1u) { if (t < w) { red[tid] += red[tid + w]; } workgroupBarrier(); }
  if (t == 0u) ${out(r, b, 'red[tid]')}
  workgroupBarrier();`).join('\n')).join('\n')}`}
}`;
};

/** The `spread` layout: lane = token (lane / BL) x block lane (lane % BL, BL = 32 / TB): each lane takes
 *  one token's x and R rows' blocks bl, bl + BL, ... (the BL lanes of a token stride over the row; the
 *  TB lanes that load one weight block load it together, one broadcast), R sums a lane, reduced over
 *  the token's BL lanes. Fewer registers than the other layout (R accumulators, not R x TB), at the cost
 *  of unpacking each weight block once per token. */
const spreadWgsl = (s: LinearSpec, lay: Int8BatchLayout, subgroups: boolean) => {
  const { R, TB } = lay, U = s.K / 32, BL = 32 / TB, steps = Math.ceil(U / BL), full = U % BL === 0;
  const rows = Array.from({ length: R }, (_, r) => r);
  const blockValue = (r: number) => blockValueOf(s.type, r);
  const out = (r: number, v: string) => `{ let row = r0 + ${r}u; if (row < N && tok < step.n) ${linearOut(s, 'tok * N + row', 'row', v)} }`;
  return (subgroups ? 'enable subgroups;\n' : '') + STEP_WGSL + /* wgsl */ `
const N: u32 = ${s.N}u;
const U: u32 = ${U}u;     // blocks of 32 per row
const BL: u32 = ${BL}u;   // lanes per token
${bindings(s)}
${subgroups ? '' : `var<workgroup> red: array<f32, ${256 * R}>;`}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let tid = lid.x; let lane = tid % 32u; let bl = lane % BL;
  let tok = wid.x * ${TB}u + lane / BL; let r0 = (wid.y * ${SETS}u + tid / 32u) * ${R}u;
  let xb = min(tok, step.n - 1u) * U * 3u;
${rows.map((r) => `  let wr${r} = min(r0 + ${r}u, N - 1u) * U; var a${r} = 0.0;`).join('\n')}
  for (var i = 0u; i < ${steps}u; i++) {
    let u = ${full ? 'bl + i * BL' : 'min(bl + i * BL, U - 1u)'};${full ? '' : ' let ok = bl + i * BL < U;'}
    let e = x[xb + 3u * u]; let o = x[xb + 3u * u + 1u]; let m = x[xb + 3u * u + 2u];
    let xd = bitcast<f32>(m.x); let xs8 = bitcast<i32>(m.y);
${rows.map((r) => `    {
      let w = wd[wr${r} + u]; let s${r} = ws[wr${r} + u];
      let lo = w & vec4<u32>(0x0f0f0f0fu); let hi = (w >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);
      let id${r} = ${blockDot('lo', 'hi')};
      a${r} += ${full ? blockValue(r) : `select(0.0, ${blockValue(r)}, ok)`};
    }`).join('\n')}
  }
${subgroups ? `  // sums over the token's BL lanes (adjacent lanes)
  for (var d = BL / 2u; d > 0u; d >>= 1u) {
${rows.map((r) => `    a${r} += subgroupShuffleXor(a${r}, d);`).join('\n')}
  }
  if (bl == 0u) {
${rows.map((r) => `    ${out(r, `a${r}`)}`).join('\n')}
  }` : `${rows.map((r) => `  red[${r}u * 256u + tid] = a${r};`).join('\n')}
  workgroupBarrier();
  if (bl == 0u) {
${rows.map((r) => `    { var v = 0.0; for (var j = 0u; j < BL; j++) { v += red[${r}u * 256u + tid + j]; } ${out(r, 'v')} }`).join('\n')}
  }`}
}`;
};

/** Workgroups of linearBatchInt8Wgsl for N rows and `tokens` tokens: (token groups, row blocks). */
export const int8BatchGrid = (N: number, tokens: number, lay: Int8BatchLayout): [number, number] =>
  [Math.ceil(tokens / lay.TB), Math.ceil(N / (SETS * lay.R))];
