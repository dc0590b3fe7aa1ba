// Small random-weight models written by our own GGUF / safetensors writers, for tests and benchmarks.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeGGUF, type GGUFWriteTensor, type GGUFWriteValue } from '../model/gguf.js';
import { encodeTensor, type DType } from '../model/tensor.js';
import { matrixType, type ConvertType } from '../model/quant-mix.js';
import { rng } from '../engine/sampler.js';

export interface RandomModelShape {
  arch?: 'llama' | 'qwen2' | 'qwen3' | 'phi3' | 'gemma3';
  vocab: number; dim: number; hidden: number; layers: number; heads: number; kvHeads: number;
  /** a tensor type, or a llama.cpp mix such as q4_k_m (each matrix then gets the mix's type) */
  ctx?: number; dtype?: ConvertType; seed?: number; tied?: boolean; ropeTheta?: number;
  /** per-head size when it is not dim / heads (Qwen3) */
  headDim?: number;
  /** YaRN RoPE scaling: `factor` over an original context of `ctx` tokens */
  yarn?: { factor: number; ctx: number };
  /** Phi-3 LongRoPE: random short and long factors over an original context of `ctx` tokens */
  longrope?: { ctx: number; attnFactor: number };
  /** channels of each head that RoPE rotates (Phi-4-mini's partial rotary) */
  ropeDims?: number;
  /** sliding-window attention over this many tokens */
  window?: number;
  /** (Gemma 3) every `pattern`-th layer global, the others windowed */
  pattern?: number;
  /** add a SentencePiece-style vocabulary (llama.cpp refuses a GGUF without one) */
  vocabulary?: boolean;
}

export function gaussian(seed: number): () => number {
  const r = rng(seed);
  return () => Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r());
}

export function randomArray(n: number, scale: number, g: () => number): Float32Array {
  const a = new Float32Array(n); for (let i = 0; i < n; i++) a[i] = g() * scale; return a;
}

/** A random-weight GGUF model (llama.cpp's tensor names and metadata), written with our GGUF writer. */
export function randomGGUF(s: RandomModelShape): Uint8Array {
  const g = gaussian(s.seed ?? 1);
  const dt = s.dtype ?? 'f32', arch = s.arch ?? 'llama', hd = s.headDim ?? s.dim / s.heads;
  const tensors: GGUFWriteTensor[] = [];
  const mat = (name: string, rows: number, cols: number, scale: number) => {
    const dtype: DType = matrixType(dt, { name, cols, nLayers: s.layers, tied: !!s.tied });
    tensors.push({ name, dims: [cols, rows], dtype, data: encodeTensor(randomArray(rows * cols, scale, g), dtype) });
  };
  const vec = (name: string, n: number, base: number, scale: number) => {
    const a = randomArray(n, scale, g); for (let i = 0; i < n; i++) a[i] += base;
    tensors.push({ name, dims: [n], dtype: 'f32', data: encodeTensor(a, 'f32') });
  };
  mat('token_embd.weight', s.vocab, s.dim, 1.0);
  for (let l = 0; l < s.layers; l++) {
    const p = `blk.${l}.`, w = 1 / Math.sqrt(s.dim);
    vec(p + 'attn_norm.weight', s.dim, 1, 0.1);
    // (Phi-3: q, k, v fused in attn_qkv, gate and up fused in ffn_up)
    if (arch === 'phi3') mat(p + 'attn_qkv.weight', (s.heads + 2 * s.kvHeads) * hd, s.dim, w);
    else { mat(p + 'attn_q.weight', s.heads * hd, s.dim, w); mat(p + 'attn_k.weight', s.kvHeads * hd, s.dim, w); mat(p + 'attn_v.weight', s.kvHeads * hd, s.dim, w); }
    mat(p + 'attn_output.weight', s.dim, s.heads * hd, w);
    if (arch === 'qwen2') { vec(p + 'attn_q.bias', s.heads * hd, 0, 0.1); vec(p + 'attn_k.bias', s.kvHeads * hd, 0, 0.1); vec(p + 'attn_v.bias', s.kvHeads * hd, 0, 0.1); }
    if (arch === 'qwen3' || arch === 'gemma3') { vec(p + 'attn_q_norm.weight', hd, 1, 0.3); vec(p + 'attn_k_norm.weight', hd, 1, 0.3); }
    if (arch === 'gemma3') { vec(p + 'post_attention_norm.weight', s.dim, 1, 0.2); vec(p + 'post_ffw_norm.weight', s.dim, 1, 0.2); }
    vec(p + 'ffn_norm.weight', s.dim, 1, 0.1);
    if (arch === 'phi3') mat(p + 'ffn_up.weight', 2 * s.hidden, s.dim, w);
    else { mat(p + 'ffn_gate.weight', s.hidden, s.dim, w); mat(p + 'ffn_up.weight', s.hidden, s.dim, w); }
    mat(p + 'ffn_down.weight', s.dim, s.hidden, 1 / Math.sqrt(s.hidden));
  }
  vec('output_norm.weight', s.dim, 1, 0.1);
  if (!s.tied) mat('output.weight', s.vocab, s.dim, 1 / Math.sqrt(s.dim));
  const u32 = (value: number): GGUFWriteValue => ({ type: 'u32', value });
  const meta: [string, GGUFWriteValue][] = [
    ['general.architecture', { type: 'string', value: arch }],
    ['general.name', { type: 'string', value: 'random test model' }],
    [`${arch}.context_length`, u32(s.ctx ?? 2048)], [`${arch}.embedding_length`, u32(s.dim)],
    [`${arch}.block_count`, u32(s.layers)], [`${arch}.feed_forward_length`, u32(s.hidden)],
    [`${arch}.attention.head_count`, u32(s.heads)], [`${arch}.attention.head_count_kv`, u32(s.kvHeads)],
    [`${arch}.attention.key_length`, u32(hd)], [`${arch}.attention.value_length`, u32(hd)],
    [`${arch}.attention.layer_norm_rms_epsilon`, { type: 'f32', value: 1e-5 }],
    [`${arch}.rope.freq_base`, { type: 'f32', value: s.ropeTheta ?? 10000 }],
    [`${arch}.rope.dimension_count`, u32(s.ropeDims ?? hd)],
  ];
  if (arch === 'gemma3') meta.push([`${arch}.attention.sliding_window_pattern`, u32(s.pattern ?? 6)], [`${arch}.rope.freq_base_swa`, { type: 'f32', value: 10000 }]);
  if (arch === 'phi3' || s.window) meta.push([`${arch}.attention.sliding_window`, u32(s.window ?? s.ctx ?? 2048)]); // (llama.cpp's phi3 requires one)
  if (s.longrope) {
    const pairs = (s.ropeDims ?? hd) / 2, f = (lo: number, hi: number) => Float32Array.from({ length: pairs }, (_, i) => lo + ((hi - lo) * i) / pairs * (0.8 + 0.4 * g() ** 2));
    tensors.push({ name: 'rope_factors_short.weight', dims: [pairs], dtype: 'f32', data: encodeTensor(f(1, 1.5), 'f32') });
    tensors.push({ name: 'rope_factors_long.weight', dims: [pairs], dtype: 'f32', data: encodeTensor(f(1, 12), 'f32') });
    meta.push([`${arch}.rope.scaling.original_context_length`, u32(s.longrope.ctx)], [`${arch}.rope.scaling.attn_factor`, { type: 'f32', value: s.longrope.attnFactor }]);
  }
  if (s.yarn) {
    meta.push([`${arch}.rope.scaling.type`, { type: 'string', value: 'yarn' }], [`${arch}.rope.scaling.factor`, { type: 'f32', value: s.yarn.factor }],
      [`${arch}.rope.scaling.original_context_length`, u32(s.yarn.ctx)]);
  }
  if (s.vocabulary) {
    // <unk> <s> </s>, the 256 byte pieces, then made-up word pieces
    const tokens = ['<unk>', '<s>', '</s>', ...Array.from({ length: 256 }, (_, i) => `<0x${i.toString(16).toUpperCase().padStart(2, '0')}>`)];
    tokens.push('▁'); // as in real SentencePiece vocabularies
    for (let i = tokens.length; i < s.vocab; i++) tokens.push(`▁w${i}`);
    const types = tokens.map((_, i) => (i < 3 ? 3 : i < 259 ? 6 : 1));
    meta.push(['tokenizer.ggml.model', { type: 'string', value: 'llama' }],
      ['tokenizer.ggml.tokens', { type: 'array', of: 'string', value: tokens.slice(0, s.vocab) }],
      ['tokenizer.ggml.scores', { type: 'array', of: 'f32', value: tokens.slice(0, s.vocab).map((_, i) => -i) }],
      ['tokenizer.ggml.token_type', { type: 'array', of: 'i32', value: types.slice(0, s.vocab) }],
      ['tokenizer.ggml.bos_token_id', u32(1)], ['tokenizer.ggml.eos_token_id', u32(2)]);
  }
  return writeGGUF(meta, tensors);
}

export function tempFile(name: string, bytes: Uint8Array | string): string {
  const dir = mkdtempSync(join(tmpdir(), 'quest-test-'));
  const p = join(dir, name);
  writeFileSync(p, bytes);
  return p;
}
