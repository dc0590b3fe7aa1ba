// The input of a quantised product as llama.cpp's CPU backend sees it. ggml multiplies each weight type
// by activations quantised to 8 bits in a format of that type's own (its "vec_dot_type"): Q8_0 for
// Q4_0 / Q5_0 / Q8_0 / IQ4_NL, Q8_1 for Q4_1 / Q5_1, Q8_K for the K-quants and IQ4_XS. Our products take
// the same values (x replaced by q·d), so a quantised file gives llama.cpp's numbers up to the order of
// the sums, and a near-tie between two tokens mostly goes the same way in both engines. (The Q8_0 and
// Q4_0 products' integer kernels quantise x themselves, to the same values.)
import type { DType } from '../../model/tensor.js';
import { f32ToF16, F16_TABLE } from '../../model/half.js';

export type ActivationFormat = 'q8_0' | 'q8_1' | 'q8_k';

const FORMAT: Partial<Record<DType, ActivationFormat>> = {
  q4_0: 'q8_0', q5_0: 'q8_0', q8_0: 'q8_0', iq4_nl: 'q8_0', q4_1: 'q8_1', q5_1: 'q8_1',
  q2_k: 'q8_k', q3_k: 'q8_k', q4_k: 'q8_k', q5_k: 'q8_k', q6_k: 'q8_k', iq4_xs: 'q8_k',
};

/** The activation format llama.cpp multiplies `dtype` weights by; null for float weights. */
export function activationFormat(dtype: DType): ActivationFormat | null { return FORMAT[dtype] ?? null; }

/** Elements per block of the format (a row of such weights is always whole blocks of it). */
export function activationBlock(f: ActivationFormat): number { return f === 'q8_k' ? 256 : 32; }

/** A Q8_0 / Q8_1 block's scale as stored: max|x| / 127 in f32, then f16. */
export function q8Scale(maxAbs: number): number { return F16_TABLE[f32ToF16(Math.fround(maxAbs / 127))]; }

/** Round half to even (x86's default rounding, which ggml's quantisers use). */
function roundEven(v: number): number {
  const r = Math.round(v);
  return r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** out[0..len) = x[0..len) as the format's q·d (len a whole number of blocks). The 32-blocks round
 *  x·(127 / max|x|) to even in f64 as kernels.wat quantise_q8 does, with the scale stored as f16
 *  (quantize_row_q8_0 / _q8_1); Q8_K blocks of 256 scale by -127 / (the signed value of largest
 *  magnitude), in f32, and keep an f32 scale (quantize_row_q8_K_ref). */
export function roundActivations(f: ActivationFormat, x: Float32Array, len: number, out: Float32Array): void {
  const B = activationBlock(f);
  for (let b = 0; b < len; b += B) {
    if (f !== 'q8_k') {
      let m = 0; for (let i = b; i < b + B; i++) m = Math.max(m, Math.abs(x[i]));
      const id = m > 0 ? 127 / m : 0, d = q8Scale(m);
      for (let i = b; i < b + B; i++) out[i] = roundEven(x[i] * id) * d;
    } else {
      let max = 0, amax = 0;
      for (let i = b; i < b + B; i++) { const a = Math.abs(x[i]); if (a > amax) { amax = a; max = x[i]; } }
      if (amax === 0) { out.fill(0, b, b + B); continue; }
      const is = Math.fround(-127 / max), d = Math.fround(1 / is);
      for (let i = b; i < b + B; i++) out[i] = Math.min(127, roundEven(Math.fround(is * x[i]))) * d;
    }
  }
}
