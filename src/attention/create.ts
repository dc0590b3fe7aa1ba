import { H2OPolicy, OraclePolicy, StreamingPolicy, TovaPolicy } from './baselines.js';
import { DEFAULT_ATTENTION, validateAttentionOptions, type AttentionOptions, type AttentionPolicy } from './policy.js';
import { QuestPolicy } from './quest.js';

/** A fresh policy instance for one sequence (evicting policies keep per-sequence state); null = dense. */
export function createPolicy(o: AttentionOptions): AttentionPolicy | null {
  validateAttentionOptions(o);
  switch (o.policy) {
    case 'dense': return null;
    case 'quest': return new QuestPolicy(o.budget, o.gqa);
    case 'streaming': return new StreamingPolicy(o.budget);
    case 'h2o': return new H2OPolicy(o.budget);
    case 'tova': return new TovaPolicy(o.budget);
    case 'oracle': return new OraclePolicy(o.budget, 'token');
    case 'oracle-page': return new OraclePolicy(o.budget, 'page');
  }
}

/** Whether a policy starts from the attention the prefill gave each token (H2O): sequences it forks from record it. */
export function wantsPrefillScores(policy: string): boolean {
  return createPolicy({ ...DEFAULT_ATTENTION, policy: policy as AttentionOptions['policy'] })?.wantsPrefillScores === true;
}
