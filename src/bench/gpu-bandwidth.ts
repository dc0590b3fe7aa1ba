// Memory bandwidth of the GPU measured through WebGPU in the same run as a benchmark: a buffer copy
// (copyBufferToBuffer, bytes read + written), a compute-shader copy, and a compute-shader read (every
// 16-byte word read once, summed per thread): the ceiling that read-bound attention kernels aim at.

const READ_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> sink: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let threads = nwg.x * 256u; var acc = vec4<u32>(0u);
  for (var i = gid.x; i < arrayLength(&src); i += threads) { acc ^= src[i]; }
  if (all(acc == vec4<u32>(0x12345678u))) { sink[gid.x] = acc.x; } // practically never: keeps the reads
}`;

const COPY_WGSL = /* wgsl */ `
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let threads = nwg.x * 256u;
  for (var i = gid.x; i < arrayLength(&src); i += threads) { dst[i] = src[i]; }
}`;

export interface Bandwidth { copyEngineGBs: number; shaderCopyGBs: number; shaderReadGBs: number }

const median = (a: number[]) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

/** Seconds the GPU takes for the commands `encode` records (median of `reps` submissions after one that
 *  warms up and zero-fills; the queue is idle before each): the timing of every GPU benchmark. */
export async function medianSubmitSeconds(device: GPUDevice, encode: (enc: GPUCommandEncoder) => void, reps: number): Promise<number> {
  const t: number[] = [];
  for (let r = 0; r < reps + 1; r++) {
    const enc = device.createCommandEncoder(); encode(enc); const cmd = enc.finish();
    await device.queue.onSubmittedWorkDone();
    const t0 = performance.now(); device.queue.submit([cmd]); await device.queue.onSubmittedWorkDone();
    if (r > 0) t.push((performance.now() - t0) / 1000);
  }
  return median(t);
}

/** The same for `calls` dispatches recorded into one compute pass by `encode`: seconds per call. */
export async function medianDispatchSeconds(device: GPUDevice, encode: (pass: GPUComputePassEncoder) => void, calls: number, reps: number): Promise<number> {
  return (await medianSubmitSeconds(device, (enc) => {
    const pass = enc.beginComputePass();
    for (let i = 0; i < calls; i++) encode(pass);
    pass.end();
  }, reps)) / calls;
}

export async function measureBandwidth(device: GPUDevice, bytes = 1 << 30): Promise<Bandwidth> {
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
  const a = device.createBuffer({ size: bytes, usage }), b = device.createBuffer({ size: bytes, usage });
  const sink = device.createBuffer({ size: 1 << 22, usage });
  const time = (encode: (enc: GPUCommandEncoder) => void, reps = 8): Promise<number> => medianSubmitSeconds(device, encode, reps);
  const kernel = (code: string, out: GPUBuffer) => {
    const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
    const group = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: a } }, { binding: 1, resource: { buffer: out } }] });
    return (enc: GPUCommandEncoder) => { const p = enc.beginComputePass(); p.setPipeline(pipe); p.setBindGroup(0, group); p.dispatchWorkgroups(4096); p.end(); };
  };
  const copyEngine = await time((enc) => enc.copyBufferToBuffer(a, 0, b, 0, bytes));
  const shaderCopy = await time(kernel(COPY_WGSL, b));
  const shaderRead = await time(kernel(READ_WGSL, sink));
  a.destroy(); b.destroy(); sink.destroy();
  return { copyEngineGBs: (2 * bytes) / copyEngine / 1e9, shaderCopyGBs: (2 * bytes) / shaderCopy / 1e9, shaderReadGBs: bytes / shaderRead / 1e9 };
}
