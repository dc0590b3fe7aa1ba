// Decode attention of forks over the pages they share, on tensor cores (WGSL subgroup matrices): the
// query vectors of up to 16 rows (every head of a KV group for each row) are the rows of a small
// flash-attention, so a page is read once for the whole group and Q·Kᵀ and P·V run as matrix products.
// The thread kernel (decode-attention.ts, partialWgsl's shared variant) holds every query vector's state
// in each lane's registers, which spilled past 4 rows (H100, 7B: 16 rows 780 µs a layer against 156 for
// four groups of four rows, each of which reads the pages again).
//
// A workgroup (four subgroups) takes one chunk of the shared pages of one KV head for one group of rows,
// C keys at a time (a sub-chunk): (1) S = Q Kᵀ for all C keys, a tile of K staged in workgroup memory at a
// time (16-byte loads: matrix loads straight from storage are 16-bit loads, and ran at a third of the
// thread kernel's speed, session 33), each subgroup one 16 x 16 block of S per tile; (2) the lanes, a few
// per query vector, take the sub-chunk's maximum, so P = exp2(s - m) needs no rescale inside the
// sub-chunk, and write P; (3) P V accumulates in result matrices over the sub-chunk's V tiles, each
// subgroup a part of the channels; (4) the lanes fold it into the output they hold, rescaled per row (a
// row's maximum moves only between sub-chunks). Each chunk writes a partial result per query vector (max,
// sum, unnormalised output: partialWgsl's entries, in its own chunk slot), which the reduction kernel folds.
// `exact` (the default): q and P go in as two f16 parts (x rounded to f16, and the remainder x 2^11,
// SPLIT_F16_WGSL, each into its own accumulators), so Q Kᵀ and P V keep f32's precision (K and V are f16
// already) and a fork's tokens are those of its run alone; without it q and P are rounded to f16.
//
// Quest rows of forks select their pages each with its own query, mostly among the pages they share: the
// selection-union kernel lists, per group and KV head, the shared pages any row of the group selected (in
// page order, each with a mask of the rows that did), and the sparse variant of the kernel reads the list
// instead of all pages, masking for each row the pages it did not select. Each page is then read once for
// the group instead of once per row that selected it; the rows' own pages (past the shared ones) stay with
// the per-row kernel: the union kernel leaves only those in each row's selection (the shared ones become
// NONE, and the per-row kernel skips a chunk with no page left).
import { type MatrixConfig } from './device.js';
import { SPLIT_F16_WGSL, X_LO_SCALE } from './kernels.js';
import { matrixLoad, matrixStore, MMA_HEADER } from './mma-kernels.js';

/** Query vectors per block (the config's M), subgroups per workgroup. */
const ROWS = 16;
const SUBGROUPS = 4;
/** Padding of the workgroup-memory rows (16-byte multiples, rows on different banks). */
const PAD = 8;

/** The layout: `qs` blocks of 16 query vectors (1 or 2); `exact`: q and P as two f16 parts each;
 *  `prefetch`: each thread loads its share of the next tile into registers while the current one is
 *  multiplied (not yet measured on a GPU: QUEST_SHARED_MMA_PREFETCH=1). */
export interface SharedMmaLayout { qs: number; exact: boolean; prefetch?: boolean }

/** Keys of a staged tile (one 16-key block of S per subgroup) and of a sub-chunk (the keys whose scores
 *  are held at once; a chunk is a whole number of them). */
const tileKeys = (t: SharedMmaLayout) => (SUBGROUPS * 16) / t.qs;
const subKeys = (t: SharedMmaLayout) => 2 * tileKeys(t);

/** Whether the kernel handles this shape on this config: 16-row blocks, each subgroup's part of the
 *  channels whole result matrices, pages that split the sub-chunks evenly. */
export const sharedMmaFits = (s: { headDim: number; pageSize: number }, cfg: MatrixConfig | null, t: SharedMmaLayout): cfg is MatrixConfig =>
  !!cfg && cfg.M === ROWS && (cfg.N === 8 || cfg.N === 16) && (cfg.K === 8 || cfg.K === 16)
  && s.headDim % cfg.K === 0 && ((s.headDim * t.qs) / SUBGROUPS) % cfg.N === 0 && s.headDim <= 256
  && subKeys(t) % s.pageSize === 0;

/** Rows of a group and the layout for G query heads per KV head: up to 16 rows, at most two blocks of 16
 *  query vectors. */
export function sharedMmaLayout(G: number, exact = true, prefetch = false): { rows: number; layout: SharedMmaLayout } {
  const rows = Math.min(16, Math.floor((2 * ROWS) / G));
  return { rows, layout: { qs: Math.ceil((rows * G) / ROWS), exact, ...(prefetch ? { prefetch } : {}) } };
}

/** Pages of a sub-chunk (a chunk's pages are a multiple of it). */
export const sharedMmaSubPages = (t: SharedMmaLayout, pageSize: number) => subKeys(t) / pageSize;

/** Workgroup memory: the staged tile (f16), S or an output piece (f32), the S remainders (f32, a block
 *  per subgroup), P (f16, both parts). */
const wgSizes = (headDim: number, t: SharedMmaLayout) => {
  const R = ROWS * t.qs, LDH = headDim + PAD, LDC = subKeys(t) + PAD;
  return { stg: tileKeys(t) * LDH, sf: R * Math.max(LDC, LDH), slo: SUBGROUPS * ROWS * (16 + PAD), sp: (t.exact ? 2 : 1) * R * LDC };
};
/** Bytes of workgroup memory the kernel declares. */
export const sharedMmaBytes = (headDim: number, t: SharedMmaLayout) => {
  const w = wgSizes(headDim, t);
  return 2 * w.stg + 4 * w.sf + (t.exact ? 4 * w.slo : 0) + 2 * w.sp;
};

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/** The kernel. `header`: the attention's parameters (`prms`, one entry per group: rows and slots packed 8
 *  bits each, count, chunkPages, nChunks, k = the shared pages, tableAt, chunkBase, scale) and scratch
 *  constants (SLOT_CHUNKS), as decode-attention.ts declares them. Bindings: 1 q [row][nH][hd] f32, 2 / 3 the
 *  K / V pages (read 8 channels at a time), 4 the partial results [slot][nH][SLOT_CHUNKS][hd / 4 + 1] vec4,
 *  5 the page table; the sparse variant 6 / 7 the union's list and counts. Grid: (groups, chunks, KV heads). */
export const sharedPagesMmaWgsl = (s: { nHeads: number; nKV: number; headDim: number; pageSize: number }, cfg: MatrixConfig, t: SharedMmaLayout, header: string, sparse = false) => {
  const { N: SN, K: SK } = cfg, HD = s.headDim, QS = t.qs, R = ROWS * QS, THREADS = 32 * SUBGROUPS;
  const T = tileKeys(t), C = subKeys(t), TPR = THREADS / R, CH = (HD * QS) / SUBGROUPS, LDH = HD + PAD, LDC = C + PAD, LDT = 16 + PAD;
  const w = wgSizes(HD, t), X = t.exact;
  const load = matrixLoad.bind(null, cfg.syntax), store = matrixStore.bind(null, cfg.syntax);
  const qSteps = range(HD / SK), keyBlocks = range(16 / SN), pvSteps = range(T / SK), chBlocks = range(CH / SN);
  const units = range((T * HD) / 8 / THREADS); // 8-channel units of a tile per thread
  const res = `subgroup_matrix_result<f32, ${SN}, 16>`, left = `subgroup_matrix_left<f16, ${SK}, 16>`, right = `subgroup_matrix_right<f16, ${SN}, ${SK}>`;
  const lo = (v: string) => (X ? v : '');
  // where token kt of the chunk lies in the pages (its page entry; past the chunk's tokens: page 0, masked)
  const pageOf = (kt: string) => (sparse
    ? `table[prm.tableAt + (ulist[lb + pg0 + select(0u, (${kt}) / P, (${kt}) < tokens)] & 0xffffu)]`
    : `table[prm.tableAt + pg0 + select(0u, (${kt}) / P, (${kt}) < tokens)]`);
  // tile `tile` of sub-chunk sc (keys or values) into stg, 8 channels per load
  const stage = (buf: string) => `${units.map((u) => `    { let e = ${u * THREADS}u + tid; let key = e / (HD / 8u); let cu = e % (HD / 8u); let kt = sc * C + tile * T + key;
      let src = ((${pageOf('kt')} * NKV + g) * P + kt % P) * (HD / 8u) + cu; let x = ${buf}[src]; let d = key * LDH + cu * 8u;
      for (var i = 0u; i < 4u; i++) { let h2 = bitcast<vec2<f16>>(x[i]); stg[d + 2u * i] = h2.x; stg[d + 2u * i + 1u] = h2.y; } }`).join('\n')}
    workgroupBarrier();`;
  // (prefetch) the tiles a chunk reads, in turn: per sub-chunk C / T = 2 of keys, then 2 of values; tile i
  // goes into this thread's registers while the one before is multiplied, then into stg
  const fetch = (i: string) => `{ let i = ${i}; let kv = (i / 2u) % 2u;
${units.map((u) => `      { let e = ${u * THREADS}u + tid; let kt = (i / 4u) * C + (i % 2u) * T + e / (HD / 8u);
        let src = ((${pageOf('kt')} * NKV + g) * P + kt % P) * (HD / 8u) + e % (HD / 8u);
        if (kv == 0u) { pf${u} = kc[src]; } else { pf${u} = vc[src]; } }`).join('\n')} }`;
  const storeTile = (next: string) => `${units.map((u) => `      { let e = ${u * THREADS}u + tid; let d = e / (HD / 8u) * LDH + e % (HD / 8u) * 8u;
        for (var i = 0u; i < 4u; i++) { let h2 = bitcast<vec2<f16>>(pf${u}[i]); stg[d + 2u * i] = h2.x; stg[d + 2u * i + 1u] = h2.y; } }`).join('\n')}
      ${fetch(next)}
      workgroupBarrier();`;
  if (t.prefetch && C / T !== 2) throw new Error('sharedPagesMmaWgsl: prefetch wants two tiles a sub-chunk');
  return MMA_HEADER + 'enable subgroups;\n' + header + (X ? SPLIT_F16_WGSL : '') + /* wgsl */ `
const NH: u32 = ${s.nHeads}u; const NKV: u32 = ${s.nKV}u; const G: u32 = ${s.nHeads / s.nKV}u;
const HD: u32 = ${HD}u; const P: u32 = ${s.pageSize}u; const T: u32 = ${T}u; const C: u32 = ${C}u;
const LDH: u32 = ${LDH}u; const LDC: u32 = ${LDC}u; const LDT: u32 = ${LDT}u; const TPR: u32 = ${TPR}u; const R: u32 = ${R}u;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kc: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> vc: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> part: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> table: array<u32>;
${sparse ? `@group(0) @binding(6) var<storage, read> ulist: array<u32>; // [group][NKV][SLOT_PAGES]: page | rows that selected it << 16
@group(0) @binding(7) var<storage, read> ucount: array<u32>; // [group][NKV]: pages listed
` : ''}${t.prefetch ? `${units.map((u) => `var<private> pf${u}: vec4<u32>;`).join(' ')} // (prefetch) this thread's share of the next tile\n` : ''}var<workgroup> stg: array<f16, ${w.stg}>; // a tile of keys or values [key][channel] (first q)
var<workgroup> sf: array<f32, ${w.sf}>; // S [vector][key of the sub-chunk], then a piece of P V [vector][channel]
${X ? `var<workgroup> slo: array<f32, ${w.slo}>; // per subgroup: its block of S from q's remainder\n` : ''}var<workgroup> sp: array<f16, ${w.sp}>; // P [vector][key]${X ? ' (then its remainder)' : ''}
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let prm = prms[wid.x]; let c = wid.y; let g = wid.z;
  if (c >= prm.nChunks) { return; } // (a group with fewer chunks than the dispatch)
  let sg = tid / 32u; let lane = tid % 32u;
  let b = sg % ${QS}u; // this subgroup's block of query vectors; its 16-key block of S and part of the channels:
  let kb = sg / ${QS}u; let cp = sg / ${QS}u;
  // this thread's query vector (TPR threads each): head g G + v % G of the group's row v / G (past the
  // group's rows: its first row, writing nothing)
  let v = tid / TPR; let u = tid % TPR; let j = v / G; let live = j < prm.count; let jc = select(0u, j, live);
  let qRow = (prm.rows[jc / 4u] >> (8u * (jc % 4u))) & 255u; let slot = (prm.slots[jc / 4u] >> (8u * (jc % 4u))) & 255u;
  let h = g * G + v % G;
  // q (scaled so that exp2 gives the softmax) through stg into left matrices${X ? ', its f16 part, then its remainder' : ''}
${(X ? [0, 1] : [0]).map((part) => `  for (var cc = u; cc < HD / 4u; cc += TPR) {
    let x = q[(qRow * NH + h) * (HD / 4u) + cc] * prm.scale; let d = v * LDH + cc * 4u;
    ${X ? `for (var i = 0u; i < 4u; i++) { stg[d + i] = splitF16(x[i])[${part}]; }` : 'let y = vec4<f16>(x); stg[d] = y.x; stg[d + 1u] = y.y; stg[d + 2u] = y.z; stg[d + 3u] = y.w;'}
  }
  workgroupBarrier();
${qSteps.map((k) => `  let q${part ? 'l' : ''}${k} = ${load(left, '&stg', `b * 16u * LDH + ${k * SK}u`, false, 'LDH')};`).join('\n')}
  workgroupBarrier();`).join('\n')}
  // this thread's output channels (vec4s u, u + TPR, ..), running maximum (log2 units) and its part of the sum
${range(HD / 4 / TPR).map((i) => `  var o${i} = vec4<f32>(0.0);`).join('\n')}
  var m = -1.0e30; var l = 0.0;
  let pg0 = c * prm.chunkPages;${sparse ? ` let lb = (wid.x * NKV + g) * SLOT_PAGES; let listed = ucount[wid.x * NKV + g];
  let tokens = select(0u, min(prm.chunkPages, listed - pg0) * P, pg0 < listed);` : ' let tokens = min(prm.chunkPages, prm.k - pg0) * P;'}
${t.prefetch ? `  ${fetch('0u')}\n` : ''}  for (var sc = 0u; sc * C < tokens; sc++) {
    // (1) S = Q Kᵀ over the sub-chunk, a tile at a time
    for (var tile = 0u; tile < C / T; tile++) {
${t.prefetch ? storeTile('sc * 4u + tile + 1u') : stage('kc')}
${keyBlocks.map((nb) => `      var s${nb} = ${res}();${lo(` var sl${nb} = ${res}();`)}`).join('\n')}
${qSteps.map((k) => keyBlocks.map((nb) => `      { let km = ${load(right, '&stg', `(kb * 16u + ${nb * SN}u) * LDH + ${k * SK}u`, true, 'LDH')}; s${nb} = subgroupMatrixMultiplyAccumulate(q${k}, km, s${nb});${lo(` sl${nb} = subgroupMatrixMultiplyAccumulate(ql${k}, km, sl${nb});`)} }`).join('\n')).join('\n')}
${keyBlocks.map((nb) => `      ${store('&sf', `b * 16u * LDC + tile * T + kb * 16u + ${nb * SN}u`, `s${nb}`, 'LDC')};${lo(` ${store('&slo', `sg * 16u * LDT + ${nb * SN}u`, `sl${nb}`, 'LDT')};`)}`).join('\n')}
      workgroupBarrier();${X ? `
      // (the remainder's part of the subgroup's block, scaled back)
      { let r = lane / 2u; let e = (b * 16u + r) * LDC + tile * T + kb * 16u + (lane % 2u) * 8u; let f = sg * 16u * LDT + r * LDT + (lane % 2u) * 8u;
        for (var i = 0u; i < 8u; i++) { sf[e + i] += slo[f + i] * ${1 / X_LO_SCALE}; } }` : ''}
    }
    workgroupBarrier();
    // (2) this thread's keys (u, u + TPR, ..), masked past the chunk${sparse ? ' and on pages its row did not select' : ''}; the sub-chunk's maximum; P
    var mt = m;
    for (var k = u; k < C; k += TPR) {
      let kt = sc * C + k;${sparse ? ' let sel = ((ulist[lb + pg0 + select(0u, kt / P, kt < tokens)] >> (16u + j)) & 1u) != 0u;' : ''}
      if (kt < tokens${sparse ? ' && sel' : ''}) { mt = max(mt, sf[v * LDC + k]); }
    }
${range(Math.log2(TPR)).map((i) => `    mt = max(mt, subgroupShuffleXor(mt, ${1 << i}u));`).join('\n')}
    let alpha = exp2(m - mt); m = mt; l *= alpha;
    for (var k = u; k < C; k += TPR) {
      let kt = sc * C + k;${sparse ? ' let sel = ((ulist[lb + pg0 + select(0u, kt / P, kt < tokens)] >> (16u + j)) & 1u) != 0u;' : ''}
      let p = select(0.0, exp2(sf[v * LDC + k] - m), kt < tokens${sparse ? ' && sel' : ''}); l += p;
      ${X ? 'let ph = splitF16(p); sp[v * LDC + k] = ph.x; sp[R * LDC + v * LDC + k] = ph.y;' : 'sp[v * LDC + k] = f16(p);'}
    }
    // (3) P V over the sub-chunk, a tile of values at a time, into this subgroup's part of the channels
${chBlocks.map((cb) => `    var a${cb} = ${res}();${lo(` var al${cb} = ${res}();`)}`).join('\n')}
    for (var tile = 0u; tile < C / T; tile++) {
${t.prefetch ? storeTile('sc * 4u + 2u + tile + 1u') : stage('vc')}
${pvSteps.map((kk) => `      { let pm = ${load(left, '&sp', `b * 16u * LDC + tile * T + ${kk * SK}u`, false, 'LDC')};${lo(` let plm = ${load(left, '&sp', `R * LDC + b * 16u * LDC + tile * T + ${kk * SK}u`, false, 'LDC')};`)}
${chBlocks.map((cb) => `        { let vm = ${load(right, '&stg', `${kk * SK}u * LDH + cp * ${CH}u + ${cb * SN}u`, false, 'LDH')}; a${cb} = subgroupMatrixMultiplyAccumulate(pm, vm, a${cb});${lo(` al${cb} = subgroupMatrixMultiplyAccumulate(plm, vm, al${cb});`)} }`).join('\n')}
      }`).join('\n')}
      workgroupBarrier();
    }
    // (4) folded into this thread's output, rescaled by its row's factor${X ? ' (the remainder part after)' : ''}
${(X ? ['a', 'al'] : ['a']).map((acc, pass) => `${chBlocks.map((cb) => `    ${store('&sf', `b * 16u * LDH + cp * ${CH}u + ${cb * SN}u`, `${acc}${cb}`, 'LDH')};`).join('\n')}
    workgroupBarrier();
${range(HD / 4 / TPR).map((i) => `    { let e = v * LDH + (u + ${i * TPR}u) * 4u; let y = vec4<f32>(sf[e], sf[e + 1u], sf[e + 2u], sf[e + 3u]); o${i} = ${pass ? `o${i} + y * ${1 / X_LO_SCALE}` : `o${i} * alpha + y`}; }`).join('\n')}
    workgroupBarrier();`).join('\n')}
  }
${range(Math.log2(TPR)).map((i) => `  l += subgroupShuffleXor(l, ${1 << i}u);`).join('\n')}
  if (live) {
    let pc = ((slot * NH + h) * SLOT_CHUNKS + prm.chunkBase + c) * (HD / 4u + 1u);
${range(HD / 4 / TPR).map((i) => `    part[pc + u + ${i * TPR}u] = o${i};`).join('\n')}
    if (u == 0u) { part[pc + HD / 4u] = vec4<f32>(m, l, 0.0, 0.0); }
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
