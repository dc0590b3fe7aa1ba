// Getting a WebGPU device: the browser's navigator.gpu, or Dawn through the `webgpu` package in Node.

/** The process environment in Node (a browser has none: an empty object). */
export const processEnv = (): Record<string, string | undefined> =>
  (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env ?? {};

export interface GpuContext { device: GPUDevice; adapterName: string; hasTimestamps: boolean }

let cached: Promise<GpuContext | null> | null = null;
// dawn.node tears its instance down when the GPU object is garbage-collected, crashing the device's
// work in flight (a segfault some time after submit). Keep the instance and adapter alive for good.
const keepAlive: unknown[] = [];

/** Debian's chromium package ships SwiftShader, a Vulkan driver that runs on the CPU. */
export const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

export interface GpuOptions {
  /** where no hardware adapter exists, fall back to SwiftShader if installed (tests; QUEST_WEBGPU_SOFTWARE=1) */
  software?: boolean;
}

/** A device, or null (with the reason in `lastGpuError`) where no adapter exists. */
export function getGpu(options: GpuOptions = {}): Promise<GpuContext | null> {
  const env = processEnv();
  const software = options.software ?? env.QUEST_WEBGPU_SOFTWARE === '1';
  cached ??= (async () => {
    const browserGpu: GPU | undefined = (globalThis as { navigator?: { gpu?: GPU } }).navigator?.gpu;
    let create: ((o: string[]) => GPU) | null = null;
    const inNode = !!(globalThis as { process?: { versions?: { node?: string } } }).process?.versions?.node;
    if (!browserGpu && !inNode) { lastGpuError = 'this browser has no WebGPU (navigator.gpu is missing: it needs a recent Chrome, Edge or Safari, or Firefox with WebGPU on, and a secure context: https or localhost)'; return null; }
    if (!browserGpu) {
      try {
        const mod = await import('webgpu') as unknown as { create: (o: string[]) => GPU; globals: Record<string, unknown> };
        Object.assign(globalThis, mod.globals);
        create = mod.create;
      } catch (e) { lastGpuError = `the webgpu package could not load: ${(e as Error).message}`; return null; }
    }
    if (create && !env.XDG_RUNTIME_DIR) env.XDG_RUNTIME_DIR = (await import('node:os')).tmpdir(); // Vulkan loaders complain without it
    let probe: Awaited<ReturnType<typeof probeDriver>>;
    if (create && env.QUEST_VERBOSE !== '1') {
      // a child process finds the driver first, so Dawn's driver warnings never reach our stderr
      probe = await probeDriver(software);
      const driver = probe?.driver;
      if (driver === null) { lastGpuError = `${NO_ADAPTER} (--verbose shows the drivers' messages)`; return null; }
      if (driver === 'software') env.VK_DRIVER_FILES = SWIFTSHADER_ICD;
    }
    let gpuObj: GPU | null = null;
    const adapterFrom = async (gpu: GPU) => { keepAlive.push(gpu); gpuObj = gpu; const a = await gpu.requestAdapter({ powerPreference: 'high-performance' }); keepAlive.push(a); return a; };
    // Dawn's toggles (Node only; browsers cannot set them): shader-f16 on NVIDIA's Vulkan driver, and the
    // experimental subgroup-matrix feature (tensor cores) that allow_unsafe_apis exposes
    // (timestamps unrounded: Dawn rounds them to 2^16 ns by default, too coarse for one kernel's time)
    // On a hardware adapter the bounds checks that Dawn adds to every array access in a shader are dropped
    // (disable_robustness; QUEST_GPU_ROBUSTNESS=1 keeps them): only our own kernels run, each tested against
    // float64 with the checks off too, and the checks cost the tensor-core products a third of their speed
    // (H200: 128-146 -> 183-209 TFLOP/s in prefill, docs/results.md, session 25). CPU adapters keep them,
    // and so does --verbose (no probe).
    const unchecked = probe?.driver === 'hardware' && !probe.onCpu && env.QUEST_GPU_ROBUSTNESS !== '1';
    const enable = [...(env.QUEST_NO_SUBGROUP_MATRIX === '1' ? [] : ['allow_unsafe_apis', 'vulkan_enable_f16_on_nvidia']), ...(unchecked ? ['disable_robustness'] : [])];
    const toggles = [...(enable.length ? [`enable-dawn-features=${enable.join(',')}`] : []), 'disable-dawn-features=timestamp_quantization'];
    let adapter = await adapterFrom(browserGpu ?? create!(toggles));
    // (node:fs is imported here only: browsers never reach this branch)
    if (!adapter && create && software && !env.VK_DRIVER_FILES && (await import('node:fs')).existsSync(SWIFTSHADER_ICD)) {
      // the Vulkan loader reads these when an instance is created, so a second instance picks them up
      env.VK_DRIVER_FILES = SWIFTSHADER_ICD;
      adapter = await adapterFrom(create(toggles));
    }
    if (!adapter) { lastGpuError = NO_ADAPTER; return null; }
    const hasTimestamps = adapter.features.has('timestamp-query');
    // subgroup reductions where every subgroup has 32 lanes (NVIDIA): the kernels assume that width
    const ai = (adapter as { info?: GPUAdapterInfo & { subgroupMinSize?: number; subgroupMaxSize?: number } }).info;
    const sub32 = adapter.features.has('subgroups' as GPUFeatureName) && ai?.subgroupMinSize === 32 && ai?.subgroupMaxSize === 32
      && env.QUEST_NO_SUBGROUPS !== '1';
    const mma = sub32 && env.QUEST_NO_SUBGROUP_MATRIX !== '1' ? f16MatrixConfig(adapter) : null;
    const device = await adapter.requestDevice({
      requiredFeatures: [...(hasTimestamps ? ['timestamp-query' as GPUFeatureName] : []), ...(sub32 ? ['subgroups' as GPUFeatureName] : []),
        ...(mma ? ['shader-f16', SUBGROUP_MATRIX] as GPUFeatureName[] : [])],
      requiredLimits: {
        maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
        maxBufferSize: adapter.limits.maxBufferSize,
        maxComputeWorkgroupStorageSize: adapter.limits.maxComputeWorkgroupStorageSize,
      },
    });
    // errors that WebGPU reports asynchronously (invalid shaders, out-of-memory) are kept and thrown
    // by the next call that checks (takeDeviceError), instead of only being printed
    if (sub32) subgroup32Devices.add(device);
    // (Node: the probe's verdict, which also knows SwiftShader by the driver it chose; browsers: the adapter's info)
    if (probe?.onCpu || isCpuAdapter((adapter as { info?: GPUAdapterInfo }).info)) cpuAdapterDevices.add(device);
    if (mma) {
      // the spelling of loads and stores that computes right on this device (a self-test), else no tensor cores
      const syntax = await (await import('./mma-selftest.js')).workingMatrixSyntax(device, mma).catch(() => null);
      if (syntax) matrixConfigs.set(device, { ...mma, syntax });
      // 8-bit matrices (i8 -> i32) where listed and asked for (QUEST_INT8_MMA=1: their kernel is not yet
      // measured on a GPU, so neither is this self-test run by default): how their packed loads count offsets
      const i8 = syntax && env.QUEST_INT8_MMA === '1' ? int8MatrixShape(adapter) : null;
      const units = i8 && await (await import('./mma-selftest.js')).workingInt8Units(device, syntax!).catch(() => null);
      if (i8 && units) int8Configs.set(device, { ...i8, syntax: syntax!, units });
    }
    // int8 4-way dot products in WGSL (dot4I8Packed; DP4A on GPUs that have it): Q4_0 products use them
    const langs = (gpuObj as GPU | null)?.wgslLanguageFeatures as ReadonlySet<string> | undefined;
    if (langs?.has('packed_4x8_integer_dot_product') && env.QUEST_Q4_DOT !== 'float') intDot4Devices.add(device);
    device.addEventListener('uncapturederror', (e) => { deviceErrors.push((e as GPUUncapturedErrorEvent).error.message); });
    device.lost.then((l) => { if (l.reason !== 'destroyed') deviceErrors.push(`the GPU device was lost: ${l.message}`); });
    const info = (adapter as { info?: GPUAdapterInfo }).info;
    return { device, adapterName: info ? `${info.vendor} ${info.description || info.device || info.architecture}`.trim() : 'WebGPU adapter', hasTimestamps };
  })();
  return cached;
}

export let lastGpuError = '';
const NO_ADAPTER = 'no WebGPU adapter (no GPU driver; for a software one: apt-get install chromium libvulkan1, then QUEST_WEBGPU_SOFTWARE=1)';

/** Node: which driver gives an adapter, asked of adapter-probe.js in a child process (its stderr, where
 *  Dawn writes, is dropped); undefined where the probe itself failed (then we look in-process). */
async function probeDriver(software: boolean): Promise<{ driver: 'hardware' | 'software' | null; onCpu: boolean } | undefined> {
  const { execFile } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const script = fileURLToPath(new URL('./adapter-probe.js', import.meta.url));
  return new Promise((resolve) => {
    execFile(process.execPath, [script, ...(software ? ['--software'] : [])], { timeout: 120_000 }, (_err, stdout) => {
      try { resolve(JSON.parse(String(stdout).trim().split('\n').pop()!)); } catch { resolve(undefined); }
    });
  });
}

const deviceErrors: string[] = [];
/** Throws the first WebGPU error reported since the last call, if any. */
export function throwDeviceError(): void {
  if (deviceErrors.length) { const m = deviceErrors.splice(0); throw new Error(`WebGPU error: ${m[0].split('\n')[0]}${m.length > 1 ? ` (and ${m.length - 1} more)` : ''}`); }
}

/** Whether an adapter's info names a CPU implementation (a fallback adapter, SwiftShader, Mesa's lavapipe). */
export function isCpuAdapter(info: (GPUAdapterInfo & { isFallbackAdapter?: boolean }) | undefined | null): boolean {
  return !!info && (info.isFallbackAdapter === true || /llvmpipe|lavapipe|swiftshader/i.test(`${info.vendor} ${info.architecture} ${info.device} ${info.description}`));
}

const cpuAdapterDevices = new WeakSet<GPUDevice>();
/** Whether this device runs on the CPU (SwiftShader, lavapipe, a browser's fallback adapter): kernels
 *  without barriers suit it better (see linearThreadWgsl). */
export function onCpuAdapter(device: GPUDevice): boolean { return cpuAdapterDevices.has(device); }

const subgroup32Devices = new WeakSet<GPUDevice>();
/** Whether kernels may use 32-lane subgroup operations on this device. */
export function hasSubgroups32(device: GPUDevice): boolean { return subgroup32Devices.has(device); }

/** Shape of one subgroup-matrix multiply (M x K times K x N): f16 operands, f32 results; and how this
 *  Dawn spells loads and stores (see mma-kernels.ts). */
export interface MatrixConfig { M: number; N: number; K: number; syntax: 'template' | 'bool' }
const SUBGROUP_MATRIX = 'chromium-experimental-subgroup-matrix';
const matrixConfigs = new WeakMap<GPUDevice, MatrixConfig>();

/** The adapter's f16 -> f32 subgroup-matrix config with the most work per multiply (read from the
 *  adapter: 16x16x16 on NVIDIA, other shapes elsewhere), or null without shader-f16 and the feature. */
function f16MatrixConfig(adapter: GPUAdapter): Omit<MatrixConfig, 'syntax'> | null {
  if (!adapter.features.has('shader-f16') || !adapter.features.has(SUBGROUP_MATRIX as GPUFeatureName)) return null;
  type Cfg = MatrixConfig & { componentType: string; resultComponentType: string };
  const cfgs = ((adapter as { info?: { subgroupMatrixConfigs?: Cfg[] } }).info?.subgroupMatrixConfigs ?? [])
    .filter((c) => c.componentType === 'f16' && c.resultComponentType === 'f32')
    .sort((a, b) => b.M * b.N * b.K - a.M * a.N * a.K);
  return cfgs.length ? { M: cfgs[0].M, N: cfgs[0].N, K: cfgs[0].K } : null;
}

/** The f16 subgroup-matrix config where kernels may use tensor cores (and shader-f16); else null. */
export function matrixConfig(device: GPUDevice): MatrixConfig | null { return matrixConfigs.get(device) ?? null; }

/** The 8-bit subgroup-matrix config (i8 operands packed four to an i32, i32 results): its shape, and
 *  whether this Dawn counts the packed loads' offsets and strides in words or in 8-bit elements (the
 *  proposal changed from one to the other in 2026; a self-test decides, mma-selftest.ts). */
export interface Int8MatrixConfig { M: number; N: number; K: number; syntax: MatrixConfig['syntax']; units: 'words' | 'elems' }
const int8Configs = new WeakMap<GPUDevice, Int8MatrixConfig>();
/** The adapter's i8 -> i32 config of 16 x 16 x 32 (the one the int8 kernels are written for), or null. */
function int8MatrixShape(adapter: GPUAdapter): { M: number; N: number; K: number } | null {
  type Cfg = { M: number; N: number; K: number; componentType: string; resultComponentType: string };
  const cfgs = (adapter as { info?: { subgroupMatrixConfigs?: Cfg[] } }).info?.subgroupMatrixConfigs ?? [];
  return cfgs.some((c) => c.componentType === 'i8' && c.resultComponentType === 'i32' && c.M === 16 && c.N === 16 && c.K === 32) ? { M: 16, N: 16, K: 32 } : null;
}
/** The 8-bit subgroup-matrix config where int8 kernels may use tensor cores; else null. */
export function int8MatrixConfig(device: GPUDevice): Int8MatrixConfig | null { return int8Configs.get(device) ?? null; }

const intDot4Devices = new WeakSet<GPUDevice>();
/** Whether kernels may use WGSL's packed 4x8-bit integer dot products on this device. */
export function hasIntDot4(device: GPUDevice): boolean { return intDot4Devices.has(device); }
