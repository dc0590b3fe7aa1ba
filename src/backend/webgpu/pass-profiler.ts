// Where a forward pass's GPU time goes, kernel by kernel (profiling only): a stand-in for the compute pass
// that records each dispatch in a compute pass of its own with timestamp queries around it, so every
// dispatch gets its time; kernels are named by their pipeline's label. Separate passes add a pass boundary
// per dispatch, as the barriers between dependent dispatches already do, so the sum is close to the step.
// Needs 'timestamp-query'.

export interface DispatchTime { name: string; ms: number }

export class PassProfiler {
  private readonly set: GPUQuerySet;
  private readonly resolve: GPUBuffer;
  private readonly read: GPUBuffer;
  private names: string[] = [];

  constructor(private readonly device: GPUDevice, readonly maxDispatches = 2048) {
    this.set = device.createQuerySet({ type: 'timestamp', count: 2 * maxDispatches });
    this.resolve = device.createBuffer({ size: 16 * maxDispatches, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
    this.read = device.createBuffer({ size: 16 * maxDispatches, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
  }

  /** A pass encoder over `enc` whose dispatches are timed one by one (from the first dispatch of this
   *  recording; `finish` resolves them). */
  pass(enc: GPUCommandEncoder): GPUComputePassEncoder {
    this.names = [];
    let pipeline: GPUComputePipeline | null = null;
    const groups = new Map<number, GPUBindGroup>();
    const timed = (run: (p: GPUComputePassEncoder) => void) => {
      const i = this.names.length;
      if (i >= this.maxDispatches) throw new Error(`profiling: more than ${this.maxDispatches} dispatches in one pass`);
      this.names.push(pipeline?.label || '(unnamed)');
      const p = enc.beginComputePass({ timestampWrites: { querySet: this.set, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } });
      p.setPipeline(pipeline!);
      for (const [index, g] of groups) p.setBindGroup(index, g);
      run(p);
      p.end();
    };
    const stand = {
      label: 'profiled pass',
      setPipeline(p: GPUComputePipeline) { pipeline = p; },
      setBindGroup(index: number, g: GPUBindGroup | null) { if (g) groups.set(index, g); else groups.delete(index); },
      dispatchWorkgroups(x: number, y?: number, z?: number) { timed((p) => p.dispatchWorkgroups(x, y, z)); },
      dispatchWorkgroupsIndirect(b: GPUBuffer, o: number) { timed((p) => p.dispatchWorkgroupsIndirect(b, o)); },
      end() { /* (each dispatch's pass is ended as it is recorded) */ },
      pushDebugGroup() {}, popDebugGroup() {}, insertDebugMarker() {},
    };
    return stand as unknown as GPUComputePassEncoder;
  }

  /** Resolves the recording's timestamps into the read buffer (encode after the recording). */
  finish(enc: GPUCommandEncoder): void {
    const n = this.names.length;
    if (!n) return;
    enc.resolveQuerySet(this.set, 0, 2 * n, this.resolve, 0);
    enc.copyBufferToBuffer(this.resolve, 0, this.read, 0, 16 * n);
  }

  /** Each dispatch's name and GPU time of the last finished recording (after its commands completed). */
  async times(): Promise<DispatchTime[]> {
    const n = this.names.length;
    await this.read.mapAsync(GPUMapMode.READ, 0, 16 * n);
    const t = new BigUint64Array(this.read.getMappedRange(0, 16 * n).slice(0));
    this.read.unmap();
    return this.names.map((name, i) => ({ name, ms: Number(t[2 * i + 1] - t[2 * i]) / 1e6 }));
  }

  destroy(): void { this.set.destroy(); this.resolve.destroy(); this.read.destroy(); }
}

/** Per-kernel totals of a profile, largest first: calls, ms, share of the sum. */
export function profileTable(times: DispatchTime[], top = 25): string {
  const by = new Map<string, { calls: number; ms: number }>();
  for (const t of times) { const e = by.get(t.name) ?? { calls: 0, ms: 0 }; e.calls++; e.ms += t.ms; by.set(t.name, e); }
  const total = times.reduce((a, t) => a + t.ms, 0);
  const rows = [...by].sort((a, b) => b[1].ms - a[1].ms).slice(0, top);
  return ['| kernel | calls | ms | share | µs per call |', '| --- | --- | --- | --- | --- |',
    ...rows.map(([name, e]) => `| ${name} | ${e.calls} | ${e.ms.toFixed(3)} | ${((100 * e.ms) / total).toFixed(1)}% | ${((1000 * e.ms) / e.calls).toFixed(1)} |`),
    `| all (${times.length} dispatches) | | ${total.toFixed(3)} | 100% | |`].join('\n');
}
