// Paged KV cache. Tokens live in pages of `pageSize`; within a layer the storage is laid out
// [page][kvHead][slot][headDim], so one KV head's page is contiguous (what a page-sparse kernel reads).
// Each page also keeps, per KV head and channel, the element-wise min and max of its keys (after RoPE):
// Quest's page metadata, updated as tokens are appended, the partly filled last page included.

export class LayerKV {
  k: Float32Array;
  v: Float32Array;
  kmin: Float32Array; // [page][kvHead][headDim]
  kmax: Float32Array;
  length = 0;
  private capacityPages: number;

  constructor(readonly nKV: number, readonly headDim: number, readonly pageSize: number, initialTokens: number) {
    this.capacityPages = Math.max(1, Math.ceil(initialTokens / pageSize));
    this.k = new Float32Array(this.capacityPages * this.pageFloats);
    this.v = new Float32Array(this.capacityPages * this.pageFloats);
    this.kmin = new Float32Array(this.capacityPages * nKV * headDim);
    this.kmax = new Float32Array(this.capacityPages * nKV * headDim);
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
    const cap = Math.max(pages, this.capacityPages * 2);
    const resize = (a: Float32Array, per: number) => { const b = new Float32Array(cap * per); b.set(a); return b; };
    this.k = resize(this.k, this.pageFloats); this.v = resize(this.v, this.pageFloats);
    this.kmin = resize(this.kmin, this.nKV * this.headDim); this.kmax = resize(this.kmax, this.nKV * this.headDim);
    this.capacityPages = cap;
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
    this.k = o.k.slice(); this.v = o.v.slice(); this.kmin = o.kmin.slice(); this.kmax = o.kmax.slice();
    this.length = o.length; this.capacityPages = o.capacityPages;
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
  /** Bytes of K and V held (what a dense decode step reads). */
  get bytes(): number { return this.layers.reduce((a, l) => a + (l.k.byteLength + l.v.byteLength), 0); }
}
