// The plan half of a WebGPU decode step under a policy that plans on the CPU (StreamingLLM, H2O, TOVA,
// the oracles): the same policy objects as the CPU engine choose each query head's tokens, this class
// lays the choices out for the token-list attention kernel (backend/webgpu/planned-attention.ts) and
// hands the softmax weights the kernel leaves behind back to the policy.
//
// Policies that select from state alone (streaming, H2O, TOVA) are planned for every layer before the
// step is recorded: one submission. Policies that read the step's own scores (the oracles) are planned
// layer by layer: the step stops after each sparse layer's scores, reads them back, plans and goes on.
//
// `lists` layout (u32): a header per (layer, head) at (layer * nHeads + head) * 3 — token offset, count,
// probs offset — then the token ids. A layer planned mid-step uses the same data region as every other
// layer planned that way (the previous layer's kernel has finished when the next one is planned).
import type { AttentionPolicy, Selection, StepContext } from '../attention/policy.js';
import { storageUsage } from '../backend/webgpu/model.js';
import { listParams } from '../backend/webgpu/planned-attention.js';

export interface PlannerShape {
  nLayers: number; nHeads: number; nKV: number; headDim: number; pageSize: number; denseLayers: number;
  /** layers that attend through a sliding window (never planned: already sparse), if any */
  windowed?: boolean[];
}

export class GpuStepPlanner {
  lists: GPUBuffer; probs: GPUBuffer;
  /** the oracles: one layer's exact scores, [nHeads][tokens] */
  scores: GPUBuffer | null = null;
  /** per layer: the token-list kernel's uniform (header offset, row 0, scale) */
  readonly params: GPUBuffer[];
  /** per layer: this step's selection (null: dense) and each head's probs offset */
  private plans: ({ sel: Selection; probsAt: number[] } | null)[];
  private readonly headers: number;

  constructor(private readonly device: GPUDevice, readonly policy: AttentionPolicy, private readonly s: PlannerShape) {
    if (policy.readsScores && policy.observe) throw new Error(`the ${policy.name} policy both reads a step's scores and watches its weights: WebGPU plans one or the other`);
    this.headers = s.nLayers * s.nHeads * 3;
    this.lists = this.buffer(this.headers * 4 + 4096);
    this.probs = this.buffer(4096);
    this.plans = new Array(s.nLayers).fill(null);
    const scale = 1 / Math.sqrt(s.headDim);
    this.params = Array.from({ length: s.nLayers }, (_, l) => {
      const b = device.createBuffer({ size: 16, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
      device.queue.writeBuffer(b, 0, listParams(l * s.nHeads * 3, 0, scale));
      return b;
    });
  }

  /** Whether the policy is planned layer by layer, from the step's scores. */
  get midStep(): boolean { return this.policy.readsScores === true; }

  private buffer(bytes: number): GPUBuffer { return this.device.createBuffer({ size: bytes, usage: storageUsage() }); }

  /** Whether layer l runs the token-list attention in this step (else dense). */
  planned(l: number): boolean { return this.plans[l] !== null; }

  private context(layer: number, pos: number, scores: Float32Array | null): StepContext {
    const n = pos + 1;
    return {
      layer, pos, nHeads: this.s.nHeads, groupSize: this.s.nHeads / this.s.nKV, pageSize: this.s.pageSize,
      scores: (h, out) => {
        if (!scores) throw new Error(`the ${this.policy.name} policy reads scores without saying so (readsScores)`);
        out.set(scores.subarray(h * n, (h + 1) * n));
      },
      pageBounds: () => { throw new Error(`the ${this.policy.name} policy reads Quest's page bounds, which WebGPU computes only for its own Quest`); },
    };
  }

  /** Starts the decode step of token `pos`: every sparse layer planned now, unless the policy reads
   *  the step's scores (then planLayer, layer by layer). */
  beginStep(pos: number): void {
    const { nLayers, denseLayers } = this.s;
    this.plans.fill(null);
    if (this.midStep) return;
    for (let l = denseLayers; l < nLayers; l++) {
      if (this.s.windowed?.[l]) continue;
      const sel = this.policy.select(this.context(l, pos, null)); if (sel) this.plans[l] = { sel, probsAt: [] };
    }
    this.upload(this.plans.map((_, l) => l), false);
  }

  /** Bytes of the exact scores of one layer at position pos (the oracles' readback). */
  scoreBytes(pos: number): number { return this.s.nHeads * (pos + 1) * 4; }

  /** A scores buffer large enough for position pos. */
  scoresFor(pos: number): GPUBuffer {
    if (!this.scores || this.scores.size < this.scoreBytes(pos)) {
      this.scores?.destroy();
      this.scores = this.buffer(Math.max(4096, 2 * this.scoreBytes(pos)));
    }
    return this.scores;
  }

  /** Plans layer l of the step of token `pos` from its exact scores ([nHeads][pos + 1]). */
  planLayer(l: number, pos: number, scores: Float32Array): void {
    const sel = this.policy.select(this.context(l, pos, scores));
    this.plans[l] = sel ? { sel, probsAt: [] } : null;
    if (sel) this.upload([l], true);
  }

  /** Writes the headers and token ids of `layers` (shared data region: `reuse`); grows the buffers. */
  private upload(layers: number[], reuse: boolean): void {
    const { nHeads } = this.s;
    const at = new Map<Int32Array, number>(); // a list several heads share is stored once
    const chunks: Int32Array[] = [];
    let tokens = this.headers, probs = 0;
    const head = new Uint32Array(layers.length * nHeads * 3);
    layers.forEach((l, j) => {
      const plan = this.plans[l];
      if (!plan) return;
      for (let h = 0; h < nHeads; h++) {
        const list = plan.sel[h];
        if (!list) throw new Error(`the ${this.policy.name} policy selected no tokens for head ${h} of layer ${l} (WebGPU needs a list per head, or null for the whole layer)`);
        let off = at.get(list);
        if (off === undefined) { off = tokens; at.set(list, off); chunks.push(list); tokens += list.length; }
        plan.probsAt[h] = probs;
        head.set([off, list.length, probs], (j * nHeads + h) * 3);
        probs += list.length;
      }
      if (reuse) probs = 0;
    });
    if (this.lists.size < tokens * 4) { this.lists.destroy(); this.lists = this.buffer(tokens * 8); }
    if (this.probs.size < Math.max(1, probs) * 4) { this.probs.destroy(); this.probs = this.buffer(probs * 8); }
    const q = this.device.queue;
    // headers: contiguous per layer (one write when all layers are planned at once)
    if (reuse) q.writeBuffer(this.lists, layers[0] * nHeads * 12, head);
    else q.writeBuffer(this.lists, 0, head);
    const data = new Uint32Array(tokens - this.headers);
    let o = 0;
    for (const c of chunks) { data.set(c, o); o += c.length; }
    if (data.length) q.writeBuffer(this.lists, this.headers * 4, data);
  }

  /** Bytes of this step's softmax weights (what `observe` needs read back; 0 when the policy has no observe). */
  probBytes(): number {
    if (!this.policy.observe || this.midStep) return 0;
    let n = 0;
    for (const p of this.plans) if (p) for (const l of p.sel) n += l!.length;
    return n * 4;
  }

  /** Hands each planned layer's softmax weights (read back from `probs`) to the policy. */
  observe(pos: number, probs: Float32Array): void {
    if (!this.probBytes()) return;
    this.plans.forEach((plan, l) => {
      if (!plan) return;
      const weights = plan.sel.map((list, h) => probs.subarray(plan.probsAt[h], plan.probsAt[h] + list!.length));
      this.policy.observe!(this.context(l, pos, null), plan.sel, weights);
    });
  }

  dispose(): void {
    for (const b of [this.lists, this.probs, this.scores, ...this.params]) b?.destroy();
  }
}
