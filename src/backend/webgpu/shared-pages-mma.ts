// Decode attention of forks over the pages they share, on tensor cores (WGSL subgroup matrices): the
// query vectors of up to 16 rows (every head of a KV group for each row) are the 16-row blocks of a small
// flash-attention, so a page is read once for the whole group and Q·Kᵀ and P·V run as matrix products.
// The thread kernel (decode-attention.ts, partialWgsl's shared variant) holds every query vector's state
// in each lane's registers, which spilled past 4 rows (H100, 7B: 16 rows 780 µs a layer against 156 for
// four groups of four rows, each of which reads the pages again).
//
// A workgroup takes one chunk of the shared pages of one KV head for one group of rows: QS subgroups, each
// with its own block of 16 query vectors, times KS key splits, each taking every KS-th tile of 32 keys of
// the chunk and writing its own partial result (max, sum, unnormalised output: the same entries as
// partialWgsl's, in its own chunk slot c KS + split), which the reduction kernel folds with the rest.
// Per tile a subgroup (1) multiplies S = Q Kᵀ (Kᵀ as column-major matrices straight from the pages, where
// 16 keys of a head lie contiguous), stores S to workgroup memory; (2) its lanes, two per query vector,
// update the vector's running maximum and sum and write P = exp2(s - m) as f16; (3) it multiplies P V,
// 32 channels at a time, into fresh result matrices and (4) the lanes fold them into the output they hold
// in registers, rescaled by their own row's maximum (exact per row, as mma-attention.ts's per-row kernel).
// `exact` (the default): q and P each go in as two f16 parts (the value and its remainder), as the batched
// products split their inputs, so that Q Kᵀ and P V keep f32's precision (K and V are f16 already) and
// a fork's tokens are those of its run alone; without it, q and P are rounded to f16 (about 1e-3 of a
// score), for half the matrix products.
//
// Quest rows of forks select their pages each with its own query, mostly among the pages they share: the
// selection-union kernel lists, per group and KV head, the shared pages any row of the group selected (in
// page order, each with a mask of the rows that did), and the sparse variant of the kernel reads the list
// instead of all pages, masking for each row the pages it did not select. Each page is then read once for
// the group instead of once per row that selected it; the rows' own pages (past the shared ones) stay with
// the per-row kernel: the union kernel leaves only those in each row's selection (the shared ones become
// NONE, and the per-row kernel skips a chunk with no page left).
import { type MatrixConfig } from './device.js';
import { matrixLoad, matrixStore, MMA_HEADER } from './mma-kernels.js';

/** Query vectors per subgroup (the config's M) and keys per tile. */
const ROWS = 16;
const KEYS = 32;
/** Channels of the output that one product of P V sends through workgroup memory at a time. */
const PIECE = 32;
/** Padding of the workgroup-memory rows (16-byte multiples, rows on different banks). */
const PAD = 8;

/** The layout: subgroups with their own query vectors (QS) times key splits (KS); `exact`: q and P as two
 *  f16 parts each. */
export interface SharedMmaLayout { qs: number; ks: number; exact: boolean }

/** Whether the kernel handles this shape on this config: 16-row blocks, keys of a page in runs of 16. */
export const sharedMmaFits = (s: { headDim: number; pageSize: number }, cfg: MatrixConfig | null): cfg is MatrixConfig =>
  !!cfg && cfg.M === ROWS && (cfg.N === 8 || cfg.N === 16) && (cfg.K === 8 || cfg.K === 16)
  && s.headDim % PIECE === 0 && s.headDim <= 256 && s.pageSize % 16 === 0;

/** Rows of a group and the layout for G query heads per KV head: up to 16 rows, at most four blocks of 16
 *  query vectors; the rest of four subgroups split the keys (`ks` overrides, QUEST_SHARED_MMA=ks). */
export function sharedMmaLayout(G: number, ks?: number, exact = true): { rows: number; layout: SharedMmaLayout } {
  const rows = Math.min(16, Math.floor((4 * ROWS) / G));
  const qs = Math.ceil((rows * G) / ROWS);
  return { rows, layout: { qs, ks: ks ?? Math.max(1, Math.floor(4 / qs)), exact } };
}

/** f16 elements of a subgroup's rows of sh: q, then P (both parts of it where exact). */
const shRows = (headDim: number, t: SharedMmaLayout) => ROWS * Math.max(headDim + PAD, (t.exact ? 2 : 1) * (KEYS + PAD));
/** Bytes of workgroup memory the kernel declares. */
export const sharedMmaBytes = (headDim: number, t: SharedMmaLayout) =>
  t.qs * t.ks * (ROWS * (Math.max(KEYS, PIECE) + PAD) * 4 + shRows(headDim, t) * 2);

/** Tokens one workgroup round covers (the chunks' pages are best a multiple of it). */
export const sharedMmaRoundTokens = (t: SharedMmaLayout) => t.ks * KEYS;

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** The kernel. `header`: the attention's parameters (`prms`, one entry per group: rows and slots packed 8
 *  bits each, count, chunkPages, nChunks, k = the shared pages, tableAt, chunkBase, scale) and scratch
 *  constants (SLOT_CHUNKS), as decode-attention.ts declares them. Bindings: 1 q [row][nH][hd] f32, 2 / 3 the
 *  K / V pages as f16, 4 the partial results [slot][nH][SLOT_CHUNKS][hd / 4 + 1] vec4, 5 the page table.
 *  Grid: (groups, chunks, KV heads). */
export const sharedPagesMmaWgsl = (s: { nHeads: number; nKV: number; headDim: number; pageSize: number }, cfg: MatrixConfig, t: SharedMmaLayout, header: string, sparse = false) => {
  const { N: SN, K: SK } = cfg, HD = s.headDim, SG = t.qs * t.ks, THREADS = 32 * SG;
  const LDF = Math.max(KEYS, PIECE) + PAD, LDS = KEYS + PAD, LDH = HD + PAD;
  const load = matrixLoad.bind(null, cfg.syntax), store = matrixStore.bind(null, cfg.syntax);
  const qSteps = range(HD / SK), keyBlocks = range(KEYS / SN), keySteps = range(KEYS / SK);
  const sVecs = range(KEYS / 8), oVecs = range(HD / 8); // the vec4s of scores and of output a lane holds
  const pieces = range(HD / PIECE).map((p) => ({ c0: PIECE * p, blocks: range(PIECE / SN).map((b) => (PIECE * p) / SN + b) }));
  const res = `subgroup_matrix_result<f32, ${SN}, 16>`, left = `subgroup_matrix_left<f16, ${SK}, 16>`, right = `subgroup_matrix_right<f16, ${SN}, ${SK}>`;
  // where keys 8r.. of the tile start (runs of 8 or 16 keys, as N and K are, lie inside one page)
  const kp = (key: number) => `kp${Math.floor(key / 8)}`;
  return MMA_HEADER + 'enable subgroups;\n' + header + /* wgsl */ `
const NH: u32 = ${s.nHeads}u; const NKV: u32 = ${s.nKV}u; const G: u32 = ${s.nHeads / s.nKV}u;
const HD: u32 = ${HD}u; const P: u32 = ${s.pageSize}u;
const KS: u32 = ${t.ks}u; const KEYS: u32 = ${KEYS}u;
const LDF: u32 = ${LDF}u; const LDS: u32 = ${LDS}u; const LDH: u32 = ${LDH}u;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kc: array<f16>;
@group(0) @binding(3) var<storage, read> vc: array<f16>;
@group(0) @binding(4) var<storage, read_write> part: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> table: array<u32>;
${sparse ? `@group(0) @binding(6) var<storage, read> ulist: array<u32>; // [group][NKV][SLOT_PAGES]: page | rows that selected it << 16
@group(0) @binding(7) var<storage, read> ucount: array<u32>; // [group][NKV]: pages listed
` : ''}var<workgroup> sf: array<f32, ${SG * ROWS * LDF}>; // per subgroup: [16 vectors][keys] S, then [16 vectors][32 channels] of P V
var<workgroup> sh: array<f16, ${SG * shRows(HD, t)}>; // per subgroup: [16 vectors][HD] q, then [16 vectors][keys] P${t.exact ? ' (and its remainder after it)' : ''}
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let prm = prms[wid.x]; let c = wid.y; let g = wid.z;
  if (c >= prm.nChunks) { return; } // (a group with fewer chunks than the dispatch)
  let sg = tid / 32u; let lane = tid % 32u; let split = sg % KS;
  let fb = sg * ${ROWS}u * LDF; let hb = sg * ${shRows(HD, t)}u; // this subgroup's rows of sf and sh
  // this lane's query vector (two lanes each, half of every 8 keys / channels): head g G + v % G of the
  // group's row v / G (a block past the group's rows repeats its first row and writes nothing)
  let vrow = lane / 2u; let half = lane % 2u;
  let v = (sg / KS) * ${ROWS}u + vrow; let j = v / G; let live = j < prm.count; let jc = select(0u, j, live);
  let qRow = (prm.rows[jc / 4u] >> (8u * (jc % 4u))) & 255u; let slot = (prm.slots[jc / 4u] >> (8u * (jc % 4u))) & 255u;
  let h = g * G + v % G;
  // q (scaled so that exp2 gives the softmax) as f16 into sh, then into left matrices${t.exact ? '; then its remainder' : ''}
  for (var cc = half; cc < HD / 4u; cc += 2u) {
    let x = vec4<f16>(q[(qRow * NH + h) * (HD / 4u) + cc] * prm.scale); let d = hb + vrow * LDH + cc * 4u;
    sh[d] = x.x; sh[d + 1u] = x.y; sh[d + 2u] = x.z; sh[d + 3u] = x.w;
  }
  workgroupBarrier();
${qSteps.map((k) => `  let q${k} = ${load(left, '&sh', `hb + ${k * SK}u`, false, 'LDH')};`).join('\n')}${t.exact ? `
  workgroupBarrier();
  for (var cc = half; cc < HD / 4u; cc += 2u) {
    let x = q[(qRow * NH + h) * (HD / 4u) + cc] * prm.scale; let r = vec4<f16>(x - vec4<f32>(vec4<f16>(x))); let d = hb + vrow * LDH + cc * 4u;
    sh[d] = r.x; sh[d + 1u] = r.y; sh[d + 2u] = r.z; sh[d + 3u] = r.w;
  }
  workgroupBarrier();
${qSteps.map((k) => `  let ql${k} = ${load(left, '&sh', `hb + ${k * SK}u`, false, 'LDH')};`).join('\n')}` : ''}
${oVecs.map((k) => `  var o${k} = vec4<f32>(0.0);`).join('\n')}
  var m = -1.0e30; var l = 0.0;
  // the chunk's first page and its tokens (${sparse ? 'of the pages the group selected; none where the list is shorter' : 'of the shared pages'})
  let pg0 = c * prm.chunkPages;${sparse ? ` let lb = (wid.x * NKV + g) * SLOT_PAGES; let listed = ucount[wid.x * NKV + g];
  let tokens = select(0u, min(prm.chunkPages, listed - pg0) * P, pg0 < listed);` : ' let tokens = min(prm.chunkPages, prm.k - pg0) * P;'}
  let rounds = (tokens + KS * KEYS - 1u) / (KS * KEYS);
  for (var r = 0u; r < rounds; r++) {
    let t0 = (r * KS + split) * KEYS; // this subgroup's tile (tokens of the chunk)
    // where each run of 8 keys starts in the pages (past the chunk: page 0, masked below)
${range(KEYS / 8).map((k) => sparse
    ? `    let e${k} = select(0u, ulist[lb + pg0 + (t0 + ${8 * k}u) / P], t0 + ${8 * k}u < tokens); let kp${k} = ((table[prm.tableAt + (e${k} & 0xffffu)] * NKV + g) * P + (t0 + ${8 * k}u) % P) * HD;`
    : `    let kp${k} = ((select(0u, table[prm.tableAt + pg0 + (t0 + ${8 * k}u) / P], t0 + ${8 * k}u < tokens) * NKV + g) * P + (t0 + ${8 * k}u) % P) * HD;`).join('\n')}
    workgroupBarrier(); // (the lanes are done with the previous tile's P V in sf and its P in sh)
    // (1) S = Q Kᵀ
${keyBlocks.map((b) => `    var sm${b} = ${res}();`).join('\n')}
${qSteps.map((k) => keyBlocks.map((b) => `    { let km = ${load(right, '&kc', `${kp(b * SN)} + ${k * SK}u`, true, 'HD')}; sm${b} = subgroupMatrixMultiplyAccumulate(q${k}, km, sm${b});${t.exact ? ` sm${b} = subgroupMatrixMultiplyAccumulate(ql${k}, km, sm${b});` : ''} }`).join('\n')).join('\n')}
${keyBlocks.map((b) => `    ${store('&sf', `fb + ${b * SN}u`, `sm${b}`, 'LDF')};`).join('\n')}
    workgroupBarrier();
    // (2) this lane's scores (keys 8k + 4 half .. + 3), masked past the chunk${sparse ? ' and on pages its row did not select' : ''}; the new maximum; P
    let sr = fb + vrow * LDF + half * 4u; let kt = t0 + half * 4u;
${sVecs.map((k) => `    let s${k} = select(vec4<f32>(-1.0e30), vec4<f32>(sf[sr + ${8 * k}u], sf[sr + ${8 * k + 1}u], sf[sr + ${8 * k + 2}u], sf[sr + ${8 * k + 3}u]),
      ${sparse ? '(' : ''}vec4<u32>(kt + ${8 * k}u, kt + ${8 * k + 1}u, kt + ${8 * k + 2}u, kt + ${8 * k + 3}u) < vec4<u32>(tokens)${sparse ? `) & vec4<bool>(((e${k} >> (16u + j)) & 1u) != 0u)` : ''});`).join('\n')}
    var mt = m;
${sVecs.map((k) => `    mt = max(mt, max(max(s${k}.x, s${k}.y), max(s${k}.z, s${k}.w)));`).join('\n')}
    mt = max(mt, subgroupShuffleXor(mt, 1u));
    let alpha = exp2(m - mt); m = mt; l *= alpha;
    let pr = hb + vrow * LDS + half * 4u;
${sVecs.map((k) => `    { let p = select(vec4<f32>(0.0), exp2(s${k} - vec4<f32>(m)), s${k} > vec4<f32>(-1.0e29)); l += (p.x + p.y) + (p.z + p.w);
      let ph = vec4<f16>(p); sh[pr + ${8 * k}u] = ph.x; sh[pr + ${8 * k + 1}u] = ph.y; sh[pr + ${8 * k + 2}u] = ph.z; sh[pr + ${8 * k + 3}u] = ph.w;${t.exact ? `
      let pl = vec4<f16>(p - vec4<f32>(ph)); sh[pr + ${ROWS * LDS + 8 * k}u] = pl.x; sh[pr + ${ROWS * LDS + 8 * k + 1}u] = pl.y; sh[pr + ${ROWS * LDS + 8 * k + 2}u] = pl.z; sh[pr + ${ROWS * LDS + 8 * k + 3}u] = pl.w;` : ''} }`).join('\n')}
    workgroupBarrier();
    // (3) P V a piece of channels at a time, (4) folded into this lane's output
${keySteps.map((b) => `    let p${b} = ${load(left, '&sh', `hb + ${b * SK}u`, false, 'LDS')};${t.exact ? ` let pl${b} = ${load(left, '&sh', `hb + ${ROWS * LDS + b * SK}u`, false, 'LDS')};` : ''}`).join('\n')}
${pieces.map(({ c0, blocks }) => `    {
${blocks.map((cb) => `      var a${cb} = ${res}();`).join('\n')}
${keySteps.map((b) => blocks.map((cb) => `      { let vm = ${load(right, '&vc', `${kp(b * SK)} + ${cb * SN}u`, false, 'HD')}; a${cb} = subgroupMatrixMultiplyAccumulate(p${b}, vm, a${cb});${t.exact ? ` a${cb} = subgroupMatrixMultiplyAccumulate(pl${b}, vm, a${cb});` : ''} }`).join('\n')).join('\n')}
${blocks.map((cb, k) => `      ${store('&sf', `fb + ${k * SN}u`, `a${cb}`, 'LDF')};`).join('\n')}
    }
    workgroupBarrier();
${oVecs.filter((k) => 8 * k >= c0 && 8 * k < c0 + PIECE).map((k) => `    { let e = fb + vrow * LDF + ${8 * k - c0}u + half * 4u; o${k} = o${k} * alpha + vec4<f32>(sf[e], sf[e + 1u], sf[e + 2u], sf[e + 3u]); }`).join('\n')}
    workgroupBarrier();`).join('\n')}
  }
  l += subgroupShuffleXor(l, 1u);
  if (live) {
    let pc = ((slot * NH + h) * SLOT_CHUNKS + prm.chunkBase + c * KS + split) * (HD / 4u + 1u);
${oVecs.map((k) => `    part[pc + ${2 * k}u + half] = o${k};`).join('\n')}
    if (half == 0u) { part[pc + HD / 4u] = vec4<f32>(m, l, 0.0, 0.0); }
  }
}`;
};

/** The selection-union kernel: per group of Quest rows sharing their first pages (prms: the group's
 *  parameters, k = the shared pages) and KV head (grid: groups x KV heads), the shared pages that any row
 *  selected (sel, k of row slot j from rprms[j]), in page order, each with the bits of the rows that did
 *  (bit j: the group's row j): ulist[group][head][SLOT_PAGES], and how many, ucount[group][head]; those
 *  pages become NONE in the rows' selections (the per-row kernel then reads only the rows' own pages). A bit
 *  per row and page in workgroup memory, then a scan over 256 threads' runs of pages. */
export const selectionUnionWgsl = (s: { nKV: number; maxPages: number }, header: string) => /* wgsl */ `${header}
const NKV: u32 = ${s.nKV}u;
@group(0) @binding(1) var<storage, read> rprms: array<Params>;
@group(0) @binding(2) var<storage, read_write> sel: array<u32>;
@group(0) @binding(3) var<storage, read_write> ulist: array<u32>;
@group(0) @binding(4) var<storage, read_write> ucount: array<u32>;
var<workgroup> bits: array<atomic<u32>, ${s.maxPages}>;
var<workgroup> sums: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let prm = prms[wid.x]; let g = wid.y; let S = prm.k;
  for (var p = tid; p < S; p += 256u) { atomicStore(&bits[p], 0u); }
  workgroupBarrier();
  for (var j = 0u; j < prm.count; j++) {
    let slot = (prm.slots[j / 4u] >> (8u * (j % 4u))) & 255u; let k = rprms[slot].k;
    for (var i = tid; i < k; i += 256u) {
      let at = (slot * NKV + g) * SLOT_SEL + i; let p = sel[at];
      if (p < S) { atomicOr(&bits[p], 1u << j); sel[at] = 0xffffffffu; }
    }
  }
  workgroupBarrier();
  // this thread's run of pages: how many were selected, the runs before it (a scan), then the list
  let per = (S + 255u) / 256u; let a = min(tid * per, S); let b = min(a + per, S);
  var n = 0u;
  for (var p = a; p < b; p++) { n += select(0u, 1u, atomicLoad(&bits[p]) != 0u); }
  sums[tid] = n;
  workgroupBarrier();
  for (var o = 1u; o < 256u; o <<= 1u) {
    let v = select(0u, sums[max(tid, o) - o], tid >= o);
    workgroupBarrier();
    sums[tid] += v;
    workgroupBarrier();
  }
  var at = (wid.x * NKV + g) * SLOT_PAGES + sums[tid] - n;
  for (var p = a; p < b; p++) {
    let m = atomicLoad(&bits[p]);
    if (m != 0u) { ulist[at] = p | (m << 16u); at++; }
  }
  if (tid == 255u) { ucount[wid.x * NKV + g] = sums[255]; }
}`;
