// llama.cpp's quantised formats: the engine's decoder against an element-by-element float64 decoder of
// the raw bytes (random bytes, and our quantiser's output on awkward data), the quantisers' round-trip
// error per type, and the CPU products (SIMD path, worker threads) of every type against float64.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Matrix, rowBytes } from '../model/tensor.js';
import { QUANT_FORMATS, affineGroups, type QuantType } from '../model/quants.js';
import { quantise } from '../model/quantise.js';
import { matmul, productRoundsX } from '../backend/cpu/kernels.js';
import { roundActivations } from '../backend/cpu/activations.js';
import { refRoundActivations } from './reference.js';
import { F16_TABLE, f32ToF16 } from '../model/half.js';
import { refDequantise } from './quant-reference.js';
import { gaussian, randomArray } from './fixtures.js';
import { rng } from '../engine/sampler.js';
import { wasm } from '../backend/wasm/runtime.js';
import { ggmlOracle, type GgmlOracle } from './ggml-oracle.js';

const oracle = await ggmlOracle();
const noOracle = typeof oracle === 'string' ? oracle : false;

const TYPES = Object.keys(QUANT_FORMATS) as QuantType[];

/** Values that stress a quantiser: gaussian rows at very different scales, an outlier, all zeros,
 *  a constant run, all positive and all negative runs. */
function awkward(n: number, seed: number): Float32Array {
  const g = gaussian(seed), v = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const seg = Math.floor(i / 256) % 6;
    const x = g();
    v[i] = seg === 0 ? x : seg === 1 ? x * 1e-2 : seg === 2 ? (i % 256 === 17 ? 300 : x * 3) : seg === 3 ? 0 : seg === 4 ? 0.75 : Math.abs(x) * (i % 512 < 384 ? 5 : -5);
  }
  return v;
}

function assertClose(got: ArrayLike<number>, want: Float64Array, what: string): void {
  for (let i = 0; i < want.length; i++) {
    const tol = 1e-6 * Math.max(1, Math.abs(want[i]));
    if (!(Math.abs(got[i] - want[i]) <= tol)) assert.fail(`${what}: element ${i} is ${got[i]}, the float64 decoder gives ${want[i]}`);
  }
}

/** Random blocks of `type`: every bit pattern of codes and packed scales, the f16 scales finite. */
function randomBlocks(type: QuantType, n: number, seed: number): Uint8Array {
  const f = QUANT_FORMATS[type], r = rng(seed), bytes = Uint8Array.from({ length: rowBytes(type, n) }, () => Math.floor(r() * 256));
  const dv = new DataView(bytes.buffer), halves: Record<QuantType, number[]> = {
    q8_0: [0], q4_0: [0], iq4_nl: [0], q5_0: [0], q4_1: [0, 2], q5_1: [0, 2], q2_k: [80, 82], q3_k: [108], q4_k: [0, 2], q5_k: [0, 2], q6_k: [208], iq4_xs: [0],
  };
  for (let b = 0; b < bytes.length / f.bytes; b++) for (const o of halves[type]) dv.setUint16(b * f.bytes + o, f32ToF16((r() - 0.5) * 4 * 10 ** Math.floor(r() * 5 - 3)), true);
  return bytes;
}

for (const type of TYPES) {
  test(`${QUANT_FORMATS[type].name}: rows decode as the float64 decoder reads the bytes (random bytes and quantised data)`, () => {
    const cols = 2 * 256, rows = 6;
    for (const [what, data] of [['random bytes', randomBlocks(type, rows * cols, 11)], ['quantised awkward values', quantise(awkward(rows * cols, 5), type)]] as const) {
      const m = new Matrix(rows, cols, type, data), ref = refDequantise(type, data, rows * cols), out = new Float32Array(cols);
      for (let row = 0; row < rows; row++) assertClose(m.row(row, out), ref.subarray(row * cols, row * cols + cols), `${what}, row ${row}`);
    }
  });
}

// Relative RMS error of quantise -> dequantise on unit gaussian data (what ggml's quantize-stats reports
// in spirit): bounds a little above what each type's bits allow.
const RMS_BOUND: Record<QuantType, number> = {
  q8_0: 0.006, q6_k: 0.02, q5_1: 0.04, q5_k: 0.04, q5_0: 0.048, q4_1: 0.08, q4_k: 0.08, iq4_nl: 0.085, iq4_xs: 0.085, q4_0: 0.095, q3_k: 0.165, q2_k: 0.3,
};

test('quantise -> dequantise round trips within each type\'s expected error (gaussian data) and keep awkward blocks sane', (t) => {
  const n = 64 * 256, x = randomArray(n, 1, gaussian(21));
  let ss = 0; for (const v of x) ss += v * v;
  const lines: string[] = [];
  for (const type of TYPES) {
    const y = new Matrix(1, n, type, quantise(x, type)).toF32();
    let se = 0; for (let i = 0; i < n; i++) se += (y[i] - x[i]) ** 2;
    const rel = Math.sqrt(se / ss);
    lines.push(`${QUANT_FORMATS[type].name} ${rel.toFixed(4)}`);
    assert.ok(rel < RMS_BOUND[type], `${type}: relative RMS error ${rel} over ${RMS_BOUND[type]}`);
    // zeros stay zeros, constants stay near, magnitudes near 1e-2 keep their relative precision
    const a = awkward(6 * 256, 8), b = new Matrix(1, a.length, type, quantise(a, type)).toF32();
    for (let i = 3 * 256; i < 4 * 256; i++) assert.ok(b[i] === 0, `${type}: a zero block decodes to ${b[i]}`);
    for (let i = 4 * 256; i < 5 * 256; i++) assert.ok(Math.abs(b[i] - 0.75) < 0.75 * 0.2, `${type}: a constant 0.75 decodes to ${b[i]}`);
    let se1 = 0, ss1 = 0; for (let i = 256; i < 512; i++) { se1 += (b[i] - a[i]) ** 2; ss1 += a[i] ** 2; }
    assert.ok(Math.sqrt(se1 / ss1) < 1.5 * RMS_BOUND[type], `${type}: values near 1e-2 lose their precision (${Math.sqrt(se1 / ss1)})`);
  }
  t.diagnostic(`relative RMS error: ${lines.join(', ')}`);
});

test('CPU products (SIMD path with worker threads, and the TypeScript path) of every quantised type match float64 over the decoded weights', () => {
  const g = rng(4), rt = wasm();
  for (const type of TYPES) for (const place of rt ? ['wasm', 'js'] : ['js']) {
    // (132 rows: a one-token product this large is split over the worker threads, the kernels' touches
    // ahead reach the last row quad)
    const rows = 132, cols = 512, data = quantise(randomArray(rows * cols, 0.5, gaussian(3)), type);
    const bytes = place === 'wasm' ? rt!.allocWeights(data.length)! : data;
    if (place === 'wasm') bytes.set(data);
    const W = new Matrix(rows, cols, type, bytes), w = refDequantise(type, data, rows * cols);
    for (const n of [1, 3, 70]) {
      const x = Float32Array.from({ length: n * cols }, () => g() * 2 - 1), out = new Float32Array(n * rows);
      matmul(W, x, n, out);
      for (let tk = 0; tk < n; tk++) for (let r = 0; r < rows; r++) {
        // (quantised products take x rounded to 8 bits in llama.cpp's format for the type)
        const xt = Float64Array.from(x.subarray(tk * cols, (tk + 1) * cols)), format = productRoundsX(W);
        const xr = format ? refRoundActivations(xt, format) : xt;
        let want = 0; for (let i = 0; i < cols; i++) want += w[r * cols + i] * xr[i];
        const got = out[tk * rows + r];
        assert.ok(Math.abs(got - want) < 1e-4 * (1 + Math.abs(want)), `${type} (${place}) n ${n} token ${tk} row ${r}: ${got} vs ${want}`);
      }
    }
    if (place === 'wasm') rt!.releaseWeights(bytes);
  }
});

test('the SIMD quantiser stores each block\'s scale max|x| / 127 rounded to f16 as llama.cpp\'s Q8_0 block does (subnormal, normal, ties to even, overflow)', { skip: wasm() ? false : 'no WebAssembly SIMD' }, () => {
  const rt = wasm()!, g = rng(11), maxima: number[] = [0, 127 * 2 ** -24, 127 * 2 ** -25, 1e-30, 8e6, 65519 * 127, 65520 * 127, 1e30];
  for (let i = 0; i < 400; i++) maxima.push(Math.fround((0.5 + g()) * 2 ** Math.floor(g() * 60 - 40)));
  // scales exactly halfway between two f16 values (12 significant bits), where ties go to even
  let ties = 0;
  for (let i = 0; i < 200; i++) {
    const e = Math.floor(g() * 40) - 30, m = 2048 + 2 * Math.floor(g() * 1024) + 1, mx = Math.fround((m * 2 ** (e - 11)) * 127);
    if (Math.fround(mx / 127) === m * 2 ** (e - 11)) { maxima.push(mx); ties++; }
  }
  assert.ok(ties > 50, `only ${ties} tie cases`);
  const blocks = maxima.length, x = rt.scratchPtr('test.q8.x', blocks * 128), xq = rt.scratchPtr('test.q8.q', blocks * 64), xs = rt.scratchPtr('test.q8.s', blocks * 4);
  const xf = rt.f32(x, blocks * 32);
  maxima.forEach((mx, b) => { for (let i = 0; i < 32; i++) xf[b * 32 + i] = i === 7 ? (b % 2 ? -mx : mx) : mx * (g() - 0.5); });
  rt.k.quantise_q8(x, blocks * 32, xq, xs);
  const got = rt.f32(xs, blocks);
  maxima.forEach((mx, b) => {
    const d = Math.fround(mx / 127), want = F16_TABLE[f32ToF16(d)];
    assert.equal(got[b], want, `block ${b}: max ${mx}, scale ${d}: stored ${got[b]}, f16 gives ${want}`);
  });
});

test('llama.cpp\'s own decoder (ggml through FFI) reads every type as we do: random blocks, our quantiser\'s output, and its own quantiser\'s', { skip: noOracle }, () => {
  const o = oracle as Exclude<typeof oracle, string>, n = 8 * 256;
  for (const type of TYPES) {
    const theirs = o.quantise(type, awkward(n, 13));
    for (const [what, data] of [['random blocks', randomBlocks(type, n, 12)], ['our quantiser', quantise(awkward(n, 13), type)], ['llama.cpp\'s quantiser', theirs]] as const) {
      const want = o.dequantise(type, data, n), got = new Matrix(1, n, type, data).toF32();
      assertClose(got, Float64Array.from(want), `${type}, ${what}`);
    }
  }
});

// (within 15%: on the awkward data our Q4_K loses ~14% more than llama.cpp's in blocks whose one outlier is
// 100x the others; elsewhere ours are as good or better)
test('products round their input as llama.cpp does (Q8_0 / Q8_1 / Q8_K activations, TypeScript and WebAssembly, against ggml\'s own quantisers)', { skip: noOracle }, () => {
  const g = gaussian(21), o = oracle as GgmlOracle;
  for (const format of ['q8_0', 'q8_1', 'q8_k'] as const) {
    // blocks of every magnitude, a block of zeros, one of a constant, one whose largest value is negative
    const x = Float32Array.from({ length: 1 << 15 }, (_, i) => g() * Math.exp(((i >> 8) % 16) - 8));
    x.fill(0, 256, 512); x.fill(-3.25, 512, 768); x[1000] = -50;
    const want = o.activations(format, x), rt = wasm();
    const ts = new Float32Array(x.length);
    roundActivations(format, x, x.length, ts);
    for (const ours of [ts, ...(rt ? [wasmRounded(rt, format, x)] : [])]) {
    // ggml's reference rounds halves away from zero and scales by 1/d, the x86 kernels llama.cpp runs (and
    // we) round halves to even and scale by 127/max: a value on a rounding tie may land one step apart
    let other = 0;
    for (let i = 0; i < x.length; i++) if (ours[i] !== want[i]) {
      other++;
      const b = i - (i % 32); let m = 0; for (let j = b; j < b + 32; j++) m = Math.max(m, Math.abs(x[j]));
      assert.ok(format !== 'q8_k' && Math.abs(ours[i] - want[i]) <= 1.001 * (m / 127), `${format} element ${i}: ${ours[i]} vs ${want[i]}`);
    }
    assert.ok(other <= x.length / 4096, `${format}: ${other} elements differ from ggml's`);
    }
  }
});

/** kernels.wat round_q8 / round_q8_k on a copy of x in the wasm memory. */
function wasmRounded(rt: NonNullable<ReturnType<typeof wasm>>, format: 'q8_0' | 'q8_1' | 'q8_k', x: Float32Array): Float32Array {
  const p = rt.scratchPtr('test.round', x.length * 4);
  rt.f32(p, x.length).set(x);
  if (format === 'q8_k') rt.k.round_q8_k(p, x.length); else rt.k.round_q8(p, x.length);
  return rt.f32(p, x.length).slice();
}

test('our quantisers lose no more than llama.cpp\'s reference quantisers (relative RMS error, gaussian and awkward data)', { skip: noOracle }, (t) => {
  const o = oracle as Exclude<typeof oracle, string>, n = 64 * 256, lines: string[] = [], worse: string[] = [];
  for (const [what, x] of [['gaussian', randomArray(n, 1, gaussian(31))], ['awkward', awkward(n, 32)]] as const) {
    let ss = 0; for (const v of x) ss += v * v;
    const rel = (y: Float32Array) => { let se = 0; for (let i = 0; i < n; i++) se += (y[i] - x[i]) ** 2; return Math.sqrt(se / ss); };
    for (const type of TYPES) {
      const ours = rel(new Matrix(1, n, type, quantise(x, type)).toF32()), theirs = rel(o.dequantise(type, o.quantise(type, x), n));
      lines.push(`${what} ${QUANT_FORMATS[type].name} ${ours.toFixed(4)} vs ${theirs.toFixed(4)}`);
      if (!(ours <= 1.15 * theirs + 1e-6)) worse.push(`${what} ${type}: ours ${ours} vs llama.cpp's ${theirs}`);
    }
  }
  t.diagnostic(`ours vs llama.cpp: ${lines.join(', ')}`);
  assert.deepEqual(worse, [], 'quantisers more than 15% worse than llama.cpp\'s');
});

test('every format as 16-element groups of int8 codes with a scale and offset (the WebGPU upload form, and the TypeScript decoder) gives the float64 decoder\'s values', () => {
  for (const type of TYPES) {
    const n = 4 * 256;
    for (const data of [randomBlocks(type, n, 21), quantise(awkward(n, 22), type)]) {
      const codes = new Int8Array(n), scales = new Float32Array(n / 16), mins = new Float32Array(n / 16);
      affineGroups(type, data, 0, codes, scales, mins, 0, n);
      const want = refDequantise(type, data, n);
      for (let i = 0; i < n; i++) {
        const got = Math.fround(Math.fround(scales[i >> 4] * codes[i]) + mins[i >> 4]);
        if (Math.abs(got - want[i]) > 1e-6 * Math.max(1, Math.abs(want[i]))) assert.fail(`${type}: element ${i} is ${got} as codes, ${want[i]} decoded`);
      }
    }
  }
});
