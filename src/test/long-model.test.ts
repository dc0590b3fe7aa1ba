// The 32K test model of issue 21: its training data generator (tools/retrieval_data.py, tested in Python),
// the held-out passkey phrasings of `quest eval passkey --template heldout`, and the shipped model itself.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../engine/llm.js';
import { argmax } from '../engine/sampler.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { convertHFToGGUF } from '../model/convert.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { buildPasskeyPrompt, HELDOUT_TEMPLATES, PAPER_TEMPLATE, PASSKEY_FILLER, passkeyNeedle, runPasskeyEval } from '../eval/passkey.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const LONG_MODEL = join(ROOT, 'models', 'quest-long-32k-q5_1.gguf');
const HELD_OUT_BOOK = join(ROOT, '..', 'shared', 'corpus', 'pride_and_prejudice.txt');
const python = spawnSync('python3', ['--version']).status === 0;

test('the training data generator: exact lengths, answers retrievable, no held-out phrasing, variety (Python tests)', { skip: python ? false : 'python3 is not installed' }, () => {
  const r = spawnSync('python3', [join(ROOT, 'tools', 'test_retrieval_data.py')], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr + r.stdout);
  assert.match(r.stderr, /Ran ([7-9]|\d\d) tests/);
});

test('held-out phrasings build prompts of the exact length with the needle at the depth and the question last', async () => {
  const m = await loadModel(DEFAULT_MODEL);
  const enc = (s: string) => m.encode(s), filler = enc(PASSKEY_FILLER);
  assert.ok(HELDOUT_TEMPLATES.length >= 5);
  for (const t of HELDOUT_TEMPLATES) {
    assert.ok(!t.needle.includes('pass key') && !t.question.includes('pass key'), 'a held-out phrasing is not the paper\'s');
    for (const depth of [0, 0.5, 1]) {
      const p = buildPasskeyPrompt(enc, 700, depth, '40917', filler, t), needle = enc(passkeyNeedle('40917', t));
      assert.equal(p.tokens.length, 700);
      assert.deepEqual(p.tokens.slice(p.needleAt, p.needleAt + needle.length), needle);
      const intro = t.intro ? enc(t.intro).length : 0, body = 700 - intro - needle.length - p.questionTokens;
      assert.ok(Math.abs(p.needleAt - intro - depth * body) <= 1, `depth ${depth}: needle at ${p.needleAt}`);
      assert.ok(m.tokenizer!.decode(p.tokens).endsWith(t.question));
    }
  }
});

test('eval passkey: a missing filler file and results of another template are clear errors', async () => {
  const out = mkdtempSync(join(tmpdir(), 'quest-pk-'));
  const o = { model: DEFAULT_MODEL, lengths: '300', depths: '50', samples: 2, attention: 'dense', budget: '64', filler: 'repeat', out, seed: 1 };
  await assert.rejects(runPasskeyEval({ ...o, filler: join(out, 'no-such.txt') }), /--filler: no such file/);
  const cells = await runPasskeyEval({ ...o, template: 'heldout' });
  assert.equal(cells[0].total, 2);
  assert.equal(JSON.parse(readFileSync(join(out, 'passkey.json'), 'utf8')).template, 'heldout');
  await assert.rejects(runPasskeyEval({ ...o, template: 'paper' }), /holds results with template heldout/);
});

test('the 32K model (GQA 6/2, Q5_1 GGUF) retrieves a passkey in held-out text, dense and Quest, question decoded token by token', { skip: existsSync(LONG_MODEL) ? false : 'models/quest-long-32k-q5_1.gguf missing' }, async () => {
  const m = await loadModel(LONG_MODEL);
  assert.equal(m.config.maxSeqLen, 32768);
  assert.deepEqual([m.config.nHeads, m.config.nKVHeads], [6, 2]);
  const text = existsSync(HELD_OUT_BOOK) ? readFileSync(HELD_OUT_BOOK, 'utf8').replace(/\r\n/g, '\n').slice(20_000, 60_000) : PASSKEY_FILLER.repeat(400);
  const filler = m.encode(text);
  for (const [key, depth] of [['58301', 0.3], ['92746', 0.8]] as const) {
    const p = buildPasskeyPrompt((s) => m.encode(s), 3000, depth, key, filler, PAPER_TEMPLATE);
    const base = m.session({ policy: 'dense' });
    await base.forward(p.tokens.slice(0, -p.questionTokens), { logits: 'none' });
    for (const attention of [{ policy: 'dense' as const }, { policy: 'quest' as const, budget: 256 }]) {
      const s = base.fork(attention);
      let logits: Float32Array = new Float32Array(0);
      for (const t of p.tokens.slice(-p.questionTokens)) logits = await s.forward([t]);
      const out: number[] = [];
      for (let i = 0; i < 6; i++) { const t = argmax(logits); out.push(t); logits = await s.forward([t]); }
      assert.match(m.tokenizer!.decode(out), new RegExp(`^ ${key}`), `${attention.policy}, depth ${depth}: ${JSON.stringify(m.tokenizer!.decode(out))}`);
      s.dispose();
    }
    base.dispose();
  }
});

test('training resumes from a shipped GGUF: tools/gguf_weights.py reads f16 / Q8_0 / Q5_1 files of our converter back as the Hugging Face weights (Python)', { skip: python ? false : 'python3 is not installed' }, (t) => {
  const numpy = spawnSync('python3', ['-c', 'import numpy']).status === 0;
  if (!numpy) { t.skip('numpy is not installed'); return; }
  const dir = mkdtempSync(join(tmpdir(), 'quest-gguf-'));
  for (const type of ['f16', 'q8_0', 'q5_1'] as const) {
    const file = join(dir, `tiny-${type}.gguf`);
    writeFileSync(file, convertHFToGGUF(DEFAULT_MODEL, type));
    const r = spawnSync('python3', [join(ROOT, 'tools', 'test_gguf_weights.py'), file, join(DEFAULT_MODEL, 'model.safetensors'), type], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /74 tensors match/);
  }
});

test('the 32K model\'s resume files (tools/logs/quest-long-32k) hold the tokenizer of the shipped GGUF', { skip: existsSync(LONG_MODEL) ? false : 'models/quest-long-32k-q5_1.gguf missing' }, async () => {
  const m = await loadModel(LONG_MODEL);
  const dir = join(ROOT, 'tools', 'logs', 'quest-long-32k');
  const hf = new TextTokenizer({ json: JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')), config: {}, bosId: null, eosIds: [], addBos: false, chatTemplate: null });
  const text = 'The pass key is 58301. Remember it.\n\n"Well, Prince," said Anna Pávlovna. It is a truth universally acknowledged...';
  assert.deepEqual(hf.encode(text), m.encode(text));
  const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
  assert.deepEqual([cfg.hidden_size, cfg.num_hidden_layers, cfg.max_position_embeddings], [m.config.dim, m.config.nLayers, m.config.maxSeqLen]);
});
