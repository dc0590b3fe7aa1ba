// quest in a browser: the same engine and WebGPU kernels as in Node (navigator.gpu instead of Dawn); a
// model comes from a URL (or hf:org/name) or from files the user picked. Bundled by tools/build-browser.mjs
// into dist/browser/quest.js.
import { loadModel as loadFrom, type LLM, type LoadOptions } from './engine/llm.js';
import { fetchModelFiles, pickedModelFiles } from './model/fetch-files.js';
import type { ModelFiles } from './model/model-files.js';

export * from './index.js';

/** Loads a model from a URL (a .gguf file, or a Hugging Face folder ending in /), hf:org/name, picked
 *  files (a FileList or File[]), or ModelFiles. Default device here: 'webgpu'. */
export async function loadModel(source: string | ArrayLike<Blob & { name: string }> | ModelFiles, options: LoadOptions = {}): Promise<LLM> {
  const files = typeof source === 'string' ? await fetchModelFiles(source, { onProgress: options.onProgress })
    : 'length' in source ? await pickedModelFiles(source, { onProgress: options.onProgress })
    : source;
  return loadFrom(files, { device: 'webgpu', ...options });
}
