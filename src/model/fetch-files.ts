// Models for browsers: from a URL (fetch, streamed into the memory the kernels read) or from files a
// user picked (<input type="file">). Works in Node too (its fetch), which is how it is tested.
import { allocModelBytes, releaseModelBytes, utf8 } from './file-bytes.js';
import { memoryFiles, type LoadProgress, type ModelFiles } from './model-files.js';
import { indexShards } from './load.js';

export interface FetchOptions {
  onProgress?: LoadProgress;
  signal?: AbortSignal;
  /** keep the files in the browser's Cache Storage (default where there is one: browsers), so that a
   *  model downloads once; a cache that is full or refuses only skips caching */
  cache?: boolean;
}

/** The Cache Storage of downloaded model files (browsers). */
export const MODEL_CACHE = 'quest-models';

/** Forgets every model file kept in the browser's Cache Storage. */
export async function clearModelCache(): Promise<boolean> {
  return typeof caches === 'undefined' ? false : caches.delete(MODEL_CACHE);
}

/** A single-file model's name (a GGUF, a llama2.c checkpoint), as opposed to a folder's. */
export const isModelFile = (name: string) => /\.(gguf|bin)$/i.test(name);

/** `hf:org/name[@revision]` as its parts; null for other sources. */
export function hfRepo(source: string): { org: string; name: string; revision: string } | null {
  if (!source.startsWith('hf:')) return null;
  const m = /^hf:([\w.-]+)\/([\w.-]+)(?:@([\w./-]+))?$/.exec(source);
  if (!m) throw new Error(`bad Hugging Face model "${source}": expected hf:org/name or hf:org/name@revision`);
  return { org: m[1], name: m[2], revision: m[3] ?? 'main' };
}

/** The URL of a source: `hf:org/name[@revision]` is the folder of a Hugging Face model repository. */
export function modelUrl(source: string): string {
  const hf = hfRepo(source);
  return hf ? `https://huggingface.co/${hf.org}/${hf.name}/resolve/${encodeURIComponent(hf.revision)}/` : source;
}

/** Whether a model source names a place on the web rather than a path. */
export const isRemote = (source: string) => /^(https?:|hf:)/.test(source);

/** A model at a URL (or hf:org/name): a .gguf or llama2.c .bin file (with tokenizer.bin beside it if there is one), or a
 *  Hugging Face folder: config.json, tokenizer files and model.safetensors (or the shards its index lists). */
export async function fetchModelFiles(url: string, opts: FetchOptions = {}): Promise<ModelFiles> {
  url = modelUrl(url);
  const base = new URL(url, (globalThis as { location?: { href: string } }).location?.href);
  const name = base.pathname.split('/').pop() ?? '';
  const small = new Map<string, Uint8Array>();
  const optional = async (n: string, dir: URL) => { const b = await fetchSmall(new URL(n, dir), opts, true); if (b) small.set(n, b); };
  if (isModelFile(name)) {
    if (name.endsWith('.bin')) await optional('tokenizer.bin', base);
    const big = await fetchWeights(base, [name], opts);
    return memoryFiles(url, new Map([...small, ...big]), name);
  }
  const dir = new URL(base.href.replace(/\/?$/, '/'));
  const config = await fetchSmall(new URL('config.json', dir), opts, true);
  if (!config) throw new Error(`${url}: no config.json there (a Hugging Face model folder needs one; a single model file must end in .gguf or .bin)`);
  small.set('config.json', config);
  await Promise.all(['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'chat_template.jinja', 'chat_template.json', 'model.safetensors.index.json'].map((n) => optional(n, dir)));
  const index = small.get('model.safetensors.index.json');
  const shards = index ? indexShards(JSON.parse(utf8(index))) : ['model.safetensors'];
  const big = await fetchWeights(dir, shards, opts);
  return memoryFiles(url, new Map([...small, ...big]), null);
}

/** Files a user picked: one .gguf / .bin file, or the files of a Hugging Face folder. */
export async function pickedModelFiles(picked: ArrayLike<Blob & { name: string }>, opts: { onProgress?: LoadProgress } = {}): Promise<ModelFiles> {
  const list = Array.from(picked);
  if (!list.length) throw new Error('no model files picked');
  const main = list.find((f) => isModelFile(f.name))?.name ?? null;
  const total = list.reduce((a, f) => a + f.size, 0);
  const files = new Map<string, Uint8Array>();
  let done = 0;
  try {
    for (const f of list) {
      const weights = f.name === main || f.name.endsWith('.safetensors');
      const bytes = weights ? allocModelBytes(f.size) : new Uint8Array(f.size);
      files.set(f.name, bytes);
      await readStream(f.stream(), bytes, f.name, (n) => opts.onProgress?.(done + n, total));
      done += f.size;
    }
  } catch (e) {
    releaseModelBytes(files.values());
    throw e;
  }
  return memoryFiles(main ?? 'picked files', files, main);
}

async function fetchSmall(url: URL, opts: FetchOptions, optional: boolean): Promise<Uint8Array | null> {
  const r = await get(url, opts);
  if (r.status === 404 && optional) return null;
  if (!r.ok) throw new Error(`${url.href}: HTTP ${r.status} ${r.statusText}`);
  return new Uint8Array(await r.arrayBuffer());
}

/** Weights files, all requested at once (downloads overlap), then streamed one by one into place. */
async function fetchWeights(dir: URL, names: string[], opts: FetchOptions): Promise<Map<string, Uint8Array>> {
  const responses = await Promise.all(names.map(async (n) => {
    const url = new URL(n, dir), r = await get(url, opts);
    if (!r.ok) throw new Error(`${url.href}: HTTP ${r.status} ${r.statusText}`);
    // (a compressed body's length is not the file's: read it whole first)
    const length = r.headers.get('content-encoding') ? NaN : Number(r.headers.get('content-length') ?? NaN);
    return { n, url, r, length };
  }));
  const total = responses.reduce((a, x) => a + (Number.isFinite(x.length) ? x.length : 0), 0);
  const out = new Map<string, Uint8Array>();
  let done = 0;
  try {
    for (const { n, url, r, length } of responses) {
      if (Number.isFinite(length)) {
        const bytes = allocModelBytes(length);
        out.set(n, bytes);
        await readStream(r.body!, bytes, url.href, (k) => opts.onProgress?.(done + k, total));
        done += length;
      } else {
        const whole = new Uint8Array(await r.arrayBuffer()), bytes = allocModelBytes(whole.byteLength);
        bytes.set(whole); out.set(n, bytes);
      }
    }
  } catch (e) {
    releaseModelBytes(out.values());
    for (const x of responses) x.r.body?.cancel().catch(() => {});
    throw e;
  }
  return out;
}

async function get(url: URL, opts: FetchOptions): Promise<Response> {
  const store = opts.cache !== false && typeof caches !== 'undefined' ? await caches.open(MODEL_CACHE).catch(() => null) : null;
  const hit = await store?.match(url.href).catch(() => undefined);
  if (hit) return hit;
  let r: Response;
  try {
    r = await fetch(url, { signal: opts.signal });
  } catch (e) {
    throw new Error(`cannot fetch ${url.href}: ${(e as Error).message}`);
  }
  // (stored once its copy of the body has arrived whole; a cut-off download is not stored)
  if (store && r.ok) store.put(url.href, r.clone()).catch(() => {});
  return r;
}

/** Reads a stream into `into`, which must be exactly its length. */
async function readStream(stream: ReadableStream<Uint8Array>, into: Uint8Array, what: string, progress: (n: number) => void): Promise<void> {
  const reader = stream.getReader();
  let off = 0;
  for (;;) {
    let chunk: ReadableStreamReadResult<Uint8Array>;
    try { chunk = await reader.read(); } catch (e) { throw new Error(`${what}: download failed at byte ${off} of ${into.byteLength}: ${(e as Error).message}`); }
    const { done, value } = chunk;
    if (done) break;
    if (off + value.byteLength > into.byteLength) throw new Error(`${what}: more bytes than the ${into.byteLength} announced`);
    into.set(value, off); off += value.byteLength;
    progress(off);
  }
  if (off !== into.byteLength) throw new Error(`${what}: download ended at byte ${off} of ${into.byteLength}`);
}

