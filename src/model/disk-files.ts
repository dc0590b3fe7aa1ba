// A model on disk (Node): one file, or a Hugging Face folder. Weights are read once, in 64 MiB chunks,
// straight into the memory the kernels read them from.
import { openSync, readSync, fstatSync, closeSync, existsSync, statSync, readFileSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { allocModelBytes, adoptModelBytes } from './file-bytes.js';
import type { LoadProgress, ModelFiles } from './model-files.js';

export function diskFiles(path: string): ModelFiles {
  if (!existsSync(path)) throw new Error(`model not found: ${path}`);
  const folder = statSync(path).isDirectory();
  const dir = folder ? path : dirname(path);
  const at = (name: string) => resolve(dir, name); // (absolute names, e.g. a tokenizer given apart, stay as they are)
  return {
    label: path, main: folder ? null : basename(path),
    has: (name) => existsSync(at(name)),
    size: (name) => statSync(at(name)).size,
    head: (name, n) => {
      const fd = openSync(at(name), 'r');
      try { const b = new Uint8Array(n); return b.subarray(0, readSync(fd, b, 0, n, 0)); } finally { closeSync(fd); }
    },
    text: (name) => readFileSync(at(name), 'utf8'),
    bytes: (name, onProgress) => readModelFile(at(name), onProgress),
    where: (name) => (folder ? at(name) : name === basename(path) ? path : at(name)),
  };
}

/** A path given on the command line, made absolute (diskFiles resolves relative names in the model's folder). */
export const absolutePath = (p: string) => resolve(p);

/** Reads a whole model file once (see allocModelBytes for where it goes). */
export function readModelFile(path: string, onProgress?: LoadProgress): Uint8Array {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new Error(`cannot open model file ${path}: ${(e as Error).message}`);
  }
  try {
    const size = fstatSync(fd).size;
    const bytes = adoptModelBytes(allocModelBytes(size)); // (freed with the others if loading fails)
    const chunk = 64 << 20;
    for (let off = 0; off < size;) {
      const n = readSync(fd, bytes, off, Math.min(chunk, size - off), off);
      if (n <= 0) throw new Error(`unexpected end of ${path} at byte ${off}`);
      off += n;
      onProgress?.(off, size);
    }
    return bytes;
  } finally {
    closeSync(fd);
  }
}
