// WebGPU decode-attention kernels against float64 CPU references on random inputs of awkward sizes
// (lengths that are not multiples of the page size, a single token, GQA ratios 1, 4, 8): dense
// flash-decoding, sliding windows (the last `window` tokens), Quest page scores + GPU top-k + sparse attention.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gpu, skipGpu } from './gpu.js';
import { hasSubgroups32, matrixConfig, onCpuAdapter, throwDeviceError } from '../backend/webgpu/device.js';
import { DecodeAttention, PARAM_WORDS, readBuffer, ropeScoresGrid, ropeScoresWgsl, selectionUnionFor, topkWgsl, type AttnShape } from '../backend/webgpu/decode-attention.js';
import { F16_TABLE, f32ToF16 } from '../model/tensor.js';
import { topKIndices } from '../attention/attend.js';
import { gaussian } from './fixtures.js';

/** `ties`: pages repeat the keys of the first few (equal scores) */
interface Case { nH: number; nKV: number; hd: number; P: number; seq: number; budgetPages: number; cap?: number; window?: number; ties?: boolean }

function build(c: Case, seed: number) {
  const g = gaussian(seed), pages = Math.ceil(c.seq / c.P), hd2 = c.hd / 2;
  const k16 = new Uint16Array(pages * c.nKV * c.P * c.hd), v16 = new Uint16Array(k16.length);
  const K: Float64Array[][] = [], V: Float64Array[][] = []; // [g][t]
  for (let h = 0; h < c.nKV; h++) { K.push([]); V.push([]); }
  for (let t = 0; t < c.seq; t++) for (let h = 0; h < c.nKV; h++) {
    const p = Math.floor(t / c.P), base = ((p * c.nKV + h) * c.P + (t % c.P)) * c.hd;
    const kr = new Float64Array(c.hd), vr = new Float64Array(c.hd);
    const same = c.ties && p >= 5 ? ((p % 5) * c.nKV + h) * c.P + (t % c.P) : -1; // (a page among the first five, repeated)
    for (let i = 0; i < c.hd; i++) {
      k16[base + i] = same >= 0 ? k16[same * c.hd + i] : f32ToF16(g()); v16[base + i] = f32ToF16(g());
      kr[i] = F16_TABLE[k16[base + i]]; vr[i] = F16_TABLE[v16[base + i]];
    }
    K[h].push(kr); V[h].push(vr);
  }
  const meta16 = new Uint16Array(pages * c.nKV * 2 * c.hd);
  for (let p = 0; p < pages; p++) for (let h = 0; h < c.nKV; h++) for (let i = 0; i < c.hd; i++) {
    let mn = Infinity, mx = -Infinity;
    for (let t = p * c.P; t < Math.min(c.seq, (p + 1) * c.P); t++) { mn = Math.min(mn, K[h][t][i]); mx = Math.max(mx, K[h][t][i]); }
    const mb = (p * c.nKV + h) * 2 * c.hd;
    meta16[mb + i] = f32ToF16(mn); meta16[mb + c.hd + i] = f32ToF16(mx);
  }
  void hd2;
  const q = new Float32Array(c.nH * c.hd); for (let i = 0; i < q.length; i++) q[i] = g();
  return { k16, v16, meta16, K, V, q, pages };
}

function refAttention(q: Float32Array, h: number, hd: number, K: Float64Array[], V: Float64Array[], tokens: number[]): Float64Array {
  const s = tokens.map((t) => { let d = 0; for (let i = 0; i < hd; i++) d += q[h * hd + i] * K[t][i]; return d / Math.sqrt(hd); });
  const m = Math.max(...s), e = s.map((x) => Math.exp(x - m)), z = e.reduce((a, b) => a + b, 0);
  const o = new Float64Array(hd);
  tokens.forEach((t, j) => { for (let i = 0; i < hd; i++) o[i] += (e[j] / z) * V[t][i]; });
  return o;
}

/** `thread`: kernels 3 and 4 as CPU adapters run them (a thread per head), else as GPUs and browsers do. */
async function runCase(c: Case, seed: number, thread = false) {
  const { device } = gpu!;
  const shape: AttnShape = { nHeads: c.nH, nKV: c.nKV, headDim: c.hd, pageSize: c.P, maxPages: c.cap ?? Math.ceil(c.seq / c.P) + 3 };
  const att = new DecodeAttention(device, shape, Math.max(1, c.budgetPages), undefined, undefined, thread);
  const d = build(c, seed);
  const mk = (data: Uint16Array) => {
    const b = device.createBuffer({ size: Math.max(16, Math.ceil(data.byteLength / 4) * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(b, 0, data.buffer, 0, Math.ceil(data.byteLength / 4) * 4);
    return b;
  };
  // pages stored in reverse order and found through the page table (what a forked sequence reads)
  const perm = Array.from({ length: d.pages }, (_, p) => d.pages - 1 - p);
  const permuted = (data: Uint16Array, slab: number) => {
    const out = new Uint16Array(data.length);
    for (let p = 0; p < d.pages; p++) out.set(data.subarray(p * slab, (p + 1) * slab), perm[p] * slab);
    return out;
  };
  const table = device.createBuffer({ size: Math.max(16, d.pages * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(table, 0, Uint32Array.from(perm));
  const layer = { k: mk(permuted(d.k16, c.nKV * c.P * c.hd)), v: mk(permuted(d.v16, c.nKV * c.P * c.hd)), meta: mk(permuted(d.meta16, c.nKV * 2 * c.hd)), table };
  device.queue.writeBuffer(att.q, 0, d.q);
  const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
  att.resetBatch();
  att.encodeRows(pass, layer, [{ seqLen: c.seq, budgetPages: c.budgetPages, window: c.window }]);
  pass.end(); device.queue.submit([enc.finish()]);
  const out = new Float32Array(await readBuffer(device, att.out, c.nH * c.hd * 4));
  throwDeviceError(); // an invalid shader or pipeline fails the case with its message
  const sparse = !c.window && c.budgetPages > 0 && c.budgetPages < d.pages;
  const group = c.nH / c.nKV;
  const gpuSel = sparse ? await att.readSelection(c.budgetPages) : null;
  for (let g = 0; g < c.nKV; g++) {
    let tokens = Array.from({ length: c.seq }, (_, t) => t).filter((t) => !c.window || t >= c.seq - c.window);
    if (sparse) {
      // CPU selection: page scores from the f16 metadata, summed over the group's heads, last page forced
      const scores = new Float64Array(d.pages);
      for (let p = 0; p < d.pages; p++) for (let j = 0; j < group; j++) for (let i = 0; i < c.hd; i++) {
        const h = g * group + j, mb = (p * c.nKV + g) * 2 * c.hd, qi = d.q[h * c.hd + i];
        scores[p] += Math.max(qi * F16_TABLE[d.meta16[mb + i]], qi * F16_TABLE[d.meta16[mb + c.hd + i]]);
      }
      const want = topKIndices(scores, c.budgetPages, [d.pages - 1]);
      const got = Array.from(gpuSel!.subarray(g * c.budgetPages, (g + 1) * c.budgetPages)).sort((a, b) => a - b);
      if (c.ties) {
        // which of the tied pages is kept is free: k distinct pages whose scores are the k largest
        assert.equal(new Set(got).size, got.length, `group ${g}: pages repeat`);
        const sc = (ps: number[]) => ps.map((p) => (p === d.pages - 1 ? Infinity : Math.fround(scores[p]))).sort((a, b) => b - a);
        assert.deepEqual(sc(got), sc(want), `group ${g}: not the k largest scores`);
      } else assert.deepEqual(got, want, `group ${g}: GPU top-k pages differ from the CPU's`);
      tokens = tokens.filter((t) => got.includes(Math.floor(t / c.P)));
    }
    for (let j = 0; j < group; j++) {
      const h = g * group + j, ref = refAttention(d.q, h, c.hd, d.K[g], d.V[g], tokens);
      for (let i = 0; i < c.hd; i++) {
        assert.ok(Math.abs(out[h * c.hd + i] - ref[i]) < 2e-4 * Math.max(1, Math.abs(ref[i])), `head ${h} dim ${i}: ${out[h * c.hd + i]} vs ${ref[i]} (${JSON.stringify(c)})`);
      }
    }
  }
  for (const b of Object.values(layer)) b.destroy();
}

const CASES: Case[] = [
  // dense: one token, lengths off the page size, GQA ratios 1, 4, 8, head dims 32/64/128
  { nH: 4, nKV: 4, hd: 32, P: 16, seq: 1, budgetPages: 0 },
  { nH: 8, nKV: 2, hd: 32, P: 16, seq: 37, budgetPages: 0 },
  { nH: 8, nKV: 1, hd: 64, P: 16, seq: 300, budgetPages: 0 },
  { nH: 4, nKV: 1, hd: 128, P: 8, seq: 203, budgetPages: 0 },
  // Quest: GPU top-k pages must equal the CPU selection, then sparse attention must match float64
  { nH: 8, nKV: 2, hd: 32, P: 16, seq: 333, budgetPages: 5 },
  { nH: 4, nKV: 4, hd: 32, P: 16, seq: 160, budgetPages: 3 },
  { nH: 8, nKV: 1, hd: 64, P: 16, seq: 1000, budgetPages: 17 },
  { nH: 8, nKV: 2, hd: 32, P: 16, seq: 100, budgetPages: 64 }, // budget over the context: dense
  { nH: 32, nKV: 8, hd: 128, P: 16, seq: 5000, budgetPages: 40 }, // a Llama-3-8B layer: 313 pages, ties-free top-40
  { nH: 4, nKV: 2, hd: 256, P: 16, seq: 777, budgetPages: 0 }, // head dim 256: 32 lanes per row
  { nH: 6, nKV: 2, hd: 80, P: 16, seq: 530, budgetPages: 9 }, // head dim 80: 10 lanes per row, GQA 3
  { nH: 8, nKV: 8, hd: 64, P: 16, seq: 20000, budgetPages: 0 }, // many chunks per head
  { nH: 8, nKV: 2, hd: 64, P: 16, seq: 3000, budgetPages: 30, cap: 8192 }, // a cache sized for 128K: the top-k kernel for fewer keys per thread
  { nH: 8, nKV: 2, hd: 64, P: 16, seq: 2000, budgetPages: 23, ties: true }, // equal scores: five distinct pages repeated
  { nH: 6, nKV: 2, hd: 64, P: 16, seq: 32752, budgetPages: 256 }, // the 32K test model's layer at its full context, a 4096-token budget
  // head dim 128 with GQA 2, 8, 16: the reduce-scatter row sums where subgroups are 32 wide
  { nH: 8, nKV: 4, hd: 128, P: 16, seq: 611, budgetPages: 0 },
  { nH: 16, nKV: 2, hd: 128, P: 16, seq: 1500, budgetPages: 0 },
  { nH: 16, nKV: 1, hd: 128, P: 16, seq: 900, budgetPages: 12 },
  // sliding windows (dense over the last `window` tokens, a budget ignored): starting mid-page, starting
  // on a page boundary, longer than the sequence, over many chunks
  { nH: 8, nKV: 2, hd: 64, P: 16, seq: 300, budgetPages: 0, window: 37 },
  { nH: 4, nKV: 4, hd: 32, P: 16, seq: 160, budgetPages: 3, window: 32 },
  { nH: 8, nKV: 2, hd: 32, P: 16, seq: 20, budgetPages: 0, window: 64 },
  { nH: 8, nKV: 1, hd: 128, P: 16, seq: 9000, budgetPages: 0, window: 4096 },
];

CASES.forEach((c, i) => {
  const label = c.window ? `window of ${c.window}` : c.budgetPages > 0 ? `Quest top-${c.budgetPages} pages${c.ties ? ', tied scores' : ''}` : 'dense';
  test(`WebGPU decode attention (${label}, ${c.nH}/${c.nKV} heads, head dim ${c.hd}, ${c.seq} tokens) matches float64`, { skip: skipGpu }, async () => {
    await runCase(c, 100 + i);
  });
});
// the same cases through the thread-per-head kernels of CPU adapters (the engine's tests on SwiftShader run those)
test('WebGPU decode attention, thread-per-head kernels (CPU adapters): every case above matches float64', { skip: skipGpu }, async () => {
  for (const [i, c] of CASES.entries()) await runCase(c, 100 + i, true);
});

// A batch: several sequences of different lengths and budgets (dense and Quest mixed) in one call per
// kernel, their pages interleaved in one store and found through their own tables at different offsets
// of one table buffer. Each row must equal the same sequence run alone (itself checked against float64
// above), up to the summation order of the other partial-attention variant a mixed batch runs.
for (const [nH, nKV, hd] of [[8, 2, 64], [4, 4, 32]]) {
  test(`WebGPU decode attention of a batch (${nH}/${nKV} heads, dense and Quest rows of different lengths) = each row alone`, { skip: skipGpu }, async () => {
    const { device } = gpu!, P = 16;
    const rows = [{ seq: 700, budget: 6 }, { seq: 37, budget: 0 }, { seq: 1200, budget: 0 }, { seq: 333, budget: 4 }, { seq: 16, budget: 3 }];
    const maxPages = 80, shape: AttnShape = { nHeads: nH, nKV, headDim: hd, pageSize: P, maxPages };
    const data = rows.map((r, i) => build({ nH, nKV, hd, P, seq: r.seq, budgetPages: r.budget }, 500 + i));
    // physical pages: row i's page p at slot (p * rows + i) (interleaved); tables at i * maxPages
    const total = Math.max(...data.map((d) => d.pages)) * rows.length, kvSlab = nKV * P * hd, metaSlab = nKV * 2 * hd;
    const k16 = new Uint16Array(total * kvSlab), v16 = new Uint16Array(total * kvSlab), meta16 = new Uint16Array(total * metaSlab);
    const tables = new Uint32Array(rows.length * maxPages);
    data.forEach((d, i) => { for (let p = 0; p < d.pages; p++) {
      const at = p * rows.length + i;
      tables[i * maxPages + p] = at;
      k16.set(d.k16.subarray(p * kvSlab, (p + 1) * kvSlab), at * kvSlab); v16.set(d.v16.subarray(p * kvSlab, (p + 1) * kvSlab), at * kvSlab);
      meta16.set(d.meta16.subarray(p * metaSlab, (p + 1) * metaSlab), at * metaSlab);
    } });
    const mk = (a: ArrayBufferView) => {
      const b = device.createBuffer({ size: Math.max(16, Math.ceil(a.byteLength / 4) * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
      device.queue.writeBuffer(b, 0, a.buffer, a.byteOffset, Math.ceil(a.byteLength / 4) * 4);
      return b;
    };
    const q = mk(Float32Array.from(data.flatMap((d) => Array.from(d.q)))), out = mk(new Float32Array(rows.length * nH * hd));
    const layer = { k: mk(k16), v: mk(v16), meta: mk(meta16), table: mk(tables) };
    const att = new DecodeAttention(device, shape, maxPages, { q, out });
    const run = async (list: { seqLen: number; budgetPages: number; tableAt: number; row: number }[]) => {
      const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
      att.resetBatch();
      att.encodeRows(pass, layer, list);
      pass.end(); device.queue.submit([enc.finish()]);
      const o = new Float32Array(await readBuffer(device, out, rows.length * nH * hd * 4));
      throwDeviceError();
      return o;
    };
    const list = rows.map((r, i) => ({ seqLen: r.seq, budgetPages: r.budget, tableAt: i * maxPages, row: i }));
    const batched = await run(list);
    for (let i = 0; i < rows.length; i++) {
      const alone = await run([{ ...list[i] }]); // (one row: scratch slot 0, q and out at its own row)
      for (let j = i * nH * hd; j < (i + 1) * nH * hd; j++) {
        assert.ok(Math.abs(batched[j] - alone[j]) < 1e-5 * Math.max(1, Math.abs(alone[j])), `row ${i} (${JSON.stringify(rows[i])}) value ${j}: batched ${batched[j]}, alone ${alone[j]}`);
      }
    }
    for (const b of [q, out, ...Object.values(layer)]) b.destroy();
  });
}

// Forks of one context in a batch: rows whose first pages are the same physical pages attend to those
// pages together (each page read once for up to `sharedRows` rows: partialWgsl's shared variant, or on
// tensor cores shared-pages-mma.ts), then to their own pages, beside a dense row and a Quest row that share
// nothing; a second group of Quest forks (budgets of 3 to 12 pages) reads (thread kernels, and tensor cores
// where the engine has it opt-in) the shared pages any of them selected once, each masked to its own
// selection, then its selected pages past them. Each row must equal the same sequence run alone (itself
// checked against float64 above; on tensor cores q and the softmax weights go in as two f16 parts); GQA 4
// and 8, MHA, head dims 32, 64 and 128, a group larger than one workgroup's rows (18 forks), chunks that end
// inside a sub-chunk (QUEST_SHARED_MMA_WG=8: chunks of several sub-chunks). On CPU adapters the workgroup
// kernels (a GPU's) run too, for two shapes; on adapters with subgroup matrices, the tensor-core kernels.
const forkCases = [[8, 2, 64], [4, 4, 32], [16, 2, 128], [4, 4, 128]].flatMap(([nH, nKV, hd], i) =>
  [false, ...(gpu && onCpuAdapter(gpu.device) && i < 2 ? [true] : [])].map((workgroups) => ({ nH, nKV, hd, workgroups, mma: false })))
  .concat(gpu && matrixConfig(gpu.device) ? [[8, 2, 64], [4, 4, 64], [16, 2, 128], [4, 4, 128]].map(([nH, nKV, hd]) => ({ nH, nKV, hd, workgroups: false, mma: true })) : []);
for (const { nH, nKV, hd, workgroups, mma } of forkCases) {
  test(`WebGPU decode attention of a batch of forks (${nH}/${nKV} heads, head dim ${hd}${workgroups ? ', workgroup kernels on a CPU adapter' : ''}${mma ? ', tensor cores' : ''}): shared pages read once for the group = each row alone`, { skip: skipGpu }, async (t) => {
    const { device } = gpu!, P = 16, S = 20; // shared pages
    const forks = [37, 200, 1, 16, 90, ...Array.from({ length: 13 }, (_, i) => 5 + 23 * i)].map((tail) => ({ seq: S * P + tail, budget: 0 }));
    const questForks = [3, 5, 8, 12, 4, 6].map((budget, i) => ({ seq: S * P + 40 + 37 * i, budget }));
    const rows = [...forks, ...questForks, { seq: 700, budget: 0 }, { seq: 555, budget: 4 }];
    const group = forks.map((_, i) => i), questGroup = questForks.map((_, i) => forks.length + i);
    const maxPages = 64, shape: AttnShape = { nHeads: nH, nKV, headDim: hd, pageSize: P, maxPages };
    const doc = build({ nH, nKV, hd, P, seq: S * P, budgetPages: 0 }, 900);
    const data = rows.map((r, i) => build({ nH, nKV, hd, P, seq: r.seq, budgetPages: r.budget }, 910 + i));
    const kvSlab = nKV * P * hd, metaSlab = nKV * 2 * hd;
    for (const i of [...group, ...questGroup]) {
      data[i].k16.set(doc.k16.subarray(0, S * kvSlab)); data[i].v16.set(doc.v16.subarray(0, S * kvSlab)); data[i].meta16.set(doc.meta16.subarray(0, S * metaSlab));
    }
    // physical pages: the shared ones first, then every row's own pages; tables at i * maxPages
    const tables = new Uint32Array(rows.length * maxPages), phys: number[][] = [];
    let next = S;
    data.forEach((d, i) => { phys.push(Array.from({ length: d.pages }, (_, p) => ((group.includes(i) || questGroup.includes(i)) && p < S ? p : next++))); phys[i].forEach((x, p) => { tables[i * maxPages + p] = x; }); });
    const k16 = new Uint16Array(next * kvSlab), v16 = new Uint16Array(next * kvSlab), meta16 = new Uint16Array(next * metaSlab);
    data.forEach((d, i) => phys[i].forEach((at, p) => {
      k16.set(d.k16.subarray(p * kvSlab, (p + 1) * kvSlab), at * kvSlab); v16.set(d.v16.subarray(p * kvSlab, (p + 1) * kvSlab), at * kvSlab);
      meta16.set(d.meta16.subarray(p * metaSlab, (p + 1) * metaSlab), at * metaSlab);
    }));
    const mk = (a: ArrayBufferView) => {
      const b = device.createBuffer({ size: Math.max(16, Math.ceil(a.byteLength / 4) * 4), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC });
      device.queue.writeBuffer(b, 0, a.buffer, a.byteOffset, Math.ceil(a.byteLength / 4) * 4);
      return b;
    };
    const q = mk(Float32Array.from(data.flatMap((d) => Array.from(d.q)))), out = mk(new Float32Array(rows.length * nH * hd));
    const layer = { k: mk(k16), v: mk(v16), meta: mk(meta16), table: mk(tables) };
    // (on tensor cores the Quest forks' groups are opt-in, QUEST_SHARED_QUEST=1: tested here all the same)
    const questGroupsWas = process.env.QUEST_SHARED_QUEST;
    if (mma) process.env.QUEST_SHARED_QUEST = '1';
    const att = new DecodeAttention(device, shape, maxPages, { q, out }, undefined, workgroups ? false : undefined, mma);
    if (questGroupsWas === undefined) delete process.env.QUEST_SHARED_QUEST; else process.env.QUEST_SHARED_QUEST = questGroupsWas;
    assert.equal(att.sharesSelections, mma || att.threadKernels, 'the Quest forks were not grouped where they should be');
    assert.ok(att.sharedRows >= 2, 'this shape shares no pages');
    assert.equal(!!att.sharedMma, mma, 'the tensor-core kernel was not chosen as asked');
    const run = async (list: { seqLen: number; budgetPages: number; tableAt: number; row: number }[], shared: { rows: number[]; pages: number }[] = []) => {
      const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
      att.resetBatch();
      att.encodeRows(pass, layer, list, undefined, { shared });
      pass.end(); device.queue.submit([enc.finish()]);
      const o = new Float32Array(await readBuffer(device, out, rows.length * nH * hd * 4));
      throwDeviceError();
      return o;
    };
    const list = rows.map((r, i) => ({ seqLen: r.seq, budgetPages: r.budget, tableAt: i * maxPages, row: i }));
    const before = att.sharedCalls, beforeQuest = att.sharedSparseCalls;
    const batched = await run(list, [{ rows: group, pages: S }, { rows: questGroup, pages: S }]);
    assert.equal(att.sharedCalls, before + 1, 'the shared pages were not read together');
    assert.equal(att.sharedSparseCalls, beforeQuest + (att.sharesSelections ? 1 : 0), 'the Quest forks did not read their selected shared pages together');
    // (tensor cores: q and the softmax weights in two f16 parts each, f32 sums in another order; rounded
    // to f16 where QUEST_SHARED_MMA_EXACT=0, |v| about 1)
    const tol = !att.sharedMma ? 1e-5 : att.sharedMma.layout.exact ? 3e-5 : 4e-3;
    let worst = 0;
    for (let i = 0; i < rows.length; i++) {
      const alone = await run([{ ...list[i] }]);
      for (let j = i * nH * hd; j < (i + 1) * nH * hd; j++) {
        worst = Math.max(worst, Math.abs(batched[j] - alone[j]));
        assert.ok(Math.abs(batched[j] - alone[j]) < tol * Math.max(1, Math.abs(alone[j])), `row ${i} (${JSON.stringify(rows[i])}) value ${j}: batched ${batched[j]}, alone ${alone[j]}`);
      }
    }
    t.diagnostic(`${att.sharedMma ? `tensor cores (${JSON.stringify(att.sharedMma.layout)})` : 'thread kernel'}, ${att.sharedRows} rows a group: max |Δ| batched vs alone ${worst.toExponential(2)}`);
    // a group that is not a shared prefix is refused with the reason
    await assert.rejects(run(list, [{ rows: [0, questGroup[0]], pages: S }]), /mixes dense and Quest rows/);
    for (const b of [q, out, ...Object.values(layer)]) b.destroy();
  });
}

// The selection-union kernel alone (Quest forks on tensor cores read the shared pages any of them selected):
// three groups of rows (16, 3 and 1 rows, slots out of order) over 700 shared pages and 2 KV heads, random
// selections with pages past the shared ones; the list must be exactly the selected shared pages in order,
// each with the bits of the group's rows that selected it, and the grouped rows' selections must keep only
// their own pages (the shared ones NONE); a row in no group keeps all.
test('WebGPU selection union of Quest forks lists each selected shared page once, in order, with its rows', { skip: skipGpu }, async () => {
  const { device } = gpu!, nKV = 2, maxPages = 900, S = 700, rnd = gaussian(77);
  const shape: AttnShape = { nHeads: 8, nKV, headDim: 32, pageSize: 16, maxPages, maxSelected: 300 };
  const groups = [Array.from({ length: 16 }, (_, j) => (j * 7) % 16), [16, 18, 17], [19]], nRows = 21; // (row 20: in no group)
  const budgets = Array.from({ length: nRows }, (_, r) => [300, 5, 64, 1][r % 4]);
  // selections: distinct pages of 0..maxPages-1 (some past the shared ones), per row and head
  const sel = new Uint32Array(nRows * nKV * 300);
  const picked = budgets.map((k, r) => Array.from({ length: nKV }, (_, g) => {
    const set = new Set<number>();
    while (set.size < k) set.add(Math.min(maxPages - 1, Math.floor(Math.abs(rnd()) * (r % 2 ? 250 : 400))));
    const list = [...set]; sel.set(list, (r * nKV + g) * 300);
    return list;
  }));
  const words = new Uint32Array((nRows + groups.length) * PARAM_WORDS);
  budgets.forEach((k, r) => { words[r * PARAM_WORDS + 2] = k; });
  groups.forEach((rows, i) => {
    const o = (nRows + i) * PARAM_WORDS;
    words[o + 2] = S; words[o + 20] = rows.length;
    rows.forEach((slot, j) => { words[o + 16 + (j >> 2)] |= slot << (8 * (j & 3)); });
  });
  const mk = (a: Uint32Array, extra = 0) => {
    const b = device.createBuffer({ size: Math.max(16, a.byteLength), usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC | extra });
    device.queue.writeBuffer(b, 0, a);
    return b;
  };
  const rowPrm = mk(words.slice(0, nRows * PARAM_WORDS)), groupPrm = mk(words.slice(nRows * PARAM_WORDS)), selBuf = mk(sel);
  const ulist = mk(new Uint32Array(groups.length * nKV * maxPages).fill(0xdeadbeef)), ucount = mk(new Uint32Array(groups.length * nKV));
  const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: selectionUnionFor(shape) }), entryPoint: 'main' } });
  const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [groupPrm, rowPrm, selBuf, ulist, ucount].map((buffer, binding) => ({ binding, resource: { buffer } })) }));
  pass.dispatchWorkgroups(groups.length, nKV); pass.end(); device.queue.submit([enc.finish()]);
  const list = new Uint32Array(await readBuffer(device, ulist, groups.length * nKV * maxPages * 4));
  const selAfter = new Uint32Array(await readBuffer(device, selBuf, sel.byteLength));
  const count = new Uint32Array(await readBuffer(device, ucount, groups.length * nKV * 4));
  throwDeviceError();
  groups.forEach((rows, i) => {
    for (let g = 0; g < nKV; g++) {
      const bits = new Map<number, number>();
      rows.forEach((slot, j) => { for (const p of picked[slot][g]) if (p < S) bits.set(p, (bits.get(p) ?? 0) | (1 << j)); });
      const want = [...bits.keys()].sort((a, b) => a - b).map((p) => (p | (bits.get(p)! << 16)) >>> 0);
      assert.equal(count[i * nKV + g], want.length, `group ${i}, head ${g}: pages listed`);
      assert.deepEqual(Array.from(list.subarray((i * nKV + g) * maxPages, (i * nKV + g) * maxPages + want.length)), want, `group ${i}, head ${g}: the list`);
    }
  });
  for (let r = 0; r < nRows; r++) {
    for (let g = 0; g < nKV; g++) {
      const at = (r * nKV + g) * 300, grouped = r < 20;
      assert.deepEqual(Array.from(selAfter.subarray(at, at + budgets[r])), picked[r][g].map((p) => (grouped && p < S ? 0xffffffff : p)), `row ${r}, head ${g}: the selection left`);
    }
  }
  for (const b of [rowPrm, groupPrm, selBuf, ulist, ucount]) b.destroy();
});

// The top-k kernel alone, for every workgroup size: scores with many ties (a few distinct values),
// negative and positive, more pages than threads; the selection must be k distinct pages whose scores
// are the k largest (which of the tied pages it takes is free).
for (const threads of [32, 64, 128, 256]) {
  test(`WebGPU top-k pages (${threads} threads) picks the k largest scores, ties included`, { skip: skipGpu }, async () => {
    const { device } = gpu!;
    const groups = 3, n = 1500, rnd = gaussian(7 + threads);
    const scores = new Float32Array(groups * n).map(() => Math.round(rnd() * 3) / 2); // 13 or so distinct values
    for (const k of [3, 100, 517]) {
      const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: topkWgsl({ nHeads: groups, nKV: groups, headDim: 8, pageSize: 16, maxPages: n, maxSelected: k }, hasSubgroups32(device), threads) }), entryPoint: 'main' } });
      const words = new Uint32Array(PARAM_WORDS); words.set([n * 16, n, k, 1]); // (decode-attention's Params: seqLen, nPages, k, sparse, ...)
      const prm = device.createBuffer({ size: words.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
      device.queue.writeBuffer(prm, 0, words);
      const sc = device.createBuffer({ size: scores.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
      device.queue.writeBuffer(sc, 0, scores);
      const sel = device.createBuffer({ size: groups * k * 4, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
      const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
      pass.setPipeline(pipe);
      pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [prm, sc, sel].map((buffer, binding) => ({ binding, resource: { buffer } })) }));
      pass.dispatchWorkgroups(groups); pass.end(); device.queue.submit([enc.finish()]);
      const got = new Uint32Array(await readBuffer(device, sel, groups * k * 4));
      throwDeviceError();
      for (let g = 0; g < groups; g++) {
        const mine = Array.from(got.subarray(g * k, (g + 1) * k));
        assert.equal(new Set(mine).size, k, `group ${g}, k ${k}: pages repeat`);
        assert.ok(mine.every((p) => p < n), `group ${g}, k ${k}: page out of range`);
        const row = scores.subarray(g * n, (g + 1) * n);
        const want = Array.from(row).sort((a, b) => b - a).slice(0, k);
        assert.deepEqual(mine.map((p) => row[p]).sort((a, b) => b - a), want, `group ${g}, k ${k}: not the k largest scores`);
      }
      for (const b of [prm, sc, sel]) b.destroy();
    }
  });
}

// RoPE, the KV append and Quest's page scores in one dispatch (a decode step's first attention dispatch)
// against float64: q and k rotated (interleaved and neox pairs, a partly rotated head), k and v stored as
// f16 in their page through a shuffled page table, the current page's key min/max updated (its first
// slot and a later one), and every other page's score summed over the group's query heads, the current
// page's forced to the top. Head dims whose rows take 4, 8, 10 and 16 lanes.
for (const c of [
  { nH: 8, nKV: 2, hd: 64, rd: 64, neox: false, pos: 16 * 37 + 5 }, { nH: 4, nKV: 4, hd: 32, rd: 32, neox: true, pos: 16 * 50 },
  { nH: 8, nKV: 1, hd: 80, rd: 48, neox: true, pos: 16 * 9 + 15 }, { nH: 16, nKV: 2, hd: 128, rd: 128, neox: false, pos: 16 * 130 + 1 },
]) {
  test(`WebGPU RoPE + KV append + Quest page scores in one dispatch (${c.nH}/${c.nKV} heads, head dim ${c.hd}, ${c.rd} rotated, ${c.neox ? 'neox' : 'interleaved'}, position ${c.pos}) match float64`, { skip: skipGpu }, async () => {
    const { device } = gpu!, P = 16, HD2 = c.hd / 2, RD2 = c.rd / 2, G = c.nH / c.nKV, rnd = gaussian(c.pos + c.hd);
    const nPages = Math.floor(c.pos / P) + 1, maxPages = nPages + 3, slot = c.pos % P;
    const s = { nHeads: c.nH, nKV: c.nKV, headDim: c.hd, pageSize: P, maxPages, ropeDims: c.rd };
    const table = Uint32Array.from({ length: maxPages }, (_, i) => (i * 7 + 3) % maxPages); // (7 and maxPages coprime in these cases)
    assert.equal(new Set(table).size, maxPages);
    const QKV = (c.nH + 2 * c.nKV) * c.hd, qkv = Float32Array.from({ length: QKV }, () => rnd());
    const rope = new Float32Array((c.pos + 1) * HD2 * 2);
    for (let p = 0; p < HD2; p++) { const a = rnd() * 3; rope[(c.pos * HD2 + p) * 2] = Math.cos(a); rope[(c.pos * HD2 + p) * 2 + 1] = Math.sin(a); }
    const kv = () => Uint16Array.from({ length: maxPages * c.nKV * P * c.hd }, () => f32ToF16(rnd()));
    const kh = kv(), vh = kv();
    const meta = new Uint16Array(maxPages * c.nKV * 2 * c.hd);
    for (let i = 0; i < meta.length; i += 2 * c.hd) for (let j = 0; j < c.hd; j++) { const a = rnd(), b = rnd(); meta[i + j] = f32ToF16(Math.min(a, b)); meta[i + c.hd + j] = f32ToF16(Math.max(a, b)); }
    // float64: channel ch of the rotated head at b
    const rot = (b: number, ch: number) => {
      if (ch >= 2 * RD2) return qkv[b + ch];
      const p = c.neox ? ch % RD2 : ch >> 1, cs = rope[(c.pos * HD2 + p) * 2], sn = rope[(c.pos * HD2 + p) * 2 + 1];
      const x0 = c.neox ? qkv[b + p] : qkv[b + 2 * p], x1 = c.neox ? qkv[b + p + RD2] : qkv[b + 2 * p + 1];
      return (c.neox ? ch >= RD2 : ch & 1) ? x0 * sn + x1 * cs : x0 * cs - x1 * sn;
    };
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    const upload = (a: ArrayBufferView) => { const b = device.createBuffer({ size: Math.max(16, Math.ceil(a.byteLength / 16) * 16), usage }); device.queue.writeBuffer(b, 0, a.buffer, a.byteOffset, a.byteLength); return b; };
    const bufs = [upload(qkv), upload(rope), upload(new Float32Array(c.nH * c.hd)), upload(kh), upload(vh), upload(meta)];
    const step = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(step, 0, new Uint32Array([c.pos, 1, c.pos + 1, 0]));
    const scores = upload(new Float32Array(c.nKV * maxPages).fill(-7));
    const sub = hasSubgroups32(device);
    const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code: ropeScoresWgsl(s, c.neox, sub) }), entryPoint: 'main' } });
    const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
    pass.setPipeline(pipe);
    pass.setBindGroup(0, device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [...bufs, step, upload(table), scores].map((buffer, binding) => ({ binding, resource: { buffer } })) }));
    pass.dispatchWorkgroups(ropeScoresGrid(s, sub, nPages)); pass.end(); device.queue.submit([enc.finish()]);
    const read = async (b: GPUBuffer, bytes: number) => readBuffer(device, b, bytes);
    const qr = new Float32Array(await read(bufs[2], c.nH * c.hd * 4)), kOut = new Uint16Array(await read(bufs[3], kh.byteLength));
    const vOut = new Uint16Array(await read(bufs[4], vh.byteLength)), mOut = new Uint16Array(await read(bufs[5], meta.byteLength));
    const sc = new Float32Array(await read(scores, c.nKV * maxPages * 4));
    throwDeviceError();
    const close = (got: number, want: number, what: string, tol = 1e-5) => assert.ok(Math.abs(got - want) <= tol * Math.max(1, Math.abs(want)), `${what}: ${got} vs ${want}`);
    const q = (h: number, ch: number) => rot(h * c.hd, ch);
    for (let h = 0; h < c.nH; h++) for (let ch = 0; ch < c.hd; ch++) close(qr[h * c.hd + ch], q(h, ch), `q head ${h} channel ${ch}`);
    const phys = table[Math.floor(c.pos / P)];
    for (let g = 0; g < c.nKV; g++) {
      const at = ((phys * c.nKV + g) * P + slot) * c.hd, mb = (phys * c.nKV + g) * 2 * c.hd;
      for (let ch = 0; ch < c.hd; ch++) {
        const k = F16_TABLE[f32ToF16(rot((c.nH + g) * c.hd, ch))];
        assert.equal(F16_TABLE[kOut[at + ch]], k, `key of KV head ${g}, channel ${ch}`);
        assert.equal(F16_TABLE[vOut[at + ch]], F16_TABLE[f32ToF16(qkv[(c.nH + c.nKV + g) * c.hd + ch])], `value of KV head ${g}, channel ${ch}`);
        const lo = slot > 0 ? Math.min(F16_TABLE[meta[mb + ch]], k) : k, hi = slot > 0 ? Math.max(F16_TABLE[meta[mb + c.hd + ch]], k) : k;
        assert.equal(F16_TABLE[mOut[mb + ch]], lo, `current page's min, KV head ${g}, channel ${ch}`);
        assert.equal(F16_TABLE[mOut[mb + c.hd + ch]], hi, `current page's max, KV head ${g}, channel ${ch}`);
      }
      for (let p = 0; p < nPages; p++) {
        if (p === nPages - 1) { assert.ok(sc[g * maxPages + p] > 1e38, `KV head ${g}: the current page is not forced`); continue; }
        const b = (table[p] * c.nKV + g) * 2 * c.hd;
        let want = 0;
        for (let j = 0; j < G; j++) for (let ch = 0; ch < c.hd; ch++) { const x = q(g * G + j, ch); want += Math.max(x * F16_TABLE[meta[b + ch]], x * F16_TABLE[meta[b + c.hd + ch]]); }
        close(sc[g * maxPages + p], want, `KV head ${g}, page ${p} score`, 1e-4);
      }
      assert.equal(sc[g * maxPages + nPages], -7, `KV head ${g}: a page past the sequence was written`);
    }
  });
}
