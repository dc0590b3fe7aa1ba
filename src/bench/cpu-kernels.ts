// `node dist/bench/cpu-kernels.js [ROWSxCOLS,...]`: the CPU's integer product kernels alone, on one
// thread, on SmolLM2-135M's shapes (GMAC/s, median of 15): the prefill kernel (row octets by 4-token tiles
// of a 256-token chunk, a block of rows as the engine repacks it, and a whole matrix) and the decode kernel
// (Q8_0 rows read in place by one token). Where a product kernel is changed, run this before and after.
import { wasm } from '../backend/wasm/runtime.js';
import { octBlockRows, octBytes, octScratchBytes, xTileBytes } from '../backend/wasm/shared-ops.js';

function main() {
  const rt = wasm();
  if (!rt) { console.log('no WebAssembly SIMD here'); return; }
  const k = rt.k, lines: string[] = [];
  const time = (macs: number, fn: () => void) => {
    fn();
    const ms: number[] = [];
    for (let r = 0; r < 15; r++) { const t = performance.now(); for (let j = 0; j < 4; j++) fn(); ms.push((performance.now() - t) / 4); }
    ms.sort((a, b) => a - b);
    return `${(macs / ms[7] / 1e6).toFixed(1)} GMAC/s (${ms[7].toFixed(3)} ms; spread ${(macs / ms[14] / 1e6).toFixed(1)}-${(macs / ms[0] / 1e6).toFixed(1)})`;
  };
  for (const [rows, cols] of (process.argv[2] ?? "1536x576,576x1536,576x576").split(",").map((m) => m.split("x").map(Number))) {
    const nb = cols / 32, n = 256;
    // Q8_0 rows of random codes (scale 2^-7), x a smooth signal quantised as the engine does
    const w = rt.alloc(rows * nb * 34), wb = new Uint8Array(rt.memory.buffer, w, rows * nb * 34);
    for (let i = 0; i < wb.length; i++) wb[i] = (i * 7919) & 0xff;
    for (let b = 0; b < rows * nb; b++) { wb[b * 34] = 0; wb[b * 34 + 1] = 0x20; }
    const x = rt.alloc(n * cols * 4), xq = rt.alloc(n * cols * 2), xs = rt.alloc(n * cols / 8), out = rt.alloc(n * rows * 4);
    rt.f32(x, n * cols).forEach((_, i, a) => { a[i] = Math.sin(i * 0.37); });
    k.quantise_q8(x, n * cols, xq, xs);
    const [tb, sb] = xTileBytes(n, cols), xt = rt.alloc(tb), xst = rt.alloc(sb);
    k.tile_x(xq, xs, n, cols, xt, xst);
    const block = octBlockRows(cols), scratch = rt.alloc(octScratchBytes(rows, cols));
    const accBlock = scratch + octBytes(block, cols), accAll = scratch + octBytes(rows, cols); // (gemm_octs's tile sums after the octets)
    const prefillBlock = time(block * cols * n, () => { k.octs_from_q(w, block, cols, scratch, 0); k.gemm_octs(scratch, block, cols, xt, xst, n, out, rows, accBlock); });
    k.octs_from_q(w, rows, cols, scratch, 0);
    const prefillAll = time(rows * cols * n, () => k.gemm_octs(scratch, rows, cols, xt, xst, n, out, rows, accAll));
    const decode = time(rows * cols, () => k.gemv_q8_0(w, rows, cols, xq, xs, 1, out, rows));
    lines.push(`| ${rows} x ${cols} | ${prefillBlock} | ${prefillAll} | ${decode} |`);
  }
  console.log('CPU integer product kernels, one thread (Q8_0 weights, x as Q8_0 activations)');
  console.log('| matrix | prefill, 256 tokens: repack a block + gemm_octs (as the engine runs it) | prefill, gemm_octs over the whole matrix | decode, gemv_q8_0, 1 token |');
  console.log('| --- | --- | --- | --- |');
  for (const l of lines) console.log(l);
}

main();
