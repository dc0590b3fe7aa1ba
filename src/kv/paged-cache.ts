import { wasm } from '../backend/wasm/runtime.js';
// Paged KV cache. Tokens live in pages of `pageSize`; within a layer the storage is laid out
// [page][kvHead][slot][headDim], so one KV head's page is contiguous (what a page-sparse kernel reads).
// Each page also keeps, per KV head and channel, the element-wise min and max of its keys (after RoPE):
// Quest's page metadata, updated as tokens are appended, the partly filled last page included.

// K and V live in the WebAssembly memory when there is one, so the SIMD attention kernel reads them in
// place; a finalizer returns the space when a cache is dropped without dispose().
const reclaim = typeof FinalizationRegistry !== 'undefined'
  ? new FinalizationRegistry<{ ptr: number; bytes: number }[]>((blocks) => { for (const b of blocks) wasm()?.release(b.ptr, b.bytes); })
  : null;

function allocF32(n: number, owned: { ptr: number; bytes: number }[]): Float32Array {
  const rt = wasm();
  const ptr = rt ? rt.alloc(n * 4) : -1;
  if (ptr < 0) return new Float32Array(n);
  owned.push({ ptr, bytes: n * 4 });
  const a = rt!.f32(ptr, n); a.fill(0);
  return a;
}

export class LayerKV {
  k!: Float32Array;
  v!: Float32Array;
  kmin!: Float32Array; // [page][kvHead][headDim]
  kmax!: Float32Array;
  length = 0;
  private capacityPages: number;
  private owned: { ptr: number; bytes: number }[] = [];

  constructor(readonly nKV: number, readonly headDim: number, readonly pageSize: number, initialTokens: number) {
    this.capacityPages = Math.max(1, Math.ceil(initialTokens / pageSize));
    this.allocate(this.capacityPages);
  }

  private allocate(pages: number): void {
    const old = this.owned, prev = this.k ? [this.k, this.v, this.kmin, this.kmax] : null;
    if (prev) reclaim?.unregister(this);
    this.owned = [];
    this.k = allocF32(pages * this.pageFloats, this.owned); this.v = allocF32(pages * this.pageFloats, this.owned);
    this.kmin = allocF32(pages * this.nKV * this.headDim, this.owned); this.kmax = allocF32(pages * this.nKV * this.headDim, this.owned);
    if (prev) { this.k.set(prev[0].subarray(0, this.k.length)); this.v.set(prev[1].subarray(0, this.v.length)); this.kmin.set(prev[2].subarray(0, this.kmin.length)); this.kmax.set(prev[3].subarray(0, this.kmax.length)); }
    for (const b of old) wasm()?.release(b.ptr, b.bytes);
    this.capacityPages = pages;
    if (this.owned.length) reclaim?.register(this, this.owned, this);
  }

  /** Whether K/V are in the WebAssembly memory (byte offsets kPtr / vPtr). */
  get inWasm(): boolean { return this.owned.length > 0; }
  get kPtr(): number { return this.k.byteOffset; }
  get vPtr(): number { return this.v.byteOffset; }

  /** Frees the storage now (instead of when the cache is garbage-collected). */
  dispose(): void {
    reclaim?.unregister(this);
    for (const b of this.owned) wasm()?.release(b.ptr, b.bytes);
    this.owned = [];
    this.k = this.v = this.kmin = this.kmax = new Float32Array(0);
    this.length = 0; this.capacityPages = 0;
  }

  get pageFloats(): number { return this.nKV * this.pageSize * this.headDim; }
  get numPages(): number { return Math.ceil(this.length / this.pageSize); }

  /** Offset of token t's vector for KV head g in `k` / `v`. */
  offset(t: number, g: number): number {
    const page = Math.floor(t / this.pageSize), slot = t - page * this.pageSize;
    return ((page * this.nKV + g) * this.pageSize + slot) * this.headDim;
  }

  /** Offset of page p's metadata for KV head g in `kmin` / `kmax`. */
  metaOffset(p: number, g: number): number { return (p * this.nKV + g) * this.headDim; }

  private grow(pages: number): void {
    if (pages <= this.capacityPages) return;
    this.allocate(Math.max(pages, this.capacityPages * 2));
  }

  /** Appends one token: k and v hold nKV*headDim values from ko / vo. */
  append(k: Float32Array, ko: number, v: Float32Array, vo: number): void {
    const t = this.length, hd = this.headDim, P = this.pageSize;
    const page = Math.floor(t / P), first = t % P === 0;
    this.grow(page + 1);
    for (let g = 0; g < this.nKV; g++) {
      const o = this.offset(t, g), mo = this.metaOffset(page, g);
      for (let i = 0; i < hd; i++) {
        const kv = k[ko + g * hd + i];
        this.k[o + i] = kv;
        this.v[o + i] = v[vo + g * hd + i];
        if (first || kv < this.kmin[mo + i]) this.kmin[mo + i] = kv;
        if (first || kv > this.kmax[mo + i]) this.kmax[mo + i] = kv;
      }
    }
    this.length = t + 1;
  }

  /** Makes this layer a copy of `o` (same shape). */
  copyFrom(o: LayerKV): void {
    this.allocate(o.capacityPages);
    this.k.set(o.k); this.v.set(o.v); this.kmin.set(o.kmin); this.kmax.set(o.kmax);
    this.length = o.length;
  }

  /** Drops tokens from `length` on (used to rewind a sequence); page metadata is rebuilt. */
  truncate(length: number): void {
    if (length >= this.length) return;
    this.length = length;
    const P = this.pageSize, last = Math.floor(length / P);
    if (length % P === 0) return;
    const hd = this.headDim;
    for (let g = 0; g < this.nKV; g++) {
      const mo = this.metaOffset(last, g);
      for (let i = 0; i < hd; i++) { this.kmin[mo + i] = Infinity; this.kmax[mo + i] = -Infinity; }
      for (let t = last * P; t < length; t++) {
        const o = this.offset(t, g);
        for (let i = 0; i < hd; i++) {
          const kv = this.k[o + i];
          if (kv < this.kmin[mo + i]) this.kmin[mo + i] = kv;
          if (kv > this.kmax[mo + i]) this.kmax[mo + i] = kv;
        }
      }
    }
  }
}

export class PagedKVCache {
  readonly layers: LayerKV[];
  constructor(nLayers: number, readonly nKV: number, readonly headDim: number, readonly pageSize: number, initialTokens = 1024) {
    if (!Number.isInteger(pageSize) || pageSize < 1) throw new Error(`page size must be a positive integer, got ${pageSize}`);
    this.layers = Array.from({ length: nLayers }, () => new LayerKV(nKV, headDim, pageSize, initialTokens));
  }
  get length(): number { return this.layers[0]?.length ?? 0; }
  truncate(length: number): void { for (const l of this.layers) l.truncate(length); }
  dispose(): void { for (const l of this.layers) l.dispose(); }
  /** Bytes of K and V held (what a dense decode step reads). */
  get bytes(): number { return this.layers.reduce((a, l) => a + (l.k.byteLength + l.v.byteLength), 0); }
}
