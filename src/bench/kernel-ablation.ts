// `node dist/bench/kernel-ablation.js` (on a GPU with subgroup matrices): where the time of the prefill's
// tensor-core kernels goes. Each variant removes one part of the kernel's code (its results are wrong;
// it is timed only): the staging stores, the global loads, the matrix products, the softmax's pieces,
// the barriers. A part whose removal saves little costs little; the parts overlap, so the savings do not
// add up. Three rounds, interleaved, ms per call and TFLOP/s of the median.
//   --only attention|products  --heads 32/32  --context 32768  --tokens 2048
// (Garbage values can change a kernel's path: the attention's exact pass runs where a block's rows' maxima
// lie far apart, which is why removing its global loads is left out.)
import { getGpu, lastGpuError, matrixConfig } from '../backend/webgpu/device.js';
import { attentionTune, mmaAttentionRows, prefillAttentionWgslFor } from '../backend/webgpu/mma-attention.js';
import { linearMmaWgsl, MMA_TILES, type MmaTile } from '../backend/webgpu/mma-kernels.js';
import { prefillAttentionInputs, randomBuffer } from './prefill-inputs.js';
import { medianDispatchSeconds } from './gpu-bandwidth.js';

const arg = (name: string, def: string) => { const i = process.argv.indexOf(`--${name}`); return i > 0 ? process.argv[i + 1] : def; };
const ONLY = arg('only', 'all'), T = Number(arg('tokens', '2048'));
type Variant = { name: string; code: string; rows?: number; tile?: MmaTile; xHalf?: boolean };

/** `code` with every match of `re` replaced; a pattern that no longer matches the kernel is an error */
function cut(code: string, re: RegExp, to: string): string {
  if (!re.test(code)) throw new Error(`the kernel no longer has ${re}`);
  return code.replace(re, to);
}
/** statements that run only when the step uniform holds an impossible value (so the compiler keeps what they read) */
const never = (cond: string) => `if (${cond}) { $1 }`;

async function main() {
  const gpu = await getGpu();
  if (!gpu) { console.log(`no WebGPU adapter: ${lastGpuError}`); return; }
  const { device } = gpu, cfg = matrixConfig(device);
  if (!cfg) { console.log('this adapter has no f16 subgroup matrices: nothing to ablate'); return; }
  console.log(`device: ${gpu.adapterName}`);
  const fill = (bytes: number, f32: boolean) => randomBuffer(device, bytes, f32);
  // ms per call: median of `reps` submissions of `calls` dispatches (after one that warms up)
  const time = async (pipe: GPUComputePipeline, group: GPUBindGroup, grid: [number, number], calls = 3, reps = 3) =>
    1000 * await medianDispatchSeconds(device, (pass) => { pass.setPipeline(pipe); pass.setBindGroup(0, group); pass.dispatchWorkgroups(...grid); }, calls, reps);
  const run = async (title: string, flop: number, variants: Variant[], buffers: (v: Variant) => [number, GPUBuffer][], grid: (v: Variant) => [number, number]) => {
    const ready: { v: Variant; pipe: GPUComputePipeline; group: GPUBindGroup; ms: number[] }[] = [];
    for (const v of variants) {
      const module = device.createShaderModule({ code: v.code });
      const errors = (await module.getCompilationInfo()).messages.filter((m) => m.type === 'error');
      if (errors.length) { console.log(`${v.name}: compile error ${errors[0].lineNum}: ${errors[0].message}`); continue; }
      device.pushErrorScope('validation');
      const pipe = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
      // (every variant still reads every buffer: the parts removed are stores, products and barriers)
      const group = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: buffers(v).map(([binding, buffer]) => ({ binding, resource: { buffer } })) });
      const e = await device.popErrorScope();
      if (e) { console.log(`${v.name}: ${e.message.split('\n')[0]}`); continue; }
      ready.push({ v, pipe, group, ms: [] });
    }
    for (let round = 0; round < 3; round++) for (const r of ready) r.ms.push(await time(r.pipe, r.group, grid(r.v)));
    console.log(`\n${title}\n| variant | ms (three rounds) | TFLOP/s (median) |\n| --- | --- | --- |`);
    for (const r of ready) console.log(`| ${r.v.name} | ${r.ms.map((x) => x.toFixed(3)).join(' / ')} | ${(flop / ([...r.ms].sort((a, b) => a - b)[1] / 1e3) / 1e12).toFixed(1)} |`);
  };

  if (ONLY === 'all' || ONLY === 'attention') {
    const [nH, nKV] = arg('heads', '32/32').split('/').map(Number), ctx = Number(arg('context', '32768'));
    const HD = 128, P = 16;
    const tune = attentionTune(HD, device.limits.maxComputeWorkgroupStorageSize);
    if (!tune || tune.carry === undefined) { console.log('the default attention layout is not the carried kernel: nothing to ablate'); return; }
    const base = prefillAttentionWgslFor({ nHeads: nH, nKV, headDim: HD, pageSize: P }, cfg, tune);
    const impossible = 'step.pad == 7u';
    const parts: [string, (c: string) => string][] = [
      ['as it is', (c) => c],
      ['no key/value staging stores', (c) => cut(c, /(kvs\[d \+ 2u \* w\] = kp\.x;[^\n]*vp\.y;)/g, never(impossible))],
      ['no S stores', (c) => cut(c, /(subgroupMatrixStore<row_major>\(&sf, fb \+ \d+u, sm\d, LDS\);)/g, never(impossible))],
      ['no P stores', (c) => cut(c, /let ph = vec4<f16>\(p\); (sh\[pr[^}]*)}/g, `let ph = vec4<f16>(p); ${never(impossible)} }`)],
      ['no exp2', (c) => cut(c, /exp2\(s(\d) - vec4<f32>\(M\)\)/g, '(s$1 - vec4<f32>(M))')],
      ['no barriers after S and P', (c) => cut(cut(c, /(sm1, LDS\);\n)    workgroupBarrier\(\);/g, '$1'), /(ph\.w; }\n)    workgroupBarrier\(\);/g, '$1')],
      ['no Q Kᵀ products', (c) => cut(c, /sm\d = subgroupMatrixMultiplyAccumulate\(q\d, k\d, sm\d\);/g, '')],
      ['no P V products', (c) => cut(c, /acc\d = subgroupMatrixMultiplyAccumulate\(p\d, subgroupMatrixLoad[^;]*;/g, '')],
      ['no rescale of the accumulators', (c) => cut(c, /acc\d = subgroupMatrixScalarMultiply\(acc\d, alpha\);/g, '')],
    ];
    const variants = parts.map(([name, f]) => ({ name, code: f(base), rows: mmaAttentionRows(tune) }));
    const { entries, flop, start, destroy } = prefillAttentionInputs(device, { nH, nKV, headDim: HD, pageSize: P, tokens: T, context: ctx });
    await run(`prefill attention ${nH}/${nKV} heads, ${T} queries after ${start}, layout ${JSON.stringify(tune)}`, flop, variants,
      () => entries, (v) => [Math.ceil(T / v.rows!), nH]);
    destroy();
  }

  if (ONLY === 'all' || ONLY === 'products') {
    const N = 22016, Kd = 4096, tile = MMA_TILES[0], double = { ...tile, double: true };
    const spec = { type: 'f16' as const, N, K: Kd, add: false, bias: false };
    const base = linearMmaWgsl(spec, cfg, tile), impossible = 'x[0].x == 12345.0';
    const variants: Variant[] = [
      { name: `as it is ${JSON.stringify(tile)}`, code: base, tile },
      { name: 'two staged tiles in turn (one barrier per K step)', code: linearMmaWgsl(spec, cfg, double), tile: double },
      ...[4, 8, 16].map((group) => ({ name: `workgroups in groups of ${group} token tiles`, code: linearMmaWgsl(spec, cfg, { ...tile, group }), tile })),
      { name: 'x stored as f16', code: linearMmaWgsl({ ...spec, xHalf: true }, cfg, tile), tile, xHalf: true },
      ...[4, 8, 16].map((group) => ({ name: `x stored as f16, groups of ${group}`, code: linearMmaWgsl({ ...spec, xHalf: true }, cfg, { ...tile, group }), tile, xHalf: true })),
      { name: 'no staging stores', code: cut(cut(base, /(stageX\[d\] = px\d\.x;[^\n]*)/g, never(impossible)), /(for \(var i = 0u; i < 4u; i\+\+\) \{ stageW[^\n]*} )}/g, `${never(impossible)} }`), tile },
      { name: 'no matrix products', code: cut(base, /acc\d+ = subgroupMatrixMultiplyAccumulate\([^;]*;/g, ''), tile },
      { name: 'no barriers', code: cut(base, /\n {4}workgroupBarrier\(\);/g, '\n'), tile },
    ];
    const data = fill(N * Kd * 2, false), x = fill(T * Kd * 4, true), xh = fill(T * Kd * 2, false), y = device.createBuffer({ size: T * N * 4, usage: GPUBufferUsage.STORAGE });
    await run(`prefill product ${N} x ${Kd} (the 7B shape's gate+up), f16 weights, ${T} tokens`, 2 * T * N * Kd, variants,
      (v) => [[0, v.xHalf ? xh : x], [1, y], [2, data]], (v) => [N / v.tile!.BN, T / v.tile!.BM]);
    for (const b of [data, x, xh, y]) b.destroy();
  }
  device.destroy();
  process.exit(0);
}
main().catch((e) => { console.error(e instanceof Error ? e.message : e); process.exit(1); });
