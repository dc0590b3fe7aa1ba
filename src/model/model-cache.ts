// Node: models from the web (a URL, hf:org/name) kept on disk, so that each downloads once. The cache
// is $QUEST_CACHE_DIR, else $XDG_CACHE_HOME/quest, else ~/.cache/quest; QUEST_CACHE_DIR=off turns it off.
// A download is written beside its place and renamed into it when whole, so a cut-off one never counts.
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { fetchModelFiles, hfRepo, isModelFile, modelUrl, type FetchOptions } from './fetch-files.js';
import type { ModelFiles } from './model-files.js';

export function cacheRoot(): string | null {
  const env = process.env.QUEST_CACHE_DIR;
  if (env === 'off') return null;
  return env || join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'quest');
}

/** Where a source is cached: hf:org/name@rev -> hf/org/name/rev; a URL -> url/host/path. */
export function cachePlace(root: string, source: string): string {
  const hf = hfRepo(source);
  if (hf) return join(root, 'hf', hf.org, hf.name, hf.revision.replace(/[/]/g, '--'));
  const u = new URL(modelUrl(source));
  const parts = [u.host, ...u.pathname.split('/').filter(Boolean)].map((p) => p.replace(/[^\w.-]/g, '_').replace(/^\.+/, '_'));
  return join(root, 'url', ...parts);
}

/** A remote model: its cached copy's path if there is one, else the download (in memory), which is
 *  also written to the cache (a cache that cannot be written only warns). */
export async function cachedOrFetched(source: string, opts: FetchOptions & { onNote?: (msg: string) => void } = {}): Promise<string | ModelFiles> {
  const root = cacheRoot(), place = root ? cachePlace(root, source) : null;
  // (a single file is cached in a folder named after it, beside a tokenizer.bin if one came with it)
  const last = new URL(modelUrl(source)).pathname.split('/').pop() ?? '', fileName = isModelFile(last) ? last : null;
  if (place && existsSync(join(place, '.complete'))) return fileName ? join(place, fileName) : place;
  const files = await fetchModelFiles(source, opts);
  if (place) {
    const partial = `${place}.partial-${process.pid}`;
    try {
      mkdirSync(partial, { recursive: true });
      for (const name of files.names!()) writeFileSync(join(partial, name), files.head(name, files.size(name)));
      writeFileSync(join(partial, '.complete'), `${source}\n${new Date().toISOString()}\n`);
      rmSync(place, { recursive: true, force: true });
      renameSync(partial, place);
      opts.onNote?.(`cached at ${place}`);
    } catch (e) {
      rmSync(partial, { recursive: true, force: true });
      opts.onNote?.(`could not cache the model at ${place}: ${(e as Error).message}`);
    }
  }
  return files;
}
