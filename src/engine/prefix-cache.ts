// Prompts that start like an earlier one skip its prefill: finished sequences are kept (their KV pages,
// not copies), and a new generation forks the one sharing the longest token prefix with its prompt,
// rewinds the fork to that prefix and prefills only the rest. Least recently used sequences go first
// when the pages they hold exceed the memory limit.
//
// Exactness: only tokens whose KV was computed with every layer attending densely are reused (a
// prompt's prefill always is; decode steps under a sparse policy are not, and their KV differs from a
// cold prefill's), so a cached prefix gives what a cold run gives, up to float rounding.
import type { PageTable } from '../kv/page-table.js';
import type { AttentionOptions } from '../attention/policy.js';

/** What the cache needs of a sequence (the CPU Session and the WebGPU GpuSession both are one). */
export interface CacheableSequence {
  readonly length: number;
  readonly table: PageTable;
  /** bytes one page of this sequence's KV takes (every layer) */
  readonly pageBytes: number;
  fork(attention?: Partial<AttentionOptions>): CacheableSequence;
  truncate(length: number): void;
  dispose(): void;
}

interface Entry<S extends CacheableSequence> { tokens: number[]; seq: S; used: number }

/** Tokens both arrays start with. */
export function commonPrefix(a: readonly number[], b: readonly number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** Default memory limit of a model's prefix cache (pages held by kept sequences). */
export const DEFAULT_PREFIX_CACHE_BYTES = 1 << 30;

export class PrefixCache<S extends CacheableSequence> {
  private entries: Entry<S>[] = [];
  private clock = 0;

  /** `limitBytes`: the most KV memory kept sequences may hold (0: keep nothing). */
  constructor(readonly limitBytes = DEFAULT_PREFIX_CACHE_BYTES) {
    if (!(limitBytes >= 0)) throw new Error(`the prefix cache limit must be a number of bytes >= 0, got ${limitBytes}`);
  }

  get size(): number { return this.entries.length; }

  /** Bytes of the pages the kept sequences hold (a page shared by several counts once; a family's storage
   *  may also keep freed pages for reuse until its last sequence is disposed, which this does not count). */
  get bytes(): number {
    const byStore = new Map<unknown, { pages: Set<number>; bytes: number }>();
    for (const e of this.entries) {
      const k = e.seq.table.alloc;
      let s = byStore.get(k);
      if (!s) { s = { pages: new Set(), bytes: e.seq.pageBytes }; byStore.set(k, s); }
      for (const p of e.seq.table.pages) s.pages.add(p);
    }
    let total = 0;
    for (const s of byStore.values()) total += s.pages.size * s.bytes;
    return total;
  }

  /**
   * A new sequence for `tokens` that already holds their longest cached prefix, at most `most` tokens
   * (the caller must still run at least the last prompt token), or null when nothing useful is cached.
   * `make(seq)` turns a kept sequence into the caller's (a fork under its attention settings); the
   * kept sequence stays in the cache.
   */
  take(tokens: readonly number[], most: number, make: (kept: S) => S): { seq: S; cached: number } | null {
    let best: Entry<S> | null = null, bestLen = 0;
    for (const e of this.entries) {
      const n = Math.min(commonPrefix(e.tokens, tokens), most);
      if (n > bestLen) { best = e; bestLen = n; }
    }
    if (!best) return null;
    best.used = ++this.clock;
    const seq = make(best.seq);
    seq.truncate(bestLen);
    return { seq, cached: bestLen };
  }

  /**
   * Keeps a finished sequence: `tokens` are the tokens it holds, of which the first `dense` were
   * computed with dense attention (only those are kept: the sequence is cut back to them). The cache
   * owns it from now on. Kept sequences whose tokens it extends are dropped (it holds their pages);
   * then the least recently used go until the pages fit the limit.
   */
  put(tokens: readonly number[], dense: number, seq: S): void {
    if (tokens.length !== seq.length) throw new Error(`a kept sequence holds ${seq.length} tokens, not the ${tokens.length} given`);
    if (this.limitBytes === 0 || dense <= 0) { seq.dispose(); return; }
    seq.truncate(dense);
    const kept = tokens.slice(0, dense);
    if (this.entries.some((e) => commonPrefix(e.tokens, kept) === dense)) { seq.dispose(); return; } // nothing new
    for (const e of this.entries.filter((e) => commonPrefix(e.tokens, kept) === e.tokens.length)) this.drop(e);
    this.entries.push({ tokens: kept, seq, used: ++this.clock });
    while (this.entries.length && this.bytes > this.limitBytes) {
      this.drop(this.entries.reduce((a, b) => (a.used <= b.used ? a : b)));
    }
  }

  private drop(e: Entry<S>): void {
    this.entries.splice(this.entries.indexOf(e), 1);
    e.seq.dispose();
  }

  /** Forgets every kept sequence (their pages are freed unless a running sequence shares them). */
  clear(): void { for (const e of this.entries.splice(0)) e.seq.dispose(); }
}
