// Pages shared between sequences, the same on every backend. A family of sequences (a session and its
// forks) draws its KV pages from one store; each sequence maps its logical pages (token t is in logical
// page t / pageSize) to physical pages of the store through its page table. Pages are reference-counted:
// a fork copies the table, not the pages; a sequence about to write into a page that another sequence
// also holds (the shared, partly filled last page) copies that page first (copy-on-write). The backend
// supplies the storage (PageStore); this module decides what to allocate, share, copy and free.

export interface PageStore {
  /** physical pages the storage holds now */
  readonly capacity: number;
  /** enlarges the storage to at least `pages` physical pages, keeping their contents */
  grow(pages: number): void;
  /** copies physical page `src` to `dst` (K, V, every layer) and recomputes dst's key min/max over
   *  its first `filled` slots (the copy's valid tokens) */
  copyPage(src: number, dst: number, filled: number): void;
  /** recomputes physical page `page`'s key min/max over its first `filled` slots (after a rewind) */
  rebuildMeta(page: number, filled: number): void;
  /** frees the storage (the last sequence of the family is gone) */
  dispose(): void;
}

/** Reference counts and free list of one store's physical pages. */
export class PageAllocator {
  private refs: number[] = [];
  private free: number[] = [];
  /** sequences (page tables) alive in this family: the store is freed with the last one, unless kept */
  tables = 0;

  /** `keep`: the storage outlives the last sequence (its pages all free) so the next one starts without
   *  allocating again, until releaseStore() — a GPU's KV buffers take ~40 ms per GB to create (H100) */
  constructor(readonly store: PageStore, readonly keep = false) {}

  /** A physical page with one reference (a freed one, else a new one; the store grows by doubling). */
  alloc(): number {
    const p = this.free.pop();
    if (p !== undefined) { this.refs[p] = 1; return p; }
    const id = this.refs.length;
    if (id >= this.store.capacity) this.store.grow(Math.max(id + 1, this.store.capacity * 2));
    this.refs.push(1);
    return id;
  }

  /** Room for `pages` more allocations with at most one grow of the store: a long prompt's pages in one
   *  step, with a quarter more for the answer, rather than doubling at every power of two (each grow
   *  copies every page: a 4K-token prompt's first decode step spent 0.4 s of its 0.46 s growing). */
  ensure(pages: number): void {
    const fresh = pages - this.free.length, end = this.refs.length + fresh;
    if (fresh > 0 && end > this.store.capacity) this.store.grow(Math.max(this.store.capacity * 2, end + Math.ceil(fresh / 4)));
  }

  retain(p: number): void { this.refs[p]++; }

  release(p: number): void {
    if (--this.refs[p] === 0) this.free.push(p);
    if (this.refs[p] < 0) throw new Error(`page ${p} released more often than held`);
  }

  /** Whether another sequence holds page p too. */
  shared(p: number): boolean { return this.refs[p] > 1; }

  /** Physical pages held by at least one sequence. */
  get used(): number { return this.refs.length - this.free.length; }

  /** The last sequence is gone: every page is free again, and the storage is freed unless kept. */
  reset(): void {
    this.refs = []; this.free = [];
    if (!this.keep) this.store.dispose();
  }

  /** Frees a kept storage while no sequence holds it (a later sequence allocates it again); whether it did. */
  releaseStore(): boolean {
    if (this.tables > 0) return false;
    this.refs = []; this.free = [];
    this.store.dispose();
    return true;
  }
}

/** One sequence's map from logical to physical pages. */
export class PageTable {
  /** physical page of each logical page */
  readonly pages: number[] = [];
  /** bumped whenever `pages` changes (backends mirror the table into kernel-visible memory) */
  version = 0;
  private disposed = false;

  constructor(readonly alloc: PageAllocator, readonly pageSize: number) { alloc.tables++; }

  /** A table holding the same pages (each gains a reference): a fork that copies nothing. */
  fork(): PageTable {
    const t = new PageTable(this.alloc, this.pageSize);
    for (const p of this.pages) { this.alloc.retain(p); t.pages.push(p); }
    return t;
  }

  /** The physical page that token position `pos` may be written to, where the sequence holds `pos`
   *  tokens: a new page at a page boundary; the current last page, copied first if it is shared. */
  writable(pos: number): number {
    const lp = Math.floor(pos / this.pageSize);
    if (lp > this.pages.length) throw new Error(`write at token ${pos} leaves a gap after ${this.pages.length} pages`);
    if (lp === this.pages.length) { this.pages.push(this.alloc.alloc()); this.version++; return this.pages[lp]; }
    const p = this.pages[lp];
    if (!this.alloc.shared(p)) return p;
    const copy = this.alloc.alloc();
    this.alloc.store.copyPage(p, copy, pos - lp * this.pageSize);
    this.alloc.release(p);
    this.pages[lp] = copy; this.version++;
    return copy;
  }

  /** Grows the store once, if need be, for the pages that writing tokens start..start+n-1 will allocate
   *  (new pages, and copies of shared ones); allocates nothing. */
  makeRoom(start: number, n: number): void {
    let fresh = 0;
    for (let lp = Math.floor(start / this.pageSize); lp * this.pageSize < start + n; lp++) if (lp >= this.pages.length || this.alloc.shared(this.pages[lp])) fresh++;
    this.alloc.ensure(fresh);
  }

  /** Makes every page that tokens start..start+n-1 go to writable (a chunk written by one kernel). */
  reserve(start: number, n: number): void {
    this.makeRoom(start, n);
    for (let pos = start; pos < start + n; pos = (Math.floor(pos / this.pageSize) + 1) * this.pageSize) this.writable(pos);
  }

  /** Keeps the first `length` tokens: pages past them are released; a partly kept last page gets its
   *  key min/max recomputed over the kept tokens (in place, or in a copy where it is shared), so a
   *  page's metadata always covers exactly the tokens its sequence holds. */
  truncate(length: number): void {
    const keep = Math.ceil(length / this.pageSize);
    if (keep < this.pages.length) {
      for (const p of this.pages.splice(keep)) this.alloc.release(p);
      this.version++;
    }
    const filled = length - (keep - 1) * this.pageSize;
    if (keep === 0 || filled === this.pageSize) return;
    const p = this.pages[keep - 1];
    if (!this.alloc.shared(p)) { this.alloc.store.rebuildMeta(p, filled); return; }
    const copy = this.alloc.alloc();
    this.alloc.store.copyPage(p, copy, filled);
    this.alloc.release(p);
    this.pages[keep - 1] = copy; this.version++;
  }

  /** Releases every page; the store is freed when no sequence drawing from it is left. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const p of this.pages.splice(0)) this.alloc.release(p);
    this.version++;
    if (--this.alloc.tables === 0) this.alloc.reset();
  }
}

/** Rows of a batch whose page tables begin with the same physical pages (forks of one context), as
 *  groups: each group's rows and how many leading pages all of them share, at least `minPages` and
 *  fewer than any of its rows has (a row's last page, the one it writes, stays its own). `eligible`:
 *  rows that may share (dense attention over all their pages). Rows are grouped by their first page;
 *  a group's shared length is the longest prefix common to all its rows. */
export function sharedPrefixGroups(tables: readonly (readonly number[])[], pages: readonly number[], eligible: readonly boolean[], minPages = 4): { rows: number[]; pages: number }[] {
  const byFirst = new Map<number, number[]>();
  tables.forEach((t, i) => {
    if (!eligible[i] || pages[i] <= minPages || t.length === 0) return;
    const list = byFirst.get(t[0]);
    if (list) list.push(i); else byFirst.set(t[0], [i]);
  });
  const groups: { rows: number[]; pages: number }[] = [];
  for (const rows of byFirst.values()) {
    if (rows.length < 2) continue;
    const t0 = tables[rows[0]];
    let shared = Math.min(...rows.map((i) => Math.min(pages[i] - 1, tables[i].length)));
    for (const i of rows.slice(1)) {
      const t = tables[i];
      let n = 0;
      while (n < shared && t[n] === t0[n]) n++;
      shared = n;
    }
    if (shared >= minPages) groups.push({ rows, pages: shared });
  }
  return groups;
}
