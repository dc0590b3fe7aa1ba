import type { Matrix } from './tensor.js';

/** Rotary embedding variant. 'interleaved' rotates pairs (2i, 2i+1) (llama2.c, GGUF llama);
 *  'neox' rotates (i, i + d/2) (Hugging Face checkpoints, GGUF qwen2). */
export type RopeStyle = 'interleaved' | 'neox';

export type RopeScaling =
  | { type: 'none' }
  | { type: 'linear'; factor: number }
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositions: number }
  | { type: 'freq-factors'; factors: Float32Array } // GGUF's rope_freqs tensor (Llama 3.1 GGUFs)
  /** YaRN (Qwen2.5 / Qwen3 long-context configs): pairs that turn fewer than betaSlow times over the
   *  original context are interpolated by `factor`, those that turn more than betaFast times are kept, a
   *  ramp between; cos and sin are scaled by attnFactor (default 1 + 0.1 ln factor) */
  | { type: 'yarn'; factor: number; originalMaxPositions: number; betaFast: number; betaSlow: number; attnFactor: number }
  /** Phi-3's LongRoPE: each pair's frequency divided by its factor (the file's short factors, or its long
   *  ones for contexts past the original length), cos and sin scaled by attnFactor */
  | { type: 'longrope'; factors: Float32Array; attnFactor: number };

export interface ModelConfig {
  arch: 'llama' | 'qwen2' | 'qwen3' | 'mistral' | 'phi3' | 'gemma3';
  vocabSize: number;
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKVHeads: number;
  headDim: number;
  normEps: number;
  ropeTheta: number;
  ropeStyle: RopeStyle;
  ropeScaling: RopeScaling;
  /** channels of each head that RoPE rotates (Phi-4-mini: 3/4 of them); the rest pass through. Default headDim */
  ropeDims?: number;
  /** sliding-window attention: a query sees the last slidingWindow tokens (itself included), in the
   *  layers `windowLayers` marks (Gemma 3: five of every six), or in every layer (Mistral 7B v0.1).
   *  Both engines implement it. */
  slidingWindow?: number;
  windowLayers?: boolean[];
  /** RoPE of the windowed layers where it differs (Gemma 3: base 10^4 and no scaling; global: 10^6, x8) */
  localRope?: { theta: number; scaling: RopeScaling };
  /** Gemma: the embedding is multiplied by this (sqrt(dim)) */
  embedScale?: number;
  /** attention logits scale (default 1 / sqrt(headDim); Gemma 3: query_pre_attn_scalar^-1/2) */
  attnScale?: number;
  /** the feed-forward gate's activation: SwiGLU (silu, default) or GeGLU (gelu, tanh form: Gemma) */
  ffnAct?: 'silu' | 'gelu';
  maxSeqLen: number;
  bosId: number | null;
  eosIds: number[];
}

export interface LayerWeights {
  attnNorm: Float32Array;
  wq: Matrix; wk: Matrix; wv: Matrix; wo: Matrix;
  bq: Float32Array | null; bk: Float32Array | null; bv: Float32Array | null;
  /** Qwen3: RMSNorm weights applied to each query and key head (length headDim) before RoPE */
  qNorm: Float32Array | null; kNorm: Float32Array | null;
  /** Gemma 3: RMSNorm of the attention output and of the feed-forward output, before each residual add */
  postAttnNorm?: Float32Array; postFfnNorm?: Float32Array;
  ffnNorm: Float32Array;
  wGate: Matrix; wUp: Matrix; wDown: Matrix;
}

export interface ModelWeights {
  embed: Matrix; // [vocab x dim]
  layers: LayerWeights[];
  finalNorm: Float32Array;
  output: Matrix; // [vocab x dim], the embedding itself when tied
}

/** Whether layer l attends through a sliding window (and of how many tokens; 0: the whole sequence). */
export const windowOf = (c: ModelConfig, l: number): number =>
  c.slidingWindow !== undefined && (c.windowLayers?.[l] ?? true) ? c.slidingWindow : 0;

export const SUPPORTED_ARCHS = ['llama', 'qwen2', 'qwen3', 'mistral', 'phi3', 'gemma3'] as const;

/** Checks the numbers that the forward pass relies on; a clear error beats a wrong answer. */
/** `what`: the file or folder the config came from (named in the error). */
export function validateConfig(c: ModelConfig, what = 'the model'): void {
  const bad = (msg: string) => { throw new Error(`${what}: invalid model config: ${msg}`); };
  for (const k of ['vocabSize', 'dim', 'hiddenDim', 'nLayers', 'nHeads', 'nKVHeads', 'headDim', 'maxSeqLen'] as const) {
    if (!Number.isInteger(c[k]) || c[k] <= 0) bad(`${k} must be a positive integer, got ${c[k]}`);
  }
  if (c.nHeads % c.nKVHeads !== 0) bad(`nHeads (${c.nHeads}) must be a multiple of nKVHeads (${c.nKVHeads})`);
  if (c.headDim % 2 !== 0) bad(`headDim must be even for RoPE, got ${c.headDim}`);
  if (!(c.normEps > 0)) bad(`normEps must be > 0`);
  if (!(c.ropeTheta > 0)) bad(`ropeTheta must be > 0`);
  const rd = c.ropeDims ?? c.headDim;
  if (!Number.isInteger(rd) || rd <= 0 || rd > c.headDim || rd % 2 !== 0) bad(`the rotated channels (${rd}) must be even and at most headDim (${c.headDim})`);
  if (c.ropeScaling.type === 'longrope' && c.ropeScaling.factors.length !== rd / 2) bad(`LongRoPE needs ${rd / 2} factors, got ${c.ropeScaling.factors.length}`);
}
