// Sessions on disk: save -> load gives the sequence's exact logits (CPU, and WebGPU where there is an
// adapter); a file from another model, another KV layout, a truncated, corrupt or foreign file each get
// their error; a save that fails midway leaves nothing under the final name; generate continuing a
// loaded session equals a cold run on the whole prompt (library and CLI).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel, type LLM } from '../engine/llm.js';
import { saveSession, type PersistentSequence } from '../engine/session-file.js';
import { Session } from '../engine/session.js';
import { rng } from '../engine/sampler.js';
import { randomGGUF, tempFile } from './fixtures.js';
import { skipGpu } from './gpu.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';

const shape = { vocab: 100, dim: 64, hidden: 128, layers: 2, heads: 8, kvHeads: 2, dtype: 'f16' as const };
const modelA = tempFile('a.gguf', randomGGUF({ ...shape, seed: 21 }));
const modelB = tempFile('b.gguf', randomGGUF({ ...shape, seed: 22 })); // same shape, other weights
const ids = (n: number, seed: number) => { const r = rng(seed); return Array.from({ length: n }, () => Math.floor(r() * 100)); };
const dir = mkdtempSync(join(tmpdir(), 'quest-test-sessions-'));

async function roundTrip(llm: LLM, file: string): Promise<void> {
  const s = llm.session();
  await s.forward(ids(53, 1), { logits: 'none' }); // 53: a partly filled last page
  await s.save(file);
  const loaded = await llm.loadSession(file);
  assert.deepEqual(loaded.tokens, s.tokens);
  const next = ids(7, 2);
  const want = await s.forward(next, { logits: 'all' }), got = await loaded.forward(next, { logits: 'all' });
  assert.deepEqual(Array.from(got), Array.from(want), 'identical logits after save -> load');
  s.dispose(); loaded.dispose();
}

test('CPU: save -> load gives identical logits; bad files get clear errors', async () => {
  const a = await loadModel(modelA), file = join(dir, 'a.qkv');
  await roundTrip(a, file);
  const b = await loadModel(modelB);
  await assert.rejects(b.loadSession(file), /a\.qkv: saved from another model/);
  const a8 = await loadModel(modelA, { attention: { pageSize: 8 } });
  await assert.rejects(a8.loadSession(file), /saved with another KV layout \(f32 KV, 2 layers x 2 KV heads x 8, pages of 16 tokens\)/);
  const bytes = readFileSync(file);
  const cut = join(dir, 'cut.qkv'); writeFileSync(cut, bytes.subarray(0, bytes.length - 100));
  await assert.rejects(a.loadSession(cut), /cut\.qkv: truncated/);
  // one flipped bit anywhere: in a token, in the first and the last batch of pages, in a batch's checksum
  const headerEnd = 16 + new DataView(bytes.buffer, bytes.byteOffset).getUint32(12, true);
  for (const at of [headerEnd + 5, headerEnd + 4 * 53 + 4 + 100, bytes.length - 500, bytes.length - 2]) {
    const flipped = Buffer.from(bytes); flipped[at] ^= 0x40;
    const bad = join(dir, 'bad.qkv'); writeFileSync(bad, flipped);
    await assert.rejects(a.loadSession(bad), /bad\.qkv: corrupt: the checksum does not match/, `a flip at byte ${at} of ${bytes.length}`);
  }
  const v1 = Buffer.from(bytes); v1.writeUInt32LE(1, 8);
  writeFileSync(join(dir, 'v1.qkv'), v1);
  await assert.rejects(a.loadSession(join(dir, 'v1.qkv')), /v1\.qkv: session file version 1; this quest reads version 2/);
  const other = join(dir, 'other.qkv'); writeFileSync(other, 'GGUF and then some bytes that are not a session');
  await assert.rejects(a.loadSession(other), /other\.qkv: not a quest session file/);
  await assert.rejects(a.loadSession(join(dir, 'missing.qkv')), /missing\.qkv: no such session file/);
  for (const m of [a, b, a8]) m.dispose();
});

test('CPU, bf16 KV cache: save -> load gives identical logits; an f32 session refuses the file', async () => {
  const a = await loadModel(modelA, { kvCache: 'bf16' }), file = join(dir, 'a-bf16.qkv');
  await roundTrip(a, file);
  const f32 = await loadModel(modelA);
  await assert.rejects(f32.loadSession(file), /saved with another KV layout \(bf16 KV, 2 layers x 2 KV heads x 8, pages of 16 tokens\)/);
  await assert.rejects(loadModel(modelA, { kvCache: 'f16' as 'bf16' }), /unknown KV cache type "f16" \(choose f32 or bf16\)/);
  a.dispose(); f32.dispose();
});

test('a save that fails midway leaves no file under the final name and no temporary file', async () => {
  const a = await loadModel(modelA), s = a.session() as Session;
  s.forward(ids(40, 3), { logits: 'none' });
  const failing: PersistentSequence = {
    length: s.length, tokens: s.tokens, table: s.table, kvLayout: () => s.kvLayout(), adoptTokens: () => {}, writePages: () => {},
    readPages: async (layer, first, count) => { if (layer === 1) throw new Error('disk full'); return s.readPages(layer, first, count); },
  };
  const sub = mkdtempSync(join(tmpdir(), 'quest-test-save-')), target = join(sub, 'x.qkv');
  await assert.rejects(saveSession(failing, target, s.model.fingerprint, 'test'), /disk full/);
  assert.equal(existsSync(target), false);
  assert.deepEqual(readdirSync(sub), []);
  a.dispose();
});

test('generate continuing a loaded session equals a cold run on the whole prompt', async () => {
  const a = await loadModel(modelA), file = join(dir, 'doc.qkv');
  const doc = ids(70, 4), question = ids(9, 5);
  const s = a.session(); await s.forward(doc, { logits: 'none', dense: true }); await s.save(file); s.dispose();
  const loaded = await a.loadSession(file);
  for (const attention of [{ policy: 'dense' as const }, { policy: 'quest' as const, budget: 32 }]) {
    const cold = await a.complete('', { promptIds: [...doc, ...question], maxTokens: 10, temperature: 0, attention, cache: false });
    const warm = await a.complete('', { promptIds: question, session: loaded, maxTokens: 10, temperature: 0, attention });
    assert.equal(warm.cachedTokens, doc.length);
    assert.equal(warm.promptTokens, doc.length + question.length);
    assert.deepEqual(warm.tokens, cold.tokens, `${attention.policy}: greedy tokens`);
  }
  assert.deepEqual(loaded.tokens, doc, 'the session passed in is left as it was');
  await assert.rejects(a.complete('', { promptIds: question, session: (await loadModel(modelA)).session() }), /options\.session must be a session of this model/);
  loaded.dispose(); a.dispose();
});

test('WebGPU: save -> load gives identical logits; a CPU session file is refused (f32 vs f16 KV)', { skip: skipGpu }, async () => {
  const g = await loadModel(modelA, { device: 'webgpu' }), file = join(dir, 'g.qkv');
  await roundTrip(g, file);
  await assert.rejects(g.loadSession(join(dir, 'a.qkv')), /saved with another KV layout \(f32 KV/);
  // a flipped bit in a batch of pages (read straight into GPU staging memory) is refused, and the model
  // still loads the good file afterwards
  const bytes = readFileSync(file), flipped = Buffer.from(bytes); flipped[bytes.length - 300] ^= 0x10;
  writeFileSync(join(dir, 'g-bad.qkv'), flipped);
  await assert.rejects(g.loadSession(join(dir, 'g-bad.qkv')), /g-bad\.qkv: corrupt/);
  (await g.loadSession(file)).dispose();
  g.dispose();
});

test('CLI: quest prefill, then quest generate --session gives the cold run\'s text', () => {
  const cli = new URL('../cli/main.js', import.meta.url).pathname;
  const quest = (args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', timeout: 300_000 });
  const docFile = join(dir, 'doc.txt'), out = join(dir, 'doc-cli.qkv');
  const doc = 'It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.\n'.repeat(12);
  writeFileSync(docFile, doc);
  const pre = quest(['prefill', '--model', DEFAULT_MODEL, '--prompt-file', docFile, '--out', out]);
  assert.equal(pre.status, 0, pre.stderr);
  assert.match(pre.stderr, /wrote .*doc-cli\.qkv \(\d+ tokens/);
  const q = 'However little known';
  const warm = quest(['generate', '--model', DEFAULT_MODEL, '--session', out, '--prompt', q, '--temperature', '0', '--max-tokens', '20']);
  assert.equal(warm.status, 0, warm.stderr);
  assert.match(warm.stderr, /from the session/);
  const cold = quest(['generate', '--model', DEFAULT_MODEL, '--prompt-file', docFile, '--prompt', 'x', '--temperature', '0', '--max-tokens', '20']);
  assert.notEqual(cold.status, 0, 'one prompt source only');
  writeFileSync(join(dir, 'whole.txt'), doc + q);
  const whole = quest(['generate', '--model', DEFAULT_MODEL, '--prompt-file', join(dir, 'whole.txt'), '--temperature', '0', '--max-tokens', '20']);
  assert.equal(whole.status, 0, whole.stderr);
  assert.equal(warm.stdout, whole.stdout);
});
