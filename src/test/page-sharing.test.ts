// Page sharing on the CPU: sequences that fork, grow, rewind and go away in random order each read
// exactly their own tokens, and the page min/max of exactly those tokens; shared pages are never
// written through; a fork allocates nothing until it writes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PagedKVCache } from '../kv/paged-cache.js';
import { PageAllocator, PageTable } from '../kv/page-table.js';
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
