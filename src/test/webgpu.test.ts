// WebGPU decode-attention kernels against float64 CPU references on random inputs of awkward sizes
// (lengths that are not multiples of the page size, a single token, GQA ratios 1, 4, 8): dense
// flash-decoding, Quest page scores + GPU top-k + sparse attention. Each case runs in its own process
// (webgpu-case.js); a process that Dawn/SwiftShader aborted on its own (seen here: futex errors of the
// sandbox) is retried, a wrong result never is. Skips with a message where no adapter exists.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { CASES } from './webgpu-case.js';

const script = fileURLToPath(new URL('./webgpu-case.js', import.meta.url));
const run = (i: number) => spawnSync(process.execPath, [script, String(i)], { encoding: 'utf8', env: { ...process.env, NODE_TEST_CONTEXT: undefined }, timeout: 90_000 });
const probe = run(0);
const noGpu = /^NOGPU (.*)$/m.exec(probe.stdout ?? '');
const skip = noGpu ? `no WebGPU adapter: ${noGpu[1]}` : false;

CASES.forEach((c, i) => {
  const label = c.budgetPages > 0 ? `Quest top-${c.budgetPages} pages` : 'dense';
  test(`WebGPU decode attention (${label}, ${c.nH}/${c.nKV} heads, head dim ${c.hd}, ${c.seq} tokens) matches float64`, { skip }, (t) => {
    let r = i === 0 ? probe : run(i);
    for (let attempt = 1; attempt < 8 && !/^(PASS|MISMATCH)/m.test(r.stdout ?? ''); attempt++) {
      t.diagnostic(`attempt ${attempt}: the GPU process aborted on its own (${(r.stderr ?? '').trim().split('\n').pop()}); retrying`);
      r = run(i);
    }
    const line = (r.stdout ?? '').split('\n').find((l) => /^(PASS|MISMATCH)/.test(l));
    assert.ok(line, `the GPU process aborted 8 times: ${(r.stderr ?? '').slice(-500)}`);
    assert.equal(line, 'PASS');
  });
});
