// The attention-policy interface: at each decode step of a sparse layer, a policy says which tokens
// each query head attends to; policies that evict (H2O, TOVA) also watch the resulting weights.

export const POLICY_NAMES = ['dense', 'quest', 'streaming', 'h2o', 'tova', 'oracle', 'oracle-page'] as const;
export type PolicyName = (typeof POLICY_NAMES)[number];

/** How Quest shares a page selection among the query heads of one KV group (grouped-query attention). */
export type GqaMode = 'head' | 'group-max' | 'group-sum';

export interface AttentionOptions {
  policy: PolicyName;
  /** token budget per head (per layer) of the sparse layers */
  budget: number;
  pageSize: number;
  /** the first layers that always attend densely */
  denseLayers: number;
  gqa: GqaMode;
}

export const DEFAULT_ATTENTION: AttentionOptions = { policy: 'dense', budget: 2048, pageSize: 16, denseLayers: 2, gqa: 'group-sum' };

/** What a policy sees of one decode step of one layer, on either backend (the CPU computes scores from
 *  its cache in place; WebGPU reads them back from the GPU). */
export interface StepContext {
  layer: number;
  /** index of the current token; the cache holds pos + 1 tokens */
  pos: number;
  nHeads: number;
  groupSize: number; // query heads per KV head
  pageSize: number;
  /** exact attention scores q·k·scale of query head h against tokens 0..pos, into out[0..pos] */
  scores(h: number, out: Float32Array): void;
  /** Quest's bound Σ_i max(q_i·max_i, q_i·min_i) of query head h for every page, into out[0..pages) */
  pageBounds(h: number, out: Float32Array): void;
}

/** Per query head: the ascending token ids it attends to, or null for all tokens. */
export type Selection = (Int32Array | null)[];

export interface AttentionPolicy {
  readonly name: PolicyName;
  /** null: dense attention for every head at this step */
  select(ctx: StepContext): Selection | null;
  /** whether select reads the step's own scores (ctx.scores / pageBounds): on WebGPU such a policy is
   *  planned mid-step (a readback per layer); the others are planned for every layer before the step */
  readonly readsScores?: boolean;
  /** the softmax weights each head gave to its selected tokens (probs[h][i] for selection[h][i]) */
  observe?(ctx: StepContext, selection: Selection, probs: Float32Array[]): void;
  /** whether the dense prefill should report, per layer and query head, the attention each token received */
  readonly wantsPrefillScores?: boolean;
  observePrefill?(layer: number, head: number, received: Float32Array, length: number): void;
}

export function validateAttentionOptions(o: AttentionOptions): void {
  if (!(POLICY_NAMES as readonly string[]).includes(o.policy)) {
    throw new Error(`unknown attention policy "${o.policy}" (choose one of ${POLICY_NAMES.join(', ')})`);
  }
  if (!Number.isInteger(o.budget) || o.budget < 1) throw new Error(`the token budget must be a positive integer, got ${o.budget}`);
  if (!Number.isInteger(o.pageSize) || o.pageSize < 1) throw new Error(`the page size must be a positive integer, got ${o.pageSize}`);
  if (!Number.isInteger(o.denseLayers) || o.denseLayers < 0) throw new Error(`dense layers must be an integer >= 0, got ${o.denseLayers}`);
  if (!['head', 'group-max', 'group-sum'].includes(o.gqa)) throw new Error(`GQA mode must be head, group-max or group-sum, got ${o.gqa}`);
}

/** The (policy, budget) grid of an evaluation: dense once, every other policy at every budget. */
export function policyGrid(policies: string, budgets: string): { policy: PolicyName; budget: number }[] {
  const bs = budgets.split(',').map(Number);
  return (policies.split(',') as PolicyName[]).flatMap((p): { policy: PolicyName; budget: number }[] =>
    (p === 'dense' ? [{ policy: p, budget: 0 }] : bs.map((b) => ({ policy: p, budget: b }))));
}
