// The plain TypeScript kernels (used where WebAssembly SIMD is missing or a model exceeds the 4 GiB
// wasm memory) must give the same results: run the reference-checked suites again with wasm disabled.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

test('forward-pass and op tests pass on the TypeScript fallback kernels (QUEST_NO_WASM=1)', () => {
  const dir = fileURLToPath(new URL('.', import.meta.url));
  const r = spawnSync(process.execPath, ['--test', `${dir}forward.test.js`, `${dir}ops.test.js`, `${dir}attention.test.js`], {
    env: { ...process.env, NODE_TEST_CONTEXT: undefined, QUEST_NO_WASM: '1' }, encoding: 'utf8',
  });
  const summary = (r.stdout.match(/^# (pass|fail) \d+$/gm) ?? []).join(', ');
  assert.equal(r.status, 0, `fallback run failed (${summary}):\n${r.stdout.slice(-3000)}`);
  assert.match(summary, /# fail 0/);
});

test('the WebAssembly runtime is active here (otherwise the suites above ran the fallback twice)', async () => {
  const { wasm } = await import('../backend/wasm/runtime.js');
  assert.ok(wasm(), 'WebAssembly SIMD with shared memory should be available on Node >= 20');
});
