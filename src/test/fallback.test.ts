// The plain TypeScript kernels (used where WebAssembly SIMD is missing or a model exceeds the 4 GiB
// wasm memory) must give the same results, and so must the plain WebAssembly kernels (runtimes without
// relaxed SIMD's fused multiply-adds): run the reference-checked suites again with each.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** forward.test, ops.test and attention.test in a child process with `env` set; fails with its summary. */
function runSuites(env: Record<string, string>, what: string): void {
  const dir = fileURLToPath(new URL('.', import.meta.url));
  const r = spawnSync(process.execPath, ['--test', `${dir}forward.test.js`, `${dir}ops.test.js`, `${dir}attention.test.js`], {
    env: { ...process.env, NODE_TEST_CONTEXT: undefined, ...env }, encoding: 'utf8',
  });
  const summary = (r.stdout.match(/^# (pass|fail) \d+$/gm) ?? []).join(', ');
  assert.equal(r.status, 0, `${what} run failed (${summary}):\n${r.stdout.slice(-3000)}`);
  assert.match(summary, /# fail 0/);
}

test('forward-pass and op tests pass on the TypeScript fallback kernels (QUEST_NO_WASM=1)', () => runSuites({ QUEST_NO_WASM: '1' }, 'fallback'));

test('forward-pass and op tests pass on the plain WebAssembly kernels, without fused multiply-adds (QUEST_NO_FMA=1)', () => runSuites({ QUEST_NO_FMA: '1' }, 'plain-kernel'));

test('the WebAssembly runtime is active here, with fused multiply-adds (otherwise the suites above ran the same kernels twice)', async () => {
  const { wasm } = await import('../backend/wasm/runtime.js');
  const rt = wasm();
  assert.ok(rt, 'WebAssembly SIMD with shared memory should be available on Node >= 20');
  assert.ok(rt.fused, 'relaxed SIMD should be available on Node >= 20.16 (process.getBuiltinModule and a V8 flag)');
});
