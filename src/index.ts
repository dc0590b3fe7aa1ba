// quest: long-context LLM inference for TypeScript with Quest query-aware sparse attention.
export { loadModel, LLM } from './engine/llm.js';
export type { LoadOptions, GenerateOptions, GenerationResult, Generation, TokenEvent } from './engine/llm.js';
export { Session, makeModel, RecallStats } from './engine/session.js';
export { Sampler } from './engine/sampler.js';
export type { SamplingOptions } from './engine/sampler.js';
export { loadModelFiles } from './model/load.js';
export type { ModelConfig, ModelWeights } from './model/config.js';
export { PagedKVCache, LayerKV } from './kv/paged-cache.js';
export { QuestPolicy, pageScores } from './attention/quest.js';
export { StreamingPolicy, H2OPolicy, TovaPolicy, OraclePolicy } from './attention/baselines.js';
export { createPolicy } from './attention/create.js';
export { DEFAULT_ATTENTION, POLICY_NAMES } from './attention/policy.js';
export type { AttentionOptions, AttentionPolicy, PolicyName, GqaMode } from './attention/policy.js';
export { TextTokenizer } from './tokenizer/tokenizer.js';
export type { ChatMessage } from './tokenizer/tokenizer.js';
export { parseGGUF, writeGGUF } from './model/gguf.js';
export { DEFAULT_MODEL } from './cli/default-model.js';
