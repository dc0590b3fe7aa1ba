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
