// Generation through the library API on the default model: tokenizer, greedy determinism, sampling
// seeds, stop strings, streaming, limits and errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { loadModel, type LLM } from '../engine/llm.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';
import { makeModel, Session } from '../engine/session.js';
import { argmax } from '../engine/sampler.js';

let llm: LLM;
const get = async () => (llm ??= await loadModel(DEFAULT_MODEL));

test('the tokenizer round-trips text and splits digits one by one', async () => {
  const m = await get();
  const text = 'The pass key is 48213. "Well, Prince," said Anna Pávlovna.\n';
  const ids = m.tokenizer!.encode(text);
  assert.equal(m.tokenizer!.decode(ids), text);
  const digits = m.tokenizer!.encode(' 48213').map((i) => m.tokenizer!.tokenText(i));
  assert.deepEqual(digits.slice(-5), ['4', '8', '2', '1', '3']);
});

test('greedy generation equals step-by-step argmax and streams the same text', async () => {
  const m = await get();
  const prompt = '"Well, Prince, so Genoa and Lucca are now';
  const gen = m.generate(prompt, { maxTokens: 20, temperature: 0 });
  let streamed = '';
  for await (const e of gen) streamed += e.text;
  const r = await gen.result;
  assert.equal(streamed, r.text);
  const s = new Session(makeModel(m.config, m.model.weights));
  let logits = s.forward(m.encode(prompt));
  const mine: number[] = [];
  for (let i = 0; i < 20; i++) { const t = argmax(logits); mine.push(t); logits = s.forward([t]); }
  assert.deepEqual(r.tokens, mine);
});

test('the model retrieves a passkey with dense attention and with Quest (question decoded token by token)', async () => {
  const m = await get();
  const filler = ' The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.';
  const prompt = 'There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.' +
    filler.repeat(12) + ' The pass key is 58301. Remember it. 58301 is the pass key.' + filler.repeat(12) + ' What is the pass key? The pass key is';
  for (const attention of [{ policy: 'dense' as const }, { policy: 'quest' as const, budget: 64, pageSize: 16 }]) {
    const r = await m.complete(prompt, { maxTokens: 6, temperature: 0, attention, decodeTail: 12 });
    assert.match(r.text, /^ 58301/, `${attention.policy}: ${JSON.stringify(r.text)}`);
  }
});

test('sampling with a seed is reproducible; stop strings cut the text', async () => {
  const m = await get();
  const a = await m.complete('It was', { maxTokens: 15, temperature: 0.9, topK: 40, topP: 0.9, seed: 42 });
  const b = await m.complete('It was', { maxTokens: 15, temperature: 0.9, topK: 40, topP: 0.9, seed: 42 });
  assert.equal(a.text, b.text);
  const full = await m.complete('"Well, Prince, so Genoa', { maxTokens: 30, temperature: 0 });
  const stop = full.text.slice(8, 11);
  const cut = await m.complete('"Well, Prince, so Genoa', { maxTokens: 30, temperature: 0, stop: [stop] });
  assert.equal(cut.finishReason, 'stop');
  assert.equal(cut.text, full.text.slice(0, full.text.indexOf(stop)));
});

test('bad requests are clear errors: prompt over the context, bad budget, bad sampling values', async () => {
  const m = await get();
  await assert.rejects(m.complete('', { promptIds: new Array(9000).fill(5) }), /over the model's context length of 8192/);
  await assert.rejects(m.complete('hi', { attention: { policy: 'quest', budget: 0 } }), /budget must be a positive integer/);
  await assert.rejects(m.complete('hi', { temperature: -1 }), /temperature must be >= 0/);
  await assert.rejects(m.complete('hi', { maxTokens: -3 }), /maxTokens must be an integer >= 0/);
  await assert.rejects(m.complete('hi', { attention: { policy: 'nope' as never } }), /unknown attention policy "nope"/);
});

test('the prefill of a long prompt reports progress per chunk and can be cancelled between chunks', async () => {
  const m = await get();
  const promptIds = Array.from({ length: 1500 }, (_, i) => 10 + (i % 500));
  const seen: number[] = [];
  const all = await m.complete('', { promptIds, maxTokens: 1, temperature: 0, onPrefillProgress: (done, total) => { assert.equal(total, 1500); seen.push(done); } });
  assert.deepEqual(seen, [256, 512, 768, 1024, 1280, 1500]);
  assert.equal(all.tokens.length, 1);
  const ac = new AbortController(), cut: number[] = [];
  const r = await m.complete('', { promptIds, maxTokens: 5, temperature: 0, signal: ac.signal, cache: false, onPrefillProgress: (done) => { cut.push(done); if (done >= 512) ac.abort(); } });
  assert.equal(r.finishReason, 'abort');
  assert.deepEqual(r.tokens, []);
  assert.deepEqual(cut, [256, 512]); // no chunk ran after the cancel
});

test('an AbortSignal stops generation', async () => {
  const m = await get();
  const ac = new AbortController();
  const gen = m.generate('Once', { maxTokens: 200, temperature: 0 });
  let n = 0;
  const gen2 = m.generate('Once', { maxTokens: 200, temperature: 0, signal: ac.signal });
  for await (const _ of gen2) { if (++n === 3) ac.abort(); }
  const r = await gen2.result;
  assert.equal(r.finishReason, 'abort');
  assert.ok(r.tokens.length <= 4);
  await gen.result;
});

test('the passkey prompt builder places the needle at the requested depth (within one token) at the exact length', async () => {
  const { buildPasskeyPrompt, PASSKEY_FILLER, passkeyNeedle } = await import('../eval/passkey.js');
  const m = await get();
  const enc = (s: string) => m.encode(s);
  const filler = enc(PASSKEY_FILLER), needle = enc(passkeyNeedle('12345'));
  for (const depth of [0, 0.25, 0.5, 0.75, 1]) {
    const p = buildPasskeyPrompt(enc, 1000, depth, '12345', filler);
    assert.equal(p.tokens.length, 1000);
    assert.deepEqual(p.tokens.slice(p.needleAt, p.needleAt + needle.length), needle);
    const intro = p.tokens.length - 0; void intro;
    const body = 1000 - enc((await import('../eval/passkey.js')).PASSKEY_INTRO).length - needle.length - p.questionTokens;
    const introLen = enc((await import('../eval/passkey.js')).PASSKEY_INTRO).length;
    assert.ok(Math.abs(p.needleAt - introLen - depth * body) <= 1, `depth ${depth}: needle at ${p.needleAt}`);
    assert.ok(m.tokenizer!.decode(p.tokens).endsWith('What is the pass key? The pass key is'));
  }
});

test('perplexity scoring: a perfect prediction costs nothing, a uniform one costs log V', async () => {
  const { tokenNll, perplexity } = await import('../eval/ppl.js');
  const sure = new Float32Array(10).fill(-1e4); sure[3] = 0;
  assert.ok(tokenNll(sure, 3) < 1e-6);
  const flat = new Float32Array(10);
  assert.ok(Math.abs(tokenNll(flat, 7) - Math.log(10)) < 1e-6);
  assert.ok(Math.abs(perplexity(5 * Math.log(10), 5) - 10) < 1e-9);
  // a wrong confident answer is expensive
  assert.ok(tokenNll(sure, 4) > 1000);
});

test('dense perplexity by decode steps equals the one from a causal prefill', async () => {
  const { tokenNll } = await import('../eval/ppl.js');
  const m = await get();
  const ids = m.encode('It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.');
  const V = m.config.vocabSize;
  const all = await m.session().forward(ids, { logits: 'all' });
  const s = m.session();
  let a = 0, b = 0;
  for (let t = 0; t < ids.length - 1; t++) { a += tokenNll(await s.forward([ids[t]]), ids[t + 1]); b += tokenNll(all, ids[t + 1], t * V, V); }
  assert.ok(Math.abs(a - b) < 1e-3 * ids.length, `${a} vs ${b}`);
});

test('streamed pieces concatenate to the decoded text (multi-byte characters, long outputs)', async () => {
  const { StreamDecoder } = await import('../tokenizer/tokenizer.js');
  const m = await get();
  const text = 'Anna Pávlovna Schérer — “Well, Prince,” so Genoa… ' + 'and then, again, '.repeat(40) + 'ünïcödé ✓';
  const ids = m.tokenizer!.encode(text, { bos: false });
  const d = new StreamDecoder(m.tokenizer!);
  let out = '';
  for (const id of ids) out += d.push(id);
  out += d.flush();
  assert.equal(out, m.tokenizer!.decode(ids));
});
