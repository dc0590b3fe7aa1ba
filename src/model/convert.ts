// `quest convert`: a Hugging Face Llama/Qwen2/Qwen3/Mistral/Phi-3/Gemma 3 (text) folder to GGUF, laid out as llama.cpp's converter does
// (Q/K rows permuted to the interleaved RoPE layout for the llama architecture), so llama.cpp can load it.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadHF } from './load.js';
import { writeGGUF, type GGUFWriteTensor, type GGUFWriteValue } from './gguf.js';
import { encodeTensor, concatF32, Matrix } from './tensor.js';
import { matrixType, type ConvertType } from './quant-mix.js';

/** HF's rotate-half rows -> interleaved pairs: llama.cpp's permute(w, n_head). */
function permuteQK(m: Float32Array, rows: number, cols: number, heads: number): Float32Array {
  const out = new Float32Array(m.length), hd = rows / heads, half = hd / 2;
  for (let h = 0; h < heads; h++) for (let i = 0; i < half; i++) for (let j = 0; j < 2; j++) {
    const src = h * hd + j * half + i, dst = h * hd + 2 * i + j;
    out.set(m.subarray(src * cols, src * cols + cols), dst * cols);
  }
  return out;
}

/** `dtype`: one tensor type for every matrix, or a llama.cpp mix (q4_k_m, q5_k_m); see quant-mix.ts. */
export function convertHFToGGUF(dir: string, dtype: ConvertType = 'f16'): Uint8Array {
  const m = loadHF(dir);
  const c = m.config, w = m.weights;
  const arch = c.arch === 'mistral' ? 'llama' : c.arch;
  const tensors: GGUFWriteTensor[] = [];
  const tied = w.output === w.embed;
  const mat = (name: string, x: Matrix, permuteHeads = 0) => {
    let v = x.toF32();
    if (permuteHeads && arch === 'llama') v = permuteQK(v, x.rows, x.cols, permuteHeads);
    const t = matrixType(dtype, { name, cols: x.cols, nLayers: c.nLayers, tied });
    tensors.push({ name, dims: [x.cols, x.rows], dtype: t, data: encodeTensor(v, t) });
  };
  const vec = (name: string, v: Float32Array, permuteHeads = 0) => {
    const x = permuteHeads && arch === 'llama' ? permuteQK(v, v.length, 1, permuteHeads) : v;
    tensors.push({ name, dims: [v.length], dtype: 'f32', data: encodeTensor(x, 'f32') });
  };
  /** (Phi-3) matrices with the same columns stacked by rows, as llama.cpp's phi3 wants them fused */
  const fused = (ms: Matrix[]) => new Matrix(ms.reduce((a, x) => a + x.rows, 0), ms[0].cols, 'f32', new Uint8Array(concatF32(ms.map((x) => x.toF32())).buffer));
  mat('token_embd.weight', w.embed);
  w.layers.forEach((L, l) => {
    const p = `blk.${l}.`;
    vec(p + 'attn_norm.weight', L.attnNorm); vec(p + 'ffn_norm.weight', L.ffnNorm);
    if (arch === 'phi3') mat(p + 'attn_qkv.weight', fused([L.wq, L.wk, L.wv]));
    else { mat(p + 'attn_q.weight', L.wq, c.nHeads); mat(p + 'attn_k.weight', L.wk, c.nKVHeads); mat(p + 'attn_v.weight', L.wv); }
    mat(p + 'attn_output.weight', L.wo);
    if (L.bq) vec(p + 'attn_q.bias', L.bq, c.nHeads);
    if (L.bk) vec(p + 'attn_k.bias', L.bk, c.nKVHeads);
    if (L.bv) vec(p + 'attn_v.bias', L.bv);
    if (L.qNorm) { vec(p + 'attn_q_norm.weight', L.qNorm); vec(p + 'attn_k_norm.weight', L.kNorm!); } // Qwen3, Gemma 3
    if (L.postAttnNorm) { vec(p + 'post_attention_norm.weight', L.postAttnNorm); vec(p + 'post_ffw_norm.weight', L.postFfnNorm!); } // Gemma 3 (+1 included)
    if (arch === 'phi3') mat(p + 'ffn_up.weight', fused([L.wGate, L.wUp]));
    else { mat(p + 'ffn_gate.weight', L.wGate); mat(p + 'ffn_up.weight', L.wUp); }
    mat(p + 'ffn_down.weight', L.wDown);
  });
  vec('output_norm.weight', w.finalNorm);
  if (!tied) mat('output.weight', w.output);

  const u32 = (value: number): GGUFWriteValue => ({ type: 'u32', value });
  const meta: [string, GGUFWriteValue][] = [
    ['general.architecture', { type: 'string', value: arch }],
    ['general.name', { type: 'string', value: dir.split('/').filter(Boolean).pop() ?? 'model' }],
    [`${arch}.context_length`, u32(c.maxSeqLen)], [`${arch}.embedding_length`, u32(c.dim)],
    [`${arch}.block_count`, u32(c.nLayers)], [`${arch}.feed_forward_length`, u32(c.hiddenDim)],
    [`${arch}.attention.head_count`, u32(c.nHeads)], [`${arch}.attention.head_count_kv`, u32(c.nKVHeads)],
    [`${arch}.attention.key_length`, u32(c.headDim)], [`${arch}.attention.value_length`, u32(c.headDim)],
    [`${arch}.attention.layer_norm_rms_epsilon`, { type: 'f32', value: c.normEps }],
    [`${arch}.rope.freq_base`, { type: 'f32', value: c.ropeTheta }], [`${arch}.rope.dimension_count`, u32(c.ropeDims ?? c.headDim)],
  ];
  if (c.slidingWindow !== undefined || arch === 'phi3') meta.push([`${arch}.attention.sliding_window`, u32(c.slidingWindow ?? c.maxSeqLen)]);
  if (arch === 'gemma3') {
    // llama.cpp's form: every n-th layer global
    const every = (c.windowLayers?.indexOf(false) ?? -1) + 1;
    if (every < 1 || c.windowLayers!.some((w, l) => w !== ((l + 1) % every !== 0))) throw new Error('converting Gemma 3 needs every n-th layer global (llama.cpp\'s sliding_window_pattern)');
    meta.push([`${arch}.attention.sliding_window_pattern`, u32(every)], [`${arch}.rope.freq_base_swa`, { type: 'f32', value: c.localRope?.theta ?? 10000 }]);
  }
  if (c.ropeScaling.type === 'linear') {
    meta.push([`${arch}.rope.scaling.type`, { type: 'string', value: 'linear' }], [`${arch}.rope.scaling.factor`, { type: 'f32', value: c.ropeScaling.factor }]);
  } else if (c.ropeScaling.type === 'yarn') {
    const y = c.ropeScaling;
    meta.push([`${arch}.rope.scaling.type`, { type: 'string', value: 'yarn' }], [`${arch}.rope.scaling.factor`, { type: 'f32', value: y.factor }],
      [`${arch}.rope.scaling.original_context_length`, u32(y.originalMaxPositions)],
      [`${arch}.rope.scaling.yarn_beta_fast`, { type: 'f32', value: y.betaFast }], [`${arch}.rope.scaling.yarn_beta_slow`, { type: 'f32', value: y.betaSlow }],
      // llama.cpp multiplies its own 1 + 0.1 ln(factor) by this
      [`${arch}.rope.scaling.attn_factor`, { type: 'f32', value: y.attnFactor / (y.factor > 1 ? 0.1 * Math.log(y.factor) + 1 : 1) }]);
  } else if (c.ropeScaling.type === 'longrope') {
    // both factor sets from the folder's config (the loaded model keeps the one it uses)
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')), rs = cfg.rope_scaling;
    tensors.push({ name: 'rope_factors_short.weight', dims: [rs.short_factor.length], dtype: 'f32', data: encodeTensor(Float32Array.from(rs.short_factor), 'f32') });
    tensors.push({ name: 'rope_factors_long.weight', dims: [rs.long_factor.length], dtype: 'f32', data: encodeTensor(Float32Array.from(rs.long_factor), 'f32') });
    meta.push([`${arch}.rope.scaling.attn_factor`, { type: 'f32', value: c.ropeScaling.attnFactor }],
      [`${arch}.rope.scaling.original_context_length`, u32(cfg.original_max_position_embeddings ?? rs.original_max_position_embeddings)]);
  } else if (c.ropeScaling.type !== 'none') {
    throw new Error(`converting RoPE scaling "${c.ropeScaling.type}" to GGUF is not supported yet`);
  }
  // vocabulary: llama.cpp's BPE keys, and the exact tokenizer.json for tools that read it
  const tj = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8'));
  if (tj.model?.type !== 'BPE') throw new Error(`${dir}: only BPE tokenizers convert to GGUF (got ${tj.model?.type})`);
  const tokens: string[] = new Array(c.vocabSize).fill('');
  for (const [t, id] of Object.entries(tj.model.vocab as Record<string, number>)) if (id < c.vocabSize) tokens[id] = t;
  const types = tokens.map(() => 1);
  for (const a of tj.added_tokens ?? []) if (a.id < c.vocabSize) { tokens[a.id] = a.content; types[a.id] = a.special ? 3 : 4; }
  tokens.forEach((t, i) => { if (t === '') { tokens[i] = `[PAD${i}]`; types[i] = 5; } });
  const merges = (tj.model.merges as (string | [string, string])[]).map((mm) => (Array.isArray(mm) ? mm.join(' ') : mm));
  meta.push(
    ['tokenizer.ggml.model', { type: 'string', value: 'gpt2' }],
    ['tokenizer.ggml.pre', { type: 'string', value: 'default' }],
    ['tokenizer.ggml.tokens', { type: 'array', of: 'string', value: tokens }],
    ['tokenizer.ggml.token_type', { type: 'array', of: 'i32', value: types }],
    ['tokenizer.ggml.merges', { type: 'array', of: 'string', value: merges }],
    ['tokenizer.huggingface.json', { type: 'string', value: JSON.stringify(tj) }],
  );
  if (c.bosId !== null) meta.push(['tokenizer.ggml.bos_token_id', u32(c.bosId)]);
  if (c.eosIds.length) meta.push(['tokenizer.ggml.eos_token_id', u32(c.eosIds[0])]);
  meta.push(['tokenizer.ggml.add_bos_token', { type: 'bool', value: Boolean(m.tokenizer?.addBos) }]);
  if (m.tokenizer?.chatTemplate) meta.push(['tokenizer.chat_template', { type: 'string', value: m.tokenizer.chatTemplate }]);
  return writeGGUF(meta, tensors);
}
