// Getting a WebGPU device: the browser's navigator.gpu, or Dawn through the `webgpu` package in Node.

export interface GpuContext { device: GPUDevice; adapterName: string; hasTimestamps: boolean }

let cached: Promise<GpuContext | null> | null = null;

/** A device, or null (with the reason in `lastGpuError`) where no adapter exists. */
export function getGpu(): Promise<GpuContext | null> {
  cached ??= (async () => {
    let gpu: GPU | undefined = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
    if (!gpu) {
      try {
        const mod = await import('webgpu') as unknown as { create: (o: string[]) => GPU; globals: Record<string, unknown> };
        Object.assign(globalThis, mod.globals);
        gpu = mod.create([]);
      } catch (e) { lastGpuError = `the webgpu package could not load: ${(e as Error).message}`; return null; }
    }
    const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) { lastGpuError = 'no WebGPU adapter (no GPU driver; for a software one: apt-get install chromium libvulkan1, then source ../shared/gpu/swiftshader.sh)'; return null; }
    const hasTimestamps = adapter.features.has('timestamp-query');
    const device = await adapter.requestDevice({
      requiredFeatures: hasTimestamps ? ['timestamp-query'] : [],
      requiredLimits: {
        maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
        maxBufferSize: adapter.limits.maxBufferSize,
        maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize,
      },
    });
    const info = (adapter as { info?: GPUAdapterInfo }).info;
    return { device, adapterName: info ? `${info.vendor} ${info.description || info.device || info.architecture}`.trim() : 'WebGPU adapter', hasTimestamps };
  })();
  return cached;
}

export let lastGpuError = '';
