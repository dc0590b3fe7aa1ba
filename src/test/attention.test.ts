// Quest and the baselines against brute force on random inputs and small hand-checked cases.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PagedKVCache, type LayerKV } from '../kv/paged-cache.js';
import { wasm } from '../backend/wasm/runtime.js';
import { attendHead, headScores, topKIndices } from '../attention/attend.js';
import { QuestPolicy, pageScores, MIN_PAGES } from '../attention/quest.js';
import { H2OPolicy, OraclePolicy, StreamingPolicy, TovaPolicy } from '../attention/baselines.js';
import type { StepContext } from '../attention/policy.js';
import { gaussian, randomArray, randomGGUF, tempFile } from './fixtures.js';
import { loadModelFiles } from '../model/load.js';
import { makeModel, Session } from '../engine/session.js';

function filledCache(nKV: number, hd: number, P: number, n: number, seed: number): { kv: LayerKV; keys: Float32Array[]; cache: PagedKVCache } {
  const g = gaussian(seed), cache = new PagedKVCache(1, nKV, hd, P, 4), kv = cache.layers[0];
  const keys: Float32Array[] = [];
  for (let t = 0; t < n; t++) {
    const k = randomArray(nKV * hd, 1.5, g), v = randomArray(nKV * hd, 1, g);
    keys.push(k); kv.append(k, 0, v, 0);
  }
  return { kv, keys, cache };
}

test('page score is an upper bound of q·k over every key in the page (random draws, negative values)', () => {
  for (let trial = 0; trial < 200; trial++) {
    const P = 1 + (trial % 19), hd = 8, n = 1 + ((trial * 37) % 200);
    const { kv, keys } = filledCache(2, hd, P, n, trial + 1);
    const q = randomArray(hd, 2, gaussian(1000 + trial));
    const scores = new Float32Array(kv.numPages);
    for (const g of [0, 1]) {
      pageScores(q, 0, kv, g, scores);
      for (let t = 0; t < n; t++) {
        let d = 0; for (let i = 0; i < hd; i++) d += q[i] * keys[t][g * hd + i];
        assert.ok(scores[Math.floor(t / P)] >= d - 1e-4, `page ${Math.floor(t / P)} score ${scores[Math.floor(t / P)]} < q·k ${d}`);
      }
    }
  }
});

test('incremental page min/max equals recomputation, the partly filled last page included', () => {
  const P = 16, hd = 8;
  const { kv, keys, cache } = filledCache(2, hd, P, 75, 9);
  for (let p = 0; p < kv.numPages; p++) for (let g = 0; g < 2; g++) for (let i = 0; i < hd; i++) {
    const vals = keys.slice(p * P, (p + 1) * P).map((k) => k[g * hd + i]);
    assert.equal(kv.kmin[kv.metaOffset(p, g) + i], Math.min(...vals));
    assert.equal(kv.kmax[kv.metaOffset(p, g) + i], Math.max(...vals));
  }
  cache.truncate(40); // rewinding rebuilds the last page's metadata
  const vals = keys.slice(32, 40).map((k) => k[3]);
  assert.equal(kv.kmax[kv.metaOffset(2, 0) + 3], Math.max(...vals));
});

test('the SIMD append (keys and values in the WebAssembly memory) stores what the TypeScript append stores', (t) => {
  const rt = wasm();
  if (!rt) { t.skip('no WebAssembly SIMD here'); return; }
  for (const [nKV, hd, P, n] of [[3, 64, 16, 75], [2, 8, 5, 23], [1, 4, 1, 6]]) {
    const g = gaussian(nKV * 100 + hd), dim = nKV * hd;
    // the rows as the forward pass holds them (in the wasm memory), and a plain copy for the TypeScript path
    const kw = rt.f32(rt.alloc(n * dim * 4), n * dim), vw = rt.f32(rt.alloc(n * dim * 4), n * dim);
    kw.set(randomArray(n * dim, 1.5, g)); vw.set(randomArray(n * dim, 1, g));
    const simd = new PagedKVCache(1, nKV, hd, P, 4), plain = new PagedKVCache(1, nKV, hd, P, 4);
    for (let i = 0; i < n; i++) {
      simd.layers[0].append(kw, i * dim, vw, i * dim);
      plain.layers[0].append(kw.slice(i * dim, (i + 1) * dim), 0, vw.slice(i * dim, (i + 1) * dim), 0);
    }
    const a = simd.layers[0], b = plain.layers[0];
    assert.ok(a.inWasm, 'the cache is in the wasm memory');
    for (let tok = 0; tok < n; tok++) for (let h = 0; h < nKV; h++) for (let i = 0; i < hd; i++) {
      assert.equal(a.k[a.offset(tok, h) + i], kw[tok * dim + h * hd + i]); assert.equal(a.v[a.offset(tok, h) + i], vw[tok * dim + h * hd + i]);
      assert.equal(a.k[a.offset(tok, h) + i], b.k[b.offset(tok, h) + i]); assert.equal(a.v[a.offset(tok, h) + i], b.v[b.offset(tok, h) + i]);
    }
    for (let p = 0; p < a.numPages; p++) for (let h = 0; h < nKV; h++) for (let i = 0; i < hd; i++) {
      const vals = Array.from({ length: Math.min(P, n - p * P) }, (_, s) => kw[(p * P + s) * dim + h * hd + i]);
      assert.equal(a.kmin[a.metaOffset(p, h) + i], Math.min(...vals), `page ${p} head ${h} channel ${i} min`);
      assert.equal(a.kmax[a.metaOffset(p, h) + i], Math.max(...vals), `page ${p} head ${h} channel ${i} max`);
      assert.equal(b.kmin[b.metaOffset(p, h) + i], Math.min(...vals)); assert.equal(b.kmax[b.metaOffset(p, h) + i], Math.max(...vals));
    }
    simd.dispose(); plain.dispose(); rt.release(kw.byteOffset, n * dim * 4); rt.release(vw.byteOffset, n * dim * 4);
  }
});

function ctxFor(kv: LayerKV, q: Float32Array, nHeads: number): StepContext {
  const G = nHeads / kv.nKV, hd = kv.headDim, pos = kv.length - 1;
  return {
    layer: 0, pos, nHeads, groupSize: G, pageSize: kv.pageSize,
    scores: (h, out) => headScores(q, h * hd, kv, Math.floor(h / G), pos + 1, 1 / Math.sqrt(hd), out),
    pageBounds: (h, out) => pageScores(q, h * hd, kv, Math.floor(h / G), out),
  };
}

test('Quest selects the brute-force top-k pages by score (per head and pooled per KV group)', () => {
  const P = 4, hd = 8, nKV = 2, nH = 4;
  const { kv } = filledCache(nKV, hd, P, 61, 21);
  const q = randomArray(nH * hd, 1, gaussian(5));
  const np = kv.numPages, budget = 20, k = Math.ceil(budget / P), current = Math.floor(60 / P);
  const bruteScore = (h: number, p: number) => {
    let s = 0; const g = Math.floor(h / 2), mo = kv.metaOffset(p, g);
    for (let i = 0; i < hd; i++) s += Math.max(q[h * hd + i] * kv.kmax[mo + i], q[h * hd + i] * kv.kmin[mo + i]);
    return s;
  };
  const expectPages = (score: (p: number) => number) => {
    const others = Array.from({ length: np }, (_, p) => p).filter((p) => p !== current).sort((a, b) => score(b) - score(a) || a - b);
    return [current, ...others.slice(0, k - 1)].sort((a, b) => a - b);
  };
  const pagesOf = (tokens: Int32Array) => [...new Set(Array.from(tokens, (t) => Math.floor(t / P)))];
  const perHead = new QuestPolicy(budget, 'head').select(ctxFor(kv, q, nH))!;
  for (let h = 0; h < nH; h++) assert.deepEqual(pagesOf(perHead[h]!), expectPages((p) => bruteScore(h, p)));
  const pooled = new QuestPolicy(budget, 'group-max').select(ctxFor(kv, q, nH))!;
  for (let h = 0; h < nH; h++) {
    const g = Math.floor(h / 2);
    assert.deepEqual(pagesOf(pooled[h]!), expectPages((p) => Math.max(bruteScore(2 * g, p), bruteScore(2 * g + 1, p))));
  }
  // the last page is partly filled: its tokens stop at the current one
  assert.equal(perHead[0]![perHead[0]!.length - 1], 60);
});

test('Quest keeps at least 3 pages, and goes dense when the budget covers the context', () => {
  const { kv } = filledCache(1, 4, 16, 200, 2);
  const q = randomArray(4, 1, gaussian(3));
  const sel = new QuestPolicy(1, 'head').select(ctxFor(kv, q, 1))!;
  assert.equal(new Set(Array.from(sel[0]!, (t) => Math.floor(t / 16))).size, MIN_PAGES);
  assert.equal(new QuestPolicy(200, 'head').select(ctxFor(kv, q, 1)), null);
});

test('sparse attention over all pages equals dense attention to float rounding', () => {
  const { kv } = filledCache(1, 16, 16, 100, 4);
  const q = randomArray(16, 1, gaussian(8));
  const all = Int32Array.from({ length: 100 }, (_, i) => i);
  const a = new Float32Array(16), b = new Float32Array(16), p = new Float32Array(100);
  attendHead(q, 0, kv, 0, null, 100, 0.25, a, 0, p);
  attendHead(q, 0, kv, 0, all, 100, 0.25, b, 0, p);
  for (let i = 0; i < 16; i++) assert.ok(Math.abs(a[i] - b[i]) < 1e-6);
});

test('a budget at least the context length gives exactly dense logits in the engine', () => {
  const m = loadModelFiles(tempFile('m.gguf', randomGGUF({ vocab: 64, dim: 32, hidden: 64, layers: 3, heads: 4, kvHeads: 2, seed: 2 })));
  const model = makeModel(m.config, m.weights);
  const prompt = Array.from({ length: 40 }, (_, i) => (i * 7) % 64);
  const run = (s: Session) => { s.forward(prompt); const out: Float32Array[] = []; for (const t of [1, 2, 3, 4, 5]) out.push(s.forward([t])); return out; };
  const dense = run(new Session(model, { policy: 'dense' }));
  for (const policy of ['quest', 'oracle', 'oracle-page', 'streaming', 'h2o', 'tova'] as const) {
    const sparse = run(new Session(model, { policy, budget: 64, pageSize: 8, denseLayers: 0 }));
    dense.forEach((d, i) => d.forEach((v, j) => assert.ok(Math.abs(v - sparse[i][j]) < 1e-5, `${policy}: step ${i} logit ${j}`)));
  }
  // and a small budget does change them (the policy is really in the loop)
  const small = run(new Session(model, { policy: 'quest', budget: 8, pageSize: 4, denseLayers: 0 }));
  assert.ok(small.some((l, i) => l.some((v, j) => Math.abs(v - dense[i][j]) > 1e-4)));
});

test('the attention-mass recall metric is 1 for dense and the exact kept mass for a selection', () => {
  const m = loadModelFiles(tempFile('m.gguf', randomGGUF({ vocab: 64, dim: 32, hidden: 64, layers: 2, heads: 2, kvHeads: 1, seed: 4 })));
  const s = new Session(makeModel(m.config, m.weights), { policy: 'oracle', budget: 10, denseLayers: 1 });
  s.collectStats();
  s.forward(Array.from({ length: 50 }, (_, i) => i % 64));
  s.forward([3]);
  const r = s.stats!.perLayer();
  assert.equal(r[0], null); // layer 0 stayed dense
  assert.ok(r[1]! > 0 && r[1]! < 1, `recall ${r[1]}`);
  assert.equal(s.stats!.meanAttended(), 10);
});

test('StreamingLLM keeps the 4 sinks and the most recent tokens', () => {
  const { kv } = filledCache(1, 4, 4, 30, 1);
  const sel = new StreamingPolicy(10).select(ctxFor(kv, new Float32Array(4), 1))!;
  assert.deepEqual(Array.from(sel[0]!), [0, 1, 2, 3, 24, 25, 26, 27, 28, 29]);
});

test('Oracle keeps the true top-k tokens by exact score', () => {
  const { kv, keys } = filledCache(1, 4, 4, 30, 6);
  const q = randomArray(4, 1, gaussian(2));
  const sel = new OraclePolicy(5).select(ctxFor(kv, q, 1))!;
  const score = keys.map((k) => k[0] * q[0] + k[1] * q[1] + k[2] * q[2] + k[3] * q[3]);
  const expect = [29, ...Array.from({ length: 29 }, (_, i) => i).sort((a, b) => score[b] - score[a]).slice(0, 4)].sort((a, b) => a - b);
  assert.deepEqual(Array.from(sel[0]!), expect);
});

test('H2O keeps heavy hitters plus the recent window, and evicted tokens never come back', () => {
  const { kv } = filledCache(1, 4, 4, 10, 1);
  const h2o = new H2OPolicy(4);
  const acc = new Float32Array(10); acc[1] = 5; acc[6] = 3; acc[2] = 1; // token 1 and 6 are heavy hitters
  h2o.observePrefill(0, 0, acc, 10);
  const ctx = ctxFor(kv, new Float32Array(4), 1);
  const sel = h2o.select(ctx); // first step: the whole prompt + current token (9 is the current one)
  assert.deepEqual(Array.from(sel[0]!), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  h2o.observe(ctx, sel, [new Float32Array(10).fill(0.1)]);
  // budget 4: recent window = last 2 tokens (8, 9), heavy hitters 1 and 6
  assert.deepEqual(Array.from(h2o.select(ctx)[0]!), [1, 6, 8, 9]);
  const v = new Float32Array(4); kv.append(new Float32Array(4), 0, v, 0);
  const next = h2o.select(ctxFor(kv, new Float32Array(4), 1));
  assert.ok(!Array.from(next[0]!).includes(0) && !Array.from(next[0]!).includes(2));
});

test('TOVA evicts the token with the lowest head-averaged weight of the current query', () => {
  const { kv } = filledCache(1, 4, 4, 6, 1);
  const tova = new TovaPolicy(4);
  const ctx = ctxFor(kv, new Float32Array(8), 2);
  const sel = tova.select(ctx);
  assert.deepEqual(Array.from(sel[0]!), [0, 1, 2, 3, 4, 5]);
  // head-mean weights: token 2 lowest, then token 4; current token 5 is never evicted
  const h0 = Float32Array.from([0.2, 0.2, 0.0, 0.3, 0.05, 0.25]), h1 = Float32Array.from([0.2, 0.3, 0.02, 0.2, 0.03, 0.25]);
  tova.observe(ctx, sel, [h0, h1]);
  assert.deepEqual(Array.from(tova.select(ctx)[0]!), [0, 1, 3, 5]);
});

test('topKIndices forces the current page and breaks ties by position', () => {
  assert.deepEqual(topKIndices([5, 1, 5, 0, 3], 2, [3]), [0, 3]);
  assert.deepEqual(topKIndices([5, 1, 5, 0, 3], 3), [0, 2, 4]);
});

test('prefill reports the attention each token received (what H2O starts from): every query row sums to 1', () => {
  const m = loadModelFiles(tempFile('m.gguf', randomGGUF({ vocab: 64, dim: 32, hidden: 64, layers: 2, heads: 4, kvHeads: 2, seed: 6 })));
  const s = new Session(makeModel(m.config, m.weights));
  s.recordPrefillScores();
  s.forward(Array.from({ length: 70 }, (_, i) => (i * 5) % 64), { chunk: 32 }); // chunks: received accumulates across them
  const h2o = s.fork({ policy: 'h2o', budget: 8 });
  const got: number[] = [];
  (h2o.policy as unknown as { acc: Map<string, Float32Array> }).acc.forEach((a) => got.push(a.subarray(0, 70).reduce((x, y) => x + y, 0)));
  assert.equal(got.length, 2 * 4);
  for (const g of got) assert.ok(Math.abs(g - 70) < 1e-3, `received sums to ${g}, expected 70 (one per query)`);
});

test('topKIndices equals a full sort on random values with ties', () => {
  const g = gaussian(77);
  for (let trial = 0; trial < 200; trial++) {
    const n = 1 + (trial % 60), k = 1 + ((trial * 7) % (n + 2));
    const v = Array.from({ length: n }, () => Math.round(g() * 3)); // many ties
    const force = trial % 3 === 0 ? [n - 1] : [];
    const want = (() => {
      if (k >= n) return Array.from({ length: n }, (_, i) => i);
      const rest = Array.from({ length: n }, (_, i) => i).filter((i) => !force.includes(i)).sort((a, b) => v[b] - v[a] || a - b);
      return [...force, ...rest.slice(0, k - force.length)].sort((a, b) => a - b);
    })();
    assert.deepEqual(topKIndices(v, k, force), want, `n ${n} k ${k}`);
  }
});
