// File formats: dequantisation of each tensor type against float64 decoders written from the format
// specs, and the errors bad files must give.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync, copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeTensor, f32ToF16, F16_TABLE, Matrix } from '../model/tensor.js';
import { loadModelFiles } from '../model/load.js';
import { writeSafetensors } from '../model/safetensors.js';
import { writeGGUF } from '../model/gguf.js';
import { convertHFToGGUF } from '../model/convert.js';
import { gaussian, randomArray, randomGGUF, tempFile } from './fixtures.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';

/** IEEE half from its bits, by the formula. */
function half(bits: number): number {
  const s = bits >> 15 ? -1 : 1, e = (bits >> 10) & 31, m = bits & 1023;
  return e === 0 ? s * m * 2 ** -24 : e === 31 ? (m ? NaN : s * Infinity) : s * (1 + m / 1024) * 2 ** (e - 15);
}

test('f16 conversion: known values and round-to-nearest', () => {
  assert.equal(f32ToF16(1), 0x3c00); assert.equal(f32ToF16(-2), 0xc000); assert.equal(f32ToF16(65504), 0x7bff);
  assert.equal(f32ToF16(2 ** -24), 0x0001); assert.equal(f32ToF16(1e6), 0x7c00); assert.equal(F16_TABLE[0x3555], half(0x3555));
  const g = gaussian(3);
  for (let i = 0; i < 1000; i++) { const v = g() * 10; assert.ok(Math.abs(half(f32ToF16(v)) - v) <= Math.abs(v) * 2 ** -11 + 1e-7); }
});

test('dequantisation of F32, F16, BF16, Q8_0 and Q4_0 rows matches float64 decoders of the raw bytes', () => {
  const cols = 96, rows = 5, vals = randomArray(rows * cols, 2, gaussian(9));
  for (const dtype of ['f32', 'f16', 'bf16', 'q8_0', 'q4_0'] as const) {
    const bytes = encodeTensor(vals, dtype), dv = new DataView(bytes.buffer);
    const m = new Matrix(rows, cols, dtype, bytes), out = new Float32Array(cols);
    for (let r = 0; r < rows; r++) {
      const got = m.row(r, out);
      for (let c = 0; c < cols; c++) {
        let ref: number;
        const i = r * cols + c;
        if (dtype === 'f32') ref = dv.getFloat32(i * 4, true);
        else if (dtype === 'f16') ref = half(dv.getUint16(i * 2, true));
        else if (dtype === 'bf16') ref = new Float32Array(new Uint32Array([dv.getUint16(i * 2, true) << 16]).buffer)[0];
        else {
          const blockBytes = dtype === 'q8_0' ? 34 : 18, b = Math.floor(i / 32), j = i % 32, base = b * blockBytes;
          const d = half(dv.getUint16(base, true));
          if (dtype === 'q8_0') ref = d * dv.getInt8(base + 2 + j);
          else { const byte = dv.getUint8(base + 2 + (j % 16)); ref = d * ((j < 16 ? byte & 15 : byte >> 4) - 8); }
        }
        assert.ok(Math.abs(got[c] - ref) <= 1e-6 * Math.max(1, Math.abs(ref)), `${dtype} [${r},${c}] ${got[c]} vs ${ref}`);
        // and the quantisation error against the original value is what the format allows
        const tol = { f32: 0, f16: 2e-3, bf16: 1.6e-2, q8_0: 0.03, q4_0: 0.6 }[dtype];
        assert.ok(Math.abs(got[c] - vals[i]) <= tol * Math.max(1, Math.abs(vals[i])) + 1e-7, `${dtype} error too large`);
      }
    }
  }
});

const small = { vocab: 32, dim: 32, hidden: 64, layers: 1, heads: 4, kvHeads: 2 };

test('a truncated GGUF file is a clear error', () => {
  const good = randomGGUF(small);
  assert.throws(() => loadModelFiles(tempFile('t.gguf', good.subarray(0, good.length - 100))), /truncated/);
  assert.throws(() => loadModelFiles(tempFile('t.gguf', good.subarray(0, 20))), /truncated/);
});

test('a GGUF file with a bad magic is a clear error', () => {
  const bad = randomGGUF(small); bad[0] = 0x58;
  assert.throws(() => loadModelFiles(tempFile('bad.gguf', bad)), /not a GGUF file: bad magic/);
});

test('an unsupported architecture or tensor type is a clear error', () => {
  const f = writeGGUF([['general.architecture', { type: 'string', value: 'mamba' }]], []);
  assert.throws(() => loadModelFiles(tempFile('a.gguf', f)), /unsupported architecture "mamba"/);
  // retag the first tensor's type: the type field sits after its name, dims and count
  const retag = (type: number) => {
    const f = randomGGUF(small), dv = new DataView(f.buffer), name = new TextEncoder().encode('token_embd.weight');
    dv.setUint32(Buffer.from(f).indexOf(Buffer.from(name)) + name.length + 4 + 2 * 8, type, true);
    return tempFile('t.gguf', f);
  };
  assert.throws(() => loadModelFiles(retag(16)), /tensor token_embd.weight has type IQ2_XXS, not supported \(supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS;/);
  // a K-quant tensor whose rows are not whole 256-element blocks
  assert.throws(() => loadModelFiles(retag(12)), /tensor token_embd.weight \(\d+ x \d+\): Q4_K rows need a multiple of 256 elements, got \d+: corrupt file/);
});

function hfCopy(): string {
  const dir = mkdtempSync(join(tmpdir(), 'quest-hf-'));
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors']) copyFileSync(join(DEFAULT_MODEL, f), join(dir, f));
  return dir;
}

test('a folder\'s chat template: from tokenizer_config.json (a string or named templates), else chat_template.jinja / .json beside it; quest convert carries it into the GGUF', () => {
  const tpl = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>";
  const dir = hfCopy();
  assert.equal(loadModelFiles(dir).tokenizer!.chatTemplate, null);
  writeFileSync(join(dir, 'chat_template.jinja'), tpl);
  assert.equal(loadModelFiles(dir).tokenizer!.chatTemplate, tpl);
  const gguf = loadModelFiles(tempFile('c.gguf', convertHFToGGUF(dir, 'q8_0')));
  assert.equal(gguf.tokenizer!.chatTemplate, tpl);
  const cfg = JSON.parse(readFileSync(join(DEFAULT_MODEL, 'tokenizer_config.json'), 'utf8'));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ ...cfg, chat_template: [{ name: 'tool_use', template: 'x' }, { name: 'default', template: 'y' }] }));
  assert.equal(loadModelFiles(dir).tokenizer!.chatTemplate, 'y');
});

test('a safetensors file whose header lies about sizes is a clear error', () => {
  const dir = hfCopy();
  const data = new Uint8Array(new Float32Array([1, 2, 3, 4]).buffer);
  const st = writeSafetensors([{ name: 'model.embed_tokens.weight', dtype: 'F32', shape: [4, 4], data }]); // 16 values claimed, 4 given
  writeFileSync(join(dir, 'model.safetensors'), st);
  assert.throws(() => loadModelFiles(dir), /lies about its size/);
});

test('a missing tokenizer is a clear error', () => {
  const dir = mkdtempSync(join(tmpdir(), 'quest-hf-'));
  mkdirSync(dir, { recursive: true });
  for (const f of ['config.json', 'model.safetensors']) copyFileSync(join(DEFAULT_MODEL, f), join(dir, f));
  assert.throws(() => loadModelFiles(dir), /no tokenizer\.json: the tokenizer is missing/);
});

test('an unsupported Hugging Face architecture is a clear error', () => {
  const dir = hfCopy();
  writeFileSync(join(dir, 'config.json'), JSON.stringify({ model_type: 'gpt_neox', architectures: ['GPTNeoXForCausalLM'] }));
  assert.throws(() => loadModelFiles(dir), /unsupported architecture "gpt_neox"/);
});

test('a missing model path and an unknown file are clear errors', () => {
  assert.throws(() => loadModelFiles('/nonexistent/model.gguf'), /model not found/);
  assert.throws(() => loadModelFiles(tempFile('x.txt', 'hello')), /unrecognised model file/);
});

test('a sharded Hugging Face checkpoint (index + two safetensors files) loads the same weights', async () => {
  const { parseSafetensors } = await import('../model/safetensors.js');
  const { readFileSync } = await import('node:fs');
  const dir = mkdtempSync(join(tmpdir(), 'quest-shards-'));
  for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(DEFAULT_MODEL, f), join(dir, f));
  const all = [...parseSafetensors(new Uint8Array(readFileSync(join(DEFAULT_MODEL, 'model.safetensors'))), 'x').values()];
  const half = Math.ceil(all.length / 2), weightMap: Record<string, string> = {};
  [all.slice(0, half), all.slice(half)].forEach((part, i) => {
    const name = `model-0000${i + 1}-of-00002.safetensors`;
    writeFileSync(join(dir, name), writeSafetensors(part.map((t) => ({ name: t.name, dtype: 'F16', shape: t.shape, data: t.data }))));
    for (const t of part) weightMap[t.name] = name;
  });
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
  const a = loadModelFiles(dir), b = loadModelFiles(DEFAULT_MODEL);
  assert.deepEqual(a.weights.layers[7].wDown.toF32(), b.weights.layers[7].wDown.toF32());
  assert.deepEqual(a.weights.embed.toF32(), b.weights.embed.toF32());
});

test('a GGUF SentencePiece vocabulary (tokenizer.ggml.model = llama) round-trips text through byte fallback', async () => {
  const { TextTokenizer } = await import('../tokenizer/tokenizer.js');
  const m = loadModelFiles(tempFile('spm.gguf', randomGGUF({ ...small, vocab: 300, vocabulary: true })));
  const tok = new TextTokenizer(m.tokenizer!);
  const text = 'Hello, wörld! 123';
  const ids = tok.encode(text);
  assert.equal(ids[0], 1, 'SentencePiece models start with BOS');
  assert.equal(tok.decode(ids), text);
});

test('dispose returns the weights memory: loading again reuses it', async () => {
  const { loadModel } = await import('../engine/llm.js');
  const path = tempFile('d.gguf', randomGGUF({ ...small, seed: 9 }));
  const a = await loadModel(path);
  const ptr = (a as unknown as { files: Uint8Array[] }).files[0]?.byteOffset;
  a.dispose();
  await assert.rejects(a.complete('x', { promptIds: [1, 2] }), /disposed/);
  const b = await loadModel(path);
  const ptr2 = (b as unknown as { files: Uint8Array[] }).files[0]?.byteOffset;
  if (ptr !== undefined) assert.equal(ptr2, ptr);
  b.dispose();
});
