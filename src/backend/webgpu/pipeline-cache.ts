// Compute pipelines compiled once per device and WGSL text: models, attention runners and sessions of the
// same shapes on one device share them (compiling is the slow part of starting on a software adapter, and
// a server that loads a second model of the same architecture skips most of it too).
const byDevice = new WeakMap<GPUDevice, Map<string, GPUComputePipeline>>();

/** The pipeline of `code` (entry point main) on `device`, compiled on first use; `label` names it in
 *  profiles and errors (the first caller's label is kept). */
export function compiledPipeline(device: GPUDevice, code: string, label: string): GPUComputePipeline {
  let cache = byDevice.get(device);
  if (!cache) { cache = new Map(); byDevice.set(device, cache); }
  let p = cache.get(code);
  if (!p) {
    p = device.createComputePipeline({ label, layout: 'auto', compute: { module: device.createShaderModule({ code }), entryPoint: 'main' } });
    cache.set(code, p);
  }
  return p;
}
