// The worker pool's hand-off protocol (backend/wasm/pool.ts, worker.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { wasm } from '../backend/wasm/runtime.js';
import { workerPool } from '../backend/wasm/pool.js';
import { activations, swiglu } from '../backend/cpu/kernels.js';

// Under CPU load the calling thread can be preempted between announcing an op and notifying the workers:
// a worker then runs the op, goes back to sleep, and is woken by that late notify. It must not run the op
// again: SwiGLU works in place, so a second run of a worker's share gave wrong activations (a rare wrong
// answer seen under load, sessions 25-27). The late notify is simulated once the workers sleep.
test('a late wake-up of the worker threads runs no op again (in-place SwiGLU split across the threads stays right)', async (t) => {
  const rt = wasm(), pool = rt ? workerPool(rt) : null;
  if (!rt || !pool) { t.skip('no worker threads (or no WebAssembly)'); return; }
  const n = 1 << 16; // (enough elements to split across the threads)
  const gate = activations('pool-test.gate', n), up = activations('pool-test.up', n);
  const a = Float64Array.from({ length: n }, (_, i) => Math.sin(i) * 4), b = Float64Array.from({ length: n }, (_, i) => Math.cos(i * 0.7));
  for (let round = 0; round < 3; round++) {
    gate.set(a); up.set(b);
    swiglu(gate, up, n);
    await sleep(30); // (the workers stop spinning after 2 ms and sleep)
    pool.wakeAll();
    await sleep(30); // (time for a worker to run its share again, if it would)
    for (let i = 0; i < n; i++) {
      const want = (a[i] / (1 + Math.exp(-a[i]))) * b[i];
      assert.ok(Math.abs(gate[i] - want) <= 1e-5 * Math.max(1, Math.abs(want)), `element ${i} of ${n}, round ${round}: ${gate[i]} vs ${want}`);
    }
  }
});
