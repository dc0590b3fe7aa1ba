// Run as its own Node process by device.ts: finds which Vulkan driver gives a WebGPU adapter, if any.
// Dawn writes its driver warnings (missing libraries, unsuitable devices, with its build machine's
// source paths) straight to the process's stderr; here they land in the parent's pipe, which shows
// them only when asked (--verbose), so a machine without a GPU sees one clear error instead.
// Prints one JSON line: { "driver": "hardware" | "software" | null, "onCpu": boolean }.
import { existsSync } from 'node:fs';
import { isCpuAdapter, SWIFTSHADER_ICD } from './device.js';

const software = process.argv.includes('--software');
const { create } = await import('webgpu') as unknown as { create: (o: string[]) => GPU };
const found = async () => (await create([]).requestAdapter({ powerPreference: 'high-performance' }));
// (onCpu: an adapter found without asking for SwiftShader that is a CPU implementation all the same, Mesa's lavapipe)
const first = await found(), onCpu = isCpuAdapter((first as { info?: GPUAdapterInfo } | null)?.info);
let driver: 'hardware' | 'software' | null = first ? 'hardware' : null;
if (!driver && software && !process.env.VK_DRIVER_FILES && existsSync(SWIFTSHADER_ICD)) {
  process.env.VK_DRIVER_FILES = SWIFTSHADER_ICD; // read by the Vulkan loader when the next instance is made
  if (await found()) driver = 'software';
}
process.stdout.write(`${JSON.stringify({ driver, onCpu: driver === 'software' || onCpu })}\n`);
process.exit(0); // (dawn.node's instance would otherwise keep the process alive a while)
