// The QA harness: LongBench-style scorers on known answers, and the task builder's guarantees (the
// answer is in the context, far from the question).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildQaSet, exactMatch, f1Score, bestScore, normalizeAnswer, QUOTE_WORDS, ANSWER_WORDS } from '../eval/qa.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { loadModelFiles } from '../model/load.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';

test('QA scorers: perfect answers score 1, wrong ones 0, partial overlap by token F1', () => {
  assert.equal(f1Score('was a picture of a', 'was a picture of a'), 1);
  assert.equal(exactMatch('The Picture!', 'picture'), 1); // case, punctuation and articles are ignored
  assert.equal(f1Score('48213', '51422'), 0);
  assert.equal(exactMatch('4821', '48213'), 0);
  // prediction "red house now" vs reference "red house": precision 2/3, recall 1 -> F1 0.8
  assert.ok(Math.abs(f1Score('red house now', 'red house') - 0.8) < 1e-12);
  assert.equal(f1Score('', 'x'), 0);
  assert.equal(normalizeAnswer('  An Apple,  the PEAR. '), 'apple pear');
  assert.equal(bestScore('blue', ['red', 'blue sky'], f1Score), f1Score('blue', 'blue sky'));
});

test('QA task set: answers come from far back in each context', () => {
  const tok = new TextTokenizer(loadModelFiles(DEFAULT_MODEL).tokenizer!);
  const words = 'It was a bright cold day in April and the clocks were striking thirteen near the old town hall'.split(' ');
  // a synthetic book: numbered sentences of varied words, hard-wrapped like Gutenberg text
  const sentences = Array.from({ length: 3000 }, (_, i) => `${words[i % words.length][0].toUpperCase()}${words[i % words.length].slice(1)} ${words.slice((i * 7) % 10, (i * 7) % 10 + 9).join(' ')} number ${i}.`);
  const book = sentences.join(' ').replace(/(.{60}\S*) /g, '$1\n');
  const set = buildQaSet(book, (s) => tok.encode(s), 1024, 5, 3);
  assert.equal(set.length, 10);
  for (const s of set) {
    const ctxTokens = tok.encode(s.context).length;
    assert.ok(ctxTokens > 850 && ctxTokens < 1150, `context of ${ctxTokens} tokens`); // (the runner cuts it to the length asked)
    if (s.task === 'quote') {
      const quote = /"(.*)$/.exec(s.question)![1];
      assert.equal(quote.split(' ').length, QUOTE_WORDS);
      assert.equal(s.answers[0].split(' ').length, ANSWER_WORDS);
      const at = s.context.indexOf(`${quote} ${s.answers[0]}`);
      assert.ok(at >= 0 && at < s.context.length * 0.3, 'the quoted sentence and its continuation are in the first 30% of the context');
    } else {
      const [, thing, name] = /What is the (.*) of (\w+)\?/.exec(s.question)!;
      const fact = `The ${thing} of ${name} is ${s.answers[0]}.`;
      const at = s.context.indexOf(fact);
      assert.ok(at >= 0 && at < s.context.length * 0.65, 'the asked fact is in the first 60% of the context');
      assert.match(s.answers[0], /^\d{5}$/);
    }
  }
  // deterministic
  assert.deepEqual(buildQaSet(book, (s) => tok.encode(s), 1024, 5, 3), set);
});
