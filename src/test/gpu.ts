// The WebGPU device of the GPU tests: a hardware adapter, else SwiftShader (Debian's chromium package)
// where installed, else none, and the tests skip with the reason.
import { getGpu, lastGpuError } from '../backend/webgpu/device.js';

export const gpu = await getGpu({ software: true });
export const skipGpu: string | false = gpu ? false : `no WebGPU adapter: ${lastGpuError}`;
if (gpu) process.stderr.write(`# WebGPU tests on: ${gpu.adapterName}\n`);
