#!/usr/bin/env node
// The `quest` command line.
import { Command, Option, InvalidArgumentError } from 'commander';
import { readFileSync, writeFileSync } from 'node:fs';
import { loadModel, DEVICES } from '../engine/llm.js';
import { runQaEval } from '../eval/qa.js';
import { POLICY_NAMES, DEFAULT_ATTENTION, type AttentionOptions } from '../attention/policy.js';
import { convertHFToGGUF } from '../model/convert.js';
import { CONVERT_TYPES } from '../model/quant-mix.js';
import { DEFAULT_MODEL } from './default-model.js';
import { progressBar } from './progress.js';
import { runRecallEval } from '../eval/recall.js';
import { runPasskeyEval } from '../eval/passkey.js';
import { runPplEval } from '../eval/ppl.js';
import { createServer } from '../server/server.js';
import { basename } from 'node:path';
import { KV_TYPES } from '../kv/paged-cache.js';

const int = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n)) throw new InvalidArgumentError(`${name} must be an integer`);
  return n;
};
const num = (name: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number`);
  return n;
};
const collect = (v: string, acc: string[]) => [...acc, v];
/** A message beside the output (where a downloaded model was cached). */
const note = (msg: string) => process.stderr.write(`${msg}\n`);

function attentionOptions(o: Record<string, unknown>): Partial<AttentionOptions> {
  return { policy: o.attention as AttentionOptions['policy'], budget: o.budget as number, pageSize: o.pageSize as number, denseLayers: o.denseLayers as number, gqa: o.gqa as AttentionOptions['gqa'] };
}

const deviceOption = () => new Option('--device <device>', 'cpu, or webgpu (a GPU through Dawn)').choices([...DEVICES]).default('cpu');

function addAttentionFlags(c: Command): Command {
  return c
    .addOption(new Option('--attention <policy>', 'attention policy').choices([...POLICY_NAMES]).default(DEFAULT_ATTENTION.policy))
    .option('--budget <tokens>', 'token budget of the sparse policies', int('budget'), DEFAULT_ATTENTION.budget)
    .option('--page-size <n>', 'KV page size in tokens', int('page size'), DEFAULT_ATTENTION.pageSize)
    .option('--dense-layers <n>', 'first layers that stay dense', int('dense layers'), DEFAULT_ATTENTION.denseLayers)
    .addOption(deviceOption())
    .addOption(new Option('--kv-cache <type>', 'CPU: keys and values as f32, or bf16 (half the memory; faster at long context)').choices([...KV_TYPES]).default('f32'))
    .addOption(new Option('--gqa <mode>', 'Quest page selection under grouped-query attention').choices(['head', 'group-max', 'group-sum']).default(DEFAULT_ATTENTION.gqa));
}

const program = new Command('quest').description('Long-context LLM inference with Quest query-aware sparse attention').showHelpAfterError()
  .option('--verbose', "also show the GPU drivers' own messages (--device webgpu)")
  .hook('preAction', (cmd) => { if (cmd.opts().verbose) process.env.QUEST_VERBOSE = '1'; });

/** The flags that give a model and a prompt (exactly one of --prompt, --prompt-file, --prompt-ids). */
function addPromptFlags(c: Command): Command {
  return c
    .option('--model <path>', 'GGUF file, Hugging Face folder or llama2.c .bin: a path, a URL or hf:org/name (downloads are cached)', DEFAULT_MODEL)
    .option('--tokenizer <path>', 'tokenizer.bin for llama2.c checkpoints')
    .option('--prompt <text>', 'the prompt')
    .option('--prompt-file <file>', 'read the prompt from a file')
    .option('--prompt-ids <ids>', 'the prompt as comma-separated token ids (models without a tokenizer)');
}
function checkOnePrompt(o: Record<string, unknown>): void {
  if ([o.prompt, o.promptFile, o.promptIds].filter((x) => x !== undefined).length !== 1) throw new Error('give exactly one of --prompt, --prompt-file or --prompt-ids');
}
const promptIdsOf = (o: Record<string, unknown>) => (o.promptIds ? String(o.promptIds).split(',').map((x) => Number(x.trim())) : undefined);

addAttentionFlags(addPromptFlags(program.command('generate').description('generate text from a prompt'))
  .option('--chat', 'wrap the prompt in the model\'s chat template as a user message')
  .option('--max-tokens <n>', 'tokens to generate', int('max tokens'), 128)
  .option('--temperature <t>', '0 = greedy', num('temperature'), 0.8)
  .option('--top-k <k>', '0 = off', int('top-k'), 40)
  .option('--top-p <p>', '1 = off', num('top-p'), 0.95)
  .option('--seed <n>', 'random seed', int('seed'))
  .option('--stop <text>', 'stop string (repeatable)', collect, [])
  .option('--decode-tail <n>', 'feed the last N prompt tokens as decode steps (the sparse policy then sees them)', int('decode tail'), 0)
  .option('--session <file>', 'continue a session file (quest prefill): the prompt is appended to its tokens')
  .option('--stats', 'report attention-mass recall of the sparse steps'))
  .action(async (o) => {
    checkOnePrompt(o);
    if (o.session && o.chat) throw new Error('--chat wraps a whole conversation: it does not continue a --session');
    const load = progressBar('loading', 'MB');
    const llm = await loadModel(o.model, { device: o.device, attention: attentionOptions(o), kvCache: o.kvCache, tokenizer: o.tokenizer, onProgress: (d, t) => load.update(d / 2 ** 20, t / 2 ** 20), onNote: note });
    load.stop();
    let session;
    if (o.session) {
      const bar = progressBar('session', 'MB');
      session = await llm.loadSession(o.session, { onProgress: (d, t) => bar.update(d / 2 ** 20, t / 2 ** 20) });
      bar.stop();
    }
    let prompt: string = o.prompt ?? (o.promptFile ? readFileSync(o.promptFile, 'utf8') : '');
    if (o.chat) prompt = llm.tokenizer ? llm.tokenizer.applyChatTemplate([{ role: 'user', content: prompt }]) : prompt;
    const promptIds = promptIdsOf(o);
    const prefill = progressBar('prefill', 'tokens');
    const gen = llm.generate(prompt, {
      maxTokens: o.maxTokens, temperature: o.temperature, topK: o.topK, topP: o.topP, seed: o.seed, stop: o.stop,
      decodeTail: o.decodeTail, stats: o.stats, promptIds, session, onPrefillProgress: (d, t) => prefill.update(d, t),
    });
    let first = true;
    for await (const ev of gen) {
      if (first) { prefill.stop(); first = false; }
      process.stdout.write(llm.tokenizer ? ev.text : `${ev.token} `);
    }
    const r = await gen.result;
    prefill.stop();
    const peak = process.resourceUsage().maxRSS / 1024;
    process.stdout.write('\n');
    process.stderr.write(`[${r.promptTokens} prompt tokens${r.cachedTokens ? ` (${r.cachedTokens} from the session)` : ''} | first token ${(r.prefillMs / 1000).toFixed(2)} s | prefill ${r.prefillTokensPerSecond.toFixed(1)} tok/s | ` +
      `decode ${r.decodeTokensPerSecond.toFixed(1)} tok/s (${r.tokens.length} tokens, ${r.finishReason}) | ` +
      `attention ${llm.attention.policy}${llm.attention.policy === 'dense' ? '' : ` budget ${llm.attention.budget}`} | ${llm.device} | peak memory ${peak.toFixed(0)} MB]\n`);
    if (o.stats && r.recall) {
      const pl = r.recall.perLayer.map((x, i) => `L${i}:${x === null ? 'dense' : x.toFixed(3)}`).join(' ');
      process.stderr.write(`[attention-mass recall: mean ${r.recall.mean === null ? 'n/a (no sparse step)' : r.recall.mean.toFixed(4)}, ` +
        `${r.recall.meanAttendedTokens?.toFixed(0) ?? '-'} tokens attended per head | ${pl}]\n`);
    }
  });

addAttentionFlags(addPromptFlags(program.command('prefill').description('prefill a prompt once and save the session (tokens and KV cache) for quest generate --session'))
  .requiredOption('--out <file>', 'session file to write'))
  .action(async (o) => {
    checkOnePrompt(o);
    const load = progressBar('loading', 'MB');
    const llm = await loadModel(o.model, { device: o.device, attention: attentionOptions(o), kvCache: o.kvCache, tokenizer: o.tokenizer, onProgress: (d, t) => load.update(d / 2 ** 20, t / 2 ** 20), onNote: note });
    load.stop();
    const ids: number[] = promptIdsOf(o) ?? llm.encode(o.prompt ?? readFileSync(o.promptFile, 'utf8'));
    if (ids.length >= llm.config.maxSeqLen) throw new Error(`the prompt has ${ids.length} tokens, over the model's context length of ${llm.config.maxSeqLen}`);
    const session = llm.session();
    const t0 = performance.now(), bar = progressBar('prefill', 'tokens');
    await session.forward(ids, { logits: 'none', dense: true, onProgress: (d, t) => bar.update(d, t) });
    bar.stop();
    const ms = performance.now() - t0, save = progressBar('saving', 'MB');
    await session.save(o.out, { onProgress: (d, t) => save.update(d / 2 ** 20, t / 2 ** 20) });
    save.stop();
    session.dispose();
    process.stderr.write(`wrote ${o.out} (${ids.length} tokens, prefill ${(ms / 1000).toFixed(2)} s, ${llm.device})\n`);
  });

program.command('convert').description('convert a Hugging Face Llama/Qwen2/Qwen3/Mistral/Phi-3/Gemma 3 folder to GGUF')
  .requiredOption('--model <dir>', 'Hugging Face folder')
  .requiredOption('--out <file>', 'GGUF file to write')
  .addOption(new Option('--type <dtype>', 'weight type, or llama.cpp\'s q4_k_m / q5_k_m mixes').choices(CONVERT_TYPES).default('f16'))
  .action((o) => {
    const bytes = convertHFToGGUF(o.model, o.type);
    writeFileSync(o.out, bytes);
    process.stderr.write(`wrote ${o.out} (${(bytes.byteLength / 2 ** 20).toFixed(1)} MB, ${o.type})\n`);
  });

addAttentionFlags(program.command('serve').description('OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models, /health)')
  .option('--model <path>', 'model: a path, a URL or hf:org/name', DEFAULT_MODEL)
  .option('--model-id <id>', 'the model name clients use (default: the folder or file name)')
  .option('--host <host>', 'address to listen on', '127.0.0.1')
  .option('--port <n>', 'port', int('port'), 8080)
  .option('--concurrency <n>', 'generations running at once (their decode steps batched)', int('concurrency'), 16)
  .option('--batch', 'batch the running generations\' decode steps (continuous batching; default on the CPU and on GPUs with tensor cores)')
  .option('--no-batch', 'run each generation\'s decode steps on their own (default on other GPUs)')
  .option('--prefill-chunk <n>', 'prompt tokens per prefill chunk; running generations decode between chunks', int('prefill chunk'))
  .option('--queue <n>', 'requests allowed to wait beyond those; more are refused with 429', int('queue'), 256)
  .option('--prefix-cache <MiB>', 'KV memory kept for prompts that start the same way (a shared system prompt or document); 0 = off', num('prefix cache'), 1024)
  .option('--api-key <key>', 'require "Authorization: Bearer <key>" on /v1 (default: $QUEST_API_KEY; none: open)')
  .option('--cors <origin>', 'let web pages from this origin call the API (\'*\': any); default: no CORS')
  .option('--timeout <seconds>', 'time limit of a request, queueing included', num('timeout'), 600)
  .option('--shutdown-grace <seconds>', 'on SIGTERM/SIGINT, how long running generations may finish before they are cancelled', num('shutdown grace'), 30))
  .action(async (o) => {
    const load = progressBar('loading', 'MB');
    if (o.prefixCache < 0) throw new Error(`--prefix-cache must be >= 0 MiB, got ${o.prefixCache}`);
    const llm = await loadModel(o.model, { device: o.device, attention: attentionOptions(o), kvCache: o.kvCache, prefixCacheBytes: Math.round(o.prefixCache * 2 ** 20), onProgress: (d, t) => load.update(d / 2 ** 20, t / 2 ** 20), onNote: note });
    load.stop();
    const modelId = o.modelId ?? basename(o.model.replace(/\/+$/, '')).replace(/\.gguf$/, '');
    if (!(o.timeout > 0)) throw new Error(`--timeout must be > 0 seconds, got ${o.timeout}`);
    const apiKey: string | undefined = o.apiKey ?? (process.env.QUEST_API_KEY || undefined);
    if (o.prefillChunk !== undefined && o.prefillChunk < 1) throw new Error(`--prefill-chunk must be >= 1, got ${o.prefillChunk}`);
    const app = createServer(llm, { modelId, concurrency: o.concurrency, queueLimit: o.queue, apiKey, cors: o.cors, timeoutMs: o.timeout * 1000, batch: o.batch, prefillChunk: o.prefillChunk });
    const url = await app.listen({ host: o.host, port: o.port });
    // (the warning first: whoever waits for the "quest serving" line has seen it by then)
    if (!apiKey && !['127.0.0.1', '::1', 'localhost'].includes(o.host)) {
      process.stderr.write(`warning: listening on ${o.host} without an API key: anyone who can reach this address can use the model (--api-key or QUEST_API_KEY)\n`);
    }
    process.stderr.write(`quest serving ${modelId} at ${url}/v1 (attention ${llm.attention.policy}, budget ${llm.attention.budget}${apiKey ? ', API key required' : ''})\n`);
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      process.stderr.write(`${signal}: no new requests; running ones may finish for ${o.shutdownGrace} s\n`);
      void app.shutdown(o.shutdownGrace * 1000).then(() => { llm.dispose(); process.exit(0); }, (e) => { process.stderr.write(`error while shutting down: ${(e as Error).message}\n`); process.exit(1); });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });

const evalCmd = program.command('eval').description('evaluations');

/** An evaluation command with the flags every evaluation has: model, policies, budgets, output, device. */
function evalCommand(name: string, description: string, out: string): Command {
  return evalCmd.command(name).description(description)
    .option('--model <path>', 'model', DEFAULT_MODEL)
    .option('--attention <list>', 'policies', 'dense,quest,streaming,h2o,tova')
    .option('--budget <list>', 'budgets of the sparse policies', '64,256,1024')
    .option('--out <dir>', 'JSON, table and SVG plots go here (re-running resumes)', out)
    .addOption(deviceOption());
}
evalCmd.command('recall').description('attention-mass recall of each policy vs budget on a long text')
  .option('--model <path>', 'model', DEFAULT_MODEL)
  .option('--text <file>', 'long text (default: a held-out Gutenberg book from ../shared/corpus)')
  .option('--context <n>', 'prompt tokens prefilled densely', int('context'), 4096)
  .option('--steps <n>', 'tokens decoded one by one after it', int('steps'), 32)
  .option('--budgets <list>', 'comma-separated budgets', '64,128,256,512,1024')
  .option('--policies <list>', 'comma-separated policies', 'quest,oracle,oracle-page,streaming,h2o,tova')
  .option('--gqa <list>', 'Quest GQA modes to compare', 'group-max,group-sum,head')
  .option('--out <file>', 'write the results as JSON')
  .action(async (o) => { await runRecallEval(o); });

evalCommand('passkey', 'passkey retrieval: key hidden at a depth in filler, question decoded token by token', 'results/passkey')
  .option('--lengths <list>', 'prompt lengths in tokens', '2048,8000')
  .option('--depths <list>', 'needle depths in percent', '0,25,50,75,100')
  .option('--samples <n>', 'samples per length and depth', int('samples'), 20)
  .option('--filler <kind>', 'repeat (the paper\'s sentences), book (the held-out book of ../shared/corpus), or a text file\'s path', 'repeat')
  .addOption(new Option('--template <kind>', 'the paper\'s wording, or phrasings held out from the 32K model\'s training').choices(['paper', 'heldout']).default('paper'))
  .option('--seed <n>', 'random seed of the keys', int('seed'), 1)
  .action(async (o) => { await runPasskeyEval(o); });

evalCommand('ppl', 'perplexity of a long text, every token scored as a decode step', 'results/ppl')
  .option('--text <file>', 'the text (default: the held-out book in ../shared/corpus)')
  .option('--tokens <n>', 'tokens of the text to score', int('tokens'), 4096)
  .option('--bucket <n>', 'position bucket size for the per-position report', int('bucket'), 1024)
  .option('--self-generated <n>', 'score n tokens the model samples itself instead of a text (models without a tokenizer)', int('self-generated'))
  .option('--seed <n>', 'seed of --self-generated', int('seed'), 1)
  .action(async (o) => { await runPplEval(o); });

evalCommand('qa', 'long-context QA (LongBench form, F1 / EM) on tasks built from a Gutenberg book; question decoded token by token', 'results/qa')
  .option('--text <file>', 'the book (default: the held-out book in ../shared/corpus)')
  .option('--context <n>', 'context length in tokens', int('context'), 4096)
  .option('--samples <n>', 'samples per task', int('samples'), 20)
  .option('--tasks <list>', 'tasks: quote (continue a sentence quoted from far back), facts (recall one of several facts)', 'quote,facts')
  .option('--seed <n>', 'seed of the task set', int('seed'), 1)
  .action(async (o) => { await runQaEval(o); });

program.parseAsync().catch((e: Error) => {
  process.stderr.write(`\nerror: ${e.message}\n`);
  process.exit(1);
});
