// Decode attention on WebGPU for one layer: dense (flash-decoding, split over the sequence) and Quest
// (page scores from per-page key min/max — for one sequence computed in its RoPE / append dispatch —,
// top-k page selection on the GPU, sparse attention over the selected pages). In a batch, forks of one
// context attend to the pages they share together, each page read once for several rows. K/V pages and page metadata are f16 stored as packed u32 (no shader-f16 needed).
// GQA-aware: a workgroup reads each KV page once for all query heads of its group, and Quest selects
// one page set per KV group (scores summed over the group's heads, as on the CPU).
//
// Thread layout of the streaming kernels (scores, partial): a "lane group" of HD/8 threads covers one
// K/V (or min/max) row, each lane one 16-byte word = 8 channels, so a warp reads whole rows of
// consecutive tokens; each lane keeps its 8 channels of q (every head of the group) in registers, and
// a row's dot product is summed across its lane group (subgroup shuffles where subgroups are 32 wide,
// else workgroup memory). The partial kernel runs an online softmax per lane group over its tokens and
// merges the lane groups once at the end.
//
// Layouts (per layer):
//   k, v   : [page][kvHead][slot][hd/2] u32     meta: [page][kvHead][2][hd/2] u32 (min then max)
//   q      : [nH][hd] f32                       out : [nH][hd] f32

import { compiledPipeline } from './pipeline-cache.js';
import { hasSubgroups32, matrixConfig, onCpuAdapter, processEnv, type MatrixConfig } from './device.js';
import { selectionUnionWgsl, sharedMmaBytes, sharedMmaFits, sharedMmaLayout, sharedMmaSubPages, sharedPagesMmaWgsl, type SharedMmaLayout } from './shared-pages-mma.js';
import { ropeAppendThreadWgsl, UNPACK8_WGSL, workgroupRowSumWgsl } from './kernels.js';

export interface AttnShape { nHeads: number; nKV: number; headDim: number; pageSize: number; maxPages: number; /** pages Quest may select (default maxPages) */ maxSelected?: number }

const MAX_CHUNK_PAGES = 32; // pages per workgroup of the partial-attention kernel (unless more are needed to stay under MAX_CHUNKS)
const MIN_CHUNK_PAGES = 2;
const MAX_CHUNKS = 512; // chunks per head, at most (the size of a head's partial results in scratch)
/** Partial-attention workgroups to aim for: enough to fill a large GPU; half as many for GQA, whose
 *  workgroups merge G heads at the end and gain from longer chunks (QUEST_ATTN_WORKGROUPS to compare). */
const ATTN_WORKGROUPS = processEnv().QUEST_ATTN_WORKGROUPS; // (read once: an environment read costs µs, and this is asked per row and layer)
const targetWorkgroups = (G: number) => Number(ATTN_WORKGROUPS ?? (G > 1 ? 512 : 1024));
const TB = 4; // rows a lane group loads per step in the scores kernel (loads in flight per thread: 2 x TB)
/** Rows per lane group and step of the partial-attention kernel, dense and sparse (multiples of 4;
 *  QUEST_ATTN_TB sets both, to compare). Measured on an H100: 8 for MHA dense, 4 for GQA dense (with
 *  its reduce-scatter row sums) and for Quest's few pages per workgroup. */
const partialTB = (G: number) => ({ dense: Number(processEnv().QUEST_ATTN_TB ?? (G > 1 ? 4 : 8)), sparse: Number(processEnv().QUEST_ATTN_TB ?? 4) });
const LOG2E = 1.4426950408889634;
/** Threads of the top-k workgroup (one per KV group; QUEST_TOPK_WG to compare 32 / 64 / 128 / 256). */
const TOPK_THREADS = Number(processEnv().QUEST_TOPK_WG ?? 256);

/** The per-call values every kernel reads, one set per batch row (workgroup_id.z): a sequence's length,
 *  its page count, the pages read (k: selected, or dense from the first one) and chunking; `row`: its
 *  row of q and out; `tableAt`: where its page table starts in the table buffer; `first`: the first
 *  token attended (sliding windows, or the first after the pages it shares with other rows; else 0);
 *  `chunkBase`: where its partial results start (after those of the shared pages), `chunks`: how many
 *  it has in all (the reduction's count; 0: nChunks). Scratch (scores, selection, partial results) has
 *  one fixed-size slot per batch row. A group of rows sharing their first pages (partialWgsl's shared
 *  variant) has one set for all: `rows` and `slots` their q rows and scratch slots, 8 bits each (four to a word), `count` how many. */
const PARAMS_WGSL = /* wgsl */ `
struct Params { seqLen: u32, nPages: u32, k: u32, sparse: u32, scale: f32, nChunks: u32, chunkPages: u32, row: u32, tableAt: u32, first: u32,
  chunkBase: u32, chunks: u32, rows: vec4<u32>, slots: vec4<u32>, count: u32, pad0: u32, pad1: u32, pad2: u32 }
@group(0) @binding(0) var<storage, read> prms: array<Params>;
`;
/** Words of one Params entry (tests that call a kernel alone write them). */
export const PARAM_WORDS = 24;
/** Rows of a shared-prefix group per workgroup (packed 8 bits each in the parameters), at most; and no
 *  more than 16 query vectors in all. H100, 7B MHA, 16 forks of 8K tokens, µs a layer: 2 rows 197, 4 rows
 *  156, 8 rows 179, 16 rows 780 (each page read once, but 16 heads' state per lane spills).
 *  QUEST_SHARED_ROWS=N (up to 16) sets it, to compare. */
const SHARED_ROWS = Math.min(16, Number(processEnv().QUEST_SHARED_ROWS ?? 4));
/** The shared pages on tensor cores (shared-pages-mma.ts) where the adapter has subgroup matrices
 *  (QUEST_SHARED_MMA=0, or the DecodeAttention argument `useSharedMma`, turns them off; H100, 7B, 16
 *  forks of 8K tokens: 126 against 151 µs a layer for the thread kernel's four groups of four, session 33).
 *  QUEST_SHARED_MMA_EXACT=0 rounds q and P to f16 instead of splitting them in two parts (to compare);
 *  QUEST_SHARED_MMA_PREFETCH=1 loads each next tile into registers during the current one's products.
 *  Its workgroups per call, at most about QUEST_SHARED_MMA_WG (chunks are whole sub-chunks of the kernel;
 *  each writes a partial result for each of its rows' query vectors). */
const SHARED_MMA = processEnv().QUEST_SHARED_MMA;
const SHARED_MMA_WG = Number(processEnv().QUEST_SHARED_MMA_WG ?? 1024);
/** The partial-attention kernels' grid: (batch rows or shared-page groups, chunks, KV heads). The rows go
 *  fastest so that workgroups reading the same chunk of pages for different rows run side by side and all
 *  but the first find those pages in L2: groups of forks over their shared pages, and forks' Quest rows,
 *  whose selections (in page order) overlap. With the rows slowest each re-read the layer's cache from
 *  memory (H100, 7B, 16 forks of 8K tokens: 219 -> 155 µs a layer for the shared pages, four groups of
 *  four; one workgroup walking the four groups over its chunk in turn was slower: 212 µs). */
const PARTIAL_GRID_WGSL = '  let prm = prms[wid.x]; let c = wid.y; let g = wid.z;';

/** Chunks per head of the partial-attention kernel, at most, for a shape (a scratch slot's size). */
const maxChunksOf = (s: AttnShape) => Math.min(MAX_CHUNKS, Math.ceil(s.maxPages / MIN_CHUNK_PAGES));
const scratchWgsl = (s: AttnShape) => /* wgsl */ `
const SLOT_PAGES: u32 = ${s.maxPages}u;  // scores per KV head and batch row
const SLOT_SEL: u32 = ${s.maxSelected ?? s.maxPages}u;  // selected pages per KV head and batch row
const SLOT_CHUNKS: u32 = ${maxChunksOf(s)}u;  // partial results per head and batch row
`;

/** The selection-union kernel and the tensor-core shared-pages kernel (shared-pages-mma.ts) for a shape, over
 *  these parameters and scratch slots. */
export const selectionUnionFor = (s: AttnShape) => selectionUnionWgsl(s, PARAMS_WGSL + scratchWgsl(s));
const sharedPagesMmaFor = (s: AttnShape, mma: { cfg: MatrixConfig; layout: SharedMmaLayout }, selected: boolean) =>
  sharedPagesMmaWgsl(s, mma.cfg, mma.layout, PARAMS_WGSL + scratchWgsl(s), selected);

/** Lanes per row, lane groups per workgroup, workgroup size, and whether rows reduce by subgroup shuffles. */
function lanes(s: AttnShape, subgroups: boolean) {
  const LG = s.headDim / 8, NG = Math.max(1, Math.floor(128 / LG));
  return { LG, NG, WG: LG * NG, shuffle: subgroups && (LG & (LG - 1)) === 0 && LG <= 32 };
}

const common = (s: AttnShape, subgroups: boolean, tb = TB, params = true) => {
  const { LG, NG, WG, shuffle } = lanes(s, subgroups);
  return (shuffle ? 'enable subgroups;\n' : '') + /* wgsl */ `
const NH: u32 = ${s.nHeads}u;
const NKV: u32 = ${s.nKV}u;
const G: u32 = ${s.nHeads / s.nKV}u;
const HD: u32 = ${s.headDim}u;
const P: u32 = ${s.pageSize}u;
const LG: u32 = ${LG}u;   // lanes per row
const NG: u32 = ${NG}u;   // lane groups per workgroup
const WG: u32 = ${WG}u;
const TB: u32 = ${tb}u;      // rows per lane group and step
const TB4: u32 = ${tb / 4}u;
const NONE: u32 = 0xffffffffu;
${params ? PARAMS_WGSL : ''}${scratchWgsl(s)}${UNPACK8_WGSL}${shuffle ? `// sum over the LG lanes of a row (a lane group lies inside one subgroup)
fn rowSum(v: vec4<f32>, tid: u32) -> vec4<f32> {
  var s = v;
  for (var o = LG / 2u; o > 0u; o >>= 1u) { s += subgroupShuffleXor(s, o); }
  return s;
}` : workgroupRowSumWgsl('LG', 'WG')}
`;
};

/** WGSL: a lane group's TB page scores (pages (w TB + i) NG + grp; `page(i)` the logical page it reads,
 *  `table` where the page table starts), each summed over the G query heads whose lanes' channels are in
 *  qa0/qb0.. (Σ max(q·min, q·max)), then over the row's lanes, into `sv`. Shared by the scores kernel and
 *  the fused RoPE + append + scores kernel. */
const pageScoresWgsl = (G: number, page: (i: string) => string, table: string) => /* wgsl */ `  var mn: array<vec4<u32>, TB>; var mx: array<vec4<u32>, TB>;
  for (var i = 0u; i < TB; i++) {
    let p = ${page('i')};
    let b = (table[${table} + p] * NKV + g) * 2u * LG + lane; mn[i] = pmeta[b]; mx[i] = pmeta[b + LG];
  }
  var sv = vec4<f32>(0.0);
  for (var i = 0u; i < TB; i++) {
    let a = unpack8(mn[i]); let c = unpack8(mx[i]);
    var v = vec4<f32>(0.0);
${Array.from({ length: G }, (_, j) => `    v += max(qa${j} * a[0], qa${j} * c[0]) + max(qb${j} * a[1], qb${j} * c[1]);`).join('\n')}
    sv[i] = v.x + v.y + v.z + v.w;
  }
  sv = rowSum(sv, tid);`;

/** Kernel 1: Quest page scores, summed over the query heads of each KV group; current page forced.
 *  A lane group scores TB pages per step from their min/max rows. */
export const scoresWgsl = (s: AttnShape, subgroups = false) => {
  const heads = Array.from({ length: s.nHeads / s.nKV }, (_, j) => j); // (per-head variables, not an array: see partialWgsl)
  return common(s, subgroups) + /* wgsl */ `
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> pmeta: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;
@group(0) @binding(4) var<storage, read> table: array<u32>; // physical page of each logical page
@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  // (grid: rows, page blocks, KV heads; the rows go fastest, so that forks reading the same pages' min /
  // max run side by side and all but the first find them in L2)
  let prm = prms[wid.x]; let slot = wid.x; let pb = wid.y;
  if (prm.sparse == 0u || pb * TB * NG >= prm.nPages) { return; } // (a dense row of a batch; pages past a shorter row's)
  let tid = lid.x; let lane = tid % LG; let grp = tid / LG; let g = wid.z;
${heads.map((j) => `  let b${j} = ((prm.row * NH + g * G + ${j}u) * HD) / 4u + 2u * lane; let qa${j} = q[b${j}]; let qb${j} = q[b${j} + 1u];`).join('\n')}
  // (pages past the end read the last one, without a branch before the row sums; not written)
${pageScoresWgsl(heads.length, (i) => `min((pb * TB + ${i}) * NG + grp, prm.nPages - 1u)`, 'prm.tableAt')}
  if (lane == 0u) {
    for (var i = 0u; i < TB; i++) {
      let p = (pb * TB + i) * NG + grp;
      // the page of the current token is always kept
      if (p < prm.nPages) { scores[(slot * NKV + g) * SLOT_PAGES + p] = select(sv[i], 3.0e38, p == prm.nPages - 1u); }
    }
  }
}`;
};

/** RoPE, the KV append and Quest's page scores in one dispatch (a decode step of one sequence, fused
 *  upstream of the top-k): the first workgroups rotate q and k, store k and v and update the current
 *  page's key min/max, as kernels.ts's ropeAppendWgsl; the rest score the other pages as scoresWgsl does,
 *  each rotating its lanes' channels of q itself from the unrotated row, so that no workgroup waits on
 *  another. The current page (the only one whose min/max changes) is forced to the top unread. Bindings
 *  as ropeAppendWgsl's, plus the scores (at slot 0 of the attention's scratch). Grid: ropeScoresGrid. */
export const ropeScoresWgsl = (s: AttnShape & { ropeDims?: number }, neox: boolean, subgroups = false) => {
  const heads = Array.from({ length: s.nHeads / s.nKV }, (_, j) => j);
  const { WG } = lanes(s, subgroups);
  return common(s, subgroups, TB, false) + /* wgsl */ `
struct Step { start: u32, n: u32, total: u32, pad: u32 }
const HD2: u32 = ${s.headDim / 2}u;
const RD2: u32 = ${(s.ropeDims ?? s.headDim) / 2}u; // rotated pairs (the channels past 2 * RD2 pass through)
const QKV: u32 = ${(s.nHeads + 2 * s.nKV) * s.headDim}u;
const ROPE_WG: u32 = ${Math.ceil(((s.nHeads + 2 * s.nKV) * s.headDim) / 2 / WG)}u; // workgroups of the RoPE / append part
@group(0) @binding(0) var<storage, read> qkv: array<f32>;
@group(0) @binding(1) var<storage, read> rope: array<vec2<f32>>; // [pos][HD2] (cos, sin)
@group(0) @binding(2) var<storage, read_write> qr: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<u32>;
@group(0) @binding(4) var<storage, read_write> vc: array<u32>;
@group(0) @binding(5) var<storage, read_write> pmeta: array<vec4<u32>>; // [page][kvHead][min, max][HD / 8]
@group(0) @binding(6) var<uniform> step: Step;
@group(0) @binding(7) var<storage, read> table: array<u32>; // physical page of each logical page
@group(0) @binding(8) var<storage, read_write> scores: array<f32>;
${ropeAppendThreadWgsl(neox)}
// 8 rotated channels c0.. of the head that starts at b
fn rot8(b: u32, c0: u32, pos: u32) -> array<vec4<f32>, 2> {
  return array<vec4<f32>, 2>(vec4<f32>(rot(b, c0, pos), rot(b, c0 + 1u, pos), rot(b, c0 + 2u, pos), rot(b, c0 + 3u, pos)),
    vec4<f32>(rot(b, c0 + 4u, pos), rot(b, c0 + 5u, pos), rot(b, c0 + 6u, pos), rot(b, c0 + 7u, pos)));
}
// (the metadata as vec4s, for the scores' 16-byte loads)
fn setMeta(i: u32, v: u32) { pmeta[i / 4u][i % 4u] = v; }
fn getMeta(i: u32) -> u32 { return pmeta[i / 4u][i % 4u]; }
@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let pos = step.start; let tid = lid.x;
  if (wid.x < ROPE_WG) {
    let x = wid.x * WG + tid;
    if (x / HD2 < NH + 2u * NKV) { ropeAppendThread(x / HD2, x % HD2, pos, 0u, 0u); }
    return;
  }
  // the scores: workgroup w of KV head g takes pages (w TB + i) NG + lane group, as scoresWgsl
  let nPages = pos / P + 1u; let per = (nPages + TB * NG - 1u) / (TB * NG);
  let w = wid.x - ROPE_WG; let g = w / per; let wx = w % per;
  if (g >= NKV) { return; }
  let lane = tid % LG; let grp = tid / LG;
${heads.map((j) => `  let r${j} = rot8((g * G + ${j}u) * HD, 8u * lane, pos); let qa${j} = r${j}[0]; let qb${j} = r${j}[1];`).join('\n')}
  // (pages past the end, and the current page, whose min/max the first workgroups are updating, read the
  // page before it: not written)
${pageScoresWgsl(heads.length, (i) => `min((wx * TB + ${i}) * NG + grp, max(nPages, 2u) - 2u)`, '0u')}
  if (lane == 0u) {
    for (var i = 0u; i < TB; i++) {
      let p = (wx * TB + i) * NG + grp;
      if (p < nPages) { scores[g * SLOT_PAGES + p] = select(sv[i], 3.0e38, p == nPages - 1u); }
    }
  }
}`;
};

/** Workgroups of ropeScoresWgsl for a sequence of `nPages` pages (its current token's page included). */
export function ropeScoresGrid(s: AttnShape, subgroups: boolean, nPages: number): number {
  const { WG, NG } = lanes(s, subgroups);
  return Math.ceil(((s.nHeads + 2 * s.nKV) * s.headDim) / 2 / WG) + Math.ceil(nPages / (TB * NG)) * s.nKV;
}

/** Kernel 2: top-k pages per KV group (a workgroup of `threads` each): the k pages with the largest
 *  scores, no readback. The scores become order-preserving u32 keys, held in registers (`kr` per thread, one variable each: a register array
 *  indexed in a loop goes to local memory, and re-reading the scores each round waits on the cache every
 *  time); the k-th largest key T is found 4 bits at a time: each round builds a 16-bin histogram of the
 *  next digit of the keys that still match T's prefix (8-bit bins packed in 4 words per thread, 16-bit
 *  pairs once summed), sums it across the workgroup and keeps the largest digit with at least k keys at
 *  or above it. The whole selection is a chain of dependent steps, so its time is latency; two things cut
 *  its rounds: the digits shared by the smallest and the largest key (the current page, forced to the
 *  top, left out) are T's without a round, and the search stops once exactly k keys lie at or above T's
 *  prefix (then those are the k, whatever the digits below). Sums go through `workgroupUniformLoad`, so
 *  every thread agrees on them and may leave the loop together. Then the keys above T and ties up to k
 *  get slots 0..k-1 of the group's selection in `sel`. With 32-wide subgroups sums and slots come
 *  from subgroup reductions and prefix sums; elsewhere from workgroup atomics (packed bins add without
 *  carries). No arrays indexed at run time, no loops over bins. */
export const topkWgsl = (s: AttnShape, subgroups = false, threads = TOPK_THREADS, pages = s.maxPages) => {
  const wg = subgroups ? threads : Math.max(64, threads);
  const kr = Math.ceil(pages / wg); // (a kernel per power of two of keys per thread: unused slots cost time even when skipped)
  if (wg % 32 !== 0 || wg > 256 || (!subgroups && wg < 64)) throw new Error(`page selection by ${wg} threads: use a multiple of 32 up to 256 (64 or more without subgroups)`);
  if (kr > 255) throw new Error(`page selection needs more than 255 keys per thread (8-bit bins)`);
  const NW = wg / 32;
  const slots = Array.from({ length: kr }, (_, i) => i);
  // slot i holds page tid + i * SEL_WG; slots past the sequence are skipped by a branch that is the same
  // for every thread (n is uniform), so lanes stay converged for the reductions
  const each = (f: (i: number) => string) => slots.map((i) => `  if (${i}u * SEL_WG < n) { let p = tid + ${i}u * SEL_WG; ${f(i)} }`).join('\n');
  const load = slots.map((i) => `  var k${i} = 0u;`).join('\n') + '\n' + each((i) => `k${i} = select(0u, selKey(scores[base + min(p, n - 1u)]), p < n);`);
  const extent = each((i) => `if (p + 1u < n) { lo = min(lo, k${i}); hi = max(hi, k${i}); }`);
  const count = slots.map((i) => `    if (${i}u * SEL_WG < n) { h = selBin(h, k${i}, T, mask, shift); }`).join('\n');
  const tally = each((i) => `if (p < n) { mine += vec2<u32>(select(0u, 1u, k${i} > T), select(0u, 1u, k${i} == T)); }`);
  const write = each((i) => `if (p < n) { if (k${i} > T) { sel[ob + above] = p; above++; } if (k${i} == T) { if (tie < k) { sel[ob + tie] = p; } tie++; } }`);
  const reduce = subgroups ? /* wgsl */ `
var<workgroup> selSum: array<array<SelHist, ${NW}>, 2>; // [round % 2][subgroup]
var<workgroup> selExt: array<vec2<u32>, ${NW}>;         // per subgroup: smallest and largest key
var<workgroup> selScan: array<vec2<u32>, ${NW}>;        // per subgroup: keys above T, ties
// (double-buffered: a subgroup writing round r + 2 has passed the barrier that every reader of round r reached)
fn selTotal(x: SelHist, round: u32, tid: u32) -> SelHist {
  let t = SelHist(subgroupAdd(x.lo), subgroupAdd(x.hi), subgroupAdd(x.gt));
  if (tid % 32u == 0u) { selSum[round % 2u][tid / 32u] = t; }
  let w = workgroupUniformLoad(&selSum[round % 2u]);
  var s = SelHist(vec4<u32>(0u), vec4<u32>(0u), 0u);
  for (var i = 0u; i < ${NW}u; i++) { s.lo += w[i].lo; s.hi += w[i].hi; s.gt += w[i].gt; }
  return s;
}
fn selExtent(lo: u32, hi: u32, tid: u32) -> vec2<u32> {
  let e = vec2<u32>(subgroupMin(lo), subgroupMax(hi));
  if (tid % 32u == 0u) { selExt[tid / 32u] = e; }
  let w = workgroupUniformLoad(&selExt);
  var r = vec2<u32>(0xffffffffu, 0u);
  for (var i = 0u; i < ${NW}u; i++) { r = vec2<u32>(min(r.x, w[i].x), max(r.y, w[i].y)); }
  return r;
}
// exclusive prefix over the workgroup of (above, ties), and the totals
fn selPrefix(v: vec2<u32>, tid: u32) -> array<vec2<u32>, 2> {
  let pre = subgroupExclusiveAdd(v); let tot = subgroupAdd(v);
  if (tid % 32u == 0u) { selScan[tid / 32u] = tot; }
  workgroupBarrier();
  var before = vec2<u32>(0u); var all = vec2<u32>(0u);
  for (var w = 0u; w < ${NW}u; w++) { let x = selScan[w]; if (w < tid / 32u) { before += x; } all += x; }
  return array<vec2<u32>, 2>(pre + before, all);
}` : /* wgsl */ `
var<workgroup> selCnt: array<array<atomic<u32>, 9>, 3>; // per round (mod 3): lo[4], hi[4], gt
var<workgroup> selTot: array<array<u32, 9>, 2>;          // the same, copied for a uniform load
var<workgroup> selAExt: array<atomic<u32>, 2>;
var<workgroup> selSlot: array<atomic<u32>, 2>;
fn selTotal(x: SelHist, round: u32, tid: u32) -> SelHist {
  let b = round % 3u;
  // (the buffer of the next round was last read two rounds ago, before the previous barrier)
  if (tid < 9u) { atomicStore(&selCnt[(round + 1u) % 3u][tid], 0u); }
  for (var j = 0u; j < 4u; j++) { atomicAdd(&selCnt[b][j], x.lo[j]); atomicAdd(&selCnt[b][4u + j], x.hi[j]); }
  atomicAdd(&selCnt[b][8], x.gt);
  workgroupBarrier();
  if (tid < 9u) { selTot[round % 2u][tid] = atomicLoad(&selCnt[b][tid]); }
  let v = workgroupUniformLoad(&selTot[round % 2u]);
  return SelHist(vec4<u32>(v[0], v[1], v[2], v[3]), vec4<u32>(v[4], v[5], v[6], v[7]), v[8]);
}
fn selExtent(lo: u32, hi: u32, tid: u32) -> vec2<u32> {
  atomicMin(&selAExt[0], lo); atomicMax(&selAExt[1], hi);
  workgroupBarrier();
  if (tid == 0u) { selTot[1][0] = atomicLoad(&selAExt[0]); selTot[1][1] = atomicLoad(&selAExt[1]); }
  let v = workgroupUniformLoad(&selTot[1]);
  return vec2<u32>(v[0], v[1]);
}`;
  const decls = /* wgsl */ `
const SEL_WG: u32 = ${wg}u;
// A digit histogram: per thread lo[w] holds 8-bit bins 4w..4w+3; once summed, 16-bit pairs: lo[w] bins
// 4w (low half) and 4w+2, hi[w] bins 4w+1 and 4w+3. gt: keys above T's prefix (above every candidate).
struct SelHist { lo: vec4<u32>, hi: vec4<u32>, gt: u32 }
${reduce}
fn selKey(x: f32) -> u32 { let b = bitcast<u32>(x); return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u); }
// one key into this thread's histogram (its digit's bin if it matches T's prefix)
fn selBin(h: SelHist, kk: u32, T: u32, mask: u32, shift: u32) -> SelHist {
  let pre = kk & mask; let d = (kk >> shift) & 15u;
  let inc = select(0u, 1u << ((d & 3u) * 8u), pre == T);
  return SelHist(h.lo + select(vec4<u32>(0u), vec4<u32>(inc), vec4<u32>(d >> 2u) == vec4<u32>(0u, 1u, 2u, 3u)), h.hi, h.gt + select(0u, 1u, pre > T));
}
// the largest digit j with at least k keys at or above it (digit 0, T itself, always has: the invariant),
// and how many keys lie at or above it
fn selBest(t: SelHist, k: u32) -> vec2<u32> {
  let A = t.lo & vec4<u32>(0xffffu); let B = t.hi & vec4<u32>(0xffffu); let C = t.lo >> vec4<u32>(16u); let D = t.hi >> vec4<u32>(16u);
  let S = A + B + C + D; // keys per group of 4 digits
  let a3 = vec4<u32>(t.gt) + vec4<u32>(S.y + S.z + S.w, S.z + S.w, S.w, 0u) + D; // at or above digit 4w + 3
  let a2 = a3 + C; let a1 = a2 + B; let a0 = a1 + A;
  let kk = vec4<u32>(k); let one = vec4<u32>(1u); let zero = vec4<u32>(0u);
  let c = select(zero, one, a3 >= kk) + select(zero, one, a2 >= kk) + select(zero, one, a1 >= kk) + select(zero, one, a0 >= kk);
  let d = c.x + c.y + c.z + c.w - 1u; let r = d % 4u;
  let at = select(select(select(a0, a1, r == 1u), a2, r == 2u), a3, r == 3u);
  return vec2<u32>(d, at[d / 4u]);
}`;
  const body = /* wgsl */ `{
${subgroups ? '' : `  if (tid < 27u) { atomicStore(&selCnt[tid / 9u][tid % 9u], 0u); }
  if (tid < 2u) { atomicStore(&selSlot[tid], 0u); atomicStore(&selAExt[tid], select(0u, 0xffffffffu, tid == 0u)); }
  workgroupBarrier();
`}${load}
  // the digits every key but the current page's shares are T's already
  var lo = 0xffffffffu; var hi = 0u;
${extent}
  let ext = selExtent(lo, hi, tid);
  let first = countLeadingZeros(ext.x ^ ext.y) / 4u; // (8: all those keys equal)
  // invariant: #(keys >= T) >= k; the bits below the current digit are zero
  var T = select(ext.y & ~(0xffffffffu >> (4u * first)), ext.y, first >= 8u);
  for (var round = first; round < 8u; round++) {
    let shift = 28u - 4u * round;
    let mask = select(0xffffffffu << (shift + 4u), 0u, round == 0u); // T's prefix: the digits already chosen
    var h = SelHist(vec4<u32>(0u), vec4<u32>(0u), 0u);
${count}
    // 8-bit bins to 16-bit pairs before summing over up to 8192 keys
    let t = selTotal(SelHist(h.lo & vec4<u32>(0x00ff00ffu), (h.lo >> vec4<u32>(8u)) & vec4<u32>(0x00ff00ffu), h.gt), round, tid);
    let b = selBest(t, k);
    T |= b.x << shift;
    if (b.y == k) { break; } // exactly k keys at or above T: the digits below cannot change the set
  }
  // keys above T, then ties up to k
  var mine = vec2<u32>(0u);
${tally}
${subgroups ? `  let sc = selPrefix(mine, tid);
  var above = sc[0].x; var tie = sc[1].x + sc[0].y; // output slots: above T from 0, ties after all of those` : `  var above = atomicAdd(&selSlot[0], mine.x);
  workgroupBarrier();
  var tie = atomicLoad(&selSlot[0]) + atomicAdd(&selSlot[1], mine.y);`}
${write}
}`;
  return (subgroups ? 'enable subgroups;\n' : '') + PARAMS_WGSL + scratchWgsl(s) + /* wgsl */ `
const NKV: u32 = ${s.nKV}u;
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> sel: array<u32>;
${decls}
@compute @workgroup_size(SEL_WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let prm = prms[wid.z]; let slot = wid.z;
  if (prm.sparse == 0u) { return; } // (a dense row of a batch)
  let tid = lid.x; let g = wid.x; let n = prm.nPages; let base = (slot * NKV + g) * SLOT_PAGES; let k = prm.k;
  let ob = (slot * NKV + g) * SLOT_SEL;
  ${body}
}`;
};

/** Row sums of GQA by reduce-scatter (QUEST_ATTN_SCATTER=0 to compare with one all-reduce per head). */
const SCATTER = processEnv().QUEST_ATTN_SCATTER !== '0';

/** One online-softmax step of all G heads of a KV group over TB rows, for 16-lane rows (head dim 128)
 *  and G a power of two: each lane's partial scores of every head (4 rows at a time) are summed across
 *  the 16 lanes by a reduce-scatter — each round a lane keeps half of the heads and adds its partner's
 *  half — so that after log2(G) rounds a lane holds one head's rows (head = lane >> (4 - log2 G)), and the
 *  last rounds finish that head's sums. That lane's head alone gets its new maximum and exp2 weights;
 *  then every lane takes each head's weights from a lane of that head (subgroupShuffle) to update its
 *  accumulators. For G = 4 and 8 rows: 76 shuffles and 12 exp2 per lane instead of 128 and 36. */
function groupStep(G: number, tb: number): string {
  const g = Math.log2(G), SH = 4 - g, TB4 = tb / 4;
  const heads = Array.from({ length: G }, (_, j) => j), rows = [0, 1, 2, 3];
  const lines: string[] = [];
  lines.push(`    let sl = tid % 32u; let gb = sl & 16u; let mine = (sl & 15u) >> ${SH}u;`);
  lines.push(`    var s: array<vec4<f32>, TB4>;`);
  for (let b = 0; b < TB4; b++) {
    lines.push(`    {`);
    for (const j of heads) {
      lines.push(`      var x${j} = vec4<f32>(${rows.map((r) => `dot(h${j}.qa, k8[${4 * b + r}][0]) + dot(h${j}.qb, k8[${4 * b + r}][1])`).join(', ')});`);
    }
    let count = G;
    for (const m of [8, 4, 2, 1]) {
      if (count > 1) {
        const half = count / 2;
        lines.push(`      { let up = (sl & ${m}u) != 0u;`);
        for (let i = 0; i < half; i++) {
          lines.push(`        let r${i} = subgroupShuffleXor(select(x${half + i}, x${i}, up), ${m}u); x${i} = select(x${i}, x${half + i}, up) + r${i};`);
        }
        lines.push(`      }`);
        count = half;
      } else lines.push(`      x0 += subgroupShuffleXor(x0, ${m}u);`);
    }
    lines.push(`      s[${b}] = select(vec4<f32>(-3.0e38), x0, ok[${b}]);`);
    lines.push(`    }`);
  }
  // this lane's head: running max, new max, weights
  lines.push(`    var mo = h0.m;`);
  for (const j of heads.slice(1)) lines.push(`    mo = select(mo, h${j}.m, mine == ${j}u);`);
  lines.push(`    var mNew = mo;`);
  lines.push(`    for (var b = 0u; b < TB4; b++) { mNew = max(mNew, max(max(s[b].x, s[b].y), max(s[b].z, s[b].w))); }`);
  lines.push(`    var pw: array<vec4<f32>, TB4>;`);
  lines.push(`    for (var b = 0u; b < TB4; b++) { pw[b] = select(vec4<f32>(0.0), exp2(s[b] - mNew), ok[b]); }`);
  for (const j of heads) {
    lines.push(`    {`);
    lines.push(`      let src = gb + ${j << SH}u; let mj = subgroupShuffle(mNew, src); let cj = exp2(h${j}.m - mj);`);
    lines.push(`      var es = 0.0; h${j}.accA *= cj; h${j}.accB *= cj;`);
    for (let b = 0; b < TB4; b++) {
      lines.push(`      { let w = subgroupShuffle(pw[${b}], src); es += (w.x + w.y) + (w.z + w.w);`);
      lines.push(`        ${rows.map((r) => `h${j}.accA += w[${r}] * v8[${4 * b + r}][0]; h${j}.accB += w[${r}] * v8[${4 * b + r}][1];`).join(' ')} }`);
    }
    lines.push(`      h${j}.l = h${j}.l * cj + es; h${j}.m = mj;`);
    lines.push(`    }`);
  }
  return lines.join('\n');
}

/** Kernel 3: partial attention of one KV group over a chunk of pages (all pages, or the selected ones):
 *  per query head of the group, the chunk's max score (log2 units), sum of exp2 and exp2-weighted V.
 *  Each lane group streams its rows with an online softmax; the lane groups merge at the end. The
 *  per-head state (q, max, sum, accumulators) is one set of variables per head, generated here: arrays
 *  indexed by a head loop went to local memory, which made the GQA shape 5x slower than its bytes.
 *  `sharedRows` > 0: the variant for pages that several rows share (forks of one context): a workgroup
 *  takes those pages for up to sharedRows rows at once (their q rows and scratch slots in the group's
 *  parameters), every head of the KV group of each row, so each page is read once for all of them. */
export const partialWgsl = (s: AttnShape, subgroups = false, tb = TB, sharedRows = 0) => {
  const { NG, LG, shuffle } = lanes(s, subgroups), G0 = s.nHeads / s.nKV;
  // shared pages (sharedRows > 0): the query vectors are every head of the KV group for each of the
  // group's rows, vector j being head j % G of row j / G
  const G = G0 * Math.max(1, sharedRows);
  // GQA with 16-lane rows: row sums by reduce-scatter over the group's heads (groupStep)
  const scatter = shuffle && LG === 16 && G > 1 && G <= 16 && (G & (G - 1)) === 0 && SCATTER;
  const heads = Array.from({ length: G }, (_, j) => j);
  const rowOf = (j: number) => Math.floor(j / G0), headOf = (j: number) => j % G0;
  // a query vector's q row and scratch slot
  const packed = (field: string, j: number) => `((prm.${field}[${rowOf(j) >> 2}] >> ${8 * (rowOf(j) & 3)}u) & 255u)`;
  const qRow = (j: number) => (sharedRows ? packed('rows', j) : 'prm.row');
  const slotOf = (j: number) => (sharedRows ? packed('slots', j) : 'slot');
  const each = (f: (j: number) => string) => heads.map(f).join('\n');
  return common(s, subgroups, tb) + /* wgsl */ `
const GQ: u32 = ${G}u; // query vectors per workgroup
const MAXCP: u32 = ${Math.max(MAX_CHUNK_PAGES, Math.ceil(s.maxPages / MAX_CHUNKS))}u;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kc: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> vc: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> sel: array<u32>;
@group(0) @binding(5) var<storage, read_write> part: array<vec4<f32>>; // [row][nH][SLOT_CHUNKS][HD / 4 + 1] (the last: max, sum)
@group(0) @binding(6) var<storage, read> table: array<u32>; // physical page of each logical page
var<workgroup> pages: array<u32, MAXCP>;
var<workgroup> phys: array<u32, MAXCP>; // their physical pages
var<workgroup> gm: array<f32, ${NG * G}>; // [group][head] maxima, then sums
var<workgroup> anyPage: atomic<u32>; // whether the chunk has a page to read (a grouped Quest row's shared pages are NONE)
var<workgroup> anyPageU: u32;
var<workgroup> gacc: array<vec4<f32>, ${NG * s.headDim / 4}>; // [group][HD / 4]
// one head's online softmax over TB rows: scores summed across the lane group, new max, rescale, add V
struct Head { qa: vec4<f32>, qb: vec4<f32>, m: f32, l: f32, accA: vec4<f32>, accB: vec4<f32> }
fn step(h: Head, k8: array<array<vec4<f32>, 2>, TB>, v8: array<array<vec4<f32>, 2>, TB>, ok: array<vec4<bool>, TB4>, tid: u32) -> Head {
  var sc: array<vec4<f32>, TB4>;
  for (var i = 0u; i < TB; i++) { sc[i / 4u][i % 4u] = dot(h.qa, k8[i][0]) + dot(h.qb, k8[i][1]); }
  var mNew = h.m;
  for (var b = 0u; b < TB4; b++) {
    sc[b] = select(vec4<f32>(-3.0e38), rowSum(sc[b], tid), ok[b]);
    mNew = max(mNew, max(max(sc[b].x, sc[b].y), max(sc[b].z, sc[b].w)));
  }
  let corr = exp2(h.m - mNew);
  var e: array<vec4<f32>, TB4>; var es = 0.0;
  for (var b = 0u; b < TB4; b++) { e[b] = select(vec4<f32>(0.0), exp2(sc[b] - mNew), ok[b]); es += (e[b].x + e[b].y) + (e[b].z + e[b].w); }
  var r = Head(h.qa, h.qb, mNew, h.l * corr + es, h.accA * corr, h.accB * corr);
  for (var i = 0u; i < TB; i++) { let w = e[i / 4u][i % 4u]; r.accA += w * v8[i][0]; r.accB += w * v8[i][1]; }
  return r;
}
@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
${PARTIAL_GRID_WGSL} let slot = ${sharedRows ? '0u; // (shared pages are never sparse)\n ' : 'wid.x;'} let tid = lid.x; let lane = tid % LG; let grp = tid / LG;
  if (c >= prm.nChunks) { return; } // (a batch row with fewer chunks than the dispatch)
  let cp = prm.chunkPages;
  if (tid < cp) {
    let idx = c * cp + tid;
    var p = NONE;
    if (prm.sparse == 1u) { if (idx < prm.k) { p = sel[(slot * NKV + g) * SLOT_SEL + idx]; } }
    else if (idx < prm.k) { p = idx + prm.first / P; }
    pages[tid] = p; phys[tid] = select(0u, table[prm.tableAt + p], p != NONE);
    if (p != NONE) { atomicOr(&anyPage, 1u); }
  }
  // this lane's 8 channels of q for every head of the group, scaled so that exp2 gives the softmax
${each((j) => `  let b${j} = ((${qRow(j)} * NH + g * G + ${headOf(j)}u) * HD) / 4u + 2u * lane;
  var h${j} = Head(q[b${j}] * prm.scale, q[b${j} + 1u] * prm.scale, -3.0e38, 0.0, vec4<f32>(0.0), vec4<f32>(0.0));`)}
  workgroupBarrier();
  if (tid == 0u) { anyPageU = atomicLoad(&anyPage); }
  let rows = select(0u, cp * P, workgroupUniformLoad(&anyPageU) != 0u);
  for (var t0 = 0u; t0 < rows; t0 += NG * TB) {
    // TB rows per lane group, consecutive groups on consecutive tokens (a warp reads contiguous rows)
    var k8: array<array<vec4<f32>, 2>, TB>; var v8: array<array<vec4<f32>, 2>, TB>; var ok: array<vec4<bool>, TB4>;
    for (var i = 0u; i < TB; i++) {
      // no branches: a row that is not there reads row 0 of physical page 0 (allocated) and is masked
      // out, so that the lanes stay converged for the row sums' subgroup shuffles
      let t = t0 + i * NG + grp; let pi = min(t, rows - 1u) / P; let p = pages[pi]; let slot = t % P;
      let valid = t < rows && p != NONE && p * P + slot < prm.seqLen && p * P + slot >= prm.first;
      ok[i / 4u][i % 4u] = valid;
      let b = ((select(0u, phys[pi], valid) * NKV + g) * P + select(0u, slot, valid)) * LG + lane;
      k8[i] = unpack8(kc[b]); v8[i] = unpack8(vc[b]);
    }
${scatter ? groupStep(G, tb) : each((j) => `    h${j} = step(h${j}, k8, v8, ok, tid);`)}
  }
  // merge the lane groups: common maximum per head, then sums of the rescaled partial results
  if (lane == 0u) {
${each((j) => `    gm[grp * GQ + ${j}u] = h${j}.m;`)}
  }
  workgroupBarrier();
  var M: array<f32, GQ>; var f: array<f32, GQ>; // (indexed by constants only)
${each((j) => `  { var mm = -3.0e38; for (var r = 0u; r < NG; r++) { mm = max(mm, gm[r * GQ + ${j}u]); } M[${j}] = mm; f[${j}] = select(0.0, exp2(h${j}.m - mm), h${j}.m > -1.0e38); }`)}
  workgroupBarrier();
  if (lane == 0u) {
${each((j) => `    gm[grp * GQ + ${j}u] = h${j}.l * f[${j}];`)}
  }
${each((j) => `  gacc[grp * (HD / 4u) + 2u * lane] = h${j}.accA * f[${j}]; gacc[grp * (HD / 4u) + 2u * lane + 1u] = h${j}.accB * f[${j}];
  workgroupBarrier();
  ${sharedRows ? `if (${rowOf(j)}u < prm.count) { ` : ''}merge(g * G + ${headOf(j)}u, ${j}u, prm.chunkBase + c, M[${j}], tid, ${slotOf(j)});${sharedRows ? ' }' : ''}
  workgroupBarrier();`)}
}
// writes one head's chunk result (query vector j of the group) from the lane groups' rescaled sums in workgroup memory
fn merge(h: u32, j: u32, c: u32, M: f32, tid: u32, slot: u32) {
  let pc = (slot * NH + h) * SLOT_CHUNKS + c;
  for (var d = tid; d < HD / 4u; d += WG) {
    var sum = vec4<f32>(0.0);
    for (var r = 0u; r < NG; r++) { sum += gacc[r * (HD / 4u) + d]; }
    part[pc * (HD / 4u + 1u) + d] = sum;
  }
  if (tid == 0u) {
    var L = 0.0;
    for (var r = 0u; r < NG; r++) { L += gm[r * GQ + j]; }
    part[pc * (HD / 4u + 1u) + HD / 4u] = vec4<f32>(M, L, 0.0, 0.0);
  }
}`;
};

/** Kernel 4: combine the chunks' partial softmax (flash-decoding reduction; maxima in log2 units).
 *  A workgroup per query head: each thread folds its chunks' (max, sum) into one pair, the pairs are
 *  combined across the workgroup in one step (subgroup reductions where subgroups are 32 wide, else a
 *  tree in workgroup memory), then CL chunk lanes x HD/4 channel lanes sum the weighted partial outputs
 *  with independent 16-byte loads. The call's last dependent dispatch: its time is mostly barriers. */
export const reduceWgsl = (s: AttnShape, subgroups = false) => {
  const V4 = s.headDim / 4, CL = Math.floor(256 / V4);
  const combine = subgroups ? /* wgsl */ `
  // (max, sum) of the subgroup, then of the 8 subgroups
  let sm = subgroupMax(m); let sl = subgroupAdd(select(0.0, l * exp2(m - sm), l > 0.0));
  if (tid % 32u == 0u) { pair[tid / 32u] = vec2<f32>(sm, sl); }
  workgroupBarrier();
  var M = -3.0e38;
  for (var i = 0u; i < 8u; i++) { M = max(M, pair[i].x); }
  var L = 0.0;
  for (var i = 0u; i < 8u; i++) { let x = pair[i]; L += select(0.0, x.y * exp2(x.x - M), x.y > 0.0); }` : /* wgsl */ `
  pair[tid] = vec2<f32>(m, l);
  workgroupBarrier();
  for (var o = 128u; o > 0u; o >>= 1u) {
    if (tid < o) { pair[tid] = fold(pair[tid], pair[tid + o]); }
    workgroupBarrier();
  }
  let M = pair[0].x; let L = pair[0].y;`;
  return (subgroups ? 'enable subgroups;\n' : '') + /* wgsl */ `
const NH: u32 = ${s.nHeads}u;
const HD: u32 = ${s.headDim}u;
const V4: u32 = ${V4}u;  // channel lanes (vec4 each)
const CL: u32 = ${CL}u;  // chunk lanes
${PARAMS_WGSL}${scratchWgsl(s)}@group(0) @binding(1) var<storage, read> part: array<vec4<f32>>; // [row][nH][SLOT_CHUNKS][HD / 4 + 1] (the last: max, sum)
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
var<workgroup> pair: array<vec2<f32>, ${subgroups ? 8 : 256}>;
var<workgroup> ored: array<vec4<f32>, ${CL * V4}>;
// two (max, sum) pairs as one (a sum of 0: nothing attended, whatever its max)
fn fold(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
  let m = max(a.x, b.x);
  return vec2<f32>(m, select(0.0, a.y * exp2(a.x - m), a.y > 0.0) + select(0.0, b.y * exp2(b.x - m), b.y > 0.0));
}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
  let prm = prms[wid.z];
  let h = wid.x; let tid = lid.x; let nc = select(prm.nChunks, prm.chunks, prm.chunks > 0u); let hb = (wid.z * NH + h) * SLOT_CHUNKS;
  var m = -3.0e38; var l = 0.0;
  for (var c = tid; c < nc; c += 256u) { let f = fold(vec2<f32>(m, l), part[(hb + c) * (V4 + 1u) + V4].xy); m = f.x; l = f.y; }
${combine}
  let lane = tid % V4; let cl = tid / V4;
  var acc = vec4<f32>(0.0);
  if (cl < CL) {
    for (var c = cl; c < nc; c += CL) {
      let e = part[(hb + c) * (V4 + 1u) + V4].xy;
      acc += select(0.0, exp2(e.x - M), e.y > 0.0) * part[(hb + c) * (V4 + 1u) + lane];
    }
    ored[cl * V4 + lane] = acc;
  }
  workgroupBarrier();
  if (tid < V4) {
    var sum = vec4<f32>(0.0);
    for (var r = 0u; r < CL; r++) { sum += ored[r * V4 + tid]; }
    out[(prm.row * NH + h) * V4 + tid] = sum / L;
  }
}`;
};

/** The constants, parameters and scratch layout of the thread-per-head kernels below. */
const threadHeader = (s: AttnShape) => /* wgsl */ `
const NH: u32 = ${s.nHeads}u;
const NKV: u32 = ${s.nKV}u;
const G: u32 = ${s.nHeads / s.nKV}u;
const HD: u32 = ${s.headDim}u;
const V4: u32 = ${s.headDim / 4}u;
const LG: u32 = ${s.headDim / 8}u; // 16-byte words of a K or V row
const P: u32 = ${s.pageSize}u;
const NONE: u32 = 0xffffffffu;
${PARAMS_WGSL}${scratchWgsl(s)}${UNPACK8_WGSL}`;

/** Kernel 3 for CPU adapters (SwiftShader, lavapipe): a thread per query vector (a head, or a shared-prefix
 *  group's row and head) walks its chunk's tokens with an online softmax; no workgroup memory, no barriers.
 *  Same bindings, parameters and partial results as partialWgsl. On a GPU it would be slow (a thread reads
 *  whole rows); on a CPU adapter, where every barrier makes the emulation switch between all of a
 *  workgroup's threads, partialWgsl and reduceWgsl made a decode step of the default model spend 0.26 s in
 *  attention (this pair: 2.5 ms). `selected`: the variant for a group of Quest forks (sharedRows > 0), over
 *  the shared pages any of them selected (the selection-union kernel's list, shared-pages-mma.ts), each row
 *  masked to its own; its bindings are those of the tensor-core kernel's sparse variant. */
export const partialThreadWgsl = (s: AttnShape, sharedRows = 0, selected = false) => {
  const GQ = (s.nHeads / s.nKV) * Math.max(1, sharedRows);
  return threadHeader(s) + /* wgsl */ `
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kc: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> vc: array<vec4<u32>>;
${selected ? `@group(0) @binding(4) var<storage, read_write> part: array<vec4<f32>>; // [row][nH][SLOT_CHUNKS][HD / 4 + 1] (the last: max, sum)
@group(0) @binding(5) var<storage, read> table: array<u32>;
@group(0) @binding(6) var<storage, read> ulist: array<u32>; // [group][NKV][SLOT_PAGES]: page | rows that selected it << 16
@group(0) @binding(7) var<storage, read> ucount: array<u32>; // [group][NKV]: pages listed` : `@group(0) @binding(4) var<storage, read> sel: array<u32>;
@group(0) @binding(5) var<storage, read_write> part: array<vec4<f32>>; // [row][nH][SLOT_CHUNKS][HD / 4 + 1] (the last: max, sum)
@group(0) @binding(6) var<storage, read> table: array<u32>;`}
@compute @workgroup_size(${GQ})
fn main(@builtin(local_invocation_index) j: u32, @builtin(workgroup_id) wid: vec3<u32>) {
${PARTIAL_GRID_WGSL}
  if (c >= prm.nChunks) { return; }
${sharedRows ? `  // query vector j: head j % G of the group's row j / G
  let rj = j / G;
  if (rj >= prm.count) { return; }
  let qrow = (prm.rows[rj / 4u] >> (8u * (rj % 4u))) & 255u; let slot = (prm.slots[rj / 4u] >> (8u * (rj % 4u))) & 255u;` : '  let qrow = prm.row; let slot = wid.x;'}
  let h = g * G + j % G;
  var qv: array<vec4<f32>, V4>; var acc: array<vec4<f32>, V4>;
  for (var d = 0u; d < V4; d++) { qv[d] = q[(qrow * NH + h) * V4 + d] * prm.scale; acc[d] = vec4<f32>(0.0); }
  var m = -3.0e38; var l = 0.0;
  let cp = prm.chunkPages;${selected ? ' let listed = ucount[wid.x * NKV + g];' : ''}
  for (var i = 0u; i < cp; i++) {
    let idx = c * cp + i;
${selected ? `    if (idx >= listed) { break; }
    let e = ulist[(wid.x * NKV + g) * SLOT_PAGES + idx];
    if (((e >> (16u + rj)) & 1u) == 0u) { continue; } // (a page this row did not select)
    let p = e & 0xffffu;` : `    if (idx >= prm.k) { break; }
    var p = idx + prm.first / P;
    if (prm.sparse == 1u) { p = sel[(slot * NKV + g) * SLOT_SEL + idx]; }
    if (p == NONE) { continue; }`}
    let ph = table[prm.tableAt + p];
    for (var t = 0u; t < P; t++) {
      let pos = p * P + t;
      if (pos >= prm.seqLen || pos < prm.first) { continue; }
      let b = ((ph * NKV + g) * P + t) * LG;
      var sc = 0.0;
      for (var w = 0u; w < LG; w++) { let k8 = unpack8(kc[b + w]); sc += dot(qv[2u * w], k8[0]) + dot(qv[2u * w + 1u], k8[1]); }
      let mNew = max(m, sc); let corr = exp2(m - mNew); let e = exp2(sc - mNew);
      l = l * corr + e; m = mNew;
      for (var w = 0u; w < LG; w++) { let v8 = unpack8(vc[b + w]); acc[2u * w] = acc[2u * w] * corr + e * v8[0]; acc[2u * w + 1u] = acc[2u * w + 1u] * corr + e * v8[1]; }
    }
  }
  let pc = ((slot * NH + h) * SLOT_CHUNKS + prm.chunkBase + c) * (V4 + 1u);
  for (var d = 0u; d < V4; d++) { part[pc + d] = acc[d]; }
  part[pc + V4] = vec4<f32>(m, l, 0.0, 0.0);
}`;
};

/** Kernel 4 for CPU adapters: a thread per 4 channels of a head sums the chunks' partial results (as reduceWgsl). */
export const reduceThreadWgsl = (s: AttnShape) => threadHeader(s) + /* wgsl */ `
@group(0) @binding(1) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@compute @workgroup_size(${s.headDim / 4})
fn main(@builtin(local_invocation_index) d: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let prm = prms[wid.z]; let h = wid.x;
  let nc = select(prm.nChunks, prm.chunks, prm.chunks > 0u); let hb = (wid.z * NH + h) * SLOT_CHUNKS;
  // (a chunk with a sum of 0 attended nothing, whatever its max)
  var M = -3.0e38;
  for (var c = 0u; c < nc; c++) { let e = part[(hb + c) * (V4 + 1u) + V4].xy; if (e.y > 0.0) { M = max(M, e.x); } }
  var L = 0.0; var acc = vec4<f32>(0.0);
  for (var c = 0u; c < nc; c++) {
    let e = part[(hb + c) * (V4 + 1u) + V4].xy; let f = select(0.0, exp2(e.x - M), e.y > 0.0);
    L += e.y * f; acc += f * part[(hb + c) * (V4 + 1u) + d];
  }
  out[(prm.row * NH + h) * V4 + d] = acc / L;
}`;

export type Stage = 'scores' | 'topk' | 'partial' | 'reduce';

/** One layer of one sequence: the family's K, V and metadata pages and the sequence's page table
 *  (u32 physical page per logical page). */
export interface LayerBuffers { k: GPUBuffer; v: GPUBuffer; meta: GPUBuffer; table: GPUBuffer }

/** A page table mapping logical page p to physical page p (tests and benchmarks of one sequence). */
export function identityPageTable(device: GPUDevice, pages: number): GPUBuffer {
  const b = device.createBuffer({ size: Math.max(16, pages * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(b, 0, Uint32Array.from({ length: pages }, (_, i) => i));
  return b;
}

/** One sequence of a decode-attention call: its length, Quest's page budget (0: dense), where its page
 *  table starts in the table buffer, its row of q and out, and a sliding window (the last `window`
 *  tokens attended, densely; 0 or absent: all). */
export interface AttnRow { seqLen: number; budgetPages: number; tableAt?: number; row?: number; window?: number }

/** Rows of a batch whose first `pages` pages are the same physical pages (forks of one context): their
 *  attention over those pages reads each page once for a workgroup's rows (indices into the call's rows).
 *  Dense rows, or Quest rows (on tensor cores, or the thread kernels of CPU adapters), each attending to the
 *  shared pages it selected. */
export interface SharedPages { rows: number[]; pages: number }

/** The first token and the pages a row reads: its window's, or Quest's selection, or all; after `skip`
 *  pages attended with other rows (a Quest row: its selected pages past those). */
function rowPages(r: Required<AttnRow>, pageSize: number, skip = 0) {
  const nPages = Math.ceil(r.seqLen / pageSize), first = r.window > 0 ? Math.max(0, r.seqLen - r.window) : skip * pageSize;
  const sparse = (r.window === 0 || first === 0) && r.budgetPages > 0 && r.budgetPages < nPages;
  return { nPages, first, sparse, read: sparse ? r.budgetPages : nPages - Math.floor(first / pageSize) };
}

/** Pipelines and scratch for decode attention of one shape; `encode` records one call into a pass, for
 *  one sequence or for a batch of sequences (one dispatch per stage for all of them, each over its own
 *  pages: the rows' page tables side by side in one table buffer over the same K/V buffers). */
export class DecodeAttention {
  private readonly pipes: Record<'scores' | 'dense' | 'sparse' | 'reduce', GPUComputePipeline>;
  private sharedPipe: GPUComputePipeline | null = null;
  /** The tensor-core kernel for shared pages, where this device and shape have it (else the thread kernel). */
  readonly sharedMma: { cfg: MatrixConfig; layout: SharedMmaLayout } | null;
  /** Whether groups of Quest rows read the shared pages they selected together (the thread kernels of CPU
   *  adapters unless QUEST_SHARED_QUEST=0; tensor cores with QUEST_SHARED_QUEST=1; the union kernel's bit per
   *  page in workgroup memory, page numbers in 16 bits). */
  readonly sharesSelections: boolean;
  private sharedSparsePipe: GPUComputePipeline | null = null;
  private unionPipe: GPUComputePipeline | null = null;
  /** Dispatches of groups of Quest rows recorded so far (tests and benchmarks). */
  sharedSparseCalls = 0;
  /** Rows of a shared-prefix group per workgroup for this shape (their heads' query vectors are what one
   *  workgroup carries: at most 16 on the thread kernel, four blocks of 16 on tensor cores), or 0 where
   *  sharing gains nothing (one row). */
  readonly sharedRows: number;
  /** Shared-prefix dispatches recorded so far (tests and benchmarks: whether a batch of forks took that path). */
  sharedCalls = 0;
  private readonly topkPipes = new Map<number, GPUComputePipeline>(); // by keys per thread (a power of two)
  private readonly sub: boolean;
  private readonly topkThreads: number;
  readonly q: GPUBuffer; readonly out: GPUBuffer;
  private readonly s: AttnShape;
  /** scratch for `rows` batch rows */
  private scores!: GPUBuffer; private sel!: GPUBuffer; private part!: GPUBuffer;
  /** per group of Quest rows (at most one a row) and KV head: the pages its rows selected, and how many */
  private ulist!: GPUBuffer; private ucount!: GPUBuffer;
  private rows = 0;
  private readonly params: GPUBuffer[] = [];
  private readonly lanes: ReturnType<typeof lanes>;
  private paramIndex = 0;
  // Bind groups are cached per layer, then per (params slot, kernel), and dropped only when a sequence
  // says it is done with its layers (forget): dawn.node has been seen to crash when the garbage
  // collector finalises GPU objects while work is in flight.
  private readonly groups = new Map<LayerBuffers, Map<string, GPUBindGroup>>();

  /** Drops the bind groups of layers no longer used (a disposed sequence, or one whose pages moved). */
  forget(layers: LayerBuffers[]): void { for (const l of layers) this.groups.delete(l); }

  /** `io`: the q and out buffers to use (the decoder's activations) instead of own ones; `topkThreads`:
   *  the top-k kernel's workgroup size (tests and benchmarks compare them). */
  /** `threadKernels`: kernels 3 and 4 as partialThreadWgsl / reduceThreadWgsl (default: on CPU adapters,
   *  unless QUEST_ATTN_THREAD=0). */
  /** `useSharedMma`: the tensor-core kernel for shared pages where the device has it (default: unless QUEST_SHARED_MMA=0). */
  constructor(readonly device: GPUDevice, shape: AttnShape, maxSelectedPages: number, io?: { q: GPUBuffer; out: GPUBuffer }, topkThreads = TOPK_THREADS,
              readonly threadKernels = onCpuAdapter(device) && processEnv().QUEST_ATTN_THREAD !== '0', useSharedMma = SHARED_MMA !== '0') {
    const s = this.s = { ...shape, maxSelected: Math.max(1, Math.min(shape.maxPages, maxSelectedPages)) };
    if (s.nHeads % s.nKV !== 0 || s.headDim % 8 !== 0) throw new Error(`decode attention needs query heads a multiple of KV heads and a head dim that is a multiple of 8 (got ${s.nHeads}/${s.nKV}, ${s.headDim})`);
    const mk = (code: string, label: string) => this.pipeline(code, label);
    const sub = hasSubgroups32(device);
    this.lanes = lanes(s, sub);
    this.sub = sub; this.topkThreads = topkThreads;
    const G = s.nHeads / s.nKV;
    // (QUEST_SHARED_PAGES=0: every row reads its own pages, as separate contexts would; benchmarks compare)
    const thread = this.threadKernels, cfg = matrixConfig(device);
    const mma = sharedMmaLayout(G, processEnv().QUEST_SHARED_MMA_EXACT !== '0', processEnv().QUEST_SHARED_MMA_PREFETCH === '1');
    this.sharedMma = !thread && useSharedMma && sharedMmaFits(s, cfg, mma.layout) && mma.rows >= 2
      && sharedMmaBytes(s.headDim, mma.layout) <= device.limits.maxComputeWorkgroupStorageSize ? { cfg, layout: mma.layout } : null;
    const rg = this.sharedMma ? mma.rows : Math.min(SHARED_ROWS, Math.floor(16 / G));
    this.sharedRows = rg >= 2 && processEnv().QUEST_SHARED_PAGES !== '0' ? rg : 0;
    // Quest forks in groups: by default only with the thread kernels (CPU adapters); on tensor cores the
    // group reads the union of its rows' selections, which for forks whose selections differ is most of the
    // shared pages (H100, 16 random forks: 207 against 96 µs a layer for each row's own pass, session 33)
    const questGroups = processEnv().QUEST_SHARED_QUEST;
    this.sharesSelections = (thread ? questGroups !== '0' : !!this.sharedMma && questGroups === '1') && this.sharedRows > 0 && s.maxPages <= 65536
      && s.maxPages * 4 + 1024 <= device.limits.maxComputeWorkgroupStorageSize;
    this.pipes = {
      scores: mk(scoresWgsl(s, sub), 'scores'), reduce: mk(thread ? reduceThreadWgsl(s) : reduceWgsl(s, sub), 'reduce'),
      dense: mk(thread ? partialThreadWgsl(s) : partialWgsl(s, sub, partialTB(s.nHeads / s.nKV).dense), 'partial dense'),
      sparse: mk(thread ? partialThreadWgsl(s) : partialWgsl(s, sub, partialTB(s.nHeads / s.nKV).sparse), 'partial sparse'),
    };
    this.q = io?.q ?? this.buffer(s.nHeads * s.headDim * 4); this.out = io?.out ?? this.buffer(s.nHeads * s.headDim * 4);
    this.growScratch(1);
  }

  private buffer(size: number): GPUBuffer {
    return this.device.createBuffer({ size: Math.max(16, size), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  }

  /** Scratch slots for `rows` batch rows (bind groups made with the old buffers are dropped). */
  private growScratch(rows: number): void {
    if (rows <= this.rows) return;
    const s = this.s, maxChunks = maxChunksOf(s);
    for (const b of this.rows ? [this.scores, this.sel, this.part, this.ulist, this.ucount] : []) b.destroy();
    this.ulist = this.buffer(this.sharesSelections ? rows * s.nKV * s.maxPages * 4 : 16); this.ucount = this.buffer(rows * s.nKV * 4);
    this.scores = this.buffer(rows * s.nKV * s.maxPages * 4); this.sel = this.buffer(rows * s.nKV * s.maxSelected! * 4);
    this.part = this.buffer(rows * s.nHeads * maxChunks * (s.headDim + 4) * 4); // (each chunk's max and sum after its output)
    this.rows = rows;
    this.groups.clear();
  }

  /** The top-k pipeline for sequences of up to nPages pages: keys per thread rounded up to a power of two. */
  private topkPipe(nPages: number): { pipe: GPUComputePipeline; kr: number } {
    const wg = this.topkThreads, most = Math.ceil(this.s.maxPages / wg);
    const kr = Math.min(most, 2 ** Math.ceil(Math.log2(Math.max(1, Math.ceil(nPages / wg)))));
    let pipe = this.topkPipes.get(kr);
    if (!pipe) { pipe = this.pipeline(topkWgsl(this.s, this.sub, wg, kr * wg), 'top-k'); this.topkPipes.set(kr, pipe); }
    return { pipe, kr };
  }

  private pipeline(code: string, label: string): GPUComputePipeline {
    return compiledPipeline(this.device, code, `attention ${label}`);
  }

  /** Bytes of one layer's K, V and metadata buffers for `pages` pages. */
  static layerBytes(s: AttnShape, pages: number) {
    const kv = pages * s.nKV * s.pageSize * (s.headDim / 2) * 4;
    return { kv, meta: pages * s.nKV * s.headDim * 4 };
  }

  /** Parameter buffers are written ahead of a batch of encodes (each distinct call its own). */
  private slots = new Map<string, number>();
  /** `skip[i]`: pages row i attends with its shared-prefix group (0: none). */
  private paramsFor(rows: Required<AttnRow>[], scale: number, skip: number[]): { buf: GPUBuffer; slot: number } {
    // the layers of one decode step share their parameters: reuse a slot written in this batch of encodes
    const key = rows.map((r, i) => `${r.seqLen}:${r.budgetPages}:${r.tableAt}:${r.row}:${r.window}:${skip[i]}`).join(','), known = this.slots.get(key);
    if (known !== undefined) return { buf: this.params[known], slot: known };
    return this.writeParams(key, (i) => {
      const r = rows[i], { nPages, first, sparse, read } = rowPages(r, this.s.pageSize, skip[i]);
      const { chunkPages, nChunks } = this.chunking(read), base = skip[i] ? this.sharedChunking(skip[i]).parts : 0;
      return { seqLen: r.seqLen, nPages, k: read, sparse, nChunks, chunkPages, row: r.row, tableAt: r.tableAt, first, chunkBase: base, chunks: base ? base + nChunks : 0 };
    }, rows.length, scale);
  }

  /** Parameters of the shared-prefix groups' call (partialWgsl's shared variant): per group of up to sharedRows rows. */
  private groupParamsFor(groups: { rows: number[]; pages: number }[], rows: Required<AttnRow>[], scale: number): { buf: GPUBuffer; slot: number } {
    const key = 'g' + groups.map((g) => `${g.pages}:${g.rows.map((i) => `${rows[i].row}@${i}@${rows[i].tableAt}`).join('/')}`).join(','), known = this.slots.get(key);
    if (known !== undefined) return { buf: this.params[known], slot: known };
    return this.writeParams(key, (i) => {
      // (four 8-bit fields a word)
      const g = groups[i], { chunkPages, nChunks } = this.sharedChunking(g.pages);
      const pack = (f: (j: number) => number) => [0, 1, 2, 3].map((w) => g.rows.slice(4 * w, 4 * w + 4).reduce((a, r, j) => a | (f(r) << (8 * j)), 0) >>> 0);
      return { seqLen: g.pages * this.s.pageSize, nPages: g.pages, k: g.pages, sparse: false, nChunks, chunkPages, row: 0, tableAt: rows[g.rows[0]].tableAt, first: 0,
        chunkBase: 0, chunks: 0, rows: pack((r) => rows[r].row), slots: pack((r) => r), count: g.rows.length };
    }, groups.length, scale);
  }

  private writeParams(key: string, entry: (i: number) => { seqLen: number; nPages: number; k: number; sparse: boolean; nChunks: number; chunkPages: number; row: number; tableAt: number; first: number; chunkBase: number; chunks: number; rows?: number[]; slots?: number[]; count?: number }, n: number, scale: number): { buf: GPUBuffer; slot: number } {
    this.slots.set(key, this.paramIndex);
    const bytes = n * PARAM_WORDS * 4;
    if (this.paramIndex >= this.params.length || this.params[this.paramIndex].size < bytes) {
      this.params[this.paramIndex]?.destroy();
      this.params[this.paramIndex] = this.device.createBuffer({ size: Math.max(bytes, 4 * PARAM_WORDS * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
      for (const g of this.groups.values()) for (const k of [...g.keys()]) if (k.startsWith(`${this.paramIndex}:`) || k.endsWith(`@${this.paramIndex}`)) g.delete(k);
    }
    const b = this.params[this.paramIndex++];
    const data = new ArrayBuffer(bytes), u = new Uint32Array(data), f = new Float32Array(data);
    for (let i = 0; i < n; i++) {
      const e = entry(i), o = i * PARAM_WORDS;
      u[o] = e.seqLen; u[o + 1] = e.nPages; u[o + 2] = e.k; u[o + 3] = e.sparse ? 1 : 0;
      f[o + 4] = scale * LOG2E; u[o + 5] = e.nChunks; u[o + 6] = e.chunkPages; u[o + 7] = e.row; u[o + 8] = e.tableAt; u[o + 9] = e.first;
      u[o + 10] = e.chunkBase; u[o + 11] = e.chunks; u.set(e.rows ?? [0, 0, 0, 0], o + 12); u.set(e.slots ?? [0, 0, 0, 0], o + 16); u[o + 20] = e.count ?? 0;
    }
    this.device.queue.writeBuffer(b, 0, data);
    return { buf: b, slot: this.paramIndex - 1 };
  }

  /** Pages per partial-attention workgroup: few enough that the workgroups fill the GPU, many enough
   *  that each streams a good run of rows. */
  private chunking(pages: number): { chunkPages: number; nChunks: number } {
    const want = Math.floor((pages * this.s.nKV) / targetWorkgroups(this.s.nHeads / this.s.nKV));
    const chunkPages = Math.max(Math.ceil(pages / MAX_CHUNKS), Math.min(MAX_CHUNK_PAGES, Math.max(MIN_CHUNK_PAGES, want)));
    return { chunkPages, nChunks: Math.ceil(pages / chunkPages) };
  }

  /** Chunks of a group's shared pages, and the partial results each of its rows gets from them (one per
   *  chunk): the tensor-core kernel's chunks are whole sub-chunks of it, at most about SHARED_MMA_WG
   *  workgroups over the KV heads, and leave room for the rows' own chunks. */
  private sharedChunking(pages: number): { chunkPages: number; nChunks: number; parts: number } {
    if (!this.sharedMma) { const c = this.chunking(pages); return { ...c, parts: c.nChunks }; }
    const sub = sharedMmaSubPages(this.sharedMma.layout, this.s.pageSize);
    const want = Math.max(Math.ceil(pages / Math.max(1, Math.round(SHARED_MMA_WG / this.s.nKV))), Math.ceil(pages / (maxChunksOf(this.s) / 2)));
    const chunkPages = Math.ceil(Math.max(1, want) / sub) * sub, nChunks = Math.ceil(pages / chunkPages);
    return { chunkPages, nChunks, parts: nChunks };
  }

  /** Starts a new batch of encodes (parameter buffers are reused from the start). */
  resetBatch(): void { this.paramIndex = 0; this.slots.clear(); this.plans = new WeakMap(); }

  /** Records one decode-attention call of one sequence. budgetPages = 0 (or >= the page count): dense.
   *  `only`: record just that stage (benchmarks time the stages one by one). */
  encode(pass: GPUComputePassEncoder, layer: LayerBuffers, seqLen: number, budgetPages: number, only?: Stage): void {
    this.encodeRows(pass, layer, [{ seqLen, budgetPages }], only);
  }

  /** Records one decode-attention call of several sequences (batch row i: scratch slot i), each over
   *  its own page table inside `layer.table` (at `tableAt`) and with its own budget. `scored`: the
   *  page scores are there already (one sequence, after ropeScoresWgsl). */
  encodeRows(pass: GPUComputePassEncoder, layer: LayerBuffers, rowsIn: AttnRow[], only?: Stage, opts: { scored?: boolean; shared?: SharedPages[] } = {}): void {
    // (the layers of a step pass the same rows: planned once per batch of encodes)
    let plan = this.plans.get(rowsIn);
    if (!plan || plan.shared !== opts.shared) { plan = this.plan(rowsIn, opts.shared); this.plans.set(rowsIn, plan); }
    const s = this.s, { prm, slot, subGroups, groupParams, questGroups, questParams, anySparse, n, mostPages, chunks, sharedChunks, questChunks } = plan;
    let groups = this.groups.get(layer);
    if (!groups) { groups = new Map(); this.groups.set(layer, groups); }
    const bind = (pipe: GPUComputePipeline, name: string, bufs: GPUBuffer[], params = { buf: prm, slot }) => {
      const key = `${params.slot}:${name}`;
      let g = groups.get(key);
      if (!g) {
        g = this.device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [params.buf, ...bufs].map((buffer, binding) => ({ binding, resource: { buffer } })) });
        groups.set(key, g);
      }
      return g;
    };
    const want = (st: Stage) => only === undefined || only === st;
    if (anySparse && want('scores') && !opts.scored) { // (scored: ropeScoresWgsl wrote them)
      pass.setPipeline(this.pipes.scores); pass.setBindGroup(0, bind(this.pipes.scores, 's', [this.q, layer.meta, this.scores, layer.table]));
      pass.dispatchWorkgroups(n, Math.ceil(mostPages / (TB * this.lanes.NG)), s.nKV);
    }
    if (anySparse && want('topk')) {
      const { pipe, kr } = this.topkPipe(mostPages);
      pass.setPipeline(pipe); pass.setBindGroup(0, bind(pipe, `t${kr}`, [this.scores, this.sel]));
      pass.dispatchWorkgroups(s.nKV, 1, n);
    }
    if (want('partial') && questParams) {
      // groups of Quest rows: the shared pages each group selected (a list per KV head), then those pages
      // read once for the group, each row masked to its own selection
      const mma = this.sharedMma;
      const union = this.unionPipe ??= this.pipeline(selectionUnionFor(s), 'selection union');
      pass.setPipeline(union); pass.setBindGroup(0, bind(union, `u@${slot}`, [prm, this.sel, this.ulist, this.ucount], questParams));
      pass.dispatchWorkgroups(questGroups.length, s.nKV);
      const pipe = this.sharedSparsePipe ??= this.pipeline(mma ? sharedPagesMmaFor(s, mma, true)
        : partialThreadWgsl(s, this.sharedRows, true), 'partial selected shared pages');
      pass.setPipeline(pipe); pass.setBindGroup(0, bind(pipe, 'shq', [this.q, layer.k, layer.v, this.part, layer.table, this.ulist, this.ucount], questParams));
      pass.dispatchWorkgroups(questGroups.length, questChunks, s.nKV); // (PARTIAL_GRID_WGSL)
      this.sharedSparseCalls++;
    }
    if (want('partial') && groupParams) {
      // the shared pages: every KV page read once for a group's rows
      const mma = this.sharedMma;
      const pipe = this.sharedPipe ??= this.pipeline(mma ? sharedPagesMmaFor(s, mma, false)
        : this.threadKernels ? partialThreadWgsl(s, this.sharedRows) : partialWgsl(s, this.sub, partialTB(s.nHeads / s.nKV).sparse, this.sharedRows), 'partial shared pages');
      pass.setPipeline(pipe);
      pass.setBindGroup(0, bind(pipe, 'sh', mma ? [this.q, layer.k, layer.v, this.part, layer.table] : [this.q, layer.k, layer.v, this.sel, this.part, layer.table], groupParams));
      pass.dispatchWorkgroups(subGroups.length, sharedChunks, s.nKV); // (PARTIAL_GRID_WGSL)
      this.sharedCalls++;
    }
    if (want('partial')) {
      // (a batch mixing dense and sparse rows runs the sparse variant: it reads either)
      const pipe = anySparse ? this.pipes.sparse : this.pipes.dense;
      pass.setPipeline(pipe); pass.setBindGroup(0, bind(pipe, anySparse ? 'ps' : 'pd', [this.q, layer.k, layer.v, this.sel, this.part, layer.table]));
      pass.dispatchWorkgroups(n, chunks, s.nKV); // (PARTIAL_GRID_WGSL)
    }
    if (want('reduce')) {
      pass.setPipeline(this.pipes.reduce); pass.setBindGroup(0, bind(this.pipes.reduce, 'r', [this.part, this.out]));
      pass.dispatchWorkgroups(s.nHeads, 1, n);
    }
  }

  /** Plans of this batch of encodes, by rows array (see encodeRows). */
  private plans = new WeakMap<AttnRow[], ReturnType<DecodeAttention['plan']>>();

  /** What one call over `rowsIn` reads and dispatches (its parameters written): the same for every layer
   *  of a step, so encodeRows computes it once per rows array and batch of encodes. */
  private plan(rowsIn: AttnRow[], shared: SharedPages[] | undefined) {
    const s = this.s;
    const rows = rowsIn.map((r, i) => ({ seqLen: r.seqLen, budgetPages: r.budgetPages, tableAt: r.tableAt ?? 0, row: r.row ?? i, window: r.window ?? 0 }));
    for (const r of rows) {
      const pages = Math.ceil(r.seqLen / s.pageSize);
      if (pages > s.maxPages) throw new Error(`sequence of ${r.seqLen} tokens exceeds the ${s.maxPages} pages allocated`);
      if (r.budgetPages > s.maxSelected! && r.budgetPages < pages) throw new Error(`a budget of ${r.budgetPages} pages exceeds the ${s.maxSelected} this attention was made for`);
    }
    // shared-prefix groups, in workgroups of up to sharedRows rows; each row then reads only its own pages
    // (dense rows) or its selected pages past the shared ones (Quest rows, where groups of them are read together)
    const skip = rows.map(() => 0), subGroups: SharedPages[] = [], questGroups: SharedPages[] = [];
    for (const g of this.sharedRows ? shared ?? [] : []) {
      let fits = true;
      const quest = g.rows.map((i) => rows[i] && rowPages(rows[i], s.pageSize).sparse);
      for (const [x, i] of g.rows.entries()) {
        const r = rows[i], nPages = Math.ceil((r?.seqLen ?? 0) / s.pageSize);
        if (!r || skip[i] || g.rows.indexOf(i) !== g.rows.lastIndexOf(i)) throw new Error(`shared pages: row ${i} is not in the call or is in two groups`);
        if (r.window) throw new Error(`shared pages: row ${i} has a sliding window`);
        if (quest[x] !== quest[0]) throw new Error(`shared pages: a group mixes dense and Quest rows (rows ${g.rows[0]} and ${i})`);
        if (!(g.pages >= 1 && g.pages < nPages)) throw new Error(`shared pages: ${g.pages} pages for row ${i} of ${nPages} (its last page is its own)`);
        // (a group whose rows' partial results would not fit their scratch slots reads its pages row by row)
        fits &&= this.sharedChunking(g.pages).parts + this.chunking(quest[x] ? r.budgetPages : nPages - g.pages).nChunks <= maxChunksOf(s);
      }
      if (!fits || (quest[0] && !this.sharesSelections)) continue;
      for (const i of g.rows) skip[i] = g.pages;
      for (let j = 0; j < g.rows.length; j += this.sharedRows) (quest[0] ? questGroups : subGroups).push({ rows: g.rows.slice(j, j + this.sharedRows), pages: g.pages });
    }
    this.growScratch(rows.length);
    const { buf: prm, slot } = this.paramsFor(rows, 1 / Math.sqrt(s.headDim), skip);
    const groupParams = subGroups.length ? this.groupParamsFor(subGroups, rows, 1 / Math.sqrt(s.headDim)) : null;
    const questParams = questGroups.length ? this.groupParamsFor(questGroups, rows, 1 / Math.sqrt(s.headDim)) : null;
    const plan = rows.map((r, i) => rowPages(r, s.pageSize, skip[i])), pages = plan.map((p) => p.nPages);
    const sparse = plan.map((p) => p.sparse), anySparse = sparse.some(Boolean);
    const n = rows.length, mostPages = Math.max(...pages.filter((_, i) => sparse[i]), 1);
    const chunks = Math.max(...plan.map((p) => this.chunking(p.read).nChunks));
    const sharedChunks = Math.max(0, ...subGroups.map((sg) => this.sharedChunking(sg.pages).nChunks));
    const questChunks = Math.max(0, ...questGroups.map((sg) => this.sharedChunking(sg.pages).nChunks));
    return { shared, prm, slot, subGroups, groupParams, questGroups, questParams, anySparse, n, mostPages, chunks, sharedChunks, questChunks };
  }

  /** Whether a decode step of one sequence scores Quest's pages in its RoPE / append dispatch
   *  (ropeScoresWgsl; QUEST_FUSED_SCORES=0 keeps the scores kernel, to compare). */
  readonly fusesScores = processEnv().QUEST_FUSED_SCORES !== '0';
  private readonly ropeScoresPipes = new Map<string, GPUComputePipeline>();
  /** The fused RoPE / append / scores pipeline for a rotation; its bindings are ropeAppendWgsl's and then
   *  `scoreBuffer`; its grid `ropeScoresGrid(pages)`; the attention's `encodeRows(..., { scored: true })` follows it. */
  ropeScores(ropeDims: number, neox: boolean): GPUComputePipeline {
    const key = `${ropeDims}:${neox}`;
    let pipe = this.ropeScoresPipes.get(key);
    if (!pipe) { pipe = this.pipeline(ropeScoresWgsl({ ...this.s, ropeDims }, neox, this.sub), 'RoPE + append + scores'); this.ropeScoresPipes.set(key, pipe); }
    return pipe;
  }
  get scoreBuffer(): GPUBuffer { return this.scores; }
  ropeScoresGrid(pages: number): number { return ropeScoresGrid(this.s, this.sub, pages); }

  /** Reads the selected page ids of the last sparse call's first row (tests). */
  async readSelection(k: number): Promise<Uint32Array> {
    const all = new Uint32Array(await readBuffer(this.device, this.sel, this.s.nKV * this.s.maxSelected! * 4));
    return Uint32Array.from({ length: this.s.nKV * k }, (_, i) => all[Math.floor(i / k) * this.s.maxSelected! + (i % k)]);
  }
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
