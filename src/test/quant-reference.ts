// An element-by-element float64 decoder of llama.cpp's quantised formats, written from the block
// definitions in ggml-common.h independently of the engine's block-at-a-time decoder (model/quants.ts):
// every element's code, scale and offset are located by formula from its index.
import type { QuantType } from '../model/quants.js';

const LEVELS = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
const SIZES: Record<QuantType, [number, number]> = {
  q8_0: [32, 34], q4_0: [32, 18], q4_1: [32, 20], q5_0: [32, 22], q5_1: [32, 24], iq4_nl: [32, 18],
  q2_k: [256, 84], q3_k: [256, 110], q4_k: [256, 144], q5_k: [256, 176], q6_k: [256, 210], iq4_xs: [256, 136],
};

/** IEEE half from its bits, by the formula. */
export function halfBits(bits: number): number {
  const s = bits >> 15 ? -1 : 1, e = (bits >> 10) & 31, m = bits & 1023;
  return e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
}

/** The first n elements of `type` data, as float64. */
export function refDequantise(type: QuantType, data: Uint8Array, n: number): Float64Array {
  const [elems, size] = SIZES[type], out = new Float64Array(n);
  for (let e = 0; e < n; e++) {
    const base = Math.floor(e / elems) * size, i = e % elems;
    const byte = (k: number) => data[base + k];
    const f16 = (k: number) => halfBits(byte(k) | (byte(k + 1) << 8));
    const i8 = (k: number) => (byte(k) >= 128 ? byte(k) - 256 : byte(k));
    // element i of a 32-element block: low nibble of byte i (i < 16), high nibble of byte i - 16
    const nibble32 = (k: number, j: number) => (j < 16 ? byte(k + j) & 15 : byte(k + j - 16) >> 4);
    const bit = (k: number, b: number) => (byte(k + (b >> 3)) >> (b & 7)) & 1;
    switch (type) {
      case 'q8_0': out[e] = f16(0) * i8(2 + i); break;
      case 'q4_0': out[e] = f16(0) * (nibble32(2, i) - 8); break;
      case 'iq4_nl': out[e] = f16(0) * LEVELS[nibble32(2, i)]; break;
      case 'q4_1': out[e] = f16(0) * nibble32(4, i) + f16(2); break;
      case 'q5_0': out[e] = f16(0) * (nibble32(6, i) + 16 * bit(2, i) - 16); break;
      case 'q5_1': out[e] = f16(0) * (nibble32(8, i) + 16 * bit(4, i)) + f16(2); break;
      case 'q2_k': {
        // scales[16] | qs[64] | d | dmin; the 2-bit code of element i: byte 32*(i/128) + i%32 of qs,
        // bits 2*((i%128)/32)
        const sc = byte(i >> 4), q = (byte(16 + 32 * (i >> 7) + (i & 31)) >> (2 * ((i & 127) >> 5))) & 3;
        out[e] = f16(80) * (sc & 15) * q - f16(82) * (sc >> 4);
        break;
      }
      case 'q3_k': {
        // hmask[32] | qs[64] | scales[12] | d; high bit of element i: bit i/32 of hmask[i%32], set = no -4
        const s = i >> 4;
        const low = s < 8 ? byte(96 + s) & 15 : byte(96 + s - 8) >> 4, high = (byte(104 + (s % 4)) >> (2 * Math.floor(s / 4))) & 3;
        const q = ((byte(32 + 32 * (i >> 7) + (i & 31)) >> (2 * ((i & 127) >> 5))) & 3) - (((byte(i & 31) >> (i >> 5)) & 1) ? 0 : 4);
        out[e] = f16(108) * ((low | (high << 4)) - 32) * q;
        break;
      }
      case 'q4_k': case 'q5_k': {
        // d | dmin | scales[12] | (q5: qh[32]) | qs[128]; sub-block j = i/32 has a 6-bit scale and min
        const j = i >> 5, S = 4;
        const sc = j < 4 ? byte(S + j) & 63 : (byte(S + j + 4) & 15) | ((byte(S + j - 4) >> 6) << 4);
        const mn = j < 4 ? byte(S + j + 4) & 63 : (byte(S + j + 4) >> 4) | ((byte(S + j) >> 6) << 4);
        const qs = type === 'q5_k' ? 48 : 16;
        let q = (byte(qs + 32 * (j >> 1) + (i & 31)) >> (4 * (j & 1))) & 15;
        if (type === 'q5_k') q += 16 * ((byte(16 + (i & 31)) >> j) & 1);
        out[e] = f16(0) * sc * q - f16(2) * mn;
        break;
      }
      case 'q6_k': {
        // ql[128] | qh[64] | scales[16] (int8) | d; element i of half c = i/128, r = i%128
        const c = i >> 7, r = i & 127;
        const low = (byte(64 * c + (r & 63)) >> (r >= 64 ? 4 : 0)) & 15, high = (byte(128 + 32 * c + (r & 31)) >> (2 * (r >> 5))) & 3;
        out[e] = f16(208) * i8(192 + (i >> 4)) * ((low | (high << 4)) - 32);
        break;
      }
      case 'iq4_xs': {
        // d | scales_h (u16) | scales_l[4] | qs[128]; sub-block s = i/32 has a 6-bit scale minus 32
        const s = i >> 5, sh = byte(2) | (byte(3) << 8);
        const ls = ((byte(4 + (s >> 1)) >> (4 * (s & 1))) & 15) | (((sh >> (2 * s)) & 3) << 4);
        out[e] = f16(0) * (ls - 32) * LEVELS[nibble32(8 + 16 * s, i & 31)];
        break;
      }
    }
  }
  return out;
}
