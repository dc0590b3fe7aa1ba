// Loads a model: a GGUF file, a Hugging Face folder (config.json + safetensors + tokenizer.json) or a
// llama2.c checkpoint, from disk or from files in memory (ModelFiles). Every hyperparameter comes from
// the files.
import { releaseModelBytes, takeLoadedFiles } from './file-bytes.js';
import { diskFiles, absolutePath } from './disk-files.js';
import type { LoadProgress, ModelFiles } from './model-files.js';
import { parseGGUF, type GGUFFile } from './gguf.js';
import { parseSafetensors, type SafeTensorInfo } from './safetensors.js';
import { Matrix } from './tensor.js';
import { validateConfig, SUPPORTED_ARCHS, type LayerWeights, type ModelConfig, type ModelWeights, type RopeScaling } from './config.js';
import type { TokenizerSpec } from '../tokenizer/tokenizer.js';
import { tokenizerFromGGUF, tokenizerFromLlama2c } from '../tokenizer/from-vocab.js';

export interface LoadedModel {
  config: ModelConfig;
  weights: ModelWeights;
  tokenizer: TokenizerSpec | null; // null: the model has no vocabulary (use token ids)
  format: 'gguf' | 'hf' | 'llama2c';
  /** the path or URL it came from */
  path: string;
  /** the file bytes the weights are views into (freed by LLM.dispose) */
  files?: Uint8Array[];
}

export type { LoadProgress } from './model-files.js';

/** `source`: a path on disk (Node) or files in memory (see fetch-files.ts for browsers). */
export function loadModelFiles(source: string | ModelFiles, opts: { tokenizerPath?: string; onProgress?: LoadProgress } = {}): LoadedModel {
  takeLoadedFiles();
  try {
    const onDisk = typeof source === 'string', files = onDisk ? diskFiles(source) : source;
    const tokenizerPath = onDisk && opts.tokenizerPath ? absolutePath(opts.tokenizerPath) : opts.tokenizerPath;
    return { ...loadAny(files, { ...opts, tokenizerPath }), path: files.label, files: takeLoadedFiles() };
  } catch (e) {
    releaseModelBytes(takeLoadedFiles()); // a bad file leaves nothing behind
    throw e;
  }
}

function loadAny(files: ModelFiles, opts: { tokenizerPath?: string; onProgress?: LoadProgress }): Omit<LoadedModel, 'path'> {
  const main = files.main;
  if (main === null) return loadHF(files, opts.onProgress);
  const path = files.label, head = files.head(main, 4);
  if (head.length === 4 && String.fromCharCode(...head) === 'GGUF') return fromGGUF(parseGGUF(files.bytes(main, opts.onProgress), path), path);
  if (main.endsWith('.gguf')) parseGGUF(head, path); // throws the bad-magic error
  if (main.endsWith('.bin')) return loadLlama2c(files, opts.tokenizerPath, opts.onProgress);
  throw new Error(`unrecognised model file ${path}: expected a .gguf file, a llama2.c .bin checkpoint or a Hugging Face folder`);
}

function f32(m: Matrix): Float32Array { return m.toF32(); }


/** YaRN's default scaling of cos and sin for a context stretched `factor` times. */
const yarnMagnitude = (factor: number) => (factor > 1 ? 0.1 * Math.log(factor) + 1 : 1);

// --------------------------------------------------------------------------------------------- GGUF
export function fromGGUF(g: GGUFFile, what: string): Omit<LoadedModel, 'path'> {
  const m = g.metadata;
  const arch = String(m.get('general.architecture') ?? '');
  if (!(SUPPORTED_ARCHS as readonly string[]).includes(arch)) {
    throw new Error(`${what}: unsupported architecture "${arch}" (supported: ${SUPPORTED_ARCHS.join(', ')})`);
  }
  const key = (k: string, def?: number) => {
    const v = m.get(`${arch}.${k}`);
    if (v === undefined) { if (def === undefined) throw new Error(`${what}: missing metadata ${arch}.${k}`); return def; }
    return Number(v);
  };
  const tensor = (name: string, optional = false): Matrix | null => {
    const t = g.tensors.get(name);
    if (!t) { if (optional) return null; throw new Error(`${what}: missing tensor ${name}`); }
    const cols = t.dims[0], rows = t.dims.slice(1).reduce((a, b) => a * b, 1);
    return new Matrix(rows, cols, t.dtype, g.bytes.subarray(t.offset, t.offset + t.byteLength));
  };
  const req = (name: string) => tensor(name)!;
  const dim = key('embedding_length'), nHeads = key('attention.head_count');
  const embed = req(GGUF_NAMES.embed);
  let ropeScaling: RopeScaling = { type: 'none' };
  const freqs = tensor('rope_freqs.weight', true);
  const scalingType = m.get(`${arch}.rope.scaling.type`);
  if (freqs) ropeScaling = { type: 'freq-factors', factors: f32(freqs) };
  else if (scalingType === 'linear') ropeScaling = { type: 'linear', factor: key('rope.scaling.factor') };
  else if (arch === 'phi3' && g.tensors.has('rope_factors_long.weight')) {
    // LongRoPE: the long factors once the model's context passes the original one (as llama.cpp decides
    // by its context size; the KV cache cannot switch mid-sequence)
    const orig = key('rope.scaling.original_context_length', key('context_length', 2048)), long = key('context_length', 2048) > orig;
    ropeScaling = { type: 'longrope', factors: f32(req(long ? 'rope_factors_long.weight' : 'rope_factors_short.weight')), attnFactor: key('rope.scaling.attn_factor', 1) };
  } else if (scalingType === 'yarn') {
    const factor = key('rope.scaling.factor');
    ropeScaling = {
      type: 'yarn', factor, originalMaxPositions: key('rope.scaling.original_context_length', key('context_length', 2048)),
      betaFast: key('rope.scaling.yarn_beta_fast', 32), betaSlow: key('rope.scaling.yarn_beta_slow', 1),
      attnFactor: key('rope.scaling.attn_factor', 1) * yarnMagnitude(factor),
    };
  } else if (scalingType !== undefined && scalingType !== 'none') throw new Error(`${what}: unsupported RoPE scaling "${scalingType}"`);
  const tok = m.has('tokenizer.ggml.tokens') || m.has('tokenizer.huggingface.json') ? tokenizerFromGGUF(m, what) : null;
  const config: ModelConfig = {
    arch: arch as ModelConfig['arch'], vocabSize: embed.rows, dim, hiddenDim: key('feed_forward_length'),
    nLayers: key('block_count'), nHeads, nKVHeads: key('attention.head_count_kv', nHeads),
    headDim: key('attention.key_length', dim / nHeads), normEps: key('attention.layer_norm_rms_epsilon', 1e-5),
    ropeTheta: key('rope.freq_base', 10000), ropeStyle: arch === 'llama' || arch === 'mistral' ? 'interleaved' : 'neox', ropeScaling,
    ropeDims: key('rope.dimension_count', key('attention.key_length', dim / nHeads)),
    maxSeqLen: key('context_length', 2048), bosId: tok?.bosId ?? null, eosIds: tok?.eosIds ?? [],
  };
  // a window only where llama.cpp applies one (Gemma 3; its llama and phi3 graphs ignore the key)
  const window = m.get(`${arch}.attention.sliding_window`);
  if (arch === 'gemma3' && window !== undefined && Number(window) > 0 && Number(window) < config.maxSeqLen) config.slidingWindow = Number(window);
  if (arch === 'gemma3') {
    // (norm weights in Gemma GGUFs already carry the +1 of Gemma's RMSNorm)
    Object.assign(config, gemmaConfig(config, m.get(`${arch}.attention.sliding_window_pattern`), key('rope.freq_base_swa', 10000)));
    // llama.cpp's rule: 1 / sqrt(head size), except the 27B model (62 layers): 1 / sqrt(dim / heads)
    config.attnScale = 1 / Math.sqrt(config.nLayers === 62 ? dim / nHeads : config.headDim);
  }
  validateConfig(config, what);
  const weights = assembleWeights(config, tensor, GGUF_NAMES, what);
  return { config, weights, tokenizer: tok, format: 'gguf' };
}

// --------------------------------------------------------------------------------- Hugging Face dir
function readJson(files: ModelFiles, name: string, what: string): Record<string, any> {
  try { return JSON.parse(files.text(name)); } catch (e) { throw new Error(`cannot read ${what} ${files.where(name)}: ${(e as Error).message}`); }
}

export function loadHF(source: string | ModelFiles, onProgress?: LoadProgress): Omit<LoadedModel, 'path'> {
  const files = typeof source === 'string' ? diskFiles(source) : source, dir = files.label;
  if (!files.has('config.json')) throw new Error(`${dir} has no config.json: not a Hugging Face model folder`);
  const c = readJson(files, 'config.json', 'model config');
  const arch = c.model_type === 'gemma3_text' ? 'gemma3' : String(c.model_type ?? '');
  if (!(SUPPORTED_ARCHS as readonly string[]).includes(arch) || c.model_type === 'gemma3') {
    const hint = c.model_type === 'gemma3' ? ' (a Gemma 3 checkpoint with its vision tower: use the text-only model, or its GGUF)' : '';
    throw new Error(`${dir}: unsupported architecture "${c.model_type}"${hint} (${(c.architectures ?? []).join(', ')}); supported: ${SUPPORTED_ARCHS.join(', ')}, gemma3_text`);
  }
  // tensors: one file, or shards listed by the index
  const shards = safetensorsShards(files);
  const all = new Map<string, SafeTensorInfo>();
  const sizes = shards.map((f) => files.size(f)), total = sizes.reduce((a, b) => a + b, 0);
  let before = 0;
  shards.forEach((f, i) => {
    const bytes = files.bytes(f, (d) => onProgress?.(before + d, total));
    before += sizes[i];
    for (const [k, v] of parseSafetensors(bytes, files.where(f))) all.set(k, v);
  });
  const tensor = (name: string, optional = false): Matrix | null => {
    const t = all.get(name);
    if (!t) { if (optional) return null; throw new Error(`${dir}: missing tensor ${name}`); }
    const cols = t.shape[t.shape.length - 1], rows = t.shape.slice(0, -1).reduce((a, b) => a * b, 1);
    return new Matrix(rows, cols, t.dtype, t.data);
  };
  const req = (n: string) => tensor(n)!;

  if (!files.has('tokenizer.json')) throw new Error(`${dir} has no tokenizer.json: the tokenizer is missing`);
  const tokCfg = files.has('tokenizer_config.json') ? readJson(files, 'tokenizer_config.json', 'tokenizer config') : {};
  const gen = files.has('generation_config.json') ? readJson(files, 'generation_config.json', 'generation config') : {};
  const tokJson = readJson(files, 'tokenizer.json', 'tokenizer');
  const idOf = (t: unknown): number | null => {
    const s = typeof t === 'string' ? t : (t as { content?: string } | undefined)?.content;
    if (!s) return null;
    const added = (tokJson.added_tokens ?? []).find((a: { content: string }) => a.content === s);
    return added ? added.id : (tokJson.model?.vocab?.[s] ?? null);
  };
  const list = (v: unknown) => (v === undefined || v === null ? [] : Array.isArray(v) ? v.map(Number) : [Number(v)]);
  const bosId = gen.bos_token_id ?? c.bos_token_id ?? idOf(tokCfg.bos_token);
  const eosIds = [...new Set([...list(gen.eos_token_id), ...list(c.eos_token_id), ...(idOf(tokCfg.eos_token) !== null ? [idOf(tokCfg.eos_token)!] : [])])];
  const tokenizer: TokenizerSpec = {
    json: tokJson, config: tokCfg, bosId: bosId ?? null, eosIds,
    addBos: tokCfg.add_bos_token ?? (arch === 'llama' && bosId !== null && bosId !== undefined && !tokJson.post_processor),
    chatTemplate: chatTemplateOf(files, tokCfg),
  };

  const nHeads = c.num_attention_heads;
  // RoPE settings: rope_theta + rope_scaling (transformers 4), or rope_parameters (transformers 5: the
  // base inside, and for Gemma 3 one set per layer type)
  const rp = c.rope_parameters, perType = rp && (rp.full_attention || rp.sliding_attention), globalRp = perType ? rp.full_attention : rp;
  const ropeTheta = c.rope_theta ?? globalRp?.rope_theta ?? 10000, localTheta = c.rope_local_base_freq ?? rp?.sliding_attention?.rope_theta ?? 10000;
  const rs = c.rope_scaling ?? (globalRp?.rope_type && globalRp.rope_type !== 'default' ? globalRp : undefined);
  let ropeScaling: RopeScaling = { type: 'none' };
  const rsType = rs ? (rs.rope_type ?? rs.type) : undefined;
  if (rsType === 'llama3') {
    ropeScaling = { type: 'llama3', factor: rs.factor, lowFreqFactor: rs.low_freq_factor, highFreqFactor: rs.high_freq_factor, originalMaxPositions: rs.original_max_position_embeddings };
  } else if (rsType === 'linear') ropeScaling = { type: 'linear', factor: rs.factor };
  else if (rsType === 'longrope' || rsType === 'su') {
    // Phi-3 / Phi-4-mini: short factors up to the original context, long ones past it (chosen once, by the
    // model's full context, as for GGUF files); cos and sin scaled by sqrt(1 + ln(scale) / ln(original))
    const orig = c.original_max_position_embeddings ?? rs.original_max_position_embeddings, max = c.max_position_embeddings;
    const long = max > orig, scale = max / orig;
    const attnFactor = (long ? rs.long_mscale : rs.short_mscale) ?? rs.attention_factor ?? (scale > 1 ? Math.sqrt(1 + Math.log(scale) / Math.log(orig)) : 1);
    ropeScaling = { type: 'longrope', factors: Float32Array.from(long ? rs.long_factor : rs.short_factor), attnFactor };
  } else if (rsType === 'yarn') {
    ropeScaling = {
      type: 'yarn', factor: rs.factor, originalMaxPositions: rs.original_max_position_embeddings ?? c.max_position_embeddings,
      betaFast: rs.beta_fast ?? 32, betaSlow: rs.beta_slow ?? 1, attnFactor: rs.attention_factor ?? yarnMagnitude(rs.factor),
    };
  } else if (rsType !== undefined && rsType !== 'default') throw new Error(`${dir}: unsupported rope_scaling type "${rsType}"`);
  const embed = req(HF_NAMES.embed);
  const config: ModelConfig = {
    arch: arch as ModelConfig['arch'], vocabSize: embed.rows, dim: c.hidden_size, hiddenDim: c.intermediate_size,
    nLayers: c.num_hidden_layers, nHeads, nKVHeads: c.num_key_value_heads ?? nHeads, headDim: c.head_dim ?? c.hidden_size / nHeads,
    normEps: c.rms_norm_eps ?? 1e-6, ropeTheta, ropeStyle: 'neox', ropeScaling,
    maxSeqLen: c.max_position_embeddings ?? 2048, bosId: tokenizer.bosId, eosIds,
  };
  if (c.partial_rotary_factor) config.ropeDims = Math.round(config.headDim * c.partial_rotary_factor);
  // a window only where the model uses it (Qwen2 configs carry one with use_sliding_window false)
  if (Number(c.sliding_window) > 0 && c.use_sliding_window !== false && c.sliding_window < config.maxSeqLen) config.slidingWindow = c.sliding_window;
  validateConfig(config, dir);
  if (arch === 'gemma3') {
    const pattern = Array.isArray(c.layer_types) ? c.layer_types.map((t: string) => t === 'sliding_attention') : c.sliding_window_pattern;
    Object.assign(config, gemmaConfig(config, pattern, localTheta));
    config.slidingWindow = c.sliding_window;
    config.attnScale = 1 / Math.sqrt(c.query_pre_attn_scalar ?? config.headDim);
  }
  const weights = assembleWeights(config, tensor, arch === 'gemma3' ? GEMMA_HF_NAMES : HF_NAMES, dir);
  if (arch === 'gemma3') {
    // Gemma's RMSNorm multiplies by (1 + w): stored here as the plain weight, as GGUF files do
    const plusOne = (w: Float32Array | null | undefined) => { if (w) for (let i = 0; i < w.length; i++) w[i] += 1; };
    plusOne(weights.finalNorm);
    for (const L of weights.layers) [L.attnNorm, L.ffnNorm, L.qNorm, L.kNorm, L.postAttnNorm, L.postFfnNorm].forEach(plusOne);
  }
  return { config, weights, tokenizer, format: 'hf' };
}

/** A folder's chat template: tokenizer_config.json's (a string, or a list of named templates: the
 *  default one), else chat_template.jinja or chat_template.json beside it (where transformers saves it now). */
function chatTemplateOf(files: ModelFiles, tokCfg: Record<string, any>): string | null {
  const t = tokCfg.chat_template;
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) return (t.find((x: { name?: string }) => x.name === 'default') ?? t[0])?.template ?? null;
  if (files.has('chat_template.jinja')) return files.text('chat_template.jinja');
  if (files.has('chat_template.json')) return readJson(files, 'chat_template.json', 'chat template').chat_template ?? null;
  return null;
}

/** The shard files a model.safetensors.index.json lists. */
export function indexShards(index: Record<string, any>): string[] {
  return [...new Set(Object.values(index.weight_map as Record<string, string>))];
}

/** The safetensors files of a Hugging Face folder: one, or the shards its index lists. */
export function safetensorsShards(files: ModelFiles): string[] {
  if (files.has('model.safetensors.index.json')) {
    return indexShards(readJson(files, 'model.safetensors.index.json', 'safetensors index'));
  }
  if (files.has('model.safetensors')) return ['model.safetensors'];
  throw new Error(`${files.label} has no model.safetensors or model.safetensors.index.json`);
}

// -------------------------------------------------------------------------------------------- llama2.c
function loadLlama2c(files: ModelFiles, tokenizerPath?: string, onProgress?: LoadProgress): Omit<LoadedModel, 'path'> {
  const path = files.label, bytes = files.bytes(files.main!, onProgress);
  if (bytes.byteLength < 28) throw new Error(`${path} is truncated: too short for a llama2.c header`);
  const h = new Int32Array(bytes.buffer, bytes.byteOffset, 7);
  const [dim, hiddenDim, nLayers, nHeads, nKVHeads, vocabRaw, seqLen] = Array.from(h);
  const vocabSize = Math.abs(vocabRaw);
  const config: ModelConfig = {
    arch: 'llama', vocabSize, dim, hiddenDim, nLayers, nHeads, nKVHeads, headDim: dim / nHeads, normEps: 1e-5,
    ropeTheta: 10000, ropeStyle: 'interleaved', ropeScaling: { type: 'none' }, maxSeqLen: seqLen, bosId: 1, eosIds: [2],
  };
  validateConfig(config, `${path} is not a llama2.c checkpoint`);
  const kvDim = (dim / nHeads) * nKVHeads;
  let off = 28;
  const take = (rows: number, cols: number) => {
    const n = rows * cols * 4;
    if (off + n > bytes.byteLength) throw new Error(`${path} is truncated: weights need more than its ${bytes.byteLength} bytes`);
    const m = new Matrix(rows, cols, 'f32', bytes.subarray(off, off + n)); off += n; return m;
  };
  const perLayer = (rows: number, cols: number) => Array.from({ length: nLayers }, () => take(rows, cols));
  const embed = take(vocabSize, dim);
  const attnNorm = perLayer(1, dim), wq = perLayer(dim, dim), wk = perLayer(kvDim, dim), wv = perLayer(kvDim, dim), wo = perLayer(dim, dim);
  const ffnNorm = perLayer(1, dim), w1 = perLayer(hiddenDim, dim), w2 = perLayer(dim, hiddenDim), w3 = perLayer(hiddenDim, dim);
  const finalNorm = take(1, dim);
  off += seqLen * (dim / nHeads) * 4; // freq_cis_real + freq_cis_imag (legacy, unused)
  const output = vocabRaw > 0 ? embed : take(vocabSize, dim);
  const layers: LayerWeights[] = Array.from({ length: nLayers }, (_, l) => ({
    attnNorm: f32(attnNorm[l]), ffnNorm: f32(ffnNorm[l]), wq: wq[l], wk: wk[l], wv: wv[l], wo: wo[l],
    bq: null, bk: null, bv: null, qNorm: null, kNorm: null, wGate: w1[l], wUp: w3[l], wDown: w2[l],
  }));
  // tokenizer.bin beside the checkpoint unless given (a small file: read, not kept)
  const tp = tokenizerPath ?? 'tokenizer.bin';
  const tokenizer = files.has(tp) ? tokenizerFromLlama2c(files.head(tp, files.size(tp)), vocabSize, files.where(tp)) : null;
  if (tokenizerPath && !tokenizer) throw new Error(`tokenizer not found: ${tokenizerPath}`);
  return { config, weights: { embed, layers, finalNorm: f32(finalNorm), output }, tokenizer, format: 'llama2c' };
}

/** Where each weight lives in a file format's tensor names. */
interface TensorNames {
  layer(l: number): string;
  attnNorm: string; ffnNorm: string; wq: string; wk: string; wv: string; wo: string;
  bq: string; bk: string; bv: string; qNorm: string; kNorm: string; gate: string; up: string; down: string;
  /** fused q/k/v and gate/up matrices (Phi-3), split into views where a file has them */
  qkv: string; gateUp: string;
  /** Gemma 3's norms after attention and after the feed-forward block (optional) */
  postAttnNorm: string; postFfnNorm: string;
  embed: string; finalNorm: string; output: string;
}

const GGUF_NAMES: TensorNames = {
  layer: (l) => `blk.${l}.`, attnNorm: 'attn_norm.weight', ffnNorm: 'ffn_norm.weight',
  wq: 'attn_q.weight', wk: 'attn_k.weight', wv: 'attn_v.weight', wo: 'attn_output.weight',
  bq: 'attn_q.bias', bk: 'attn_k.bias', bv: 'attn_v.bias', qNorm: 'attn_q_norm.weight', kNorm: 'attn_k_norm.weight', gate: 'ffn_gate.weight', up: 'ffn_up.weight', down: 'ffn_down.weight',
  // (llama.cpp's phi3 keeps gate and up fused in ffn_up)
  qkv: 'attn_qkv.weight', gateUp: 'ffn_up.weight', postAttnNorm: 'post_attention_norm.weight', postFfnNorm: 'post_ffw_norm.weight',
  embed: 'token_embd.weight', finalNorm: 'output_norm.weight', output: 'output.weight',
};

const HF_NAMES: TensorNames = {
  layer: (l) => `model.layers.${l}.`, attnNorm: 'input_layernorm.weight', ffnNorm: 'post_attention_layernorm.weight',
  wq: 'self_attn.q_proj.weight', wk: 'self_attn.k_proj.weight', wv: 'self_attn.v_proj.weight', wo: 'self_attn.o_proj.weight',
  bq: 'self_attn.q_proj.bias', bk: 'self_attn.k_proj.bias', bv: 'self_attn.v_proj.bias',
  qNorm: 'self_attn.q_norm.weight', kNorm: 'self_attn.k_norm.weight',
  gate: 'mlp.gate_proj.weight', up: 'mlp.up_proj.weight', down: 'mlp.down_proj.weight',
  qkv: 'self_attn.qkv_proj.weight', gateUp: 'mlp.gate_up_proj.weight', postAttnNorm: '-', postFfnNorm: '-',
  embed: 'model.embed_tokens.weight', finalNorm: 'model.norm.weight', output: 'lm_head.weight',
};

/** Gemma 3's Hugging Face names: its post_attention_layernorm follows attention (the pre-FFN norm is
 *  pre_feedforward_layernorm). */
const GEMMA_HF_NAMES: TensorNames = {
  ...HF_NAMES, ffnNorm: 'pre_feedforward_layernorm.weight', postAttnNorm: 'post_attention_layernorm.weight', postFfnNorm: 'post_feedforward_layernorm.weight',
};

/** Gemma 3's shared settings: scaled embeddings, GeGLU, and which layers are windowed (`pattern`: every
 *  n-th layer global, or one flag per layer) with their own RoPE base. */
function gemmaConfig(c: ModelConfig, pattern: unknown, localTheta: number): Partial<ModelConfig> {
  const every = typeof pattern === 'number' || typeof pattern === 'bigint' ? Number(pattern) : 6;
  const windowLayers = Array.isArray(pattern) ? pattern.map((v) => Boolean(v)) : Array.from({ length: c.nLayers }, (_, l) => (l + 1) % every !== 0);
  return { embedScale: Math.sqrt(c.dim), ffnAct: 'gelu', windowLayers, localRope: { theta: localTheta, scaling: { type: 'none' } } };
}

/** The model's weights from a format's tensors (biases optional; output tied to the embedding if absent). */
function assembleWeights(c: ModelConfig, tensor: (name: string, optional?: boolean) => Matrix | null, n: TensorNames, what: string): ModelWeights {
  const req = (name: string) => tensor(name)!;
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.nLayers; l++) {
    const p = n.layer(l);
    const bias = (name: string) => { const t = tensor(p + name, true); return t ? f32(t) : null; };
    // fused matrices (Phi-3): row views of q, k, v and of gate, up; else one tensor each
    const qkv = c.arch === 'phi3' ? tensor(p + n.qkv, true) : null, gateUp = c.arch === 'phi3' ? tensor(p + n.gateUp, true) : null;
    const [wq, wk, wv] = qkv ? splitRows(qkv, [c.nHeads * c.headDim, c.nKVHeads * c.headDim, c.nKVHeads * c.headDim], `${p}${n.qkv}`, what)
      : [req(p + n.wq), req(p + n.wk), req(p + n.wv)];
    const [wGate, wUp] = gateUp ? splitRows(gateUp, [c.hiddenDim, c.hiddenDim], `${p}${n.gateUp}`, what) : [req(p + n.gate), req(p + n.up)];
    layers.push({
      attnNorm: f32(req(p + n.attnNorm)), ffnNorm: f32(req(p + n.ffnNorm)),
      wq, wk, wv, wo: req(p + n.wo),
      bq: bias(n.bq), bk: bias(n.bk), bv: bias(n.bv), qNorm: bias(n.qNorm), kNorm: bias(n.kNorm),
      wGate, wUp, wDown: req(p + n.down),
      ...(c.arch === 'gemma3' ? { postAttnNorm: f32(req(p + n.postAttnNorm)), postFfnNorm: f32(req(p + n.postFfnNorm)) } : {}),
    });
  }
  const embed = req(n.embed);
  const weights: ModelWeights = { embed, layers, finalNorm: f32(req(n.finalNorm)), output: tensor(n.output, true) ?? embed };
  checkShapes(c, weights, what);
  return weights;
}

/** Row views of a fused matrix, `rows` rows each (no copy). */
function splitRows(m: Matrix, rows: number[], name: string, what: string): Matrix[] {
  const total = rows.reduce((a, b) => a + b, 0);
  if (m.rows !== total) throw new Error(`${what}: tensor ${name} has ${m.rows} rows, expected ${rows.join(' + ')} = ${total}`);
  let r0 = 0;
  return rows.map((r) => { const v = new Matrix(r, m.cols, m.dtype, m.bytes.subarray(r0 * m.rowBytes, (r0 + r) * m.rowBytes)); r0 += r; return v; });
}

function checkShapes(c: ModelConfig, w: ModelWeights, what: string): void {
  const expect = (name: string, m: Matrix, rows: number, cols: number) => {
    if (m.rows !== rows || m.cols !== cols) throw new Error(`${what}: tensor ${name} is ${m.rows}x${m.cols}, expected ${rows}x${cols}`);
  };
  expect('embedding', w.embed, c.vocabSize, c.dim);
  expect('output', w.output, c.vocabSize, c.dim);
  w.layers.forEach((l, i) => {
    expect(`layer ${i} q`, l.wq, c.nHeads * c.headDim, c.dim);
    expect(`layer ${i} k`, l.wk, c.nKVHeads * c.headDim, c.dim);
    expect(`layer ${i} v`, l.wv, c.nKVHeads * c.headDim, c.dim);
    expect(`layer ${i} o`, l.wo, c.dim, c.nHeads * c.headDim);
    expect(`layer ${i} gate`, l.wGate, c.hiddenDim, c.dim);
    expect(`layer ${i} up`, l.wUp, c.hiddenDim, c.dim);
    expect(`layer ${i} down`, l.wDown, c.dim, c.hiddenDim);
    if (c.arch === 'qwen3' && (!l.qNorm || !l.kNorm)) throw new Error(`${what}: layer ${i} has no query/key norm weights (a Qwen3 model needs them)`);
    for (const [name, v] of [['query norm', l.qNorm], ['key norm', l.kNorm]] as const) {
      if (v && v.length !== c.headDim) throw new Error(`${what}: layer ${i} ${name} has ${v.length} weights, expected ${c.headDim}`);
    }
  });
}
