// Which tensor type each matrix gets when `quest convert --type` asks for a quantisation: one type for
// every matrix, or llama.cpp's Q4_K_M / Q5_K_M mixes (llama-quant.cpp: more bits for the output
// matrix, and for attn_v and ffn_down in the first and last eighth of the layers and every third
// between), with llama.cpp's fallbacks where a matrix's rows are not whole blocks of the type.
import type { DType } from './tensor.js';
import { QUANT_FORMATS, isQuantType, type QuantType } from './quants.js';

export const MIXES = ['q4_k_m', 'q5_k_m'] as const;
export type ConvertType = DType | (typeof MIXES)[number];
export const CONVERT_TYPES: ConvertType[] = ['f32', 'f16', 'bf16', ...Object.keys(QUANT_FORMATS) as QuantType[], ...MIXES];

export interface MatrixRole {
  /** GGUF tensor name, e.g. blk.3.attn_v.weight */
  name: string;
  cols: number;
  nLayers: number;
  /** the token embedding doubles as the output matrix */
  tied: boolean;
}

const moreBits = (layer: number, n: number) => layer < Math.floor(n / 8) || layer >= Math.floor((7 * n) / 8) || (layer - Math.floor(n / 8)) % 3 === 2;

// llama.cpp's tensor_type_fallback: the nearest type with blocks of 32
const FALLBACK: Partial<Record<QuantType, QuantType>> = { q2_k: 'q4_0', q3_k: 'q4_0', q4_k: 'q5_0', q5_k: 'q5_1', q6_k: 'q8_0', iq4_xs: 'iq4_nl' };

function fitting(t: DType, cols: number): DType {
  if (!isQuantType(t) || cols % QUANT_FORMATS[t].elems === 0) return t;
  const f = FALLBACK[t];
  return f && cols % QUANT_FORMATS[f].elems === 0 ? f : 'f16';
}

/** The type of one matrix under `target`. */
export function matrixType(target: ConvertType, m: MatrixRole): DType {
  const layer = Number(/^blk\.(\d+)\./.exec(m.name)?.[1] ?? -1);
  if (target === 'q4_k_m' || target === 'q5_k_m') {
    const base: QuantType = target === 'q4_k_m' ? 'q4_k' : 'q5_k';
    const isOutput = m.name === 'output.weight' || (m.tied && m.name === 'token_embd.weight');
    if (isOutput) return m.cols % 256 === 0 ? 'q6_k' : 'q8_0';
    if ((m.name.endsWith('attn_v.weight') || m.name.endsWith('ffn_down.weight')) && moreBits(layer, m.nLayers)) return fitting('q6_k', m.cols);
    return fitting(base, m.cols);
  }
  // one type everywhere; a Q4_0 token embedding (also the output when tied) keeps 8 bits
  if (target === 'q4_0' && m.name === 'token_embd.weight') return fitting('q8_0', m.cols);
  return fitting(target, m.cols);
}
