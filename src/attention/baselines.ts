// The policies Quest is measured against, as their papers define them:
//  StreamingLLM (Xiao et al. 2023): attention sinks + a window of recent tokens.
//  H2O (Zhang et al. 2023): heavy hitters by accumulated attention + recent tokens; eviction is final.
//  TOVA (Oren et al. 2024): evict the token the current query attends to least (mean over heads).
//  Oracle: the true top-k tokens (or pages) by exact attention: the upper bound of any selection.
// Eviction here means "never attended again": the evicted K/V stay in the shared paged cache (which
// other layers' dense attention and the recall metric read), but the policy never selects them again.
import { pagesToTokens, topKIndices } from './attend.js';
import type { AttentionPolicy, Selection, StepContext } from './policy.js';

function range(a: number, b: number): number[] { return Array.from({ length: Math.max(0, b - a) }, (_, i) => a + i); }

export class StreamingPolicy implements AttentionPolicy {
  readonly name = 'streaming' as const;
  constructor(readonly budget: number, readonly sinks = 4) {}
  select(ctx: StepContext): Selection | null {
    const n = ctx.pos + 1;
    if (n <= this.budget) return null;
    const sinks = Math.min(this.sinks, this.budget);
    const tokens = Int32Array.from([...range(0, sinks), ...range(n - (this.budget - sinks), n)]);
    return new Array(ctx.nHeads).fill(tokens);
  }
}

/** Shared machinery of the evicting policies: a kept set per (layer, key) that only shrinks. */
abstract class EvictingPolicy implements AttentionPolicy {
  abstract readonly name: 'h2o' | 'tova';
  protected kept = new Map<string, number[]>();
  constructor(readonly budget: number) {}

  /** the kept tokens of a (layer, key), the current token joining them */
  protected keptWithCurrent(key: string, pos: number): number[] {
    let k = this.kept.get(key);
    if (!k) { k = range(0, pos); this.kept.set(key, k); } // first decode step: the whole prompt
    if (k[k.length - 1] !== pos) k.push(pos);
    return k;
  }
  abstract select(ctx: StepContext): Selection | null;
}

export class H2OPolicy extends EvictingPolicy {
  readonly name = 'h2o' as const;
  readonly wantsPrefillScores = true;
  /** accumulated attention received, per layer:head */
  private acc = new Map<string, Float32Array>();

  private accFor(key: string, n: number): Float32Array {
    let a = this.acc.get(key);
    if (!a || a.length < n) { const b = new Float32Array(Math.max(n, (a?.length ?? 0) * 2, 256)); if (a) b.set(a); this.acc.set(key, b); a = b; }
    return a;
  }

  observePrefill(layer: number, head: number, received: Float32Array, length: number): void {
    const a = this.accFor(`${layer}:${head}`, length);
    for (let t = 0; t < length; t++) a[t] += received[t];
  }

  select(ctx: StepContext): Selection {
    const sel: Selection = new Array(ctx.nHeads);
    for (let h = 0; h < ctx.nHeads; h++) sel[h] = Int32Array.from(this.keptWithCurrent(`${ctx.layer}:${h}`, ctx.pos));
    return sel;
  }

  observe(ctx: StepContext, selection: Selection, probs: Float32Array[]): void {
    const recent = Math.floor(this.budget / 2); // half heavy hitters, half recent window, as in the paper
    for (let h = 0; h < ctx.nHeads; h++) {
      const key = `${ctx.layer}:${h}`, tokens = selection[h]!, a = this.accFor(key, ctx.pos + 1);
      for (let i = 0; i < tokens.length; i++) a[tokens[i]] += probs[h][i];
      const kept = this.kept.get(key)!;
      if (kept.length <= this.budget) continue;
      const protectedFrom = ctx.pos + 1 - recent;
      const candidates = kept.filter((t) => t < protectedFrom);
      const drop = new Set(candidates.sort((x, y) => a[x] - a[y] || x - y).slice(0, kept.length - this.budget));
      this.kept.set(key, kept.filter((t) => !drop.has(t)));
    }
  }
}

export class TovaPolicy extends EvictingPolicy {
  readonly name = 'tova' as const;
  select(ctx: StepContext): Selection {
    const tokens = Int32Array.from(this.keptWithCurrent(`${ctx.layer}`, ctx.pos));
    return new Array(ctx.nHeads).fill(tokens);
  }
  observe(ctx: StepContext, selection: Selection, probs: Float32Array[]): void {
    const kept = this.kept.get(`${ctx.layer}`)!;
    if (kept.length <= this.budget) return;
    const mean = new Float32Array(kept.length);
    for (let h = 0; h < ctx.nHeads; h++) for (let i = 0; i < kept.length; i++) mean[i] += probs[h][i] / ctx.nHeads;
    // the current token (last) is never evicted; evict the lowest-weight tokens down to the budget
    const order = range(0, kept.length - 1).sort((x, y) => mean[x] - mean[y] || x - y);
    const drop = new Set(order.slice(0, kept.length - this.budget).map((i) => kept[i]));
    this.kept.set(`${ctx.layer}`, kept.filter((t) => !drop.has(t)));
  }
}

export class OraclePolicy implements AttentionPolicy {
  readonly readsScores = true;
  private scores = new Float32Array(0);
  constructor(readonly budget: number, readonly granularity: 'token' | 'page' = 'token', readonly minPages = 3) {}
  get name() { return this.granularity === 'token' ? 'oracle' as const : 'oracle-page' as const; }

  select(ctx: StepContext): Selection | null {
    const { pos } = ctx, n = pos + 1, P = ctx.pageSize, numPages = Math.ceil(n / P);
    const pages = Math.max(this.minPages, Math.ceil(this.budget / P));
    if ((this.granularity === 'token' && this.budget >= n) || (this.granularity === 'page' && pages >= numPages)) return null;
    if (this.scores.length < n) this.scores = new Float32Array(n * 2);
    const s = this.scores.subarray(0, n);
    const sel: Selection = new Array(ctx.nHeads);
    for (let h = 0; h < ctx.nHeads; h++) {
      ctx.scores(h, s);
      if (this.granularity === 'token') { sel[h] = Int32Array.from(topKIndices(s, this.budget, [pos])); continue; }
      // page mass: sum of softmax weights inside each page
      let max = -Infinity; for (let t = 0; t < n; t++) if (s[t] > max) max = s[t];
      const mass = new Float64Array(numPages);
      for (let t = 0; t < n; t++) mass[Math.floor(t / P)] += Math.exp(s[t] - max);
      sel[h] = pagesToTokens(topKIndices(mass, pages, [Math.floor(pos / P)]), P, n);
    }
    return sel;
  }
}
