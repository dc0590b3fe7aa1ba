// Layer ops against straightforward float64 formulas on random inputs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { activations, addInPlace, matmul, rmsnorm, swiglu, geglu, softmax } from '../backend/cpu/kernels.js';
import { Rope, ropeInvFreq } from '../model/rope.js';
import { encodeTensor, Matrix } from '../model/tensor.js';
import { PagedKVCache, fromBf16, toBf16 } from '../kv/paged-cache.js';
import { attendHead } from '../attention/attend.js';
import { ATTEND_ROWS, attendHeads, attendTokenPart, forEachChunk, initChunkCounters, mergeTokenParts } from '../backend/wasm/shared-ops.js';
import { wasm } from '../backend/wasm/runtime.js';
import { gaussian, randomArray } from './fixtures.js';
import { refRmsnorm, refRope } from './reference.js';

const close = (a: number, b: number, tol: number, what: string) => assert.ok(Math.abs(a - b) <= tol * Math.max(1, Math.abs(b)), `${what}: ${a} vs ${b}`);

test('matmul (odd sizes, several tokens, bias) matches float64', () => {
  const g = gaussian(1);
  for (const [rows, cols, n] of [[7, 64, 1], [33, 96, 5], [4, 32, 3]]) {
    const W = randomArray(rows * cols, 1, g), x = randomArray(n * cols, 1, g), bias = randomArray(rows, 1, g);
    const m = new Matrix(rows, cols, 'f32', encodeTensor(W, 'f32'));
    const out = new Float32Array(n * rows);
    matmul(m, x, n, out, bias);
    for (let t = 0; t < n; t++) for (let r = 0; r < rows; r++) {
      let s = bias[r]; for (let c = 0; c < cols; c++) s += W[r * cols + c] * x[t * cols + c];
      close(out[t * rows + r], s, 1e-5, `[${t},${r}]`);
    }
  }
});

test('RMSNorm matches float64', () => {
  const g = gaussian(2), d = 37, x = randomArray(3 * d, 3, g), w = randomArray(d, 1, g), out = new Float32Array(3 * d);
  rmsnorm(out, x, w, 3, d, 1e-5);
  for (let t = 0; t < 3; t++) {
    const ref = refRmsnorm(Float64Array.from(x.subarray(t * d, t * d + d)), Float64Array.from(w), 1e-5);
    ref.forEach((v, i) => close(out[t * d + i], v, 1e-5, 'rmsnorm'));
  }
});

test('RoPE (interleaved and neox, with and without scaling) matches float64 rotation', () => {
  const g = gaussian(3);
  const scalings = [
    { type: 'none' as const },
    { type: 'linear' as const, factor: 4 },
    { type: 'llama3' as const, factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 8192 },
  ];
  for (const style of ['interleaved', 'neox'] as const) for (const ropeScaling of scalings) {
    const hd = 64, rope = new Rope(hd, style, 500000, ropeScaling);
    for (const pos of [0, 1, 17, 5000, 30000]) {
      const x = randomArray(2 * hd, 1, g), y = x.slice();
      rope.apply(y, 0, 2, pos);
      for (let h = 0; h < 2; h++) {
        const ref = refRope(Float64Array.from(x.subarray(h * hd, h * hd + hd)), pos, { headDim: hd, ropeTheta: 500000, ropeStyle: style, ropeScaling });
        ref.forEach((v, i) => close(y[h * hd + i], v, 2e-5, `${style}/${ropeScaling.type} pos ${pos}`));
      }
    }
  }
});

test('Llama 3 RoPE scaling follows the published formula', () => {
  const hd = 128, theta = 500000, factor = 8, low = 1, high = 4, orig = 8192;
  const f = ropeInvFreq(hd, theta, { type: 'llama3', factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositions: orig });
  for (let i = 0; i < hd / 2; i++) {
    const base = 1 / theta ** ((2 * i) / hd), wl = (2 * Math.PI) / base;
    let want: number;
    if (wl < orig / high) want = base;
    else if (wl > orig / low) want = base / factor;
    else { const s = (orig / wl - low) / (high - low); want = (1 - s) * base / factor + s * base; }
    close(f[i], want, 1e-12, `freq ${i}`);
  }
});

test('activations in the WebAssembly memory: RMSNorm (in place too), SwiGLU and residual adds run there in place and match float64', (t) => {
  const rt = wasm();
  if (!rt) { t.skip('no WebAssembly SIMD runtime'); return; }
  for (const [n, d] of [[1, 4], [5, 64], [3, 576]]) {
    const g = gaussian(n * d), x0 = randomArray(n * d, 3, g), w = randomArray(d, 1, g);
    const x = activations('test.x', n * d), out = activations('test.o', n * d);
    assert.ok(rt.owns(x) && rt.owns(out));
    x.set(x0);
    rmsnorm(out, x, w, n, d, 1e-5);
    rmsnorm(x, x, w, n, d, 1e-5); // (out = x)
    for (let r = 0; r < n; r++) {
      const ref = refRmsnorm(Float64Array.from(x0.subarray(r * d, r * d + d)), Float64Array.from(w), 1e-5);
      ref.forEach((v, i) => { close(out[r * d + i], v, 1e-6, `rmsnorm ${n}x${d}`); close(x[r * d + i], v, 1e-6, `rmsnorm in place ${n}x${d}`); });
    }
    const gate = activations('test.g', n * d), up = activations('test.u', n * d), a = randomArray(n * d, 3, g), b = randomArray(n * d, 1, g);
    gate.set(a); up.set(b);
    swiglu(gate, up, n * d);
    for (let i = 0; i < n * d; i++) close(gate[i], (a[i] / (1 + Math.exp(-a[i]))) * b[i], 1e-5, `swiglu ${i}`);
    x.set(a);
    addInPlace(x, up, n * d);
    for (let i = 0; i < n * d; i++) assert.equal(x[i], Math.fround(a[i] + b[i]));
  }
});

test('SwiGLU, GeGLU and softmax match float64', () => {
  // 52 elements: the SIMD kernel where it runs (with values far in both tails), 50: the plain loop
  for (const n of [52, 50]) {
    const g = gaussian(4 + n), a = randomArray(n, 3, g), b = randomArray(n, 1, g);
    a[0] = -120; a[1] = 95; a[2] = -30; a[3] = 0;
    const x = a.slice(), y = a.slice();
    swiglu(x, b, n); geglu(y, b, n);
    for (let i = 0; i < n; i++) {
      close(x[i], (a[i] / (1 + Math.exp(-a[i]))) * b[i], 1e-5, `swiglu ${i}`);
      close(y[i], 0.5 * a[i] * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (a[i] + 0.044715 * a[i] ** 3))) * b[i], 1e-5, `geglu ${i}`);
    }
  }
  const s = randomArray(20, 5, gaussian(4)), p = s.slice();
  softmax(p, 0, 20);
  const m = Math.max(...s), e = Array.from(s, (v) => Math.exp(v - m)), z = e.reduce((u, v) => u + v, 0);
  e.forEach((v, i) => close(p[i], v / z, 1e-6, 'softmax'));
});

test('GQA attention over the paged cache matches brute force (group ratios 1, 4, 8)', () => {
  for (const [nH, nKV] of [[4, 4], [8, 2], [8, 1]]) {
    const hd = 16, n = 45, P = 16, g = gaussian(nH * 10 + nKV);
    const kv = new PagedKVCache(1, nKV, hd, P, 8).layers[0];
    const K: Float32Array[] = [], V: Float32Array[] = [];
    for (let t = 0; t < n; t++) { const k = randomArray(nKV * hd, 1, g), v = randomArray(nKV * hd, 1, g); K.push(k); V.push(v); kv.append(k, 0, v, 0); }
    const q = randomArray(nH * hd, 1, g), out = new Float32Array(nH * hd), probs = new Float32Array(n);
    for (let h = 0; h < nH; h++) {
      const grp = Math.floor(h / (nH / nKV));
      attendHead(q, h * hd, kv, grp, null, n, 0.25, out, h * hd, probs);
      const s = K.map((k) => { let d = 0; for (let i = 0; i < hd; i++) d += q[h * hd + i] * k[grp * hd + i]; return d * 0.25; });
      const m = Math.max(...s), e = s.map((v) => Math.exp(v - m)), z = e.reduce((a, b) => a + b, 0);
      for (let i = 0; i < hd; i++) close(out[h * hd + i], e.reduce((a, w, t) => a + (w / z) * V[t][grp * hd + i], 0), 1e-5, `head ${h}`);
    }
  }
});

test('causal attention of a GQA group in one kernel call (attendHeads: keys read once per group; rows four at a time, or one at a time with each token\'s received weight; f32 and bf16 caches) matches brute force', (t) => {
  const rt = wasm();
  if (!rt) { t.skip('no WebAssembly runtime (QUEST_NO_WASM)'); return; }
  // head dims with and without a 16-column tail, a page size that is not a power of two, groups of 1/3/4
  for (const [nH, nKV, hd, P, start, n] of [[8, 2, 80, 16, 21, 6], [6, 2, 64, 12, 0, 9], [4, 4, 36, 16, 30, 1], [8, 2, 128, 16, 3, 1], [9, 3, 64, 16, 130, 11], [2, 2, 20, 16, 0, 7]])
  for (const report of [true, false]) for (const kvType of ['f32', 'bf16'] as const) {
    const g = gaussian(nH * 100 + hd + P), total = start + n, group = nH / nKV, scale = 1 / Math.sqrt(hd);
    const kv = new PagedKVCache(1, nKV, hd, P, 8, undefined, kvType).layers[0];
    const K: Float32Array[] = [], V: Float32Array[] = [];
    // (the reference takes the values the cache holds: rounded to bf16 in a bf16 cache)
    const held = (a: Float32Array) => (kvType === 'bf16' ? a.map((x) => fromBf16(toBf16(x))) : a);
    for (let i = 0; i < total; i++) { const k = randomArray(nKV * hd, 1, g), v = randomArray(nKV * hd, 1, g); K.push(held(k)); V.push(held(v)); kv.append(k, 0, v, 0); }
    assert.ok(kv.inWasm, 'the cache lives in WebAssembly memory');
    const q = randomArray(n * nH * hd, 1, g), n4 = (total + 3) & ~3, stride = n4;
    const qp = rt.scratchPtr('t.q', q.length * 4), op = rt.scratchPtr('t.o', q.length * 4);
    const pp = rt.scratchPtr('t.p', (ATTEND_ROWS * group + 1) * (total + 4) * 4), rp = rt.scratchPtr('t.r', nH * stride * 4);
    rt.f32(qp, q.length).set(q); rt.f32(rp, nH * stride).fill(0);
    // heads split unevenly (a share that starts inside a group) as the worker pool splits them
    const cut = Math.min(nH - 1, group + 1);
    for (const [h0, h1] of [[0, cut], [cut, nH]]) attendHeads(rt.k, h0, h1, n, start, nH, group, hd, qp, op, kv.kPtr, kv.vPtr, kv.tablePtr(), kv.pageFloats * kv.pages.elementBytes, P, pp, scale, report ? rp : 0, stride, 0, null, kvType === 'bf16' ? 1 : 0);
    const out = rt.f32(op, q.length).slice(), received = rt.f32(rp, nH * stride).slice();
    const wantReceived = new Float64Array(nH * total);
    for (let i = 0; i < n; i++) for (let h = 0; h < nH; h++) {
      const grp = Math.floor(h / group), qo = (i * nH + h) * hd, count = start + i + 1;
      const s = K.slice(0, count).map((k) => { let d = 0; for (let c = 0; c < hd; c++) d += q[qo + c] * k[grp * hd + c]; return d * scale; });
      const m = Math.max(...s), e = s.map((v) => Math.exp(v - m)), z = e.reduce((a, b) => a + b, 0);
      e.forEach((w, tk) => { wantReceived[h * total + tk] += w / z; });
      for (let c = 0; c < hd; c++) close(out[qo + c], e.reduce((a, w, tk) => a + (w / z) * V[tk][grp * hd + c], 0), 1e-5, `nH ${nH} hd ${hd} P ${P} token ${i} head ${h} report ${report} ${kvType}`);
    }
    if (report) for (let h = 0; h < nH; h++) for (let tk = 0; tk < total; tk++) close(received[h * stride + tk], wantReceived[h * total + tk], 1e-5, `received h ${h} t ${tk}`);
  }
});

// How the threads share a product's rows (shared-ops forEachChunk): each takes its own region front to
// back, then the others' from the back. Whatever the order the threads run in, every row is computed once.
test('threads sharing a product\'s rows: every row exactly once, in any interleaving of own and stolen chunks', () => {
  const cases: [number, number, number][] = [[36, 2, 4], [4, 2, 4], [44, 3, 8], [52, 4, 4], [1000, 2, 60], [7, 5, 1]];
  for (const [rows, parts, chunk] of cases) {
    // schedules: threads in order, in reverse order, and thread 0 pausing after its first chunk while the
    // others run to the end (they steal its region from the back)
    for (const schedule of ['in order', 'reverse', 'interleaved'] as const) {
      const mem = new Int32Array(parts), seen = new Int32Array(rows);
      initChunkCounters(mem, parts, chunk, rows);
      const run = (share: number, onFirst?: () => void) => {
        let first = true;
        forEachChunk(mem, 0, parts, share, chunk, rows, (r0, r1) => {
          assert.ok(r0 >= 0 && r1 <= rows && r0 < r1, `chunk [${r0}, ${r1}) outside [0, ${rows})`);
          for (let r = r0; r < r1; r++) seen[r]++;
          if (first && onFirst) { first = false; onFirst(); }
        });
      };
      const shares = Array.from({ length: parts }, (_, i) => i);
      if (schedule === 'in order') shares.forEach((s) => run(s));
      else if (schedule === 'reverse') shares.reverse().forEach((s) => run(s));
      else run(0, () => shares.slice(1).forEach((s) => run(s)));
      seen.forEach((c, r) => assert.equal(c, 1, `${rows} rows, ${parts} threads, chunks of ${chunk}, ${schedule}: row ${r} computed ${c} times`));
    }
  }
});

// A decode step's attention split by tokens (attendTokenPart, one call per thread's share, here run in
// turn on this thread) and merged (mergeTokenParts): per-head token lists of different lengths, some
// shorter than the number of parts (a share with no tokens), dense lists, 2-4 parts.
test('decode attention split by tokens and merged by softmax statistics matches brute force (ragged lists, empty shares)', (t) => {
  const rt = wasm();
  if (!rt) { t.skip('no WebAssembly runtime (QUEST_NO_WASM)'); return; }
  const nH = 6, nKV = 2, hd = 64, P = 16, total = 300, group = nH / nKV, scale = 1 / Math.sqrt(hd), g = gaussian(77);
  const kv = new PagedKVCache(1, nKV, hd, P, 8).layers[0];
  const K: Float32Array[] = [], V: Float32Array[] = [];
  for (let i = 0; i < total; i++) { const k = randomArray(nKV * hd, 1, g), v = randomArray(nKV * hd, 1, g); K.push(k); V.push(v); kv.append(k, 0, v, 0); }
  const q = randomArray(nH * hd, 1, g), qp = rt.scratchPtr('ts.q', nH * hd * 4);
  rt.f32(qp, nH * hd).set(q);
  // heads 0-1 share a list, head 2 its own (one token), heads 3-5: two tokens, all 300, 150 from the end
  const lists = [[...Array(120).keys()].map((i) => (i * 7) % total), [...Array(120).keys()].map((i) => (i * 7) % total), [299], [5, 250], null, [...Array(150).keys()].map((i) => 150 + i)];
  for (const parts of [2, 3, 4]) for (const dense of [false, true]) {
    const sel = rt.scratchPtr('ts.sel', nH * 8), tp = rt.scratchPtr('ts.t', total * nH * 4), table = rt.i32(sel, nH * 2);
    let at = 0;
    const ptrOf = new Map<number[], number>();
    for (let h = 0; h < nH; h++) {
      const l = dense ? null : lists[h];
      if (l && !ptrOf.has(l)) { rt.i32(tp + at * 4, l.length).set(l); ptrOf.set(l, tp + at * 4); at += l.length; }
      table[2 * h] = l ? ptrOf.get(l)! : 0; table[2 * h + 1] = l ? l.length : total;
    }
    const outs = [], stats = [];
    for (let s = 0; s < parts; s++) {
      const op = rt.scratchPtr(`ts.o${s}`, nH * hd * 4), sp = rt.scratchPtr(`ts.s${s}`, nH * 8), pp = rt.scratchPtr('ts.p', (group + 1) * (total + 8) * 4);
      attendTokenPart(rt.k, s, parts, nH, group, hd, qp, op, sp, kv.kPtr, kv.vPtr, kv.tablePtr(), kv.pageFloats * 4, P, pp, scale, sel, total, rt.memory, 0);
      outs.push(rt.f32(op, nH * hd).slice()); stats.push(rt.f32(sp, 2 * nH).slice());
    }
    const got = new Float32Array(nH * hd);
    mergeTokenParts(outs, stats, nH, hd, got);
    for (let h = 0; h < nH; h++) {
      const grp = Math.floor(h / group), toks = dense || !lists[h] ? [...Array(total).keys()] : lists[h]!;
      const s = toks.map((tk) => { let d = 0; for (let c = 0; c < hd; c++) d += q[h * hd + c] * K[tk][grp * hd + c]; return d * scale; });
      const m = Math.max(...s), e = s.map((v) => Math.exp(v - m)), z = e.reduce((a, b) => a + b, 0);
      for (let c = 0; c < hd; c++) close(got[h * hd + c], e.reduce((a, w, i) => a + (w / z) * V[toks[i]][grp * hd + c], 0), 1e-5, `${parts} parts${dense ? ', dense' : ''}: head ${h} channel ${c}`);
    }
  }
});
