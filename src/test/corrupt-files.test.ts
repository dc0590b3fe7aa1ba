// Damaged model files: a GGUF converted from the default model, with random bytes of its header,
// metadata (the vocabulary above all) and tensor data overwritten. Each must end in a clear error that
// names the file, or in a model that loads and runs; never a stack trace from deep inside, a hang or a crash.
import { test } from 'node:test';
import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import assert from 'node:assert/strict';
import { convertHFToGGUF } from '../model/convert.js';
import { parseGGUF } from '../model/gguf.js';
import { loadModel } from '../engine/llm.js';
import { rng } from '../engine/sampler.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { tempFile } from './fixtures.js';

/** Byte ranges of a GGUF's parts: header, metadata, tensor infos, data; and the vocabulary JSON string. */
function regions(bytes: Uint8Array): Record<string, [number, number]> {
  const g = parseGGUF(bytes);
  const find = (s: string) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).indexOf(s);
  const infos = find('token_embd.weight') - 8;           // the first tensor name, after its length
  const dataStart = Math.min(...[...g.tensors.values()].map((t) => t.offset));
  const json = find('tokenizer.huggingface.json') + 'tokenizer.huggingface.json'.length + 4 + 8; // key, type, length
  const jsonLength = (g.metadata.get('tokenizer.huggingface.json') as string).length;
  return { header: [0, 24], metadata: [24, infos], vocabulary: [json, json + jsonLength], tensorInfos: [infos, dataStart], data: [dataStart, bytes.length] };
}

test('randomly damaged GGUF files give a clear error naming the file, or load and run', { timeout: 240_000 }, async () => {
  const good = convertHFToGGUF(DEFAULT_MODEL, 'q8_0');
  const parts = regions(good);
  const r = rng(2026);
  const plan: [string, number][] = [['header', 8], ['metadata', 10], ['vocabulary', 8], ['tensorInfos', 10], ['data', 4]];
  const cases: { what: string; bad: Uint8Array }[] = [];
  for (const [part, n] of plan) {
    const [from, to] = parts[part];
    for (let i = 0; i < n; i++) {
      const bad = good.slice();
      const bytesHit = 1 + Math.floor(r() * 4);           // 1-4 neighbouring bytes
      const at = from + Math.floor(r() * (to - from - bytesHit));
      for (let b = 0; b < bytesHit; b++) bad[at + b] = Math.floor(r() * 256);
      cases.push({ what: `${part} bytes ${at}..${at + bytesHit - 1}`, bad });
    }
  }
  // and the hyperparameters a corrupted number would make absurd
  for (const [key, value] of [['llama.context_length', 0xffffffff], ['llama.attention.head_count', 0], ['llama.attention.head_count', 3],
    ['llama.block_count', 1000], ['llama.feed_forward_length', 0], ['llama.embedding_length', 0x7fffffff]] as const) {
    const bad = good.slice(), at = Buffer.from(bad.buffer).indexOf(key) + key.length + 4; // after the key and its type
    new DataView(bad.buffer).setUint32(at, value, true);
    cases.push({ what: `${key} = ${value}`, bad });
  }
  let errors = 0, loaded = 0;
  for (const { what, bad } of cases) {
    const path = tempFile('damaged.gguf', bad);
    let llm;
    try {
      llm = await loadModel(path);
    } catch (e) {
      errors++;
      assert.ok(e instanceof Error, `${what}: threw a non-Error ${String(e)}`);
      assert.ok(e.message.includes(path), `${what}: the error does not name the file: ${e.message}`);
      continue;
    } finally { rmSync(dirname(path), { recursive: true }); } // (each copy is 7.7 MB)
    try {
      // it loaded: it must also run (a corrupted weight may give any logits, but no crash)
      const logits = llm.session().forward(llm.encode('The pass key is 1234.')) as Float32Array;
      assert.equal(logits.length, llm.config.vocabSize, what);
      loaded++;
    } finally { llm.dispose(); }
  }
  // the plan must really have exercised both outcomes
  assert.ok(errors >= 10 && loaded >= 3, `errors ${errors}, loads ${loaded}`);
});
