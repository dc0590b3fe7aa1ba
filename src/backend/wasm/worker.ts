// A compute worker: the same kernels on the same shared memory, woken through its control block.
import { workerData } from 'node:worker_threads';
import type { KernelExports } from './runtime.js';
import { ARG, DONE, OP, OP_ATTEND, OP_ATTEND_TOKENS, OP_GEMM_SET, OP_GLU, OP_PAGE_SCORES, OP_PREPARE_X, OP_PROGRAM, SEQ, SLOTS } from './pool.js';
import { gemmSet, attendHeads, attendTokenPart, pageScoreRange, prepareXShare, gluShare } from './shared-ops.js';
import { runProgram } from './program.js';

const { memory, ctrl: ctrlPtr, wasm } = workerData as { memory: WebAssembly.Memory; ctrl: number; wasm: Uint8Array<ArrayBuffer> };
const k = new WebAssembly.Instance(new WebAssembly.Module(wasm), { env: { memory } }).exports as unknown as KernelExports;
const ctrl = new Int32Array(memory.buffer, ctrlPtr, SLOTS);
const ctrlF = new Float32Array(memory.buffer, ctrlPtr, SLOTS);

// Decode steps hand out a product every few tens of microseconds: a worker that went to sleep takes
// longer than that to wake (a futex round trip), so it spins for a while before it blocks.
const SPIN_MS = 2;
let seen = 0;
for (;;) {
  const until = performance.now() + SPIN_MS;
  while (Atomics.load(ctrl, SEQ) === seen && performance.now() < until) { /* spin */ }
  // (a wake-up alone is no hand-off: the caller's notify can come late, after this worker already ran the
  // op it announced and went back to sleep, when the OS preempts the caller between its store and its
  // notify; running that op again corrupted in-place ops such as SwiGLU under CPU load)
  while (Atomics.load(ctrl, SEQ) === seen) Atomics.wait(ctrl, SEQ, seen);
  seen = Atomics.load(ctrl, SEQ);
  const a = Array.from(ctrl.subarray(ARG, SLOTS - 1));
  try {
    if (ctrl[OP] === OP_GEMM_SET) gemmSet(k, memory, a[0], a[1], a[2], a[3], a[4]);
    else if (ctrl[OP] === OP_ATTEND) attendHeads(k, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14], ctrlF[SLOTS - 1], a[15], a[16], a[17], memory, a[18]);
    else if (ctrl[OP] === OP_ATTEND_TOKENS) attendTokenPart(k, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], ctrlF[SLOTS - 1], a[14], a[15], memory, a[16]);
    else if (ctrl[OP] === OP_PROGRAM) runProgram(k, memory, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], { X: a[9], T: a[10], R: a[11], Q: a[12], S: a[13], A: a[14], O: a[15], ST: a[16], bytes: a[17] });
    else if (ctrl[OP] === OP_PREPARE_X) prepareXShare(k, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
    else if (ctrl[OP] === OP_GLU) gluShare(k, a[0], a[1], a[2], a[3], a[4], a[5]);
    else if (ctrl[OP] === OP_PAGE_SCORES) pageScoreRange(k, a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12]);
  } catch {
    ctrl[SLOTS - 2] = -1;
  }
  Atomics.store(ctrl, DONE, seen);
  Atomics.notify(ctrl, DONE);
}
