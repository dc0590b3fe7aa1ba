import { wasm } from '../backend/wasm/runtime.js';
import { PageAllocator, PageTable, type PageStore } from './page-table.js';
// Paged KV cache on the CPU. Tokens live in pages of `pageSize`; a page holds, for every layer, the keys
// and values of its tokens laid out [kvHead][slot][headDim] (one KV head's page is contiguous: what a
// page-sparse kernel reads) and, per KV head and channel, the element-wise min and max of its keys
// (after RoPE): Quest's page metadata, updated as tokens are appended, the partly filled last page
// included. Sequences of one family (a session and its forks) share the physical pages through their
// page tables (page-table.ts): a fork copies nothing.

// K and V are f32, or bf16 (`kvType`: half the memory and half the bytes a long-context decode step reads;
// a key or value keeps 8 bits of mantissa, rounded to nearest even). The page min/max are those of the
// stored keys, so Quest's bound holds for what the attention reads; with bf16 keys they are bf16 too, and
// exact (a min or max of bf16 values is one of them).
// K and V live in the WebAssembly memory when there is one, so the SIMD kernels read them in place; a
// finalizer returns the space when a family is dropped without dispose().
const reclaim = typeof FinalizationRegistry !== 'undefined'
  ? new FinalizationRegistry<{ ptr: number; bytes: number }[]>((blocks) => { for (const b of blocks) wasm()?.release(b.ptr, b.bytes); })
  : null;

function allocF32(n: number, owned: { ptr: number; bytes: number }[]): Float32Array {
  const rt = wasm();
  const ptr = rt ? rt.allocZeroed(n * 4) : -1;
  if (ptr < 0) return new Float32Array(n);
  owned.push({ ptr, bytes: n * 4 });
  return rt!.f32(ptr, n);
}

function allocU16(n: number, owned: { ptr: number; bytes: number }[]): Uint16Array {
  const rt = wasm(), bytes = Math.ceil(n / 2) * 4;
  const ptr = rt ? rt.allocZeroed(bytes) : -1;
  if (ptr < 0) return new Uint16Array(n);
  owned.push({ ptr, bytes });
  return new Uint16Array(rt!.memory.buffer, ptr, n);
}

/** How K and V are stored. */
export type KVType = 'f32' | 'bf16';
export const KV_TYPES: readonly KVType[] = ['f32', 'bf16'];
/** K or V storage: f32 values, or bf16 bit patterns. */
export type KVArray = Float32Array | Uint16Array;

const word = new Uint32Array(1), wordF32 = new Float32Array(word.buffer);
/** f32 -> bf16 bits, rounded to nearest even. */
export function toBf16(x: number): number {
  wordF32[0] = x;
  const b = word[0];
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}
/** bf16 bits -> f32 */
export function fromBf16(h: number): number { word[0] = h << 16; return wordF32[0]; }

/** One layer's physical pages: K and V [page][kvHead][slot][headDim], key min/max [page][kvHead][headDim]. */
export class LayerPages {
  k: KVArray;
  v: KVArray;
  kmin: KVArray;
  kmax: KVArray;
  private owned: { ptr: number; bytes: number }[] = [];

  constructor(readonly nKV: number, readonly headDim: number, readonly pageSize: number, readonly kvType: KVType = 'f32') {
    this.k = this.v = this.kmin = this.kmax = this.bf16 ? new Uint16Array(0) : new Float32Array(0);
  }

  get bf16(): boolean { return this.kvType === 'bf16'; }
  /** bytes per stored key or value element */
  get elementBytes(): number { return this.bf16 ? 2 : 4; }
  /** element o of K as f32 */
  key(o: number): number { return this.bf16 ? fromBf16(this.k[o]) : this.k[o]; }
  /** element o of the key minima / maxima as f32 */
  minAt(o: number): number { return this.bf16 ? fromBf16(this.kmin[o]) : this.kmin[o]; }
  maxAt(o: number): number { return this.bf16 ? fromBf16(this.kmax[o]) : this.kmax[o]; }

  get pageFloats(): number { return this.nKV * this.pageSize * this.headDim; }
  get metaFloats(): number { return this.nKV * this.headDim; }
  /** Whether K/V are in the WebAssembly memory (byte offsets k.byteOffset / v.byteOffset). */
  get inWasm(): boolean { return this.owned.length > 0; }

  allocate(pages: number): void {
    const old = this.owned, prev = [this.k, this.v, this.kmin, this.kmax];
    reclaim?.unregister(this);
    this.owned = [];
    const alloc = this.bf16 ? allocU16 : allocF32;
    this.k = alloc(pages * this.pageFloats, this.owned); this.v = alloc(pages * this.pageFloats, this.owned);
    this.kmin = alloc(pages * this.metaFloats, this.owned); this.kmax = alloc(pages * this.metaFloats, this.owned);
    // (each array and its predecessor have the same type)
    [this.k, this.v, this.kmin, this.kmax].forEach((a, i) => (a as Float32Array).set((prev[i] as Float32Array).subarray(0, a.length)));
    for (const b of old) wasm()?.release(b.ptr, b.bytes);
    if (this.owned.length) reclaim?.register(this, this.owned, this);
  }

  copyPage(src: number, dst: number): void {
    const f = this.pageFloats;
    this.k.copyWithin(dst * f, src * f, src * f + f); this.v.copyWithin(dst * f, src * f, src * f + f);
  }

  /** Key min/max of physical page p from its first `filled` slots (untouched when filled is 0: the
   *  first append sets them). */
  rebuildMeta(p: number, filled: number): void {
    const hd = this.headDim, P = this.pageSize;
    if (filled === 0) return;
    for (let g = 0; g < this.nKV; g++) {
      const mo = (p * this.nKV + g) * hd, base = ((p * this.nKV + g) * P) * hd;
      for (let i = 0; i < hd; i++) {
        let lo = Infinity, hi = -Infinity;
        for (let t = 0; t < filled; t++) { const kv = this.key(base + t * hd + i); if (kv < lo) lo = kv; if (kv > hi) hi = kv; }
        this.setMeta(mo + i, lo, hi);
      }
    }
  }

  /** Stores a key min and max (exact in bf16 where the keys are bf16). */
  setMeta(o: number, lo: number, hi: number): void {
    if (this.bf16) { this.kmin[o] = toBf16(lo); this.kmax[o] = toBf16(hi); } else { this.kmin[o] = lo; this.kmax[o] = hi; }
  }

  dispose(): void {
    reclaim?.unregister(this);
    for (const b of this.owned) wasm()?.release(b.ptr, b.bytes);
    this.owned = [];
    this.k = this.v = this.kmin = this.kmax = this.bf16 ? new Uint16Array(0) : new Float32Array(0);
  }
}

/** The physical pages of a family of sequences, every layer. */
export class CpuPageStore implements PageStore {
  readonly layers: LayerPages[];
  capacity = 0;
  constructor(nLayers: number, nKV: number, headDim: number, readonly pageSize: number, readonly kvType: KVType = 'f32') {
    this.layers = Array.from({ length: nLayers }, () => new LayerPages(nKV, headDim, pageSize, kvType));
  }
  grow(pages: number): void { for (const l of this.layers) l.allocate(pages); this.capacity = pages; }
  copyPage(src: number, dst: number, filled: number): void { for (const l of this.layers) { l.copyPage(src, dst); l.rebuildMeta(dst, filled); } }
  rebuildMeta(page: number, filled: number): void { for (const l of this.layers) l.rebuildMeta(page, filled); }
  dispose(): void { for (const l of this.layers) l.dispose(); this.capacity = 0; }
}

/** One layer of one sequence: its page table over the layer's physical pages. */
export class LayerKV {
  length = 0;
  constructor(readonly pages: LayerPages, readonly table: PageTable, private readonly sequence: { tablePtr(): number }) {}

  /** Byte offset of the page table in the WebAssembly memory (for the SIMD kernels). */
  tablePtr(): number { return this.sequence.tablePtr(); }

  get nKV(): number { return this.pages.nKV; }
  get headDim(): number { return this.pages.headDim; }
  get pageSize(): number { return this.pages.pageSize; }
  get k(): KVArray { return this.pages.k; }
  get v(): KVArray { return this.pages.v; }
  get bf16(): boolean { return this.pages.bf16; }
  get kmin(): KVArray { return this.pages.kmin; }
  get kmax(): KVArray { return this.pages.kmax; }
  get inWasm(): boolean { return this.pages.inWasm; }
  /** byte offsets of physical page 0 in the WebAssembly memory */
  get kPtr(): number { return this.pages.k.byteOffset; }
  get vPtr(): number { return this.pages.v.byteOffset; }
  get pageFloats(): number { return this.pages.pageFloats; }
  get numPages(): number { return Math.ceil(this.length / this.pageSize); }

  /** Offset of token t's vector for KV head g in `k` / `v`. */
  offset(t: number, g: number): number {
    const lp = Math.floor(t / this.pageSize), slot = t - lp * this.pageSize;
    return ((this.table.pages[lp] * this.nKV + g) * this.pageSize + slot) * this.headDim;
  }

  /** Offset of logical page p's metadata for KV head g in `kmin` / `kmax`. */
  metaOffset(p: number, g: number): number { return (this.table.pages[p] * this.nKV + g) * this.headDim; }

  /** Appends one token: k and v hold nKV*headDim values from ko / vo. */
  append(k: Float32Array, ko: number, v: Float32Array, vo: number): void {
    const t = this.length, hd = this.headDim, P = this.pageSize;
    const page = this.table.writable(t), first = t % P === 0, nKV = this.nKV;
    const K = this.k, V = this.v, L = this.pages, bf16 = this.bf16;
    if (!bf16) {
      const K32 = K as Float32Array, V32 = V as Float32Array, mn = L.kmin as Float32Array, mx = L.kmax as Float32Array;
      const rt = wasm();
      if (rt && hd % 4 === 0 && L.inWasm && rt.owns(k) && rt.owns(v)) { // (the forward pass's activations: one kernel call)
        const o = ((page * nKV) * P + t % P) * hd * 4, mo = page * nKV * hd * 4;
        rt.k.kv_append(k.byteOffset + ko * 4, v.byteOffset + vo * 4, K32.byteOffset + o, V32.byteOffset + o, mn.byteOffset + mo, mx.byteOffset + mo, nKV, hd, P * hd * 4, first ? 1 : 0);
        this.length = t + 1;
        return;
      }
      for (let g = 0; g < nKV; g++) {
        const o = ((page * nKV + g) * P + t % P) * hd, mo = (page * nKV + g) * hd, ks = ko + g * hd;
        K32.set(k.subarray(ks, ks + hd), o);
        V32.set(v.subarray(vo + g * hd, vo + g * hd + hd), o);
        if (first) { mn.set(k.subarray(ks, ks + hd), mo); mx.set(k.subarray(ks, ks + hd), mo); continue; }
        for (let i = 0; i < hd; i++) {
          const kv = k[ks + i];
          if (kv < mn[mo + i]) mn[mo + i] = kv; else if (kv > mx[mo + i]) mx[mo + i] = kv;
        }
      }
      this.length = t + 1;
      return;
    }
    for (let g = 0; g < nKV; g++) {
      const o = ((page * nKV + g) * P + t % P) * hd, mo = (page * nKV + g) * hd;
      for (let i = 0; i < hd; i++) {
        let kv = k[ko + g * hd + i];
        if (bf16) { const h = toBf16(kv); K[o + i] = h; kv = fromBf16(h); V[o + i] = toBf16(v[vo + g * hd + i]); } else {
          K[o + i] = kv;
          V[o + i] = v[vo + g * hd + i];
        }
        if (first) { L.setMeta(mo + i, kv, kv); continue; }
        const lo = L.minAt(mo + i), hi = L.maxAt(mo + i);
        if (kv < lo) L.setMeta(mo + i, kv, hi); else if (kv > hi) L.setMeta(mo + i, lo, kv);
      }
    }
    this.length = t + 1;
  }
}

/** A sequence's KV cache: its page table and a view of every layer. */
export class PagedKVCache {
  readonly layers: LayerKV[];
  readonly table: PageTable;
  readonly store: CpuPageStore;
  private wasmTable: { ptr: number; bytes: number; version: number } | null = null;

  /** A new family's first sequence, or (`from`) a fork of `from` that shares its pages. */
  constructor(nLayers: number, readonly nKV: number, readonly headDim: number, readonly pageSize: number, initialTokens = 1024, from?: PagedKVCache,
              kvType: KVType = 'f32') {
    if (!Number.isInteger(pageSize) || pageSize < 1) throw new Error(`page size must be a positive integer, got ${pageSize}`);
    if (from) { this.store = from.store; this.table = from.table.fork(); } else {
      this.store = new CpuPageStore(nLayers, nKV, headDim, pageSize, kvType);
      this.store.grow(Math.max(1, Math.ceil(initialTokens / pageSize)));
      this.table = new PageTable(new PageAllocator(this.store), pageSize);
    }
    this.layers = this.store.layers.map((l, i) => { const v = new LayerKV(l, this.table, this); v.length = from?.layers[i].length ?? 0; return v; });
  }

  /** A sequence holding the same tokens, sharing every page (copy-on-write). */
  fork(): PagedKVCache { return new PagedKVCache(this.layers.length, this.nKV, this.headDim, this.pageSize, 0, this); }

  get length(): number { return this.layers[0]?.length ?? 0; }

  /** Byte offset of the page table (int32 physical page per logical page) in the WebAssembly memory. */
  tablePtr(): number {
    const rt = wasm()!, t = this.table, need = Math.max(16, t.pages.length) * 4;
    let w = this.wasmTable;
    if (!w || w.bytes < need) {
      if (w) rt.release(w.ptr, w.bytes);
      const bytes = need * 2, ptr = rt.alloc(bytes);
      if (ptr < 0) throw new Error('out of WebAssembly memory for a page table');
      w = this.wasmTable = { ptr, bytes, version: -1 };
      reclaim?.unregister(this); reclaim?.register(this, [{ ptr, bytes }], this);
    }
    if (w.version !== t.version) { rt.i32(w.ptr, t.pages.length).set(t.pages); w.version = t.version; }
    return w.ptr;
  }

  /** Keeps the first `length` tokens (rewinds the sequence). */
  truncate(length: number): void {
    if (length >= this.length) return;
    this.table.truncate(length);
    for (const l of this.layers) l.length = length;
  }

  /** Gives back this sequence's pages (the family's storage goes with its last sequence). */
  dispose(): void {
    this.table.dispose();
    for (const l of this.layers) l.length = 0;
    reclaim?.unregister(this);
    if (this.wasmTable) { wasm()?.release(this.wasmTable.ptr, this.wasmTable.bytes); this.wasmTable = null; }
  }

  /** Bytes of K and V this sequence reads (what a dense decode step reads). */
  get bytes(): number { return this.table.pages.length * this.layers.length * 2 * this.layers[0].pageFloats * this.store.layers[0].elementBytes; }
  get kvType(): KVType { return this.store.kvType; }
}
