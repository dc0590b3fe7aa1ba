// The WebGPU storage of a family of sequences' KV pages (see kv/page-table.ts): per layer one buffer
// of K pages, one of V pages (f16 pairs as u32, [page][kvHead][slot][hd/2]) and one of key min/max
// ([page][kvHead][min, max][hd/2]). Growing makes larger buffers and copies on the GPU; a page copy
// (copy-on-write) and a metadata rebuild are GPU commands queued in order with the forward passes.
import type { PageStore } from '../../kv/page-table.js';
import * as K from './kernels.js';
import { storageUsage, type GpuModel } from './model.js';

export interface GpuLayerPages { k: GPUBuffer; v: GPUBuffer; meta: GPUBuffer }

export class GpuPageStore implements PageStore {
  layers: GpuLayerPages[] = [];
  capacity = 0;
  /** bumped when the buffers are replaced (sequences rebuild their bind groups) */
  generation = 0;
  private uniform: GPUBuffer | null = null;
  private scratch: GPUBuffer | null = null;

  constructor(readonly m: GpuModel, readonly pageSize: number) {}

  private get hs(): K.HeadsSpec { const c = this.m.config; return { nHeads: c.nHeads, nKV: c.nKVHeads, headDim: c.headDim, pageSize: this.pageSize }; }
  /** bytes of one page of K (or V) in one layer, and of its metadata */
  get kvPageBytes(): number { const c = this.m.config; return c.nKVHeads * this.pageSize * c.headDim * 2; }
  get metaPageBytes(): number { const c = this.m.config; return c.nKVHeads * c.headDim * 4; }

  grow(pages: number): void {
    const d = this.m.device, most = Math.floor(Math.min(d.limits.maxStorageBufferBindingSize, d.limits.maxBufferSize) / this.kvPageBytes);
    if (pages > most) throw new Error(`the KV cache needs ${pages} pages of ${this.kvPageBytes} bytes per layer, over the ${most} one GPU buffer holds here: fewer or shorter sequences`);
    const cap = Math.min(most, Math.max(pages, 64));
    const enc = d.createCommandEncoder();
    const next = Array.from({ length: this.m.config.nLayers }, (_, l) => {
      const mk = (size: number) => d.createBuffer({ size, usage: storageUsage() });
      const nl = { k: mk(cap * this.kvPageBytes), v: mk(cap * this.kvPageBytes), meta: mk(cap * this.metaPageBytes) };
      const old = this.layers[l];
      if (old) for (const k of ['k', 'v', 'meta'] as const) enc.copyBufferToBuffer(old[k], 0, nl[k], 0, old[k].size);
      return nl;
    });
    d.queue.submit([enc.finish()]);
    this.destroyBuffers();
    this.layers = next; this.capacity = cap; this.generation++;
  }

  copyPage(src: number, dst: number, filled: number): void {
    const d = this.m.device, enc = d.createCommandEncoder(), kb = this.kvPageBytes, mb = this.metaPageBytes;
    // (a copy within one buffer is not allowed: through a page-sized scratch buffer)
    this.scratch ??= d.createBuffer({ size: kb, usage: storageUsage() });
    for (const l of this.layers) {
      for (const [b, size] of [[l.k, kb], [l.v, kb], [l.meta, mb]] as const) {
        enc.copyBufferToBuffer(b, src * size, this.scratch, 0, size);
        enc.copyBufferToBuffer(this.scratch, 0, b, dst * size, size);
      }
    }
    this.encodeMeta(enc, dst, filled);
    this.m.device.queue.submit([enc.finish()]);
  }

  rebuildMeta(page: number, filled: number): void {
    const enc = this.m.device.createCommandEncoder();
    this.encodeMeta(enc, page, filled);
    this.m.device.queue.submit([enc.finish()]);
  }

  /** Key min/max of physical page `page` over its first `filled` slots, every layer. */
  private encodeMeta(enc: GPUCommandEncoder, page: number, filled: number): void {
    if (filled === 0) return; // (the first append sets them)
    const d = this.m.device, c = this.m.config;
    this.uniform ??= d.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    d.queue.writeBuffer(this.uniform, 0, new Uint32Array([page, filled, 0, 0]));
    const pipe = this.m.pipeline('pagemeta', () => K.pageMetaWgsl(this.hs));
    const pass = enc.beginComputePass();
    pass.setPipeline(pipe);
    for (const l of this.layers) {
      pass.setBindGroup(0, d.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [l.k, l.meta, this.uniform].map((buffer, binding) => ({ binding, resource: { buffer } })) }));
      pass.dispatchWorkgroups(...K.grid64((c.nKVHeads * c.headDim) / 2));
    }
    pass.end();
  }

  private destroyBuffers(): void { for (const l of this.layers) { l.k.destroy(); l.v.destroy(); l.meta.destroy(); } }

  dispose(): void {
    this.destroyBuffers();
    this.layers = []; this.capacity = 0; this.generation++;
    this.uniform?.destroy(); this.uniform = null;
    this.scratch?.destroy(); this.scratch = null;
  }
}
