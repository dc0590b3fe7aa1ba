// The prefix cache of an LLM (default model, CPU; and WebGPU where an adapter exists): a prompt that
// starts like an earlier one reuses its KV and gives the greedy tokens of a cold run (cache: false),
// dense and Quest; chat turns reuse the earlier turns; eviction under a memory limit; clearCache.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel, type LLM } from '../engine/llm.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { commonPrefix } from '../engine/prefix-cache.js';
import { gpu, skipGpu } from './gpu.js';
import { randomGGUF, tempFile } from './fixtures.js';

let llm: LLM | undefined;
const get = async () => (llm ??= await loadModel(DEFAULT_MODEL));

const book = (n: number, seed: number) => Array.from({ length: n }, (_, i) => 20 + ((i * 7 + seed * 13) % 400));

async function sharedPrefixCase(m: LLM, attention: { policy: 'dense' | 'quest'; budget?: number }, decodeTail = 0, size = 700) {
  const prefix = book(size, 1), a = [...prefix, ...book(40, 2)], b = [...prefix, ...book(33, 3)];
  const opts = { maxTokens: size > 200 ? 12 : 4, temperature: 0, attention, decodeTail };
  m.clearCache();
  const coldA = await m.complete('', { ...opts, promptIds: a, cache: false });
  const coldB = await m.complete('', { ...opts, promptIds: b, cache: false });
  assert.equal(m.prefixCache.size, 0, 'cache: false keeps nothing');
  const first = await m.complete('', { ...opts, promptIds: a });
  assert.equal(first.cachedTokens, 0);
  assert.deepEqual(first.tokens, coldA.tokens, 'first run');
  const again = await m.complete('', { ...opts, promptIds: a });
  // the whole prompt but its last token (the last one runs to give the first logits; a decode tail runs as decode steps)
  assert.equal(again.cachedTokens, decodeTail ? a.length - decodeTail : a.length - 1, 'same prompt');
  assert.deepEqual(again.tokens, coldA.tokens, 'same prompt: greedy tokens of a cold run');
  const other = await m.complete('', { ...opts, promptIds: b });
  assert.equal(other.cachedTokens, commonPrefix(a, b), 'shared prefix');
  assert.deepEqual(other.tokens, coldB.tokens, 'shared prefix: greedy tokens of a cold run');
}

test('a prompt sharing a cached prefix gives the tokens of a cold run (dense, CPU)', async () => {
  await sharedPrefixCase(await get(), { policy: 'dense' });
});

test('a prompt sharing a cached prefix gives the tokens of a cold run (Quest 64 with a decode tail, CPU)', async () => {
  await sharedPrefixCase(await get(), { policy: 'quest', budget: 64 }, 20);
});

test('chat: the second turn reuses the first turn\'s prompt and reply; clearCache forgets', async () => {
  const m = await get();
  m.clearCache();
  const opts = { maxTokens: 16, temperature: 0 };
  const turn1 = [{ role: 'user' as const, content: 'Tell me about the letter that Elizabeth received from Mr. Darcy.' }];
  const r1 = await m.chat(turn1, opts).result;
  const turn2 = [...turn1, { role: 'assistant' as const, content: r1.text }, { role: 'user' as const, content: 'And what did she think of it?' }];
  const cold = await m.chat(turn2, { ...opts, cache: false }).result;
  const r2 = await m.chat(turn2, opts).result;
  assert.ok(r2.cachedTokens >= r1.promptTokens - 2, `turn 2 reused ${r2.cachedTokens} of turn 1's ${r1.promptTokens} prompt tokens`);
  assert.deepEqual(r2.tokens, cold.tokens);
  m.clearCache();
  assert.equal(m.prefixCache.size, 0);
  assert.equal((await m.chat(turn2, opts).result).cachedTokens, 0, 'after clearCache');
});

test('eviction under the memory limit keeps the most recently used prefixes, and results stay right', async () => {
  const probe = await get();
  const s = probe.session(); await s.forward(book(320, 9), { logits: 'none' });
  const perPrompt = s.table.pages.length * (s as { pageBytes: number }).pageBytes; s.dispose();
  // room for about two 320-token prompts
  const m = await loadModel(DEFAULT_MODEL, { prefixCacheBytes: Math.floor(perPrompt * 2.5) });
  const prompts = [1, 2, 3].map((k) => book(320, 10 + k)), opts = { maxTokens: 6, temperature: 0 };
  const cold = await Promise.all(prompts.map((p) => m.complete('', { ...opts, promptIds: p, cache: false })));
  for (const p of prompts) await m.complete('', { ...opts, promptIds: p });
  assert.ok(m.prefixCache.bytes <= m.prefixCache.limitBytes, `${m.prefixCache.bytes} bytes kept over the ${m.prefixCache.limitBytes} limit`);
  assert.equal(m.prefixCache.size, 2, 'the oldest prompt was evicted');
  const again = await Promise.all(prompts.map((p) => m.complete('', { ...opts, promptIds: p })));
  assert.equal(again[0].cachedTokens, 0, 'evicted');
  assert.equal(again[2].cachedTokens, 319, 'kept');
  again.forEach((r, i) => assert.deepEqual(r.tokens, cold[i].tokens, `prompt ${i}`));
  await assert.rejects(loadModel(DEFAULT_MODEL, { prefixCacheBytes: -1 }), /prefixCacheBytes must be a number of bytes >= 0/);
  m.dispose();
});

test('WebGPU: a prompt sharing a cached prefix gives the tokens of a cold run (Quest with a decode tail)', { skip: skipGpu }, async () => {
  void gpu;
  // (a small random model: SwiftShader takes ~1 s a decode step of the default model and CI has 30 minutes;
  // Quest only, prefix-reuse.test.ts covers dense forks on WebGPU)
  const m = await loadModel(tempFile('prefix-gpu.gguf', randomGGUF({ vocab: 512, dim: 64, hidden: 128, layers: 3, heads: 4, kvHeads: 2, dtype: 'f16', seed: 41 })), { device: 'webgpu' });
  await sharedPrefixCase(m, { policy: 'quest', budget: 64 }, 20, 300);
  m.dispose();
});
