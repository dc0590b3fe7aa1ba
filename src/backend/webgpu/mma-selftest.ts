// Run once when a device with subgroup matrices is created (device.ts): a tiny product whose answer is
// known, in each spelling of subgroup-matrix loads and stores (mma-kernels.ts, MatrixSyntax). The first
// spelling that compiles and computes right is the device's; with none, the kernels
// keep the fallback path. Subgroup matrices are an experimental Dawn feature: this catches a spelling
// this Dawn does not know, and a driver that gets row- or column-major loads wrong, before any model runs.
import type { MatrixConfig } from './device.js';
import { matrixLoad, matrixStore, type MatrixSyntax } from './mma-kernels.js';
import { readBuffer } from './decode-attention.js';
import { f32ToF16 } from '../../model/tensor.js';

/** left (M x K) = the identity's first rows, staged in workgroup memory; right (K x N) = B, where
 *  B(k, n) = b[n * 64 + k] read column-major and b[k * 64 + n] row-major: out holds, row-major,
 *  (1) L·B column-major from storage plus the result matrix out already held, (2) L·B row-major from
 *  storage, (3) L·B column-major from workgroup memory: every kind of load and store the kernels use. */
function selfTestWgsl(syntax: MatrixSyntax, c: Omit<MatrixConfig, 'syntax'>): string {
  const left = `subgroup_matrix_left<f16, ${c.K}, ${c.M}>`, right = `subgroup_matrix_right<f16, ${c.N}, ${c.K}>`, res = `subgroup_matrix_result<f32, ${c.N}, ${c.M}>`;
  const MN = c.M * c.N;
  return `enable f16;\nenable chromium_experimental_subgroup_matrix;
@group(0) @binding(0) var<storage, read> b: array<f16>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
var<workgroup> eye: array<f16, ${c.M * c.K}>;
var<workgroup> wb: array<f16, 1024>;
@compute @workgroup_size(32)
fn main(@builtin(local_invocation_index) tid: u32) {
  for (var i = tid; i < ${c.M * c.K}u; i += 32u) { eye[i] = select(f16(0.0), f16(1.0), i / ${c.K}u == i % ${c.K}u); }
  for (var i = tid; i < 1024u; i += 32u) { wb[i] = b[i]; }
  workgroupBarrier();
  let l = ${matrixLoad(syntax, left, '&eye', '0u', false, `${c.K}u`)};
  let r1 = subgroupMatrixMultiplyAccumulate(l, ${matrixLoad(syntax, right, '&b', '0u', true, '64u')}, ${matrixLoad(syntax, res, '&out', '0u', false, `${c.N}u`)});
  let r2 = subgroupMatrixMultiplyAccumulate(l, ${matrixLoad(syntax, right, '&b', '0u', false, '64u')}, ${res}());
  let r3 = subgroupMatrixMultiplyAccumulate(l, ${matrixLoad(syntax, right, '&wb', '0u', true, '64u')}, ${res}());
  ${matrixStore(syntax, '&out', '0u', 'r1', `${c.N}u`)};
  ${matrixStore(syntax, '&out', `${MN}u`, 'r2', `${c.N}u`)};
  ${matrixStore(syntax, '&out', `${2 * MN}u`, 'r3', `${c.N}u`)};
}`;
}

async function passes(device: GPUDevice, syntax: MatrixSyntax, c: Omit<MatrixConfig, 'syntax'>): Promise<boolean> {
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code: selfTestWgsl(syntax, c) });
  const compiled = !(await module.getCompilationInfo()).messages.some((m) => m.type === 'error');
  const pipeline = compiled ? device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } }) : null;
  if ((await device.popErrorScope()) || !pipeline) return false;
  // b[i] = i (exact in f16 below 2048); B(k, n) = b[n * 64 + k] column-major, b[k * 64 + n] row-major
  const b = Uint16Array.from({ length: 64 * 16 }, (_, i) => f32ToF16(i));
  const bBuf = device.createBuffer({ size: b.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(bBuf, 0, b);
  const MN = c.M * c.N, size = 3 * MN * 4;
  const out = device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(out, 0, Float32Array.from({ length: MN }, (_, i) => 5000 + i)); // what (1) starts from
  const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [bBuf, out].map((buffer, binding) => ({ binding, resource: { buffer } })) }));
  pass.dispatchWorkgroups(1);
  pass.end();
  device.queue.submit([enc.finish()]);
  const got = new Float32Array(await readBuffer(device, out, size));
  out.destroy(); bBuf.destroy();
  for (let i = 0; i < Math.min(c.M, c.K); i++) for (let n = 0; n < c.N; n++) {
    const at = i * c.N + n;
    if (got[at] !== 5000 + at + n * 64 + i || got[MN + at] !== i * 64 + n || got[2 * MN + at] !== n * 64 + i) return false;
  }
  return true;
}

/** The spelling of subgroup-matrix loads and stores that works on this device, or null. */
export async function workingMatrixSyntax(device: GPUDevice, c: Omit<MatrixConfig, 'syntax'>): Promise<MatrixSyntax | null> {
  for (const syntax of ['template', 'bool'] as const) if (await passes(device, syntax, c)) return syntax;
  return null;
}

/** An 8-bit product (16 x 32 by 32 x 16, i8 packed four to an i32 word, i32 results) with operands staged
 *  in workgroup memory as the int8 kernels stage them, offsets and strides counted in `units`: the left
 *  matrix read at row 0 and at row 16 (so a wrong unit shows in the offset as well as the stride). */
function int8SelfTestWgsl(syntax: MatrixSyntax, units: 'words' | 'elems'): string {
  const e = units === 'words' ? 1 : 4; // (8-bit elements per counted unit: 4 per word)
  const left = 'subgroup_matrix_left<i8, 32, 16>', right = 'subgroup_matrix_right<i8, 16, 32>', res = 'subgroup_matrix_result<i32, 16, 16>';
  return `enable chromium_experimental_subgroup_matrix;
@group(0) @binding(0) var<storage, read> a: array<i32>;
@group(0) @binding(1) var<storage, read> b: array<i32>;
@group(0) @binding(2) var<storage, read_write> out: array<i32>;
var<workgroup> wa: array<i32, 1024>; // (room for either reading of the offsets: 256 words are used)
var<workgroup> wb: array<i32, 512>;
@compute @workgroup_size(32)
fn main(@builtin(local_invocation_index) tid: u32) {
  for (var i = tid; i < 256u; i += 32u) { wa[i] = a[i]; }
  for (var i = tid; i < 128u; i += 32u) { wb[i] = b[i]; }
  workgroupBarrier();
  let r = ${matrixLoad(syntax, right, '&wb', '0u', true, `${8 * e}u`)};
  let c0 = subgroupMatrixMultiplyAccumulate(${matrixLoad(syntax, left, '&wa', '0u', false, `${8 * e}u`)}, r, ${res}());
  let c1 = subgroupMatrixMultiplyAccumulate(${matrixLoad(syntax, left, '&wa', `${128 * e}u`, false, `${8 * e}u`)}, r, ${res}());
  ${matrixStore(syntax, '&out', '0u', 'c0', '16u')};
  ${matrixStore(syntax, '&out', '256u', 'c1', '16u')};
}`;
}

async function int8Passes(device: GPUDevice, syntax: MatrixSyntax, units: 'words' | 'elems'): Promise<boolean> {
  device.pushErrorScope('validation');
  const module = device.createShaderModule({ code: int8SelfTestWgsl(syntax, units) });
  const compiled = !(await module.getCompilationInfo()).messages.some((m) => m.type === 'error');
  const pipeline = compiled ? device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } }) : null;
  if ((await device.popErrorScope()) || !pipeline) return false;
  // A: 32 rows of 32 int8 (two 16-row tiles), B: 16 columns of 32 (column-major), values spread over -127..127
  const A = Int8Array.from({ length: 32 * 32 }, (_, i) => ((i * 37 + 11) % 255) - 127), B = Int8Array.from({ length: 16 * 32 }, (_, i) => ((i * 53 + 5) % 255) - 127);
  const upload = (x: Int8Array) => { const g = device.createBuffer({ size: x.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST }); device.queue.writeBuffer(g, 0, x); return g; };
  const aBuf = upload(A), bBuf = upload(B), size = 2 * 256 * 4;
  const out = device.createBuffer({ size, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC });
  const enc = device.createCommandEncoder(), pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [aBuf, bBuf, out].map((buffer, binding) => ({ binding, resource: { buffer } })) }));
  pass.dispatchWorkgroups(1);
  pass.end();
  device.queue.submit([enc.finish()]);
  const got = new Int32Array(await readBuffer(device, out, size));
  aBuf.destroy(); bBuf.destroy(); out.destroy();
  for (let t = 0; t < 2; t++) for (let m = 0; m < 16; m++) for (let n = 0; n < 16; n++) {
    let want = 0;
    for (let k = 0; k < 32; k++) want += A[(t * 16 + m) * 32 + k] * B[n * 32 + k];
    if (got[t * 256 + m * 16 + n] !== want) return false;
  }
  return true;
}

/** How this device counts the offsets and strides of packed 8-bit matrix loads, or null where neither
 *  reading computes right (then the int8 kernels keep their integer-dot-product form). */
export async function workingInt8Units(device: GPUDevice, syntax: MatrixSyntax): Promise<'words' | 'elems' | null> {
  for (const units of ['words', 'elems'] as const) if (await int8Passes(device, syntax, units)) return units;
  return null;
}
