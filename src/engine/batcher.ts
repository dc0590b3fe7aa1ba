// Continuous batching: decode steps that concurrent generations ask for within one turn of the event loop
// run as one batched forward pass (weights read once for all of them). A generation joins by asking for
// its next step and leaves by not asking again; prefill chunks of new requests run between batches, as
// the event loop interleaves them. One batch runs at a time.

/** Runs fn on a later turn of the event loop (setImmediate in Node; a zero timeout elsewhere). */
const macrotask = (fn: () => void) => (typeof setImmediate === 'function' ? setImmediate(fn) : setTimeout(fn, 0));

export interface BatchStats { batches: number; steps: number; largest: number }
/** One sequence's part of a batched step: the token it appends, and whether it wants only its greedy
 *  token (`argmax`: the step resolves to a one-element array holding it) instead of the logits. */
export interface BatchStep<S> { seq: S; token: number; argmax?: boolean }

export class StepBatcher<S> {
  private queue: (BatchStep<S> & { resolve: (l: Float32Array) => void; reject: (e: unknown) => void })[] = [];
  private scheduled = false;
  private busy = false;
  readonly stats: BatchStats = { batches: 0, steps: 0, largest: 0 };

  /** `run`: one batched decode step (the backend's decodeBatch); `maxBatch`: sequences per batch. */
  constructor(private readonly run: (steps: BatchStep<S>[]) => Float32Array[] | Promise<Float32Array[]>, private readonly maxBatch: number) {}

  /** The logits after `token` is appended to `seq` (with `argmax`, a one-element array holding the
   *  greedy token), computed in the next batch. */
  step(seq: S, token: number, argmax = false): Promise<Float32Array> {
    return new Promise((resolve, reject) => {
      this.queue.push({ seq, token, argmax, resolve, reject });
      this.schedule();
    });
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
    const taken: typeof this.queue = [], seen = new Set<S>(), rest: typeof this.queue = [];
    for (const q of this.queue) (taken.length < this.maxBatch && !seen.has(q.seq) ? (seen.add(q.seq), taken) : rest).push(q);
    this.queue = rest;
    try {
      const out = await this.run(taken.map(({ seq, token, argmax }) => ({ seq, token, argmax })));
      this.stats.batches++; this.stats.steps += taken.length; this.stats.largest = Math.max(this.stats.largest, taken.length);
      taken.forEach((q, i) => q.resolve(out[i]));
    } catch (e) {
      // a batch that fails fails each of its steps (each generation reports it)
      for (const q of taken) q.reject(e);
    } finally {
      this.busy = false;
      if (this.queue.length) this.schedule();
    }
  }
}
