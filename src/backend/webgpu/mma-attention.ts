// Prefill attention on tensor cores (WGSL subgroup matrices; the products are in mma-kernels.ts): causal,
// GQA-aware, flash style over the paged f16 cache, online softmax in f32. Two kernels: the carried one
// (the output accumulates in matrices across key tiles, rescaled by one factor per subgroup) and the
// per-row one (each tile's P V goes through workgroup memory into the lanes' registers, rescaled per row),
// whose loop is also the carried kernel's exact pass for a block whose rows' maxima lie far apart.
import { processEnv, type MatrixConfig } from './device.js';
import { prefillAttentionBindings, STEP_WGSL } from './kernels.js';
import { matrixLoad, matrixStore, MMA_HEADER } from './mma-kernels.js';

/** Query rows per subgroup (the config's M). */
const ATT_ROWS = 16;
/** Padding of the workgroup-memory rows: 8 elements keeps them 16-byte multiples (matrix loads and stores)
 *  and puts the rows that the lanes of a quarter-warp read as vec4s on different banks. */
const PAD = 8;
/** How the tensor-core prefill attention is laid out: subgroups per workgroup (16 query rows each), keys
 *  per tile, and whether a tile's keys and values are staged in workgroup memory (shared by the
 *  subgroups) or read by each subgroup straight from the pages, and whether q is re-read from workgroup
 *  memory each tile instead of held in registers. `carry`: the carried kernel (staged, q in registers),
 *  which recomputes a block exactly where a row's maximum lies more than `carry` (log2 units) below its
 *  subgroup's (prefillAttentionCarryWgsl). */
export interface AttentionTune {
  sg: number; keys: number; stage: boolean; qShared: boolean; carry?: number;
  /** Carried kernel: the subgroup's reference maximum moves only when a score passes it by more than this
   *  (log2 units), so most tiles skip the subgroup-wide maximum (P = exp2(s - M) stays below 2^lazy). */
  lazy?: number;
}
/** The carried kernel's gap: P = exp2(s - M) then still holds a row's values down to 6 below its maximum as
 *  normal f16 numbers (>= 2^-14), at f16's full precision. */
export const CARRY_GAP = 8;
/** The carried kernel's lazy reference maximum: it moves only when a score passes it by more than 8 (P below
 *  2^8, f16 keeps its precision; the f32 sums do not mind), so most tiles skip the subgroup-wide maximum and
 *  the rescale (session 29, H100: 32K chunk 9.5 ms against 11.3 with a maximum every tile). */
export const LAZY_RESCALE = 8;
/** Workgroup memory of a layout. Per-row kernel: per subgroup f32 rows for S and then O's tile, f16 rows
 *  for q and then P; the staged keys and values. Carried kernel: f32 rows for S only (and a flag). */
const attWorkgroupBytes = (hd: number, t: AttentionTune) => (t.carry !== undefined
  ? t.sg * ATT_ROWS * ((t.keys + PAD) * 4 + (hd + PAD) * 2) + 2 * t.keys * (hd + PAD) * 2 + Math.ceil(t.sg / 4) * 16
  : t.sg * ATT_ROWS * ((Math.max(t.keys, hd) + PAD) * (4 + 2) + (t.qShared ? (t.keys + PAD) * 2 : 0)) + (t.stage ? 2 * t.keys * (hd + PAD) * 2 : 0));
/** Whether a layout can run a head dim on a device: its workgroup memory, staging that splits evenly; the
 *  carried kernel also needs tiles of a multiple of 32 keys (O leaves through S's rows 32 channels at a
 *  time) and no more keys than channels (P goes into q's rows). */
export const tuneFits = (hd: number, t: AttentionTune, maxWorkgroupBytes: number) =>
  attWorkgroupBytes(hd, t) <= maxWorkgroupBytes && (!t.stage || ((t.keys * hd) / 8) % (32 * t.sg) === 0)
  && (t.carry === undefined || (t.stage && !t.qShared && t.keys % 32 === 0 && t.keys <= hd));
/** The layouts in order of preference (H100, `bench:kernels --only prefill-attention`, docs/results.md: the
 *  carried kernel with four subgroups sharing staged 32-key tiles ran at 91–92 TFLOP/s at 32K, 111–112 with
 *  its reference maximum moved lazily; per-row, two
 *  subgroups sharing them at 45–50, one subgroup reading the pages itself at 26–29). */
const ATT_TUNES: AttentionTune[] = [{ sg: 4, keys: 32, stage: true, qShared: false, carry: CARRY_GAP, lazy: LAZY_RESCALE },
  { sg: 2, keys: 32, stage: true, qShared: false }, { sg: 1, keys: 32, stage: false, qShared: true }];
/** The layout for a head dim on this device (QUEST_MMA_ATTENTION_TUNE=sg,keys,stage,qShared[,carry[,lazy|-]] picks
 *  one, for benchmarks and tests), or null where none fits. */
export function attentionTune(headDim: number, maxWorkgroupBytes: number, env = processEnv().QUEST_MMA_ATTENTION_TUNE): AttentionTune | null {
  if (env) {
    const [sg, keys, stage, qShared, carry, lazy] = env.split(',');
    return { sg: +sg, keys: +keys, stage: stage === '1', qShared: qShared === '1', ...(carry !== undefined ? { carry: +carry } : {}),
      ...(lazy !== undefined && lazy !== '-' ? { lazy: +lazy } : {}) };
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

type AttentionShape = { nHeads: number; nKV: number; headDim: number; pageSize: number };
/** The attention kernel of a layout (same bindings and grid for both). */
export const prefillAttentionWgslFor = (s: AttentionShape, cfg: MatrixConfig, t: AttentionTune) =>
  (t.carry !== undefined ? prefillAttentionCarryWgsl(s, cfg, t) : prefillAttentionMmaWgsl(s, cfg, t));

const range = (n: number) => Array.from({ length: n }, (_, i) => i);
/** Staging of a tile's keys and values: each thread's share (`units` of 8 channels) is loaded into
 *  registers by prefetch() during the previous tile, then stored into workgroup memory (stageTile; `k` and
 *  `v` name the element of each). */
const stageDecls = (units: number[], THREADS: number) => `// this thread's share of a tile's keys and values (8 channels each), held in registers until they are staged
${units.map((u) => `var<private> kw${u}: vec4<u32>; var<private> vw${u}: vec4<u32>;`).join('\n')}
fn prefetch(t0: u32, g: u32, tid: u32) {
${units.map((u) => `  { let e = ${u * THREADS}u + tid; let src = keyAt(t0 + e / (HD / 8u), g) / 8u + e % (HD / 8u); kw${u} = kc[src]; vw${u} = vc[src]; }`).join('\n')}
}`;
const stageTile = (units: number[], THREADS: number, k = (i: string) => `ks[${i}]`, v = (i: string) => `vs[${i}]`) => `    // the tile's keys and values, loaded during the previous tile, into workgroup memory; the next tile's loaded
${units.map((u) => `    { let d = (${u * THREADS}u + tid) / (HD / 8u) * LDK + (${u * THREADS}u + tid) % (HD / 8u) * 8u;
      for (var w = 0u; w < 4u; w++) {
        let kp = bitcast<vec2<f16>>(kw${u}[w]); let vp = bitcast<vec2<f16>>(vw${u}[w]);
        ${k('d + 2u * w')} = kp.x; ${k('d + 2u * w + 1u')} = kp.y; ${v('d + 2u * w')} = vp.x; ${v('d + 2u * w + 1u')} = vp.y;
      } }`).join('\n')}
    workgroupBarrier();
    prefetch(t0 + BKV, g, tid);`;
/** q of this lane's row (half its channels), scaled by log2(e)/sqrt(hd), as f16 into the subgroup's rows of sh. */
const qToShared = (HD: number) => `  let scale = ${(Math.LOG2E / Math.sqrt(HD)).toPrecision(9)};
  for (var c = half; c < HD / 4u; c += 2u) {
    let q = vec4<f16>(qkv[(min(i, step.n - 1u) * QKV + h * HD) / 4u + c] * scale);
    let d = hb + row * LDH + c * 4u;
    sh[d] = q.x; sh[d + 1u] = q.y; sh[d + 2u] = q.z; sh[d + 3u] = q.w;
  }`;
/** (1) S = Q Kᵀ for the tile: `kMatrix(b, j)` loads key block b's Kᵀ for q step j, `qLoad(j)` is where q
 *  step j is loaded ('' where it is held in registers), `storeS(b)` stores block b of S. */
const scoresWgsl = (keyBlocks: number[], qSteps: number[], res: string, kMatrix: (b: number, j: number) => string, qLoad: (j: number) => string, storeS: (b: number) => string) =>
  `${keyBlocks.map((b) => `    var sm${b} = ${res}();`).join('\n')}
${qSteps.map((j) => `    {${qLoad(j)}
${keyBlocks.map((b) => `      let k${b} = ${kMatrix(b, j)};`).join('\n')}
${keyBlocks.map((b) => `      sm${b} = subgroupMatrixMultiplyAccumulate(q${j}, k${b}, sm${b});`).join('\n')}
    }`).join('\n')}
${keyBlocks.map((b) => `    ${storeS(b)};`).join('\n')}`;
/** This lane's scores of the tile (keys 8j + 4 half .. + 3 of its row, from sf), masked past its position. */
const maskedScores = (sVecs: number[]) => `    let sr = fb + row * LDS + half * 4u;
    let kt = t0 + half * 4u;
${sVecs.map((j) => `    let s${j} = select(vec4<f32>(-1.0e30), vec4<f32>(sf[sr + ${8 * j}u], sf[sr + ${8 * j + 1}u], sf[sr + ${8 * j + 2}u], sf[sr + ${8 * j + 3}u]),
      vec4<u32>(kt + ${8 * j}u, kt + ${8 * j + 1}u, kt + ${8 * j + 2}u, kt + ${8 * j + 3}u) <= vec4<u32>(qpos));`).join('\n')}`;

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
${prefillAttentionBindings(t.stage ? 'vec4<u32>' : 'f16')}
var<workgroup> sf: array<f32, ${SG * 16 * LDF}>; // per subgroup: [16 rows][keys] S, then [16 rows][HD] the tile's P V
var<workgroup> sh: array<f16, ${SG * 16 * LDH}>; // per subgroup: [16 rows][HD] q${t.qShared ? '' : ', then [16 rows][keys] P'}
${t.qShared ? `var<workgroup> sp: array<f16, ${SG * 16 * LDS}>; // per subgroup: [16 rows][keys] P` : ''}
${t.stage ? `var<workgroup> ks: array<f16, ${ATT_KEYS * LDK}>; // the tile's keys [keys][HD]
var<workgroup> vs: array<f16, ${ATT_KEYS * LDK}>; // and values` : ''}
// where key t of KV head g starts in the paged cache
fn keyAt(t: u32, g: u32) -> u32 { return ((table[t / P] * NKV + g) * P + t % P) * HD; }
${t.stage ? stageDecls(stageUnits, THREADS) : ''}
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let h = wid.y; let g = h / G; let i0 = wid.x * BQ;
  let lastPos = step.start + min(step.n, i0 + BQ) - 1u;
  let sg = tid / 32u; let lane = tid % 32u;
  let fb = sg * 16u * ${LDF}u; let hb = sg * 16u * LDH; // this subgroup's rows of sf and sh
  // this lane's query row and which half of each 8 keys / 8 channels it takes (4 consecutive ones)
  let row = lane / 2u; let half = lane % 2u;
  let i = i0 + sg * 16u + row; let qpos = step.start + i;
${qToShared(HD)}
  workgroupBarrier();
${t.qShared ? '' : qSteps.map((j) => `  let q${j} = ${load(left, '&sh', `hb + ${j * SK}u`, false, 'LDH')};`).join('\n')}
  let pb = ${t.qShared ? 'sg * 16u * LDS' : 'hb'}; // this subgroup's rows of P
${oVecs.map((j) => `  var o${j} = vec4<f32>(0.0);`).join('\n')}
  var m = -1.0e30; var l = 0.0;${t.stage ? '\n  prefetch(0u, g, tid);' : ''}
  for (var t0 = 0u; t0 <= lastPos; t0 += BKV) {
    workgroupBarrier(); // (the lanes are done with the previous tile's P V in sf${t.stage ? ', and with its keys and values' : ''})
${t.stage ? stageTile(stageUnits, THREADS) : ''}
    // (1) S = Q Kᵀ${t.stage ? '' : `; where each 8 keys of the tile start in the pages
${range(ATT_KEYS / 8).map((r) => `    let kp${r} = keyAt(t0 + ${8 * r}u, g);`).join('\n')}`}
${scoresWgsl(keyBlocks, qSteps, res, kMatrix, (j) => (t.qShared ? `
      let q${j} = ${load(left, '&sh', `hb + ${j * SK}u`, false, 'LDH')};` : ''), (b) => store('&sf', `fb + ${b * SN}u`, `sm${b}`, 'LDS'))}
    workgroupBarrier();
    // (2) this lane's keys 8j + 4 half .. + 3 of its row: masked scores, the new maximum, P
${maskedScores(sVecs)}
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

/** The same attention with the output carried in subgroup matrices across key tiles. The per-row kernel
 *  sends every tile's P V (16 rows x head dim, f32) through workgroup memory to rescale it in the lanes'
 *  registers with each row's own running maximum; here a subgroup's 16 rows share one reference maximum
 *  M (the largest of their running maxima, uniform in the subgroup), so the rescale of the accumulators
 *  is one factor exp2(M_old - M) applied to whole matrices (subgroupMatrixScalarMultiply), the tile's P V
 *  accumulates straight into them, and only S goes through workgroup memory — which also frees enough of it
 *  for four subgroups to share each staged tile. Every matrix operation is unconditional, every loop bound
 *  uniform (the accumulators are never assigned inside a branch). With `lazy`, M moves only when a lane's
 *  score passes it by more than `lazy` (a vote; the subgroup-wide maximum and a rescale factor other than 1
 *  then, in a subgroup-uniform branch of scalar code): P = exp2(s - M) stays below 2^lazy. A row
 *  whose maximum lies far below M would keep its weights as small f16 numbers with fewer bits: where any
 *  row of the workgroup ends more than `carry` below its subgroup's M, the workgroup recomputes its rows
 *  with the per-row loop (exact, slower; a flag per subgroup in workgroup memory, read uniformly, makes that
 *  branch uniform). Padding rows past the chunk repeat its last row, so they never raise M above what real
 *  rows see. Every workgroup variable is a multiple of 16 bytes: with a 4-byte flag (an atomic) beside the
 *  staged tiles, NVIDIA's driver (Vulkan, H100) read the matrices of the tiles shifted by 4 bytes, while
 *  the lanes' own reads of the same memory were right (session 28: the dumped S, P and V, and the flag
 *  alone removed). */
export const prefillAttentionCarryWgsl = (s: AttentionShape, cfg: MatrixConfig, t: AttentionTune) => {
  const { N: SN, K: SK } = cfg, HD = s.headDim, SG = t.sg, THREADS = 32 * SG, KEYS = t.keys;
  const LDS = KEYS + PAD, LDH = HD + PAD, LDK = HD + PAD; // row strides (elements)
  const load = matrixLoad.bind(null, cfg.syntax), store = matrixStore.bind(null, cfg.syntax);
  const qSteps = range(HD / SK), keyBlocks = range(KEYS / SN), keySteps = range(KEYS / SK), chanBlocks = range(HD / SN);
  const sVecs = range(KEYS / 8), oVecs = range(HD / 8);
  const stageUnits = range((KEYS * HD) / 8 / THREADS);
  const FAR = Math.ceil(SG / 4) * 4; // (a multiple of 16 bytes: see below)
  // O's channels in pieces of up to 32 (through a subgroup's rows of sf, 16 x KEYS f32)
  const pieces = range(Math.ceil(HD / 32)).map((p) => ({ c0: 32 * p, width: Math.min(32, HD - 32 * p) }))
    .map(({ c0, width }) => ({ c0, width, blocks: range(width / SN).map((b) => c0 / SN + b) }));
  const res = `subgroup_matrix_result<f32, ${SN}, 16>`, left = `subgroup_matrix_left<f16, ${SK}, 16>`, right = `subgroup_matrix_right<f16, ${SN}, ${SK}>`;
  const kMatrix = (b: number, j: number) => load(right, '&kvs', `${b * SN * LDK + j * SK}u`, true, 'LDK');
  const vMatrix = (b: number, c: number) => load(right, '&kvs', `${KEYS * LDK + b * SK * LDK + c * SN}u`, false, 'LDK');
  // (1) S = Q Kᵀ into sf
  const scores = scoresWgsl(keyBlocks, qSteps, res, kMatrix, () => '', (b) => store('&sf', `fb + ${b * SN}u`, `sm${b}`, 'LDS'));
  // (2) this lane's masked scores and their maximum with `m0` (mt; `row`: also its partner lane's, so the row's)
  const scoresAndMax = (m0: string, rowMax: boolean) => `${scores}
    workgroupBarrier();
${maskedScores(sVecs)}
    var mt = ${m0};
${sVecs.map((j) => `    mt = max(mt, max(max(s${j}.x, s${j}.y), max(s${j}.z, s${j}.w)));`).join('\n')}${rowMax ? `
    mt = max(mt, subgroupShuffleXor(mt, 1u));` : ''}`;
  // P = exp2(s - ref) as f16 into sh (sum into l), then the tile's P as left matrices
  const pOf = (ref: string) => `    let pr = hb + row * LDS + half * 4u;
${sVecs.map((j) => `    { let p = select(vec4<f32>(0.0), exp2(s${j} - vec4<f32>(${ref})), s${j} > vec4<f32>(-1.0e29)); l += (p.x + p.y) + (p.z + p.w);
      let ph = vec4<f16>(p); sh[pr + ${8 * j}u] = ph.x; sh[pr + ${8 * j + 1}u] = ph.y; sh[pr + ${8 * j + 2}u] = ph.z; sh[pr + ${8 * j + 3}u] = ph.w; }`).join('\n')}
    workgroupBarrier();
${keySteps.map((b) => `    let p${b} = ${load(left, '&sh', `hb + ${b * SK}u`, false, 'LDS')};`).join('\n')}`;
  // the subgroup's reference maximum: every tile, or (lazy) only when a score passes it by more than t.lazy
  const newReference = t.lazy === undefined ? `    let Mn = subgroupMax(mt);
    let alpha = exp2(M - Mn); M = Mn;` : `    var alpha = 1.0;
    if (subgroupAny(mt > M + ${t.lazy.toFixed(1)})) { let Mn = subgroupMax(mt); alpha = exp2(M - Mn); M = Mn; }`;
  // (keys and values in one array: the values from VS)
  const stageKV = stageTile(stageUnits, THREADS, (i) => `kvs[${i}]`, (i) => `kvs[VS + ${i}]`);
  return MMA_HEADER + 'enable subgroups;\n' + (t.lazy !== undefined ? 'diagnostic(off, subgroup_uniformity);\n' : '') + STEP_WGSL + /* wgsl */ `
const NH: u32 = ${s.nHeads}u; const NKV: u32 = ${s.nKV}u; const G: u32 = ${s.nHeads / s.nKV}u;
const HD: u32 = ${HD}u; const P: u32 = ${s.pageSize}u; const QKV: u32 = ${(s.nHeads + 2 * s.nKV) * HD}u;
const BQ: u32 = ${ATT_ROWS * SG}u; const BKV: u32 = ${KEYS}u; const THREADS: u32 = ${THREADS}u;
const LDS: u32 = ${LDS}u; const LDH: u32 = ${LDH}u; const LDK: u32 = ${LDK}u; const VS: u32 = ${KEYS * LDK}u;
${prefillAttentionBindings()}
var<workgroup> sf: array<f32, ${SG * 16 * LDS}>; // per subgroup: [16 rows][keys] S; pieces of [16 rows][32 channels] of O (P V)
var<workgroup> sh: array<f16, ${SG * 16 * LDH}>; // per subgroup: [16 rows][HD] q, then [16 rows][keys] P
var<workgroup> kvs: array<f16, ${2 * KEYS * LDK}>; // the tile's keys [keys][HD], then its values
var<workgroup> far: array<u32, ${FAR}>; // per subgroup: whether a row of it ended more than the gap below its M
// where key t of KV head g starts in the paged cache
fn keyAt(t: u32, g: u32) -> u32 { return ((table[t / P] * NKV + g) * P + t % P) * HD; }
${stageDecls(stageUnits, THREADS)}
@compute @workgroup_size(${THREADS})
fn main(@builtin(local_invocation_index) tid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let h = wid.y; let g = h / G; let i0 = wid.x * BQ;
  let lastPos = step.start + min(step.n, i0 + BQ) - 1u;
  let sg = tid / 32u; let lane = tid % 32u;
  let fb = sg * 16u * LDS; let hb = sg * 16u * LDH; // this subgroup's rows of sf and sh
  // this lane's query row and which half of each 8 keys / 8 channels it takes (4 consecutive ones)
  let row = lane / 2u; let half = lane % 2u;
  let i = i0 + sg * 16u + row; let qpos = step.start + min(i, step.n - 1u);
${qToShared(HD)}
  workgroupBarrier();
${qSteps.map((j) => `  let q${j} = ${load(left, '&sh', `hb + ${j * SK}u`, false, 'LDH')};`).join('\n')}
  // the carried pass: O = sum over tiles of exp2(S - M) V, M the subgroup's reference maximum
${chanBlocks.map((c) => `  var acc${c} = ${res}();`).join('\n')}
  var M = -1.0e30; var mr = -1.0e30; var l = 0.0; // mr: the largest score this lane has seen
  prefetch(0u, g, tid);
  for (var t0 = 0u; t0 <= lastPos; t0 += BKV) {
    workgroupBarrier(); // (the lanes are done with the previous tile's S and P, the subgroups with its keys and values)
${stageKV}
${scoresAndMax('mr', false)}
    mr = mt;
${newReference}
    l *= alpha;
${pOf('M')}
${chanBlocks.map((c) => `    acc${c} = subgroupMatrixScalarMultiply(acc${c}, alpha);`).join('\n')}
${chanBlocks.map((c) => `${keySteps.map((b) => `    acc${c} = subgroupMatrixMultiplyAccumulate(p${b}, ${vMatrix(b, c)}, acc${c});`).join('\n')}`).join('\n')}
  }
  l += subgroupShuffleXor(l, 1u); mr = max(mr, subgroupShuffleXor(mr, 1u));
  // O / l, through sf a piece of channels at a time (this lane: half of the piece's channels of its row)
  let inv = 1.0 / l; let ob = (i * NH + h) * HD;
${pieces.map(({ c0, width, blocks }) => `  workgroupBarrier();
${blocks.map((c, k) => `  ${store('&sf', `fb + ${k * SN}u`, `acc${c}`, 'LDS')};`).join('\n')}
  workgroupBarrier();
  if (i < step.n) {
${range(width / 8).map((v) => `    { let e = fb + row * LDS + half * ${width / 2}u + ${4 * v}u; out[(ob + ${c0}u + half * ${width / 2}u + ${4 * v}u) / 4u] = vec4<f32>(sf[e], sf[e + 1u], sf[e + 2u], sf[e + 3u]) * inv; }`).join('\n')}
  }`).join('\n')}
  // the exact pass where a row of the workgroup ended more than the gap below its subgroup's M
  let farSg = subgroupAny(i < step.n && M - mr > ${t.carry!.toFixed(1)});
  if (lane == 0u) { far[sg] = select(0u, 1u, farSg); }
  let farAll = workgroupUniformLoad(&far);
  if ((${range(SG).map((k) => `farAll[${k}]`).join(' | ')}) == 0u) { return; }
  // the exact pass (rare): the per-row kernel's loop, each tile's P V through sf in pieces of 32 channels
${oVecs.map((j) => `  var o${j} = vec4<f32>(0.0);`).join('\n')}
  var m = -1.0e30; l = 0.0;
  prefetch(0u, g, tid);
  for (var t0 = 0u; t0 <= lastPos; t0 += BKV) {
    workgroupBarrier();
${stageKV}
${scoresAndMax('m', true)}
    let alpha = exp2(m - mt); m = mt; l *= alpha;
${pOf('m')}
${pieces.map(({ c0, blocks }) => `    {
${blocks.map((c) => `      var a${c} = ${res}();`).join('\n')}
${keySteps.map((b) => blocks.map((c) => `      a${c} = subgroupMatrixMultiplyAccumulate(p${b}, ${vMatrix(b, c)}, a${c});`).join('\n')).join('\n')}
${blocks.map((c, k) => `      ${store('&sf', `fb + ${k * SN}u`, `a${c}`, 'LDS')};`).join('\n')}
    }
    workgroupBarrier();
${oVecs.filter((j) => 8 * j >= c0 && 8 * j < c0 + 32).map((j) => `    { let e = fb + row * LDS + ${8 * j - c0}u + half * 4u; o${j} = o${j} * alpha + vec4<f32>(sf[e], sf[e + 1u], sf[e + 2u], sf[e + 3u]); }`).join('\n')}
    workgroupBarrier();`).join('\n')}
  }
  l += subgroupShuffleXor(l, 1u);
  if (i < step.n) {
    let inv2 = 1.0 / l; let ob2 = (i * NH + h) * (HD / 4u) + half;
${oVecs.map((j) => `    out[ob2 + ${2 * j}u] = o${j} * inv2;`).join('\n')}
  }
}`;
};
