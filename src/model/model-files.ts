// The files of a model, wherever they are: a path on disk (Node, `diskFiles`), or files fetched from a
// URL or picked by a user in a browser (`memoryFiles`). The loaders read models only through this.
import { adoptModelBytes, utf8 } from './file-bytes.js';

export type LoadProgress = (done: number, total: number) => void;

export interface ModelFiles {
  /** the path or URL, for messages */
  readonly label: string;
  /** the model's own file (a .gguf, a llama2.c .bin), or null for a Hugging Face folder */
  readonly main: string | null;
  has(name: string): boolean;
  size(name: string): number;
  /** the first n bytes of a file (its magic) */
  head(name: string, n: number): Uint8Array;
  /** a small file's text (JSON) */
  text(name: string): string;
  /** a weights file's bytes, in memory the kernels read in place; the model frees them when disposed */
  bytes(name: string, onProgress?: LoadProgress): Uint8Array;
  /** how to name a file in messages */
  where(name: string): string;
  /** every file (files in memory: what a cache writes to disk) */
  names?(): string[];
}

/** Files already in memory (fetched or picked). `main` names the model file unless it is a folder. */
export function memoryFiles(label: string, files: Map<string, Uint8Array>, main: string | null): ModelFiles {
  const get = (name: string) => {
    const b = files.get(name);
    if (!b) throw new Error(`${label}: no file ${name}`);
    return b;
  };
  return {
    label, main,
    has: (name) => files.has(name),
    size: (name) => get(name).byteLength,
    head: (name, n) => get(name).subarray(0, n),
    text: (name) => utf8(get(name)),
    bytes: (name, onProgress) => { const b = get(name); onProgress?.(b.byteLength, b.byteLength); return adoptModelBytes(b); },
    where: (name) => (main === name ? label : `${label.replace(/\/?$/, '/')}${name}`),
    names: () => [...files.keys()],
  };
}
