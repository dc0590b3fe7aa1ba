// Sessions on disk: a sequence's tokens and KV pages (with their key min/max), written and read in
// batches of pages (never the whole cache in memory), checked on load against the model's fingerprint
// and the KV layout, and by a SHA-256 over the whole file. A save goes to a temporary file in the same
// folder, renamed into place once complete: an interrupted save never leaves a half-written file under
// the final name.
//
// Layout: "QUESTKV\0", u32 version, u32 header length, header JSON, int32 tokens, then per layer and
// per batch of up to `batchPages` logical pages: the batch's K pages, its V pages, its key min/max;
// last the SHA-256 of everything before it.
import { createHash, randomBytes } from 'node:crypto';
import { open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { KVLayout } from './session.js';

const MAGIC = 'QUESTKV\0';
const VERSION = 1;
const DIGEST = 32;
/** Bytes of page data per batch (one read or write, one GPU staging buffer). */
const BATCH_BYTES = 8 << 20;

/** What a session file needs of a sequence (the CPU Session and the WebGPU GpuSession both are one). */
export interface PersistentSequence {
  readonly length: number;
  readonly tokens: number[];
  readonly table: { pages: number[] };
  kvLayout(): KVLayout;
  readPages(layer: number, first: number, count: number): Promise<Uint8Array>;
  writePages(layer: number, first: number, count: number, data: Uint8Array): void;
  adoptTokens(tokens: number[]): void;
}

interface Header { fingerprint: string; layout: KVLayout; tokens: number; pages: number; batchPages: number; model: string; saved: string }

export interface SessionFileOptions { onProgress?: (doneBytes: number, totalBytes: number) => void }

const layoutText = (l: KVLayout) => `${l.kv} KV, ${l.nLayers} layers x ${l.nKV} KV heads x ${l.headDim}, pages of ${l.pageSize} tokens`;

function batchPagesOf(l: KVLayout): number { return Math.max(1, Math.floor(BATCH_BYTES / (2 * l.kPageBytes + l.metaPageBytes))); }

function totalBytes(h: Header, headerLen: number): number {
  const l = h.layout;
  return 16 + headerLen + 4 * h.tokens + l.nLayers * h.pages * (2 * l.kPageBytes + l.metaPageBytes) + DIGEST;
}

/** Writes `seq` to `path` (tokens, pages, metadata); `fingerprint` and `model` name the model. */
export async function saveSession(seq: PersistentSequence, path: string, fingerprint: string, model: string, o: SessionFileOptions = {}): Promise<void> {
  if (seq.tokens.length !== seq.length || seq.tokens.some((t) => t < 0)) throw new Error('this session is still running greedy steps: save it once they are done');
  const layout = seq.kvLayout(), pages = Math.ceil(seq.length / layout.pageSize), batchPages = batchPagesOf(layout);
  const header: Header = { fingerprint, layout, tokens: seq.length, pages, batchPages, model, saved: new Date().toISOString() };
  const json = new TextEncoder().encode(JSON.stringify(header));
  const total = totalBytes(header, json.length);
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const hash = createHash('sha256');
  const f = await open(tmp, 'w');
  let done = 0;
  const put = async (b: Uint8Array) => { hash.update(b); await f.write(b); done += b.byteLength; o.onProgress?.(done, total); };
  try {
    const head = new Uint8Array(16);
    head.set(new TextEncoder().encode(MAGIC));
    new DataView(head.buffer).setUint32(8, VERSION, true);
    new DataView(head.buffer).setUint32(12, json.length, true);
    await put(head); await put(json);
    await put(new Uint8Array(Int32Array.from(seq.tokens).buffer));
    for (let l = 0; l < layout.nLayers; l++) {
      for (let p = 0; p < pages; p += batchPages) await put(await seq.readPages(l, p, Math.min(batchPages, pages - p)));
    }
    await f.write(hash.digest());
    await f.sync();
    await f.close();
    await rename(tmp, path);
  } catch (e) {
    await f.close().catch(() => {});
    await rm(tmp, { force: true });
    throw e;
  }
}

/** Reads a session file into `seq` (an empty sequence of the model `fingerprint` names, at most
 *  `maxTokens` long). Refuses a
 *  file of another model or KV layout, a truncated file and a corrupt one, each with a clear error. */
export async function loadSession(seq: PersistentSequence, path: string, fingerprint: string, maxTokens: number, o: SessionFileOptions = {}): Promise<void> {
  const bad = (msg: string) => new Error(`${path}: ${msg}`);
  const size = (await stat(path).catch(() => { throw bad('no such session file'); })).size;
  const f = await open(path, 'r');
  try {
    const hash = createHash('sha256');
    let pos = 0;
    const take = async (n: number, what: string) => {
      const b = new Uint8Array(n);
      const { bytesRead } = await f.read(b, 0, n, pos);
      if (bytesRead < n) throw bad(`truncated: the file ends inside its ${what}`);
      pos += n; hash.update(b);
      return b;
    };
    const head = await take(16, 'header');
    if (new TextDecoder().decode(head.subarray(0, 8)) !== MAGIC) throw bad('not a quest session file');
    const dv = new DataView(head.buffer);
    const version = dv.getUint32(8, true), headerLen = dv.getUint32(12, true);
    if (version !== VERSION) throw bad(`session file version ${version}; this quest reads version ${VERSION}`);
    if (headerLen > 1 << 20) throw bad('damaged header');
    let h: Header;
    try { h = JSON.parse(new TextDecoder().decode(await take(headerLen, 'header'))) as Header; } catch (e) { throw e instanceof Error && e.message.startsWith(path) ? e : bad('damaged header (not JSON)'); }
    const l = h.layout, mine = seq.kvLayout();
    if (!l || !Number.isInteger(h.tokens) || !Number.isInteger(h.pages) || !(h.batchPages >= 1) || h.pages !== Math.ceil(h.tokens / l.pageSize)) throw bad('damaged header');
    if (h.tokens > maxTokens) throw bad(`holds ${h.tokens} tokens, over the model's context length of ${maxTokens}`);
    if (h.fingerprint !== fingerprint) throw bad(`saved from another model (${h.model}, fingerprint ${h.fingerprint}; this model's is ${fingerprint})`);
    if (JSON.stringify(l) !== JSON.stringify(mine)) throw bad(`saved with another KV layout (${layoutText(l)}); this session has ${layoutText(mine)}`);
    const total = totalBytes(h, headerLen);
    if (size < total) throw bad(`truncated: ${size} bytes, ${total} expected`);
    if (size > total) throw bad(`${size - total} bytes of unexpected data after the session`);
    const tokens = Array.from(new Int32Array((await take(4 * h.tokens, 'tokens')).buffer));
    seq.adoptTokens(tokens);
    const per = 2 * l.kPageBytes + l.metaPageBytes;
    for (let layer = 0; layer < l.nLayers; layer++) {
      for (let p = 0; p < h.pages; p += h.batchPages) {
        const n = Math.min(h.batchPages, h.pages - p);
        seq.writePages(layer, p, n, await take(n * per, 'pages'));
        o.onProgress?.(pos, total);
      }
    }
    const digest = new Uint8Array(DIGEST);
    await f.read(digest, 0, DIGEST, pos);
    if (!hash.digest().equals(digest)) throw bad('corrupt: the checksum does not match the contents');
  } finally {
    await f.close();
  }
}
