// Page sharing on the CPU: sequences that fork, grow, rewind and go away in random order each read
// exactly their own tokens, and the page min/max of exactly those tokens; shared pages are never
// written through; a fork allocates nothing until it writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PagedKVCache } from '../kv/paged-cache.js';
import { PageAllocator, PageTable, sharedPrefixGroups } from '../kv/page-table.js';
import { attendHead } from '../attention/attend.js';
import { pageScores } from '../attention/quest.js';
import { gaussian, randomArray } from './fixtures.js';

interface Seq { cache: PagedKVCache; keys: Float32Array[]; values: Float32Array[] }

function check(s: Seq, nKV: number, hd: number, P: number, what: string): void {
  for (const [l, kv] of s.cache.layers.entries()) {
    assert.equal(kv.length, s.keys.length, `${what}: layer ${l} length`);
    for (let t = 0; t < s.keys.length; t++) for (let g = 0; g < nKV; g++) {
      const o = kv.offset(t, g);
      for (let i = 0; i < hd; i++) {
        if (kv.k[o + i] !== Math.fround(s.keys[t][g * hd + i] + l) || kv.v[o + i] !== Math.fround(s.values[t][g * hd + i] - l)) assert.fail(`${what}: layer ${l} token ${t} head ${g} differs`);
      }
    }
    for (let p = 0; p < kv.numPages; p++) for (let g = 0; g < nKV; g++) for (let i = 0; i < hd; i++) {
      const vals = s.keys.slice(p * P, (p + 1) * P).map((k) => Math.fround(k[g * hd + i] + l));
      const mo = kv.metaOffset(p, g);
      if (kv.kmin[mo + i] !== Math.fround(Math.min(...vals)) || kv.kmax[mo + i] !== Math.fround(Math.max(...vals))) {
        assert.fail(`${what}: layer ${l} page ${p} head ${g} channel ${i}: min/max ${kv.kmin[mo + i]}/${kv.kmax[mo + i]}, want ${Math.min(...vals)}/${Math.max(...vals)}`);
      }
    }
  }
}

function appendToken(s: Seq, k: Float32Array, v: Float32Array): void {
  s.keys.push(k); s.values.push(v);
  s.cache.layers.forEach((kv, l) => kv.append(k.map((x) => x + l), 0, v.map((x) => x - l), 0));
}

test('forked sequences read only their own tokens and page min/max through random forks, appends, rewinds and disposals', () => {
  for (let trial = 0; trial < 12; trial++) {
    const g = gaussian(100 + trial), P = 1 + (trial % 7), nKV = 2, hd = 4, nLayers = 2;
    const live: Seq[] = [{ cache: new PagedKVCache(nLayers, nKV, hd, P, 2), keys: [], values: [] }];
    const allocator = live[0].cache.table.alloc;
    let r = trial * 7919;
    const rand = (n: number) => { r = (r * 1103515245 + 12345) % 2147483648; return r % n; };
    for (let step = 0; step < 300; step++) {
      const op = rand(10), s = live[rand(live.length)];
      if (op < 6) {
        for (let j = 1 + rand(5); j > 0; j--) appendToken(s, randomArray(nKV * hd, 2, g), randomArray(nKV * hd, 1, g));
      } else if (op < 8 && live.length < 6) {
        const before = allocator.used;
        live.push({ cache: s.cache.fork(), keys: s.keys.slice(), values: s.values.slice() });
        assert.equal(allocator.used, before, 'a fork allocates no page');
      } else if (op === 8) {
        const keep = rand(s.keys.length + 1);
        s.cache.truncate(keep); s.keys.length = keep; s.values.length = keep;
      } else if (live.length > 1) {
        s.cache.dispose(); live.splice(live.indexOf(s), 1);
      }
      for (const [i, x] of live.entries()) check(x, nKV, hd, P, `trial ${trial} step ${step} sequence ${i}`);
      // pages held = distinct pages over the live tables (freed ones go back to the free list)
      assert.equal(allocator.used, new Set(live.flatMap((x) => x.cache.table.pages)).size, 'pages held');
    }
    for (const x of live) x.cache.dispose();
    assert.equal(allocator.used, 0, 'every page freed');
    assert.equal(live[0].cache.store.capacity, 0, 'the storage goes with the last sequence');
  }
});

test('attention and Quest page scores of a fork read the shared and the copied pages through its page table (SIMD kernels and TypeScript)', () => {
  const nKV = 2, hd = 8, P = 4, g = gaussian(7);
  const base: Seq = { cache: new PagedKVCache(1, nKV, hd, P, 4), keys: [], values: [] };
  for (let t = 0; t < 30; t++) appendToken(base, randomArray(nKV * hd, 1, g), randomArray(nKV * hd, 1, g));
  const fork: Seq = { cache: base.cache.fork(), keys: base.keys.slice(), values: base.values.slice() };
  fork.cache.truncate(22);
  fork.keys.length = fork.values.length = 22;
  for (let t = 0; t < 13; t++) appendToken(fork, randomArray(nKV * hd, 1, g), randomArray(nKV * hd, 1, g));
  for (let t = 0; t < 5; t++) appendToken(base, randomArray(nKV * hd, 1, g), randomArray(nKV * hd, 1, g));
  assert.notDeepEqual(fork.cache.table.pages, base.cache.table.pages, 'the fork wrote pages of its own');
  assert.deepEqual(fork.cache.table.pages.slice(0, 5), base.cache.table.pages.slice(0, 5), 'full pages before the rewind stay shared');
  for (const s of [base, fork]) {
    const kv = s.cache.layers[0], n = s.keys.length, q = randomArray(hd, 1, g);
    for (let grp = 0; grp < nKV; grp++) {
      const out = new Float32Array(hd);
      attendHead(q, 0, kv, grp, null, n, 0.5, out, 0, null);
      const sc = s.keys.map((k) => { let d = 0; for (let i = 0; i < hd; i++) d += q[i] * k[grp * hd + i]; return d * 0.5; });
      const m = Math.max(...sc), e = sc.map((x) => Math.exp(x - m)), z = e.reduce((a, b) => a + b, 0);
      for (let i = 0; i < hd; i++) {
        const want = e.reduce((a, w, t) => a + (w / z) * s.values[t][grp * hd + i], 0);
        assert.ok(Math.abs(out[i] - want) < 1e-5, `attention channel ${i}: ${out[i]} vs ${want}`);
      }
      const scores = new Float32Array(kv.numPages);
      pageScores(q, 0, kv, grp, scores);
      for (let p = 0; p < kv.numPages; p++) {
        let want = 0;
        for (let i = 0; i < hd; i++) {
          const vals = s.keys.slice(p * P, (p + 1) * P).map((k) => k[grp * hd + i]);
          want += Math.max(q[i] * Math.min(...vals), q[i] * Math.max(...vals));
        }
        assert.ok(Math.abs(scores[p] - want) < 1e-5, `page ${p} score ${scores[p]} vs ${want}`);
      }
    }
  }
});

test('a long prompt grows the page store once, with room for the answer; shared pages to be copied count', () => {
  const grows: number[] = [];
  const store = { capacity: 4, grow(p: number) { grows.push(p); this.capacity = p; }, copyPage() {}, rebuildMeta() {}, dispose() {} };
  const alloc = new PageAllocator(store), table = new PageTable(alloc, 16);
  table.makeRoom(0, 4096); // 256 pages: one grow, to 256 + a quarter
  assert.deepEqual(grows, [320]);
  for (let t = 0; t < 4096 + 1024; t++) table.writable(t); // the prompt and 1,024 more tokens: no grow
  assert.deepEqual(grows, [320]);
  // a fork shares all 320 pages; making room to rewrite its last two pages counts their copies
  const fork = table.fork();
  fork.makeRoom(5100, 40); // pages 318, 319 shared (copies) + 320 new: 3 fresh pages, beyond the capacity
  assert.equal(grows.length, 2);
  assert.ok(grows[1] >= 323, `grew to ${grows[1]}`);
});

test('a kept store outlives its last sequence: the next one allocates without growing; releaseStore frees it when idle', () => {
  const grows: number[] = [];
  let disposed = 0;
  const store = { capacity: 0, grow(p: number) { grows.push(p); this.capacity = p; }, copyPage() {}, rebuildMeta() {}, dispose() { disposed++; this.capacity = 0; } };
  const alloc = new PageAllocator(store, true);
  const a = new PageTable(alloc, 16);
  a.reserve(0, 1000); // 63 pages
  a.dispose();
  assert.equal(disposed, 0, 'kept');
  assert.equal(alloc.used, 0, 'every page free');
  const b = new PageTable(alloc, 16);
  b.reserve(0, 900);
  assert.equal(grows.length, 1, 'no second grow');
  assert.equal(alloc.used, 57);
  assert.equal(alloc.releaseStore(), false, 'held by a sequence');
  b.dispose();
  assert.equal(alloc.releaseStore(), true);
  assert.equal(disposed, 1);
  assert.equal(store.capacity, 0);
});

// Which rows of a batched GPU step read their shared pages together: rows grouped by their first page,
// the longest prefix common to all of a group's rows, at least minPages and short of each row's last page;
// rows not eligible (sparse or windowed attention) or too short stay alone. Checked on a hand-made batch
// and against a brute-force search on random forks.
test('shared-prefix groups of a batch: forks of one context grouped with their longest common prefix', () => {
  const doc = Array.from({ length: 30 }, (_, i) => i);
  const tables = [doc, [...doc.slice(0, 20), 100, 101, 102], [...doc, 103], [200, 201, 202, 203, 204, 205], doc.slice(), doc.slice(0, 3), [200, 201, 210, 211, 212, 213, 214]];
  const pages = tables.map((t) => t.length), eligible = [true, true, true, true, false, true, true];
  // rows 3 and 6 share only 2 pages; row 4 is not eligible; row 5 (3 pages) is too short
  assert.deepEqual(sharedPrefixGroups(tables, pages, eligible, 4), [{ rows: [0, 1, 2], pages: 20 }]);
  // with 2 pages enough, row 5 joins its fork's group, which then shares the 2 pages row 5 leaves
  assert.deepEqual(sharedPrefixGroups(tables, pages, eligible, 2), [{ rows: [0, 1, 2, 5], pages: 2 }, { rows: [3, 6], pages: 2 }]);
  assert.deepEqual(sharedPrefixGroups([doc, doc.slice()], [30, 30], [true, true], 4), [{ rows: [0, 1], pages: 29 }]); // (the last page stays each row's own)
  let seed = 5;
  const rnd = () => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed >>> 8; };
  for (let trial = 0; trial < 200; trial++) {
    const base = Array.from({ length: 40 }, (_, i) => i), n = 2 + (rnd() % 6);
    const ts = Array.from({ length: n }, () => {
      const keep = rnd() % 41, len = keep + 1 + (rnd() % 5);
      return rnd() % 4 === 0 ? Array.from({ length: len }, () => 1000 + (rnd() % 50)) : [...base.slice(0, keep), ...Array.from({ length: len - keep }, () => 500 + (rnd() % 100000))];
    });
    const ps = ts.map((t) => t.length), el = ts.map(() => rnd() % 5 !== 0), min = 1 + (rnd() % 5);
    const got = sharedPrefixGroups(ts, ps, el, min);
    // brute force: every pair of eligible rows with the same first page is in one group, and the group's
    // shared pages are the largest n that every row agrees on
    const rows = ts.map((_, i) => i).filter((i) => el[i] && ps[i] > min);
    const firsts = [...new Set(rows.map((i) => ts[i][0]))];
    const want = firsts.flatMap((f) => {
      const g = rows.filter((i) => ts[i][0] === f);
      if (g.length < 2) return [];
      let s = 0;
      while (g.every((i) => s < ps[i] - 1 && ts[i][s] === ts[g[0]][s])) s++;
      return s >= min ? [{ rows: g, pages: s }] : [];
    });
    assert.deepEqual(got, want, `trial ${trial}: ${JSON.stringify({ ts, el, min })}`);
  }
});
