// Builds a tokenizer.json (for tokenizers.js) from the vocabularies that GGUF files and llama2.c's
// tokenizer.bin carry, the same way Hugging Face's converters do.
import type { GGUFValue } from '../model/gguf.js';
import { ByteReader, utf8 } from '../model/file-bytes.js';
import type { TokenizerSpec } from './tokenizer.js';

const GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const LLAMA3_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_REGEX = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

function splitThenByteLevel(regex: string) {
  return {
    type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  };
}

/** The pre-tokenizer that llama.cpp's `tokenizer.ggml.pre` names. */
function bpePreTokenizer(pre: string | undefined): Record<string, unknown> {
  switch (pre) {
    case 'llama-bpe': case 'llama3': case 'smaug-bpe': return splitThenByteLevel(LLAMA3_REGEX);
    case 'qwen2': case 'deepseek-r1-qwen': return splitThenByteLevel(QWEN2_REGEX);
    case 'smollm': case 'quest':
      return { type: 'Sequence', pretokenizers: [{ type: 'Digits', individual_digits: true }, { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }] };
    default: return splitThenByteLevel(GPT2_REGEX);
  }
}

function addedTokens(tokens: string[], types: number[] | null) {
  const out: Record<string, unknown>[] = [];
  tokens.forEach((content, id) => {
    const t = types?.[id];
    if (t === 3 || t === 4) out.push({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: t === 3 });
  });
  return out;
}

/** SentencePiece-BPE vocabulary (pieces with '▁', <0xNN> byte pieces) as a BPE tokenizer.json with
 *  byte fallback; merges are derived from the piece scores like transformers' LlamaConverter does. */
export function spmTokenizerJson(tokens: string[], scores: number[], types: number[] | null): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => { if (!(t in vocab)) vocab[t] = i; });
  const merges: [string, string, number][] = [];
  tokens.forEach((t, id) => {
    if (types && types[id] !== 1 && types[id] !== undefined) return; // only normal pieces merge
    const chars = Array.from(t);
    for (let i = 1; i < chars.length; i++) {
      const a = chars.slice(0, i).join(''), b = chars.slice(i).join('');
      if (a in vocab && b in vocab) merges.push([a, b, scores[id] ?? -id]);
    }
  });
  merges.sort((x, y) => y[2] - x[2]);
  return {
    version: '1.0', added_tokens: addedTokens(tokens, types),
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null, post_processor: null,
    decoder: { type: 'Sequence', decoders: [{ type: 'Replace', pattern: { String: '▁' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }] },
    model: { type: 'BPE', dropout: null, unk_token: tokens.includes('<unk>') ? '<unk>' : null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, vocab, merges: merges.map(([a, b]) => [a, b]) },
  };
}

const asNumbers = (v: GGUFValue | undefined) => (Array.isArray(v) ? (v as number[]) : null);

/** Tokenizer spec from GGUF metadata (tokenizer.ggml.* keys). */
export function tokenizerFromGGUF(meta: Map<string, GGUFValue>, what = 'the GGUF file'): TokenizerSpec {
  const num = (k: string) => (meta.has(k) ? Number(meta.get(k)) : null);
  const bosId = num('tokenizer.ggml.bos_token_id');
  const eosIds = [num('tokenizer.ggml.eos_token_id'), num('tokenizer.ggml.eot_token_id')].filter((x): x is number => x !== null);
  const chatTemplate = (meta.get('tokenizer.chat_template') as string | undefined) ?? null;
  const hfJson = meta.get('tokenizer.huggingface.json');
  const model = meta.get('tokenizer.ggml.model') as string | undefined;
  const tokens = meta.get('tokenizer.ggml.tokens') as string[] | undefined;
  let json: Record<string, unknown>;
  if (typeof hfJson === 'string') {
    try { json = JSON.parse(hfJson); } catch (e) {
      throw new Error(`${what}: damaged vocabulary: tokenizer.huggingface.json is not valid JSON (${(e as Error).message.slice(0, 80)})`);
    }
  } else if (!tokens) {
    throw new Error(`${what} has no tokenizer (no tokenizer.ggml.tokens): pass token ids or a tokenizer.json`);
  } else if (model === 'gpt2') {
    const merges = (meta.get('tokenizer.ggml.merges') as string[] | undefined) ?? [];
    const vocab: Record<string, number> = {};
    tokens.forEach((t, i) => { vocab[t] = i; });
    json = {
      version: '1.0', added_tokens: addedTokens(tokens, asNumbers(meta.get('tokenizer.ggml.token_type'))),
      normalizer: null, pre_tokenizer: bpePreTokenizer(meta.get('tokenizer.ggml.pre') as string | undefined),
      post_processor: null, decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false, byte_fallback: false, vocab, merges },
    };
  } else if (model === 'llama') {
    json = spmTokenizerJson(tokens, asNumbers(meta.get('tokenizer.ggml.scores')) ?? [], asNumbers(meta.get('tokenizer.ggml.token_type')));
  } else {
    throw new Error(`${what}: unsupported GGUF tokenizer model "${model}" (supported: gpt2, llama)`);
  }
  const addBosMeta = meta.get('tokenizer.ggml.add_bos_token');
  const addBos = typeof addBosMeta === 'boolean' ? addBosMeta : model === 'llama';
  return { json, config: {}, bosId, eosIds, addBos, chatTemplate };
}

/** llama2.c's tokenizer.bin: max_token_length, then per token a score, a length and the bytes. */
export function tokenizerFromLlama2c(bytes: Uint8Array, vocabSize: number, path: string): TokenizerSpec {
  const r = new ByteReader(bytes, path);
  r.i32();
  const tokens: string[] = [], scores: number[] = [], types: number[] = [];
  for (let i = 0; i < vocabSize; i++) {
    scores.push(r.f32());
    const len = r.i32();
    if (len < 0 || len > 1024) throw new Error(`${path}: token ${i} has length ${len}: not a llama2.c tokenizer.bin`);
    let piece = utf8(r.bytesOf(len));
    // llama2.c stores pieces with '▁' already turned into spaces, and ids 0..2 as <unk>, <s>, </s>
    piece = piece.replace(/ /g, '▁');
    tokens.push(piece);
    types.push(i < 3 ? 3 : /^<0x[0-9A-F]{2}>$/.test(piece) ? 6 : 1);
  }
  return { json: spmTokenizerJson(tokens, scores, types), config: {}, bosId: 1, eosIds: [2], addBos: true, chatTemplate: null };
}
