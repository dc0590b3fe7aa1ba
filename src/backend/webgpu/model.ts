// A model's weights on the GPU and the pipelines of its forward pass. Weights are uploaded once, in
// the GPU formats of kernels.ts: f16 and Q8_0/Q4_0 as they are (Q8_0/Q4_0 repacked into aligned words
// plus f32 scales); f32 and BF16 tensors become f16. q/k/v and gate/up are fused into one matrix each
// (one product instead of three or two per layer).
import { compiledPipeline } from './pipeline-cache.js';
import { modelFingerprint } from '../../model/fingerprint.js';
import type { ModelConfig, ModelWeights } from '../../model/config.js';
import { Matrix, f32ToF16, QK, concatF32 } from '../../model/tensor.js';
import { affineGroups, isQuantType, type QuantType } from '../../model/quants.js';
import { Rope } from '../../model/rope.js';
import { F16_TABLE } from '../../model/tensor.js';
import * as K from './kernels.js';
import { hasIntDot4, hasSubgroups32, int8MatrixConfig, matrixConfig, onCpuAdapter, processEnv } from './device.js';
import { linearMmaWgsl, linearSkinnyMmaWgsl, mmaTileFor, mmaTilesFor, MMA_TILES, skinnyBlocks, skinnyGrid, skinnyTileFor, SKINNY_TILES, parseSkinnyTiles, type MmaTile, type SkinnyTile } from './mma-kernels.js';
import type { GpuWeightType, LinearSpec } from './kernels.js';
import { int8BatchGrid, int8BatchLayout, int8BatchTypes, linearBatchInt8Wgsl, parseInt8Batch, type Int8BatchLayout } from './int8-batch.js';
import { INT8_MMA_LAYOUT, int8MmaFits, int8MmaGrid, linearInt8MmaWgsl, parseInt8MmaLayout, type Int8MmaLayout } from './int8-mma-batch.js';

export interface GpuLinear { type: GpuWeightType; N: number; K: number; data: GPUBuffer; scales: GPUBuffer; bias: GPUBuffer | null }

export interface GpuLayer {
  attnNorm: GPUBuffer; qkv: GpuLinear; wo: GpuLinear; ffnNorm: GPUBuffer; gateUp: GpuLinear; down: GpuLinear;
  /** Qwen3, Gemma 3: the query-head then the key-head RMSNorm weights (2 x headDim), else null; the
   *  query half carries the model's attention scale relative to 1/sqrt(headDim) (Gemma 3) */
  qkNorm: GPUBuffer | null;
  /** Gemma 3: RMSNorm weights of the attention and feed-forward outputs (before the residual), else null */
  postAttnNorm: GPUBuffer | null; postFfnNorm: GPUBuffer | null;
}

// (a function: the GPUBufferUsage global exists only once the webgpu package has loaded)
export const storageUsage = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/** Checks the shape rules of the GPU kernels; a clear error instead of a wrong answer. */
export function checkGpuShape(c: ModelConfig): void {
  const bad = (m: string) => { throw new Error(`the WebGPU backend cannot run this model: ${m}`); };
  if (c.dim % 16 !== 0) bad(`hidden size ${c.dim} is not a multiple of 16`);
  if (c.hiddenDim % 16 !== 0) bad(`intermediate size ${c.hiddenDim} is not a multiple of 16`);
  if (c.headDim % 8 !== 0 || c.headDim > 256) bad(`head dim ${c.headDim} must be a multiple of 8 and at most 256`);
}

function parseTile(v: string | undefined): MmaTile[] {
  const m = /^(\d+)x(\d+)x(\d+)x(\d+)x(\d+)(p?)(d?)(?:g(\d+))?$/.exec(v ?? '');
  return m ? [{ BM: Number(m[1]), BN: Number(m[2]), WM: Number(m[3]), WN: Number(m[4]), BK: Number(m[5]), prefetch: m[6] === 'p', double: m[7] === 'd', ...(m[8] ? { group: Number(m[8]) } : {}) }] : MMA_TILES;
}

function parseMatvec(v: string | undefined, onCpu: boolean): GpuModel['matvec'] {
  if (v === 'warp') return { kind: 'warp' };
  if (v === 'thread' || (!v && onCpu)) return { kind: 'thread' };
  const m = /^rows(\d+)$/.exec(v ?? '');
  return { kind: 'rows', rows: m ? Number(m[1]) : null }; // null: the kernel's rows per weight type
}

export class GpuModel {
  readonly layers: GpuLayer[] = [];
  embed!: GpuLinear;
  output!: GpuLinear;
  finalNorm!: GPUBuffer;
  /** (cos, sin) per position and rotated pair, computed in float64 like the CPU's */
  ropeTable!: GPUBuffer;
  /** the sliding-window layers' table where their RoPE differs (Gemma 3), else ropeTable */
  ropeTableLocal!: GPUBuffer;
  private readonly pipelines = new Map<string, GPUComputePipeline>();
  private readonly empty: GPUBuffer;
  private disposed = false;

  /** what saved KV caches of this model are checked against (model/fingerprint.ts) */
  fingerprint = '';

  private constructor(readonly device: GPUDevice, readonly config: ModelConfig) {
    checkGpuShape(config);
    this.empty = device.createBuffer({ size: 16, usage: storageUsage() });
    this.matvec = parseMatvec(processEnv().QUEST_MATVEC, onCpuAdapter(device));
    this.tokensFirst = this.matvec.kind === 'rows' && processEnv().QUEST_TOKENS_FIRST !== '0';
  }

  /** Uploads CPU-side weights (any dtype the loader reads). */
  static upload(device: GPUDevice, config: ModelConfig, w: ModelWeights, onProgress?: (done: number, total: number) => void): GpuModel {
    // (the attention scale is folded into the query-head norm: attention kernels scale by 1/sqrt(headDim))
    const qScale = (config.attnScale ?? 1 / Math.sqrt(config.headDim)) * Math.sqrt(config.headDim);
    if (Math.abs(qScale - 1) > 1e-12 && !w.layers[0]?.qNorm) throw new Error(`the WebGPU backend applies an attention scale other than 1/sqrt(head dim) through the query norm, which this ${config.arch} model lacks: use --device cpu`);
    const m = new GpuModel(device, config);
    m.fingerprint = modelFingerprint(config, w); // (the host weights may be freed after the upload)
    const total = w.layers.length + 2;
    m.embed = m.linear([w.embed]);
    m.output = w.output === w.embed ? m.embed : m.linear([w.output]);
    m.finalNorm = m.f32(w.finalNorm);
    onProgress?.(1, total);
    w.layers.forEach((L, i) => {
      const bias = L.bq ? concatF32([L.bq, L.bk!, L.bv!]) : null;
      m.layers.push({
        attnNorm: m.f32(L.attnNorm), qkv: m.linear([L.wq, L.wk, L.wv], bias), wo: m.linear([L.wo]),
        ffnNorm: m.f32(L.ffnNorm), gateUp: m.linear([L.wGate, L.wUp]), down: m.linear([L.wDown]),
        qkNorm: L.qNorm ? m.f32(concatF32([L.qNorm.map((v) => v * qScale), L.kNorm!])) : null,
        postAttnNorm: L.postAttnNorm ? m.f32(L.postAttnNorm) : null, postFfnNorm: L.postFfnNorm ? m.f32(L.postFfnNorm) : null,
      });
      onProgress?.(i + 2, total);
    });
    m.makeRopeTables();
    onProgress?.(total, total);
    return m;
  }

  /** Random weights generated on the GPU, f16 or quantised (benchmarks: speed does not depend on the values). */
  static random(device: GPUDevice, config: ModelConfig, seed = 1, type: GpuWeightType = 'f16'): GpuModel {
    const m = new GpuModel(device, config), c = config;
    const qkvN = (c.nHeads + 2 * c.nKVHeads) * c.headDim;
    // (quantised: random codes, and random block scales of the size that gives the weights ~scale)
    const rnd = (N: number, Kd: number, scale: number, t = type): GpuLinear => {
      const bytes = t === 'f16' ? 2 : t === 'q8_0' || t === 'q8_16' ? 1 : 0.5;
      const data = device.createBuffer({ size: N * Kd * bytes, usage: storageUsage() });
      m.fillRandom(data, (N * Kd * bytes) / 4, seed++, scale);
      if (t === 'f16') return { type: t, N, K: Kd, data, scales: m.empty, bias: null };
      // (q4_1 / q8_16: a (scale, min) pair per 32 / 16 weights)
      const words = t === 'q8_16' ? (N * Kd) / 8 : t === 'q4_1' ? (N * Kd) / 16 : (N * Kd) / 32;
      const scales = device.createBuffer({ size: words * 4, usage: storageUsage() });
      m.fillRandom(scales, words, seed++, scale / (t === 'q8_0' || t === 'q8_16' ? 64 : 4), true);
      return { type: t, N, K: Kd, data, scales, bias: null };
    };
    const ones = () => m.f32(new Float32Array(c.dim).fill(1));
    m.embed = rnd(c.vocabSize, c.dim, 1, 'f16');
    m.output = rnd(c.vocabSize, c.dim, 1 / Math.sqrt(c.dim));
    m.finalNorm = ones();
    for (let l = 0; l < c.nLayers; l++) {
      m.layers.push({
        attnNorm: ones(), qkv: rnd(qkvN, c.dim, 1 / Math.sqrt(c.dim)), wo: rnd(c.dim, c.nHeads * c.headDim, 0.1 / Math.sqrt(c.dim)),
        ffnNorm: ones(), gateUp: rnd(2 * c.hiddenDim, c.dim, 1 / Math.sqrt(c.dim)), down: rnd(c.dim, c.hiddenDim, 0.1 / Math.sqrt(c.hiddenDim)),
        qkNorm: null, postAttnNorm: null, postFfnNorm: null,
      });
    }
    m.makeRopeTables();
    return m;
  }

  /** Bytes of weights on the GPU. */
  get weightBytes(): number {
    const lin = (l: GpuLinear) => l.data.size + (l.scales === this.empty ? 0 : l.scales.size);
    let b = lin(this.embed) + (this.output === this.embed ? 0 : lin(this.output));
    for (const L of this.layers) b += lin(L.qkv) + lin(L.wo) + lin(L.gateUp) + lin(L.down);
    return b;
  }

  /** The pipeline of `key`, looked up once per model, compiled once per device and code (labelled with a short form of the key: profiles name kernels by it). */
  pipeline(key: string, code: () => string): GPUComputePipeline {
    let p = this.pipelines.get(key);
    if (!p) {
      p = compiledPipeline(this.device, code(), pipelineLabel(key));
      this.pipelines.set(key, p);
    }
    return p;
  }

  /** Matrix-vector kernel of decode steps: x-stationary with R rows per workgroup (default), the older
   *  warp-per-row one, or on CPU adapters a thread per row (QUEST_MATVEC=warp, thread or rows<R> picks one,
   *  to compare in benchmarks). */
  readonly matvec: { kind: 'rows'; rows: number | null } | { kind: 'warp' } | { kind: 'thread' };

  /** Output rows per workgroup of the matrix-vector kernel. */
  vecRowsPerGroup(l: GpuLinear): number {
    return this.matvec.kind === 'rows' ? K.rowsLayout(l.K, this.rowsOf(l), l.type).rowsPerGroup : this.matvec.kind === 'thread' ? K.THREAD_ROWS : 8;
  }

  private rowsOf(l: GpuLinear): number { return (this.matvec.kind === 'rows' && this.matvec.rows) || K.linearRowsFor(l.type, this.quantisesX(l)); }

  /** Whether decode steps quantise this product's input to int8 first (quantiseXWgsl) and use integer
   *  dot products: Q4_0 weights where WGSL has packed 4x8-bit dot products (QUEST_Q4_DOT=float: not). */
  quantisesX(l: GpuLinear): boolean { return (l.type === 'q4_0' || l.type === 'q4_1' || l.type === 'q8_16') && this.matvec.kind === 'rows' && hasIntDot4(this.device); }

  /** Whether the matrix-vector kernel can compute RMSNorm / SwiGLU on its input (the x-stationary one can). */
  get fusesPrologues(): boolean { return this.matvec.kind === 'rows'; }

  /** A prefill chunk's tensor-core products read their input as f16, written so by the RMSNorm / SwiGLU
   *  kernels before them (the products round it to f16 anyway: the same values in half the bytes; H100,
   *  7B prefill 32K 4.91 against 5.02 s, session 29). QUEST_PREFILL_X16=0: as f32. */
  readonly prefillX16 = processEnv().QUEST_PREFILL_X16 !== '0';

  /** Tiles the tensor-core products may use (QUEST_MMA_TILE=BMxBNxWMxWNxBK[p[d]][gG] picks one, p: prefetching, d: two staged tiles in turn, gG: workgroups in groups of G token tiles; for benchmarks). */
  private readonly mmaTiles: MmaTile[] = parseTile(processEnv().QUEST_MMA_TILE);

  /** The tensor-core tile of a many-token product, or null where it runs the fallback tiled kernel
   *  (no subgroup matrices on this adapter, or a shape the tiles do not divide). */
  mmaTile(l: GpuLinear): MmaTile | null {
    const cfg = matrixConfig(this.device);
    return cfg ? mmaTileFor(l.N, l.K, cfg, this.device.limits.maxComputeWorkgroupStorageSize, mmaTilesFor(l.type, this.mmaTiles)) : null;
  }

  /** (`xHalf`: the input is stored as f16 — tensor-core many-token products only; `tokensFirst`: the
   *  matrix-vector kernel's grid is (tokens, row blocks) — a batched step's; see tokensFirstGrid) */
  linearPipeline(l: GpuLinear, add: boolean, many: boolean, prologue?: LinearSpec['prologue'], xHalf = false, tokensFirst = false): GPUComputePipeline {
    tokensFirst &&= this.tokensFirstGrid && !many;
    return this.perLinear(l, `L${many}:${add}:${many ? '' : prologue?.kind ?? ''}:${xHalf}:${tokensFirst}`, () => {
      const spec: LinearSpec = { type: l.type, N: l.N, K: l.K, add, bias: l.bias !== null, ...(prologue && !many ? { prologue } : {}), ...(xHalf ? { xHalf } : {}) };
      const sub = hasSubgroups32(this.device), xq = !many && this.quantisesX(l), mv = this.matvec, tile = many ? this.mmaTile(l) : null;
      if (xHalf && !tile) throw new Error('an f16 product input needs a tensor-core tile');
      return this.pipeline(`lin:${many}:${sub}:${xq}:${tokensFirst}:${JSON.stringify(mv)}:${JSON.stringify(tile)}:${JSON.stringify(spec)}`, () => (tile ? linearMmaWgsl(spec, matrixConfig(this.device)!, tile)
        : many ? K.linearMatWgsl(spec)
        : mv.kind === 'rows' ? K.linearRowsWgsl(spec, { subgroups: sub, rows: this.rowsOf(l), xq, tokensFirst }) : mv.kind === 'thread' ? K.linearThreadWgsl(spec) : K.linearVecWgsl(spec, sub)));
    });
  }



  /** Whether linearPipeline(..., tokensFirst) gives a kernel on the (tokens, row blocks) grid: the rows
   *  kernel only (QUEST_TOKENS_FIRST=0 keeps every grid (row blocks, tokens), to compare). */
  get tokensFirstGrid(): boolean { return this.tokensFirst; }
  private readonly tokensFirst: boolean;

  /** The batched matrix-vector product of a batched decode step (weights read once per BATCH_TOKENS tokens). */
  batchPipeline(l: GpuLinear, add: boolean): GPUComputePipeline {
    return this.perLinear(l, `B${add}`, () => {
      const spec: LinearSpec = { type: l.type, N: l.N, K: l.K, add, bias: l.bias !== null }, sub = hasSubgroups32(this.device);
      return this.pipeline(`linB:${sub}:${JSON.stringify(spec)}`, () => K.linearBatchWgsl(spec, sub));
    });
  }

  /** What a product's kernel choice gives for one variant, computed once (a batched step asks ~8 times per
   *  layer; building its keys each time cost the CPU milliseconds a step). */
  private readonly perLinearMemo = new WeakMap<GpuLinear, Map<string, unknown>>();
  private perLinear<T>(l: GpuLinear, variant: string, make: () => T): T {
    let byVariant = this.perLinearMemo.get(l);
    if (!byVariant) { byVariant = new Map(); this.perLinearMemo.set(l, byVariant); }
    if (!byVariant.has(variant)) byVariant.set(variant, make());
    return byVariant.get(variant) as T;
  }

  /** The layout of every batched 4-bit product with int8 x where QUEST_INT8_BATCH=R,TB sets one (benchmarks). */
  private readonly int8Batch: Int8BatchLayout | null = parseInt8Batch(processEnv().QUEST_INT8_BATCH);

  /** The product of a batched decode step whose x is quantised to int8 (quantiseXWgsl) and its grid for
   *  `rows` tokens: each 4-bit weight block applied to many tokens in registers; null for other weight
   *  types (they keep the matrix-vector kernel, a workgroup per token). */
  int8BatchProduct(l: GpuLinear, add: boolean, rows: number): { pipe: GPUComputePipeline; grid: [number, number] } | null {
    if (!this.quantisesX(l) || !int8BatchTypes(l.type)) return null;
    const mma = this.int8Mma(l, add, rows);
    if (mma) return mma;
    const lay = this.int8Batch ?? int8BatchLayout(l.K);
    const pipe = this.perLinear(l, `I${add}`, () => {
      const spec: LinearSpec = { type: l.type, N: l.N, K: l.K, add, bias: l.bias !== null }, sub = hasSubgroups32(this.device);
      return this.pipeline(`linI:${sub}:${JSON.stringify(lay)}:${JSON.stringify(spec)}`, () => linearBatchInt8Wgsl(spec, lay, sub));
    });
    return { pipe, grid: int8BatchGrid(l.N, rows, lay) };
  }

  /** The same product on 8-bit tensor cores (int8-mma-batch.ts: the same integer sums) where the device
   *  has them and the shape fits; else null. (The device has them only with QUEST_INT8_MMA=1: opt-in, not
   *  yet measured on a GPU; see device.ts.) */
  private int8Mma(l: GpuLinear, add: boolean, rows: number): { pipe: GPUComputePipeline; grid: [number, number] } | null {
    const cfg = int8MatrixConfig(this.device), lay = this.int8MmaLayout;
    if (!cfg || !int8MmaFits(l, lay, this.device.limits.maxComputeWorkgroupStorageSize)) return null;
    const pipe = this.perLinear(l, `J${add}`, () => {
      const spec: LinearSpec = { type: l.type, N: l.N, K: l.K, add, bias: l.bias !== null };
      return this.pipeline(`linJ:${JSON.stringify(lay)}:${JSON.stringify(spec)}`, () => linearInt8MmaWgsl(spec, cfg, lay));
    });
    return { pipe, grid: int8MmaGrid(l.N, rows, lay) };
  }
  private readonly int8MmaLayout: Int8MmaLayout = parseInt8MmaLayout(processEnv().QUEST_INT8_MMA_LAYOUT) ?? INT8_MMA_LAYOUT;

  /** Few-token layouts the batched products may use (QUEST_SKINNY_TILE=WN,SG,CK,stage[,xa] picks one: parseSkinnyTiles; for benchmarks). */
  private readonly skinnyTiles: SkinnyTile[] = parseSkinnyTiles(processEnv().QUEST_SKINNY_TILE) ?? SKINNY_TILES;

  /** The tensor-core product of a batched decode step of `rows` tokens (x as f16) and its grid, or null
   *  where it does not run (no subgroup matrices, or no layout fits the shape). */
  skinnyProduct(l: GpuLinear, add: boolean, rows: number): { pipe: GPUComputePipeline; grid: [number, number] } | null {
    return this.perLinear(l, `S${add}:${rows}`, () => {
      const cfg = matrixConfig(this.device);
      const tile = cfg && skinnyTileFor(l.type, l.N, l.K, rows, cfg, this.device.limits.maxComputeWorkgroupStorageSize, this.skinnyTiles);
      if (!cfg || !tile) return null;
      const spec: LinearSpec = { type: l.type, N: l.N, K: l.K, add, bias: l.bias !== null }, blocks = skinnyBlocks(rows, cfg);
      const pipe = this.pipeline(`linS:${blocks}:${JSON.stringify(tile)}:${JSON.stringify(spec)}`, () => linearSkinnyMmaWgsl(spec, cfg, tile, blocks));
      return { pipe, grid: skinnyGrid(l.N, rows, tile, cfg) };
    });
  }

  fillRandom(buf: GPUBuffer, words: number, seed: number, scale: number, f32s = false): void {
    const pipe = this.pipeline('fill', () => K.fillRandomWgsl), d = this.device;
    const prm = d.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    const u = new Uint32Array(4); u[0] = words; u[1] = seed * 0x9e3779b1; new Float32Array(u.buffer)[2] = scale; u[3] = f32s ? 1 : 0;
    d.queue.writeBuffer(prm, 0, u);
    const enc = d.createCommandEncoder(), pass = enc.beginComputePass();
    pass.setPipeline(pipe);
    pass.setBindGroup(0, d.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: buf } }, { binding: 1, resource: { buffer: prm } }] }));
    const groups = Math.ceil(words / 256), x = Math.min(groups, 65535);
    pass.dispatchWorkgroups(x, Math.ceil(groups / x));
    pass.end();
    d.queue.submit([enc.finish()]);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    const seen = new Set<GPUBuffer>();
    const free = (b: GPUBuffer | null) => { if (b && !seen.has(b)) { seen.add(b); b.destroy(); } };
    const lin = (l: GpuLinear) => { free(l.data); free(l.scales); free(l.bias); };
    lin(this.embed); lin(this.output); free(this.finalNorm); free(this.ropeTable); free(this.ropeTableLocal); free(this.empty);
    for (const L of this.layers) {
      for (const b of [L.attnNorm, L.ffnNorm, L.qkNorm, L.postAttnNorm, L.postFfnNorm]) free(b);
      lin(L.qkv); lin(L.wo); lin(L.gateUp); lin(L.down);
    }
  }

  private f32(a: Float32Array): GPUBuffer {
    const b = this.device.createBuffer({ size: Math.max(16, a.byteLength), usage: storageUsage() });
    this.device.queue.writeBuffer(b, 0, a);
    return b;
  }

  private bytes(a: Uint8Array): GPUBuffer {
    const size = Math.max(16, Math.ceil(a.byteLength / 4) * 4);
    const b = this.device.createBuffer({ size, usage: storageUsage(), mappedAtCreation: true });
    new Uint8Array(b.getMappedRange()).set(a);
    b.unmap();
    return b;
  }

  /** Several matrices with the same column count stacked into one GPU matrix (rows appended). */
  private linear(ms: Matrix[], bias: Float32Array | null = null): GpuLinear {
    const Kd = ms[0].cols, N = ms.reduce((a, m) => a + m.rows, 0);
    if (ms.some((m) => m.cols !== Kd)) throw new Error('fused matrices must have the same column count');
    const type = gpuTypeOf(ms);
    const scales = type === 'f16' ? null : new Float32Array(type === 'q8_16' ? (N * Kd) / 8 : type === 'q4_1' ? (N * Kd) / 16 : (N * Kd) / QK);
    const data = new Uint8Array(type === 'f16' ? N * Kd * 2 : type === 'q8_0' || type === 'q8_16' ? N * Kd : (N * Kd) / 2);
    let row0 = 0;
    for (const m of ms) {
      if (type === 'q4_1' || type === 'q8_16') repackAffine(m, type, data, scales!, row0);
      else if (type === 'f16') {
        if (m.dtype === 'f16') data.set(m.bytes.subarray(0, m.rows * m.rowBytes), row0 * Kd * 2);
        else {
          const h = new Uint16Array(data.buffer, row0 * Kd * 2, m.rows * Kd), row = new Float32Array(Kd);
          for (let r = 0; r < m.rows; r++) { const v = m.row(r, row); for (let i = 0; i < Kd; i++) h[r * Kd + i] = f32ToF16(v[i]); }
        }
      } else repackBlocks(m, type, data, scales!, row0);
      row0 += m.rows;
    }
    return { type, N, K: Kd, data: this.bytes(data), scales: scales ? this.f32(scales) : this.empty, bias: bias ? this.f32(bias) : null };
  }

  private makeRopeTables(): void {
    const c = this.config, local = c.localRope;
    this.ropeTable = this.makeRopeTable(Rope.forConfig(c));
    this.ropeTableLocal = local ? this.makeRopeTable(Rope.forConfig({ ...c, ropeTheta: local.theta, ropeScaling: local.scaling })) : this.ropeTable;
  }

  private makeRopeTable(rope: Rope): GPUBuffer {
    // [pos][headDim / 2] (cos, sin); only the rotated pairs are read
    const c = this.config, half = c.headDim / 2, inv = rope.invFreq, mag = rope.magnitude;
    const t = new Float32Array(c.maxSeqLen * half * 2);
    for (let p = 0; p < c.maxSeqLen; p++) for (let i = 0; i < inv.length; i++) {
      const a = p * inv[i];
      t[(p * half + i) * 2] = Math.cos(a) * mag; t[(p * half + i) * 2 + 1] = Math.sin(a) * mag;
    }
    return this.f32(t);
  }
}

/** The GPU form of matrices fused into one (same column count): Q8_0 / Q4_0 as they are; Q4_K / Q4_1
 *  as 4-bit codes with a scale and min per 32; any other quantised type, and mixes (Q4_K_M's q/k/v), as
 *  int8 codes with a scale and min per 16; f16 for the float types. */
function gpuTypeOf(ms: Matrix[]): GpuWeightType {
  const t = ms[0].dtype, same = ms.every((m) => m.dtype === t);
  if (same && (t === 'q8_0' || t === 'q4_0')) return t;
  if (ms.every((m) => m.dtype === 'q4_k' || m.dtype === 'q4_1')) return 'q4_1';
  if (ms.every((m) => isQuantType(m.dtype))) return 'q8_16';
  return 'f16';
}

/** Quantised rows as affine groups (model/quants.ts affineGroups) in the q4_1 (4-bit codes, eight per u32
 *  in column order; (scale, min) per 32) or q8_16 (int8 codes; (scale, min) per 16) layout, from row0 on. */
function repackAffine(m: Matrix, type: 'q4_1' | 'q8_16', data: Uint8Array, scales: Float32Array, row0: number): void {
  const K = m.cols, codes = new Int8Array(K), sc = new Float32Array(K / 16), mn = new Float32Array(K / 16);
  for (let r = 0; r < m.rows; r++) {
    affineGroups(m.dtype as QuantType, m.bytes, r * m.rowBytes, codes, sc, mn, 0, K);
    const e0 = (row0 + r) * K; // first element of the row in the fused matrix
    if (type === 'q8_16') {
      data.set(new Uint8Array(codes.buffer), e0);
      for (let g = 0; g < K / 16; g++) { scales[2 * (e0 / 16 + g)] = sc[g]; scales[2 * (e0 / 16 + g) + 1] = mn[g]; }
    } else {
      for (let e = 0; e < K; e += 2) data[(e0 + e) / 2] = codes[e] | (codes[e + 1] << 4);
      for (let b = 0; b < K / 32; b++) { scales[2 * (e0 / 32 + b)] = sc[2 * b]; scales[2 * (e0 / 32 + b) + 1] = mn[2 * b]; }
    }
  }
}

/** Q8_0 blocks (f16 scale + 32 int8) and Q4_0 blocks (f16 scale + 16 bytes: element j in the low
 *  nibble of byte j, element j+16 in the high one) into aligned values + f32 scales, column order. */
function repackBlocks(m: Matrix, type: 'q8_0' | 'q4_0', data: Uint8Array, scales: Float32Array, row0: number): void {
  const blocks = m.cols / QK, bb = type === 'q8_0' ? 34 : 18;
  for (let r = 0; r < m.rows; r++) for (let b = 0; b < blocks; b++) {
    const src = r * m.rowBytes + b * bb, blk = (row0 + r) * blocks + b;
    scales[blk] = F16_TABLE[m.bytes[src] | (m.bytes[src + 1] << 8)];
    if (type === 'q8_0') data.set(m.bytes.subarray(src + 2, src + 34), blk * 32);
    else for (let e = 0; e < 32; e += 2) {
      const nib = (x: number) => (x < 16 ? m.bytes[src + 2 + x] & 15 : m.bytes[src + 2 + x - 16] >> 4);
      data[blk * 16 + e / 2] = nib(e) | (nib(e + 1) << 4);
    }
  }
}

/** A pipeline key made readable: the kernel and its shape, without the layout details of JSON keys. */
function pipelineLabel(key: string): string {
  const spec = /"type":"(\w+)","N":(\d+),"K":(\d+)/.exec(key);
  const head = key.split(':')[0];
  return spec ? `${head} ${spec[1]} ${spec[2]}x${spec[3]}` : key.length > 40 ? key.slice(0, 40) : key;
}
