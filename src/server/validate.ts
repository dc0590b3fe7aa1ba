// Validation of OpenAI-style request bodies: every problem becomes a 4xx with OpenAI's error shape.
import { POLICY_NAMES, type AttentionOptions } from '../attention/policy.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';

export class ApiError extends Error {
  constructor(readonly status: number, message: string, readonly param: string | null = null, readonly code: string | null = null,
              readonly type = status === 404 ? 'not_found_error' : status >= 500 ? 'server_error' : 'invalid_request_error') {
    super(message);
  }
  body() { return { error: { message: this.message, type: this.type, param: this.param, code: this.code } }; }
}

export interface CommonRequest {
  model: string;
  maxTokens: number;
  temperature: number;
  topP: number;
  seed: number | undefined;
  stop: string[];
  stream: boolean;
  /** stream_options.include_usage: a last chunk carries the usage */
  streamUsage: boolean;
  attention: Partial<AttentionOptions>;
}

export const MAX_TOKENS_LIMIT = 8192;

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function num(b: Record<string, unknown>, key: string, def: number, lo: number, hi: number, integer = false): number {
  const v = b[key];
  if (v === undefined || v === null) return def;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new ApiError(400, `'${key}' must be a number`, key, 'invalid_type');
  if (integer && !Number.isInteger(v)) throw new ApiError(400, `'${key}' must be an integer`, key, 'invalid_type');
  if (v < lo || v > hi) throw new ApiError(400, `'${key}' must be between ${lo} and ${hi}, got ${v}`, key, 'invalid_value');
  return v;
}

export function parseCommon(body: unknown, modelIds: string[]): { b: Record<string, unknown>; req: CommonRequest } {
  if (!isObj(body)) throw new ApiError(400, 'the request body must be a JSON object', null, 'invalid_body');
  const b = body;
  if (typeof b.model !== 'string') throw new ApiError(400, "'model' is required and must be a string", 'model', 'invalid_type');
  if (!modelIds.includes(b.model)) throw new ApiError(404, `the model '${b.model}' does not exist (available: ${modelIds.join(', ')})`, 'model', 'model_not_found');
  const maxKey = b.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens';
  const maxTokens = num(b, maxKey, 256, 1, MAX_TOKENS_LIMIT, true);
  const temperature = num(b, 'temperature', 1, 0, 2);
  const topP = num(b, 'top_p', 1, 0.000001, 1);
  const seed = b.seed === undefined || b.seed === null ? undefined : num(b, 'seed', 0, -(2 ** 53), 2 ** 53, true);
  if (b.n !== undefined && b.n !== null && b.n !== 1) throw new ApiError(400, "only 'n': 1 is supported", 'n', 'unsupported_value');
  let stop: string[] = [];
  if (typeof b.stop === 'string') stop = [b.stop];
  else if (Array.isArray(b.stop)) {
    if (b.stop.length > 4 || !b.stop.every((s) => typeof s === 'string')) throw new ApiError(400, "'stop' must be a string or up to 4 strings", 'stop', 'invalid_type');
    stop = b.stop as string[];
  } else if (b.stop !== undefined && b.stop !== null) throw new ApiError(400, "'stop' must be a string or an array of strings", 'stop', 'invalid_type');
  if (b.stream !== undefined && typeof b.stream !== 'boolean') throw new ApiError(400, "'stream' must be a boolean", 'stream', 'invalid_type');
  const so = b.stream_options as { include_usage?: unknown } | undefined | null;
  if (so !== undefined && so !== null && (typeof so !== 'object' || (so.include_usage !== undefined && typeof so.include_usage !== 'boolean'))) {
    throw new ApiError(400, "'stream_options' must be an object with a boolean 'include_usage'", 'stream_options', 'invalid_type');
  }
  const attention: Partial<AttentionOptions> = {};
  if (b.quest !== undefined) {
    if (!isObj(b.quest)) throw new ApiError(400, "'quest' must be an object: { policy, budget, page_size, dense_layers }", 'quest', 'invalid_type');
    const q = b.quest;
    if (q.policy !== undefined) {
      if (typeof q.policy !== 'string' || !(POLICY_NAMES as readonly string[]).includes(q.policy)) throw new ApiError(400, `'quest.policy' must be one of ${POLICY_NAMES.join(', ')}`, 'quest.policy', 'invalid_value');
      attention.policy = q.policy as AttentionOptions['policy'];
    }
    if (q.budget !== undefined) attention.budget = num(q, 'budget', 0, 1, 1 << 20, true);
    if (q.page_size !== undefined) attention.pageSize = num(q, 'page_size', 16, 1, 1024, true);
    if (q.dense_layers !== undefined) attention.denseLayers = num(q, 'dense_layers', 2, 0, 1024, true);
  }
  return { b, req: { model: b.model, maxTokens, temperature, topP, seed, stop, stream: b.stream === true, streamUsage: b.stream === true && so?.include_usage === true, attention } };
}

export function parseMessages(b: Record<string, unknown>): ChatMessage[] {
  if (!Array.isArray(b.messages) || b.messages.length === 0) throw new ApiError(400, "'messages' must be a non-empty array", 'messages', 'invalid_type');
  return b.messages.map((m, i) => {
    if (!isObj(m) || !['system', 'user', 'assistant'].includes(m.role as string)) throw new ApiError(400, `messages[${i}].role must be system, user or assistant`, `messages[${i}].role`, 'invalid_value');
    let content = m.content;
    if (Array.isArray(content)) content = content.map((p) => (isObj(p) && p.type === 'text' && typeof p.text === 'string' ? p.text : '')).join('');
    if (typeof content !== 'string') throw new ApiError(400, `messages[${i}].content must be a string`, `messages[${i}].content`, 'invalid_type');
    return { role: m.role as ChatMessage['role'], content };
  });
}

export function parsePrompt(b: Record<string, unknown>): string {
  let p = b.prompt;
  if (Array.isArray(p) && p.length === 1 && typeof p[0] === 'string') p = p[0];
  if (typeof p !== 'string') throw new ApiError(400, "'prompt' must be a string", 'prompt', 'invalid_type');
  if (p.length === 0) throw new ApiError(400, "'prompt' must not be empty", 'prompt', 'invalid_value');
  return p;
}
