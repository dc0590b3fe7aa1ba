// Continuous batching: decode steps that concurrent generations ask for within one turn of the event loop
// run as one batched forward pass (weights read once for all of them). A generation joins by asking for
// its next step and leaves by not asking again; prefill chunks of new requests run between batches, as
// the event loop interleaves them. One batch is decided at a time.
//
// Greedy batches on a backend that can chain steps (AheadSteps: the GPU) keep a step in flight: right
// after a batch of known tokens, the next step of the same rows is submitted with each row's input the
// argmax of the step before, taken on the GPU, so the host records it while the GPU runs the first; when
// the rows' generations ask for that step (with the token they got, which is that argmax) they are given
// the chained step's result, and if all of them asked and nobody else waits, the chain grows by one more
// step. A row whose generation did not ask (it stopped, or is slow) has the chained step undone when it
// completes; generations call release() before they keep or free their sequence, which waits for that.

/** Runs fn on a later turn of the event loop (setImmediate in Node; a zero timeout elsewhere). */
const macrotask = (fn: () => void) => (typeof setImmediate === 'function' ? setImmediate(fn) : setTimeout(fn, 0));

export interface BatchStats { batches: number; steps: number; largest: number; /** batched steps run chained (in flight before their generations asked) and taken */ chained: number }
/** One sequence's part of a batched step: the token it appends, and whether it wants only its greedy
 *  token (`argmax`: the step resolves to a one-element array holding it) instead of the logits. */
export interface BatchStep<S> { seq: S; token: number; argmax?: boolean }

/** A chained greedy step in flight: its rows (in order), their input tokens (the step before's argmax)
 *  and their greedy tokens; `handle`: the backend's (its chain buffer). */
export interface ChainedStep<S> { rows: S[]; inputs: Promise<number[]>; tokens: Promise<number[]>; handle: unknown }
/** What a backend offers for greedy steps in flight (GpuSession.ahead). */
export interface AheadSteps<S> {
  /** whether each sequence has room for `steps` more tokens in its context */
  fits(seqs: S[], steps: number): boolean;
  /** submits the step of `steps` (tokens known) and right after it the chained next step of the same rows */
  start(steps: BatchStep<S>[]): Promise<{ first: Promise<number[]>; chained: ChainedStep<S> }>;
  /** one more chained step of the same rows after `from` */
  extend(from: ChainedStep<S>): ChainedStep<S>;
  /** drops a sequence's last token (a chained step its generation did not take; the step is done) */
  undo(seq: S): void;
  /** the chain ends with this step (frees what the chain holds once it is done) */
  end(last: ChainedStep<S>): void;
}

type Entry<S> = BatchStep<S> & { resolve: (l: Float32Array) => void; reject: (e: unknown) => void };
/** The chained step in flight: the generations that asked for it so far (`open` while more may). */
interface Ahead<S> { step: ChainedStep<S>; claims: Map<S, Entry<S>>; open: boolean; extended: boolean; settled: Promise<void> }

export class StepBatcher<S> {
  private queue: Entry<S>[] = [];
  private scheduled = false;
  private busy = false;
  private ahead: Ahead<S> | null = null;
  readonly stats: BatchStats = { batches: 0, steps: 0, largest: 0, chained: 0 };

  /** `run`: one batched decode step (the backend's decodeBatch); `maxBatch`: sequences per batch;
   *  `chain`: the backend's chained greedy steps, where it has them. */
  constructor(private readonly run: (steps: BatchStep<S>[]) => Float32Array[] | Promise<Float32Array[]>, private readonly maxBatch: number,
              private readonly chain: AheadSteps<S> | null = null) {}

  /** The logits after `token` is appended to `seq` (with `argmax`, a one-element array holding the
   *  greedy token), computed in the next batch. */
  step(seq: S, token: number, argmax = false): Promise<Float32Array> {
    return new Promise((resolve, reject) => {
      this.queue.push({ seq, token, argmax, resolve, reject });
      this.schedule();
    });
  }

  /** Waits until no step of `seq` is in flight ahead of its generation (a chained step it did not ask for
   *  is then undone): call before the sequence is kept, continued or freed. */
  async release(seq: S): Promise<void> {
    const a = this.ahead;
    if (a && a.step.rows.includes(seq)) await a.settled;
  }

  private schedule(): void {
    if (this.scheduled || this.busy) return;
    this.scheduled = true;
    // a macrotask turn: the other generations whose previous step just resolved ask for their next one first
    macrotask(() => { this.scheduled = false; void this.flush(); });
  }

  private async flush(): Promise<void> {
    if (this.busy || !this.queue.length) return;
    this.busy = true;
    // (one step per sequence per batch: a sequence asking twice waits for the next batch)
    const taken: Entry<S>[] = [], seen = new Set<S>(), rest: Entry<S>[] = [];
    for (const q of this.queue) (taken.length < this.maxBatch && !seen.has(q.seq) ? (seen.add(q.seq), taken) : rest).push(q);
    this.queue = rest;
    try {
      if (this.ahead?.open) await this.claim(this.ahead, taken);
      else {
        if (this.ahead) await this.ahead.settled; // (a chained step closed to claims: its rows are undone first)
        await this.runBatch(taken);
      }
    } finally {
      this.busy = false;
      if (this.queue.length) this.schedule();
    }
  }

  /** Requests for the chained step's rows (with the token it chained) are given its result; if every row
   *  asked and nobody else waits, the chain grows; otherwise the others wait for it to complete. */
  private async claim(a: Ahead<S>, taken: Entry<S>[]): Promise<void> {
    let inputs: number[] | null = null;
    try { inputs = await a.step.inputs; } catch { /* (the step before failed: its generations were told; this one fails too) */ }
    // (requests that came while the step before was still running, its rows' among them, are looked at too)
    const others: Entry<S>[] = [];
    for (const q of [...taken, ...this.queue.splice(0)]) {
      const b = a.step.rows.indexOf(q.seq);
      if (a.open && inputs && b >= 0 && q.argmax && q.token === inputs[b] && !a.claims.has(q.seq)) a.claims.set(q.seq, q);
      else others.push(q);
    }
    const all = a.open && a.claims.size === a.step.rows.length && !others.length;
    if (all && this.chain!.fits(a.step.rows, 1)) {
      a.open = false; a.extended = true;
      this.ahead = this.follow(this.chain!.extend(a.step));
      return;
    }
    // rows that stopped (or are slow): no further step; the others run once this one is done
    a.open = false;
    this.queue = [...others, ...this.queue];
    await a.settled;
  }

  /** A batch of known tokens; greedy batches on a backend that chains steps also start a chain. */
  private async runBatch(taken: Entry<S>[]): Promise<void> {
    try {
      const chain = this.chain && taken.every((q) => q.argmax) && this.chain.fits(taken.map((q) => q.seq), 2) ? this.chain : null;
      let out: Float32Array[];
      if (chain) {
        const { first, chained } = await chain.start(taken.map(({ seq, token, argmax }) => ({ seq, token, argmax })));
        this.ahead = this.follow(chained);
        out = (await first).map((t) => Float32Array.of(t));
      } else out = await this.run(taken.map(({ seq, token, argmax }) => ({ seq, token, argmax })));
      this.count(taken.length);
      taken.forEach((q, i) => q.resolve(out[i]));
    } catch (e) {
      // a batch that fails fails each of its steps (each generation reports it)
      for (const q of taken) q.reject(e);
    }
  }

  /** Tracks a chained step: when it completes, the rows that asked for it get their token, the others are
   *  undone; the chain's end frees what it holds. */
  private follow(step: ChainedStep<S>): Ahead<S> {
    const a: Ahead<S> = { step, claims: new Map(), open: true, extended: false, settled: Promise.resolve() };
    const settle = (out: number[] | null, e?: unknown) => {
      a.open = false;
      if (this.ahead === a) this.ahead = null;
      step.rows.forEach((seq, b) => {
        const q = a.claims.get(seq);
        if (q && out) q.resolve(Float32Array.of(out[b]));
        else if (q) q.reject(e);
        else this.chain!.undo(seq);
      });
      if (out && a.claims.size) { this.count(a.claims.size); this.stats.chained++; }
      if (!a.extended) this.chain!.end(step);
    };
    a.settled = step.tokens.then((out) => settle(out), (e) => settle(null, e));
    return a;
  }

  private count(n: number): void {
    this.stats.batches++; this.stats.steps += n; this.stats.largest = Math.max(this.stats.largest, n);
  }
}
