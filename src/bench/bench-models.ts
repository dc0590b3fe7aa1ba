// The model files the CPU benchmarks use, written once into the temp folder: the default model as an f16
// GGUF (for llama.cpp), and random-weight Q8_0 / Q4_K_M models of SmolLM2-135M's shape (weights do not change speed).
import { existsSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { convertHFToGGUF } from '../model/convert.js';
import { randomGGUF } from '../test/fixtures.js';
import { DEFAULT_MODEL } from '../cli/default-model.js';

const dir = () => { const d = join(tmpdir(), 'quest-bench'); mkdirSync(d, { recursive: true }); return d; };

export function tinyGguf(): string {
  const path = join(dir(), 'quest-tiny-8k-f16.gguf');
  if (!existsSync(path)) writeFileSync(path, convertHFToGGUF(DEFAULT_MODEL, 'f16'));
  return path;
}

/** SmolLM2-135M's shape in Q8_0 or Q4_0 (its token embedding, the tied output, in Q8_0 as llama.cpp
 *  writes it), or as llama.cpp lays out a Q4_K_M file of it (Q4_K / Q6_K where rows are whole 256-element
 *  blocks, its fallbacks Q5_0 / Q8_0 for the 576-column matrices). */
export function smolGguf(type: 'q8_0' | 'q4_0' | 'q4_k_m' = 'q8_0', ctx = 8192): string {
  const path = join(dir(), `smollm2-135m-shape-${type}${ctx === 8192 ? '' : `-ctx${ctx}`}-v2.gguf`);
  if (!existsSync(path)) {
    console.error(`writing a random-weight SmolLM2-135M-shaped ${type} GGUF (weights do not change speed)...`);
    writeFileSync(path, randomGGUF({ vocab: 49152, dim: 576, hidden: 1536, layers: 30, heads: 9, kvHeads: 3, dtype: type, ctx, tied: true, seed: 1, vocabulary: true }));
  }
  return path;
}
