// Model shapes of the GPU benchmarks (random weights generated on the GPU: values do not change speed).
import type { ModelConfig } from '../model/config.js';

export type ShapeName = '7b' | '8b' | 'small';

const LLAMA2_7B: Omit<ModelConfig, 'maxSeqLen'> = {
  arch: 'llama', vocabSize: 32000, dim: 4096, hiddenDim: 11008, nLayers: 32, nHeads: 32, nKVHeads: 32, headDim: 128,
  normEps: 1e-5, ropeTheta: 10000, ropeStyle: 'neox', ropeScaling: { type: 'none' }, bosId: 1, eosIds: [2],
};

/** 7b: Llama-2-7B; 8b: Llama-3-8B (grouped-query attention, 32/8 heads, 14336 intermediate, vocab 128256,
 *  RoPE base 500000); small: a quick check of a benchmark itself (e.g. on a software adapter). */
const SHAPES: Record<ShapeName, { config: Omit<ModelConfig, 'maxSeqLen'>; name: string }> = {
  '7b': { config: LLAMA2_7B, name: 'Llama-2-7B shape (32 layers, 4096 hidden, 32/32 heads, head dim 128)' },
  '8b': { config: { ...LLAMA2_7B, vocabSize: 128256, hiddenDim: 14336, nKVHeads: 8, ropeTheta: 500000 }, name: 'Llama-3-8B shape (32 layers, 4096 hidden, 32/8 heads, 14336 intermediate, vocab 128256)' },
  small: { config: { ...LLAMA2_7B, vocabSize: 1000, dim: 256, hiddenDim: 512, nLayers: 4, nHeads: 4, nKVHeads: 4, headDim: 64 }, name: 'small test shape' },
};

/** The shape's config with room for `maxSeqLen` tokens, and its description. */
export function gpuShape(name: string, maxSeqLen: number): { config: ModelConfig; name: string } {
  const s = SHAPES[name as ShapeName];
  if (!s) throw new Error(`--shape must be ${Object.keys(SHAPES).join(', ')}, got ${name}`);
  return { config: { ...s.config, maxSeqLen }, name: s.name };
}
