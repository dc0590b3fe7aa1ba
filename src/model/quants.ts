// llama.cpp's quantised tensor formats (ggml-common.h): block layouts and dequantisation to f32.
// A row of a quantised matrix is a run of whole blocks; every type stores, per block, a few f16 scales
// and packed integer codes. Written from the format definitions; the tests decode the same bytes with
// an element-by-element float64 decoder of their own (test/quant-reference.ts) and through llama.cpp.
import { F16_TABLE } from './half.js';

export type QuantType = 'q8_0' | 'q4_0' | 'q4_1' | 'q5_0' | 'q5_1' | 'q2_k' | 'q3_k' | 'q4_k' | 'q5_k' | 'q6_k' | 'iq4_nl' | 'iq4_xs';

export interface QuantFormat {
  /** elements per block */
  readonly elems: number;
  /** bytes per block */
  readonly bytes: number;
  /** ggml's type id in GGUF files */
  readonly ggmlId: number;
  /** the name llama.cpp prints */
  readonly name: string;
}

export const QUANT_FORMATS: Record<QuantType, QuantFormat> = {
  q4_0: { elems: 32, bytes: 18, ggmlId: 2, name: 'Q4_0' },
  q4_1: { elems: 32, bytes: 20, ggmlId: 3, name: 'Q4_1' },
  q5_0: { elems: 32, bytes: 22, ggmlId: 6, name: 'Q5_0' },
  q5_1: { elems: 32, bytes: 24, ggmlId: 7, name: 'Q5_1' },
  q8_0: { elems: 32, bytes: 34, ggmlId: 8, name: 'Q8_0' },
  q2_k: { elems: 256, bytes: 84, ggmlId: 10, name: 'Q2_K' },
  q3_k: { elems: 256, bytes: 110, ggmlId: 11, name: 'Q3_K' },
  q4_k: { elems: 256, bytes: 144, ggmlId: 12, name: 'Q4_K' },
  q5_k: { elems: 256, bytes: 176, ggmlId: 13, name: 'Q5_K' },
  q6_k: { elems: 256, bytes: 210, ggmlId: 14, name: 'Q6_K' },
  iq4_nl: { elems: 32, bytes: 18, ggmlId: 20, name: 'IQ4_NL' },
  iq4_xs: { elems: 256, bytes: 136, ggmlId: 23, name: 'IQ4_XS' },
};

export const isQuantType = (t: string): t is QuantType => t in QUANT_FORMATS;

/** IQ4_NL / IQ4_XS: the 16 non-uniform levels a 4-bit code stands for. */
export const IQ4_LEVELS = Int8Array.from([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]);

const half = (b: Uint8Array, p: number) => F16_TABLE[b[p] | (b[p + 1] << 8)];

/** Q4_K / Q5_K: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes at `s`. */
export function scaleMinK4(b: Uint8Array, s: number, j: number): [number, number] {
  if (j < 4) return [b[s + j] & 63, b[s + j + 4] & 63];
  return [(b[s + j + 4] & 0xf) | ((b[s + j - 4] >> 6) << 4), (b[s + j + 4] >> 4) | ((b[s + j] >> 6) << 4)];
}

/** Q3_K: the 16 signed 6-bit scales (already minus 32) from the 12 packed bytes at `s`: low nibbles in
 *  bytes 0..7 (scales 8..15 in the high halves), the top two bits in bytes 8..11. */
export function scalesQ3K(b: Uint8Array, s: number, out: Int8Array): void {
  for (let i = 0; i < 16; i++) {
    const low = i < 8 ? b[s + i] & 0xf : b[s + i - 8] >> 4;
    const high = (b[s + 8 + (i & 3)] >> (2 * (i >> 2))) & 3;
    out[i] = (low | (high << 4)) - 32;
  }
}

const q3Scales = new Int8Array(16);
let codesBuf = new Int8Array(0), scalesBuf = new Float32Array(0), minsBuf = new Float32Array(0);

/** Dequantises `n` elements (whole blocks) of `type` from src[off..] into out[o..]: the affine groups
 *  below, expanded (the CPU's SIMD converters are in backend/wasm/kernels.wat). */
export function dequantise(type: QuantType, src: Uint8Array, off: number, out: Float32Array, o: number, n: number): void {
  if (codesBuf.length < n) { codesBuf = new Int8Array(n); scalesBuf = new Float32Array(n / 16); minsBuf = new Float32Array(n / 16); }
  const codes = codesBuf, scales = scalesBuf, mins = minsBuf;
  affineGroups(type, src, off, codes, scales, mins, 0, n);
  for (let i = 0; i < n; i++) out[o + i] = scales[i >> 4] * codes[i] + mins[i >> 4];
}

/** Every format as 16-element groups of int8 codes with an f32 scale and offset each (value = scale *
 *  code + min; IQ4 codes are their levels): the form the WebGPU backend uploads for the types without a
 *  kernel of their own (backend/webgpu/model.ts). n elements (whole blocks) from src[off..]; codes[o..],
 *  and scales / mins [o / 16..]. */
export function affineGroups(type: QuantType, src: Uint8Array, off: number, codes: Int8Array, scales: Float32Array, mins: Float32Array, o: number, n: number): void {
  const f = QUANT_FORMATS[type];
  if (n % f.elems !== 0) throw new Error(`${f.name} data holds whole blocks of ${f.elems} elements, asked for ${n}`);
  const b = src;
  const set = (g: number, scale: number, min: number) => { scales[g] = scale; mins[g] = min; };
  for (let p = off, end = o + n; o < end; p += f.bytes, o += f.elems) {
    const g0 = o >> 4;
    switch (type) {
      case 'q8_0': { const d = half(b, p); for (let j = 0; j < 32; j++) codes[o + j] = (b[p + 2 + j] << 24) >> 24; set(g0, d, 0); set(g0 + 1, d, 0); break; }
      case 'q4_0': case 'q4_1': case 'iq4_nl': {
        const d = half(b, p), m = type === 'q4_1' ? half(b, p + 2) : 0, qs = p + (type === 'q4_1' ? 4 : 2);
        for (let j = 0; j < 16; j++) {
          const x = b[qs + j], lo = x & 15, hi = x >> 4;
          codes[o + j] = type === 'iq4_nl' ? IQ4_LEVELS[lo] : type === 'q4_0' ? lo - 8 : lo;
          codes[o + j + 16] = type === 'iq4_nl' ? IQ4_LEVELS[hi] : type === 'q4_0' ? hi - 8 : hi;
        }
        set(g0, d, m); set(g0 + 1, d, m);
        break;
      }
      case 'q5_0': case 'q5_1': {
        const d = half(b, p), m = type === 'q5_1' ? half(b, p + 2) : 0, hp = type === 'q5_1' ? p + 4 : p + 2, bias = type === 'q5_0' ? 16 : 0;
        const qh = (b[hp] | (b[hp + 1] << 8) | (b[hp + 2] << 16) | (b[hp + 3] << 24)) >>> 0;
        for (let j = 0; j < 16; j++) {
          const x = b[hp + 4 + j];
          codes[o + j] = ((x & 15) | (((qh >>> j) & 1) << 4)) - bias;
          codes[o + j + 16] = ((x >> 4) | (((qh >>> (j + 16)) & 1) << 4)) - bias;
        }
        set(g0, d, m); set(g0 + 1, d, m);
        break;
      }
      case 'q2_k': case 'q3_k': {
        // element e: bits 2*((e%128)/32) of qs[32*(e/128) + e%32]; group e/16 has its scale (and Q2_K min)
        const three = type === 'q3_k', d = half(b, three ? p + 108 : p + 80), dmin = three ? 0 : half(b, p + 82), qs = p + (three ? 32 : 16);
        if (three) scalesQ3K(b, p + 96, q3Scales);
        for (let e = 0; e < 256; e++) {
          let q = (b[qs + 32 * (e >> 7) + (e & 31)] >> (2 * ((e & 127) >> 5))) & 3;
          if (three) q -= (b[p + (e & 31)] >> (e >> 5)) & 1 ? 0 : 4;
          codes[o + e] = q;
        }
        for (let s = 0; s < 16; s++) {
          if (three) set(g0 + s, d * q3Scales[s], 0);
          else set(g0 + s, d * (b[p + s] & 15), -dmin * (b[p + s] >> 4));
        }
        break;
      }
      case 'q4_k': case 'q5_k': {
        const d = half(b, p), dmin = half(b, p + 2), five = type === 'q5_k', qs = p + (five ? 48 : 16);
        for (let j = 0; j < 8; j++) {
          const [sc, m] = scaleMinK4(b, p + 4, j);
          for (let l = 0; l < 32; l++) {
            let q = (b[qs + 32 * (j >> 1) + l] >> (4 * (j & 1))) & 15;
            if (five) q |= ((b[p + 16 + l] >> j) & 1) << 4;
            codes[o + 32 * j + l] = q;
          }
          set(g0 + 2 * j, d * sc, -dmin * m); set(g0 + 2 * j + 1, d * sc, -dmin * m);
        }
        break;
      }
      case 'q6_k': {
        const d = half(b, p + 208);
        for (let e = 0; e < 256; e++) {
          const c = e >> 7, r = e & 127;
          const low = (b[p + 64 * c + (r & 63)] >> (r >= 64 ? 4 : 0)) & 15, high = (b[p + 128 + 32 * c + (r & 31)] >> (2 * (r >> 5))) & 3;
          codes[o + e] = (low | (high << 4)) - 32;
        }
        for (let s = 0; s < 16; s++) set(g0 + s, d * ((b[p + 192 + s] << 24) >> 24), 0);
        break;
      }
      case 'iq4_xs': {
        const d = half(b, p), sh = b[p + 2] | (b[p + 3] << 8);
        for (let sb = 0; sb < 8; sb++) {
          const ls = ((b[p + 4 + (sb >> 1)] >> (4 * (sb & 1))) & 15) | (((sh >> (2 * sb)) & 3) << 4);
          for (let j = 0; j < 16; j++) { const x = b[p + 8 + 16 * sb + j]; codes[o + 32 * sb + j] = IQ4_LEVELS[x & 15]; codes[o + 32 * sb + j + 16] = IQ4_LEVELS[x >> 4]; }
          set(g0 + 2 * sb, d * (ls - 32), 0); set(g0 + 2 * sb + 1, d * (ls - 32), 0);
        }
        break;
      }
    }
  }
}
