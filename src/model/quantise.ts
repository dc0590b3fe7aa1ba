// Quantisers for llama.cpp's tensor formats (layouts in quants.ts): `quest convert --type` and the tests
// make files of every type with them. Each block (or sub-block) is fitted by a small search over scales
// with a least-squares refit, as ggml's reference quantisers do; the super-block scales of the K-quants
// are then quantised themselves and the codes re-fitted against the scales as stored.
import { f32ToF16, F16_TABLE } from './half.js';
import { IQ4_LEVELS, QUANT_FORMATS, type QuantType } from './quants.js';

const roundHalf = (v: number) => F16_TABLE[f32ToF16(v)];
const clamp = (v: number, lo: number, hi: number) => (v < lo ? lo : v > hi ? hi : v);

/** A scale for codes in [lo, hi] (x ≈ scale * q), fitted to x[o..o+n): the code range stretched over the
 *  value of largest magnitude, tried at several stretches, each refitted by least squares. */
function fitSymmetric(x: Float32Array, o: number, n: number, lo: number, hi: number): number {
  let max = 0;
  for (let i = o; i < o + n; i++) if (Math.abs(x[i]) > Math.abs(max)) max = x[i];
  if (max === 0) return 0;
  let best = 0, bestErr = Infinity;
  for (let k = -9; k <= 9; k++) {
    const iscale = (lo - 0.1 * k) / max; // the extreme value maps near code lo (the longer side)
    let sqx = 0, sqq = 0;
    for (let i = o; i < o + n; i++) { const q = clamp(Math.round(x[i] * iscale), lo, hi); sqx += q * x[i]; sqq += q * q; }
    if (sqq === 0) continue;
    const scale = sqx / sqq;
    let err = 0;
    for (let i = o; i < o + n; i++) { const e = x[i] - scale * clamp(Math.round(x[i] / scale), lo, hi); err += e * e; }
    if (err < bestErr) { bestErr = err; best = scale; }
  }
  return best;
}

/** Scale and offset for codes in [0, nmax] (x ≈ scale * q + min), fitted to x[o..o+n); with
 *  `minAtMostZero` the offset is kept ≤ 0 (the K-quants store it as a non-negative min to subtract). */
function fitAffine(x: Float32Array, o: number, n: number, nmax: number, minAtMostZero: boolean): [number, number] {
  let lo = Infinity, hi = -Infinity;
  for (let i = o; i < o + n; i++) { lo = Math.min(lo, x[i]); hi = Math.max(hi, x[i]); }
  if (minAtMostZero) lo = Math.min(lo, 0);
  if (hi === lo) return [0, lo];
  let best: [number, number] = [(hi - lo) / nmax, lo], bestErr = Infinity;
  for (let k = -5; k <= 5; k++) {
    const iscale = (nmax + 0.1 * k) / (hi - lo);
    let sq = 0, sqq = 0, sx = 0, sqx = 0;
    for (let i = o; i < o + n; i++) { const q = clamp(Math.round((x[i] - lo) * iscale), 0, nmax); sq += q; sqq += q * q; sx += x[i]; sqx += q * x[i]; }
    const det = n * sqq - sq * sq;
    if (det <= 0) continue;
    let scale = (n * sqx - sq * sx) / det, min = (sx * sqq - sq * sqx) / det;
    if (minAtMostZero && min > 0) { min = 0; scale = sqx / sqq; }
    if (!(scale > 0)) continue;
    let err = 0;
    for (let i = o; i < o + n; i++) { const e = x[i] - (scale * clamp(Math.round((x[i] - min) / scale), 0, nmax) + min); err += e * e; }
    if (err < bestErr) { bestErr = err; best = [scale, min]; }
  }
  return best;
}

/** The IQ4 level nearest to v. */
function nearestLevel(v: number): number {
  let best = 0;
  for (let i = 1; i < 16; i++) if (Math.abs(IQ4_LEVELS[i] - v) < Math.abs(IQ4_LEVELS[best] - v)) best = i;
  return best;
}

/** A scale for the IQ4 levels fitted to x[o..o+32) (searched, refitted by least squares). */
function fitIQ4(x: Float32Array, o: number, n: number): number {
  let max = 0;
  for (let i = o; i < o + n; i++) if (Math.abs(x[i]) > Math.abs(max)) max = x[i];
  if (max === 0) return 0;
  let best = 0, bestErr = Infinity;
  for (let k = -10; k <= 10; k++) {
    const id = (-127 + k) / max;
    let slx = 0, sll = 0;
    for (let i = o; i < o + n; i++) { const l = IQ4_LEVELS[nearestLevel(x[i] * id)]; slx += l * x[i]; sll += l * l; }
    const d = slx / sll;
    let err = 0;
    for (let i = o; i < o + n; i++) { const e = x[i] - d * IQ4_LEVELS[nearestLevel(x[i] / d)]; err += e * e; }
    if (err < bestErr) { bestErr = err; best = d; }
  }
  return best;
}

/** The value of largest magnitude (with its sign). */
const largest = (a: number[]) => a.reduce((m, v) => (Math.abs(v) > Math.abs(m) ? v : m), 0);

const code = (v: number, scale: number, lo: number, hi: number) => (scale === 0 ? clamp(0, lo, hi) : clamp(Math.round(v / scale), lo, hi));

/** The stored integer scale l in [lmin, lmax] (x ≈ d*l*q, q in [lo, hi]) for x[o..o+n): the neighbours of
 *  the fitted scale / d, judged by the error of the codes they give (rounding alone can zero a sub-block
 *  whose fitted scale sits near half a step of a coarse super-block scale). */
function storedScale(x: Float32Array, o: number, n: number, d: number, fitted: number, lo: number, hi: number, lmin: number, lmax: number): number {
  if (d === 0) return 0;
  const r = Math.round(fitted / d);
  let best = clamp(r, lmin, lmax), bestErr = Infinity;
  for (let l = r - 1; l <= r + 1; l++) {
    if (l < lmin || l > lmax) continue;
    const sc = d * l;
    let err = 0;
    for (let i = o; i < o + n; i++) { const e = x[i] - sc * code(x[i], sc, lo, hi); err += e * e; }
    if (err < bestErr) { bestErr = err; best = l; }
  }
  return best;
}

/** The stored scale and min (x ≈ d*sc*q - dmin*m, q in [0, nmax], sc and m in [0, lmax]) for x[o..o+n),
 *  chosen among the neighbours of the fitted ones by the error of the codes they give. */
function storedScaleMin(x: Float32Array, o: number, n: number, d: number, dmin: number, fit: [number, number], nmax: number, lmax: number): [number, number, number] {
  const rs = d ? Math.round(fit[0] / d) : 0, rm = dmin ? Math.round(-fit[1] / dmin) : 0;
  let best: [number, number] = [clamp(rs, 0, lmax), clamp(rm, 0, lmax)], bestErr = Infinity;
  for (let a = Math.max(0, rs - 1); a <= Math.min(lmax, rs + 1); a++) for (let b = Math.max(0, rm - 1); b <= Math.min(lmax, rm + 1); b++) {
    const sc = d * a, mn = dmin * b;
    let err = 0;
    for (let i = o; i < o + n; i++) { const e = x[i] - (sc * code(x[i] + mn, sc, 0, nmax) - mn); err += e * e; }
    if (err < bestErr) { bestErr = err; best = [a, b]; }
  }
  return [best[0], best[1], bestErr];
}

/** Super-block scales d and dmin for sub-blocks of `n` fitted as `fits` (K-quants with mins), and each
 *  sub-block's stored scale and min. The largest fitted scale sets d, or a little less when letting
 *  that sub-block clamp gives the others finer steps (an outlier otherwise coarsens all of them). */
function superScalesWithMins(x: Float32Array, o: number, n: number, fits: [number, number][], nmax: number, lmax: number) {
  const maxS = Math.max(...fits.map((t) => t[0])), dmin = roundHalf(Math.max(...fits.map((t) => -t[1])) / lmax);
  let best = { d: 0, dmin, picks: fits.map(() => [0, 0]) }, bestErr = Infinity;
  for (const f of [1, 0.9, 0.8, 0.7, 0.6]) {
    const d = roundHalf((maxS * f) / lmax);
    let err = 0;
    const picks = fits.map((fit, j) => { const [sc, m, e] = storedScaleMin(x, o + n * j, n, d, dmin, fit, nmax, lmax); err += e; return [sc, m]; });
    if (err < bestErr) { bestErr = err; best = { d, dmin, picks }; }
  }
  return best;
}

/** The 32 codes q(0..31) of a Q4_x / Q5_x block from byte `at` on: element j in the low nibble of byte
 *  j, element j + 16 in the high one; with `five`, the fifth bits first, as a little-endian u32. */
function packCodes(out: Uint8Array, dv: DataView, at: number, five: boolean, q: (j: number) => number): void {
  const qs = five ? at + 4 : at;
  let qh = 0;
  for (let j = 0; j < 16; j++) {
    const a = q(j), b = q(j + 16);
    out[qs + j] = (a & 15) | ((b & 15) << 4);
    qh |= ((a >> 4) << j) | ((b >> 4) << (j + 16));
  }
  if (five) dv.setUint32(at, qh >>> 0, true);
}

/** Quantises `values` (whole blocks) into `type`'s bytes. */
export function quantise(values: Float32Array, type: QuantType): Uint8Array {
  const f = QUANT_FORMATS[type], n = values.length;
  if (n % f.elems !== 0) throw new Error(`${f.name} needs a multiple of ${f.elems} elements, got ${n}`);
  const out = new Uint8Array((n / f.elems) * f.bytes), dv = new DataView(out.buffer);
  const setHalf = (p: number, v: number) => dv.setUint16(p, f32ToF16(v), true);
  const x = values;
  for (let blk = 0, p = 0; blk < n; blk += f.elems, p += f.bytes) {
    switch (type) {
      case 'q8_0': {
        let amax = 0;
        for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[blk + j]));
        const d = amax / 127, id = d ? 1 / d : 0;
        setHalf(p, d);
        for (let j = 0; j < 32; j++) dv.setInt8(p + 2 + j, Math.round(x[blk + j] * id));
        break;
      }
      case 'q4_0': case 'q5_0': {
        // as ggml: the value of largest magnitude maps to the lowest code
        const levels = type === 'q4_0' ? 8 : 16;
        let amax = 0, max = 0;
        for (let j = 0; j < 32; j++) { const v = x[blk + j]; if (Math.abs(v) > amax) { amax = Math.abs(v); max = v; } }
        const d = max / -levels, id = d ? 1 / d : 0;
        setHalf(p, d);
        packCodes(out, dv, p + 2, type === 'q5_0', (j) => Math.min(2 * levels - 1, Math.floor(x[blk + j] * id + levels + 0.5)));
        break;
      }
      case 'q4_1': case 'q5_1': {
        const nmax = type === 'q4_1' ? 15 : 31;
        const [s, m] = fitAffine(x, blk, 32, nmax, false);
        const d = roundHalf(s), mn = roundHalf(m);
        setHalf(p, d); setHalf(p + 2, mn);
        packCodes(out, dv, p + 4, type === 'q5_1', (j) => code(x[blk + j] - mn, d, 0, nmax));
        break;
      }
      case 'iq4_nl': {
        const d = roundHalf(fitIQ4(x, blk, 32));
        setHalf(p, d);
        const q = (j: number) => (d === 0 ? 8 : nearestLevel(x[blk + j] / d));
        for (let j = 0; j < 16; j++) out[p + 2 + j] = q(j) | (q(j + 16) << 4);
        break;
      }
      case 'iq4_xs': {
        const sub = Array.from({ length: 8 }, (_, i) => fitIQ4(x, blk + 32 * i, 32));
        const max = largest(sub);
        const d = roundHalf(max / -32);
        setHalf(p, d);
        let sh = 0;
        for (let i = 0; i < 8; i++) {
          const ls = d === 0 ? 0 : clamp(Math.round(sub[i] / d), -32, 31) + 32;
          out[p + 4 + (i >> 1)] |= (ls & 15) << (4 * (i & 1));
          sh |= (ls >> 4) << (2 * i);
          const dl = d * (ls - 32), o = blk + 32 * i;
          const q = (j: number) => (dl === 0 ? 8 : nearestLevel(x[o + j] / dl));
          for (let j = 0; j < 16; j++) out[p + 8 + 16 * i + j] = q(j) | (q(j + 16) << 4);
        }
        dv.setUint16(p + 2, sh, true);
        break;
      }
      case 'q2_k': {
        // 16 sub-blocks of 16: x ≈ d*sc*q - dmin*m, q in 0..3, sc and m 4 bits each
        const fits = Array.from({ length: 16 }, (_, i) => fitAffine(x, blk + 16 * i, 16, 3, true));
        const { d, dmin, picks } = superScalesWithMins(x, blk, 16, fits, 3, 15);
        setHalf(p + 80, d); setHalf(p + 82, dmin);
        for (let i = 0; i < 16; i++) {
          const [sc, m] = picks[i];
          out[p + i] = sc | (m << 4);
          for (let l = 0; l < 16; l++) {
            const e = 16 * i + l, q = code(x[blk + e] + dmin * m, d * sc, 0, 3);
            // element e: byte 16 + 32*(e/128) + e%32, bits 2*((e%128)/32)
            out[p + 16 + 32 * (e >> 7) + (e & 31)] |= q << (2 * ((e & 127) >> 5));
          }
        }
        break;
      }
      case 'q3_k': {
        // 16 sub-blocks of 16: x ≈ d*sc*q, q in -4..3 (2 low bits + a high bit), sc signed 6 bits
        const sub = Array.from({ length: 16 }, (_, i) => fitSymmetric(x, blk + 16 * i, 16, -4, 3));
        const max = largest(sub);
        const d = roundHalf(max / -32);
        setHalf(p + 108, d);
        for (let i = 0; i < 16; i++) {
          const sc = storedScale(x, blk + 16 * i, 16, d, sub[i], -4, 3, -32, 31), l6 = sc + 32;
          if (i < 8) out[p + 96 + i] |= l6 & 15; else out[p + 96 + i - 8] |= (l6 & 15) << 4;
          out[p + 96 + 8 + (i & 3)] |= (l6 >> 4) << (2 * (i >> 2));
          for (let l = 0; l < 16; l++) {
            const e = 16 * i + l, q = code(x[blk + e], d * sc, -4, 3) + 4;
            out[p + 32 + 32 * (e >> 7) + (e & 31)] |= (q & 3) << (2 * ((e & 127) >> 5));
            if (q > 3) out[p + (e & 31)] |= 1 << (e >> 5);
          }
        }
        break;
      }
      case 'q4_k': case 'q5_k': {
        // 8 sub-blocks of 32: x ≈ d*sc*q - dmin*m, q in 0..15 (0..31), sc and m 6 bits each
        const five = type === 'q5_k', nmax = five ? 31 : 15, qs = p + (five ? 48 : 16);
        const fits = Array.from({ length: 8 }, (_, i) => fitAffine(x, blk + 32 * i, 32, nmax, true));
        const { d, dmin, picks } = superScalesWithMins(x, blk, 32, fits, nmax, 63);
        setHalf(p, d); setHalf(p + 2, dmin);
        for (let j = 0; j < 8; j++) {
          const [sc, m] = picks[j];
          if (j < 4) { out[p + 4 + j] |= sc; out[p + 4 + j + 4] |= m; }
          else {
            out[p + 4 + j + 4] = (sc & 15) | ((m & 15) << 4);
            out[p + 4 + j - 4] |= (sc >> 4) << 6; out[p + 4 + j] |= (m >> 4) << 6;
          }
          for (let l = 0; l < 32; l++) {
            const q = code(x[blk + 32 * j + l] + dmin * m, d * sc, 0, nmax);
            out[qs + 32 * (j >> 1) + l] |= (q & 15) << (4 * (j & 1));
            if (five && q > 15) out[p + 16 + l] |= 1 << j;
          }
        }
        break;
      }
      case 'q6_k': {
        // 16 sub-blocks of 16: x ≈ d*sc*q, q in -32..31 (4 low + 2 high bits), sc int8
        const sub = Array.from({ length: 16 }, (_, i) => fitSymmetric(x, blk + 16 * i, 16, -32, 31));
        const max = largest(sub);
        const d = roundHalf(max / -128);
        setHalf(p + 208, d);
        for (let i = 0; i < 16; i++) {
          const sc = storedScale(x, blk + 16 * i, 16, d, sub[i], -32, 31, -128, 127);
          dv.setInt8(p + 192 + i, sc);
          for (let l = 0; l < 16; l++) {
            const e = 16 * i + l, q = code(x[blk + e], d * sc, -32, 31) + 32;
            // element e of half c = e/128, r = e%128: low nibble in ql[64c + r%64] (high half when r>=64),
            // top bits in qh[32c + r%32] at bits 2*(r/32)
            const c = e >> 7, r = e & 127;
            out[p + 64 * c + (r & 63)] |= (q & 15) << (r >= 64 ? 4 : 0);
            out[p + 128 + 32 * c + (r & 31)] |= (q >> 4) << (2 * (r >> 5));
          }
        }
        break;
      }
    }
  }
  return out;
}
