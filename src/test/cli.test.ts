// The `quest` command as a user runs it (a child process): what it prints when things go wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';

const cli = new URL('../cli/main.js', import.meta.url).pathname;
const quest = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });

test('--device webgpu without a GPU prints only our error; --verbose adds the drivers\' own messages', () => {
  // no Vulkan driver at all: the loader is pointed at a driver list that does not exist
  const noGpu = { VK_DRIVER_FILES: '/nonexistent/icd.json', QUEST_WEBGPU_SOFTWARE: '0' };
  const args = ['generate', '--device', 'webgpu', '--prompt', 'hi', '--max-tokens', '2'];
  const plain = quest(args, noGpu);
  assert.equal(plain.status, 1);
  assert.equal(plain.stderr.trim().split('\n').filter(Boolean).length, 1, `more than our error: ${plain.stderr}`);
  assert.match(plain.stderr, /^\s*error: --device webgpu: no WebGPU adapter .*--verbose/);
  const verbose = quest([...args, '--verbose'], noGpu);
  assert.equal(verbose.status, 1);
  assert.match(verbose.stderr, /error: --device webgpu: no WebGPU adapter/);
  assert.match(verbose.stderr, /Warning: .*(driver|Vulkan)/i, 'Dawn says why under --verbose');
});

test('quest convert --type q4_k_m writes a GGUF that quest generate runs (its greedy text is the engine\'s on that file); a bad --type is a clear error', async () => {
  const { mkdtempSync, statSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const { DEFAULT_MODEL } = await import('./../cli/default-model.js');
  const { loadModelFiles } = await import('../model/load.js');
  const { makeModel, Session } = await import('../engine/session.js');
  const { TextTokenizer } = await import('../tokenizer/tokenizer.js');
  const { argmax } = await import('../engine/sampler.js');
  const out = join(mkdtempSync(join(tmpdir(), 'quest-cli-')), 'x.gguf');
  const conv = quest(['convert', '--model', DEFAULT_MODEL, '--type', 'q4_k_m', '--out', out]);
  assert.equal(conv.status, 0, conv.stderr);
  assert.match(conv.stderr, /wrote .*x\.gguf \(\d+\.\d MB, q4_k_m\)/);
  assert.ok(statSync(out).size < 6e6, 'a 4-bit file of the 7.1M-parameter model');
  const prompt = '"Well, Prince, so Genoa and Lucca are now';
  const gen = quest(['generate', '--model', out, '--temperature', '0', '--prompt', prompt, '--max-tokens', '12']);
  assert.equal(gen.status, 0, gen.stderr);
  // the same greedy tokens in-process on the same file
  const m = loadModelFiles(out), tok = new TextTokenizer(m.tokenizer!), s = new Session(makeModel(m.config, m.weights));
  let logits = s.forward(tok.encode(prompt));
  const ids: number[] = [];
  for (let i = 0; i < 12; i++) { const t = argmax(logits); ids.push(t); logits = s.forward([t]); }
  assert.equal(gen.stdout.trim(), tok.decode(ids).trim());
  const bad = quest(['convert', '--model', DEFAULT_MODEL, '--type', 'q3_k_xl', '--out', out]);
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /argument 'q3_k_xl' is invalid\. Allowed choices are .*q4_k_m/);
});
