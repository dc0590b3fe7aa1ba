// Sessions on disk: a sequence's tokens and KV pages (with their key min/max), written and read in
// batches of pages (never the whole cache in memory), checked on load against the model's fingerprint
// and the KV layout, and by CRC-32s. A save goes to a temporary file in the same folder, renamed into
// place once complete: an interrupted save never leaves a half-written file under the final name.
//
// Layout: "QUESTKV\0", u32 version, u32 header length, header JSON, int32 tokens, the CRC-32 of all
// that; then per layer and per batch of up to `batchPages` logical pages: the batch's K pages, its V
// pages, its key min/max, and the batch's CRC-32. A 32K-token session of an 8B model is 4 GB: on load
// worker threads check the batches' checksums while the main thread reads ahead and hands each batch to
// the sequence (one CRC-32 stream on the main thread ran at ~2 GB/s and bounded the load); the load
// fails, naming the file, if any batch does not match.
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import type { KVLayout } from './session.js';

const MAGIC = 'QUESTKV\0';
const VERSION = 2;
const DIGEST = 4;
/** Bytes of page data per batch (one read or write, one GPU staging buffer). */
const BATCH_BYTES = 32 << 20;

/** What a session file needs of a sequence (the CPU Session and the WebGPU GpuSession both are one). */
export interface PersistentSequence {
  readonly length: number;
  readonly tokens: number[];
  readonly table: { pages: number[] };
  kvLayout(): KVLayout;
  readPages(layer: number, first: number, count: number): Promise<Uint8Array>;
  writePages(layer: number, first: number, count: number, data: Uint8Array): void;
  /** Where a backend can take pages without a copy (WebGPU: a mapped staging buffer): the loader reads
   *  the file straight into `bytes` (the pages as readPages lays them out, then `extra` bytes), then
   *  calls commit() (or discard()). */
  stagePages?(layer: number, first: number, count: number, extra: number): { bytes: Uint8Array; commit(): void; discard(): void };
  adoptTokens(tokens: number[]): void;
}

interface Header { fingerprint: string; layout: KVLayout; tokens: number; pages: number; batchPages: number; model: string; saved: string }

export interface SessionFileOptions { onProgress?: (doneBytes: number, totalBytes: number) => void }

const layoutText = (l: KVLayout) => `${l.kv} KV, ${l.nLayers} layers x ${l.nKV} KV heads x ${l.headDim}, pages of ${l.pageSize} tokens`;

function batchPagesOf(l: KVLayout): number { return Math.max(1, Math.floor(BATCH_BYTES / (2 * l.kPageBytes + l.metaPageBytes))); }

const batchCount = (h: Header) => h.layout.nLayers * Math.ceil(h.pages / h.batchPages);

function totalBytes(h: Header, headerLen: number): number {
  const l = h.layout;
  return 16 + headerLen + 4 * h.tokens + DIGEST + l.nLayers * h.pages * (2 * l.kPageBytes + l.metaPageBytes) + batchCount(h) * DIGEST;
}

/** CRC-32s of ranges of a file, computed by worker threads that read the file themselves (the main
 *  thread meanwhile uploads the same bytes: Dawn cannot take shared memory, so nothing is shared). */
class CrcWorkers {
  private workers: Worker[] = [];
  private next = 0;
  private waiting = new Map<number, (crc: number) => void>();
  private id = 0;
  constructor(path: string, n: number) {
    const code = `const { parentPort, workerData } = require('node:worker_threads'); const { crc32 } = require('node:zlib'); const fs = require('node:fs');
const fd = fs.openSync(workerData, 'r'); let buf = Buffer.alloc(0);
parentPort.on('message', (m) => {
  if (buf.length < m.len) buf = Buffer.allocUnsafe(m.len);
  const got = fs.readSync(fd, buf, 0, m.len, m.at);
  parentPort.postMessage({ id: m.id, crc: got === m.len ? crc32(buf.subarray(0, m.len)) : -1 });
});`;
    for (let i = 0; i < n; i++) {
      const w = new Worker(code, { eval: true, workerData: path });
      w.on('message', (m: { id: number; crc: number }) => { this.waiting.get(m.id)?.(m.crc); this.waiting.delete(m.id); });
      w.on('error', () => { for (const r of this.waiting.values()) r(-1); this.waiting.clear(); });
      this.workers.push(w);
    }
  }
  /** The CRC-32 of bytes at..at+len of the file (-1 if they could not be read). */
  crc(at: number, len: number): Promise<number> {
    const id = this.id++, w = this.workers[this.next++ % this.workers.length];
    return new Promise((resolve) => { this.waiting.set(id, resolve); w.postMessage({ id, at, len }); });
  }
  close(): Promise<unknown> { return Promise.all(this.workers.map((w) => w.terminate())); }
}

/** Reads READ_AHEAD batches ahead (in order: `read(i)` is called for i = 0, 1, ... once each); `ahead(i)`
 *  gives batch i and starts the next read. */
const READ_AHEAD = 3;
function readAhead(n: number, read: (i: number) => Promise<Uint8Array>): (i: number) => Promise<Uint8Array> {
  const pending = new Map<number, Promise<Uint8Array>>();
  let started = 0;
  const fill = (upTo: number) => { while (started < Math.min(n, upTo)) { pending.set(started, read(started)); started++; } };
  return (i) => {
    fill(i + 1 + READ_AHEAD);
    const p = pending.get(i)!;
    pending.delete(i);
    return p;
  };
}

/** Writes `seq` to `path` (tokens, pages, metadata); `fingerprint` and `model` name the model. */
export async function saveSession(seq: PersistentSequence, path: string, fingerprint: string, model: string, o: SessionFileOptions = {}): Promise<void> {
  if (seq.tokens.length !== seq.length || seq.tokens.some((t) => t < 0)) throw new Error('this session is still running greedy steps: save it once they are done');
  const layout = seq.kvLayout(), pages = Math.ceil(seq.length / layout.pageSize), batchPages = batchPagesOf(layout);
  const header: Header = { fingerprint, layout, tokens: seq.length, pages, batchPages, model, saved: new Date().toISOString() };
  const json = new TextEncoder().encode(JSON.stringify(header));
  const total = totalBytes(header, json.length);
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  const f = await open(tmp, 'w');
  let done = 0, crc = 0;
  const put = async (b: Uint8Array) => { crc = crc32(b, crc); await f.write(b); done += b.byteLength; o.onProgress?.(done, total); };
  const digest = async () => { const d = new Uint8Array(DIGEST); new DataView(d.buffer).setUint32(0, crc >>> 0, true); await f.write(d); done += DIGEST; crc = 0; };
  try {
    const head = new Uint8Array(16);
    head.set(new TextEncoder().encode(MAGIC));
    new DataView(head.buffer).setUint32(8, VERSION, true);
    new DataView(head.buffer).setUint32(12, json.length, true);
    await put(head); await put(json);
    await put(new Uint8Array(Int32Array.from(seq.tokens).buffer));
    await digest();
    // the next batch is read (from the GPU) while the current one is written
    const batches = Array.from({ length: layout.nLayers }, (_, l) => Array.from({ length: Math.ceil(pages / batchPages) }, (_, b) => [l, b * batchPages] as const)).flat();
    // (a failure of the read ahead surfaces when it is awaited: no unhandled rejection meanwhile)
    const read = (i: number) => { const [l, p] = batches[i]; const r = seq.readPages(l, p, Math.min(batchPages, pages - p)); r.catch(() => {}); return r; };
    const ahead = readAhead(batches.length, read);
    for (let i = 0; i < batches.length; i++) { await put(await ahead(i)); await digest(); }
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
  let workers: CrcWorkers | null = null;
  try {
    let crc = 0, pos = 0;
    const readAt = async (at: number, n: number, what: string, into?: Uint8Array) => {
      const b = into ?? new Uint8Array(n);
      const { bytesRead } = await f.read(b, 0, n, at);
      if (bytesRead < n) throw bad(`truncated: the file ends inside its ${what}`);
      return b;
    };
    const take = async (n: number, what: string) => { const b = await readAt(pos, n, what); pos += n; crc = crc32(b, crc); return b; };
    const head = await take(16, 'header');
    if (new TextDecoder().decode(head.subarray(0, 8)) !== MAGIC) throw bad('not a quest session file');
    const dv = new DataView(head.buffer);
    const version = dv.getUint32(8, true), headerLen = dv.getUint32(12, true);
    if (version !== VERSION) throw bad(`session file version ${version}; this quest reads version ${VERSION} (write the session again)`);
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
    const corrupt = () => bad('corrupt: the checksum does not match the contents');
    if (new DataView((await readAt(pos, DIGEST, 'checksum')).buffer).getUint32(0, true) !== crc >>> 0) throw corrupt();
    pos += DIGEST;
    seq.adoptTokens(tokens);
    // batches are read ahead and handed on by the main thread; worker threads check them meanwhile
    const per = 2 * l.kPageBytes + l.metaPageBytes, n = batchCount(h);
    const batches = Array.from({ length: l.nLayers }, (_, layer) => Array.from({ length: Math.ceil(h.pages / h.batchPages) }, (_, b) => [layer, b * h.batchPages] as const)).flat();
    const count = (i: number) => Math.min(h.batchPages, h.pages - batches[i][1]);
    workers = new CrcWorkers(path, Math.max(1, Math.min(4, availableParallelism() - 1)));
    const checks: Promise<boolean>[] = [];
    // each batch is read into memory the sequence takes as it is (a GPU staging buffer), or a fresh one
    type Staged = { bytes: Uint8Array; commit(): void; discard(): void };
    const staged: Staged[] = [], reads: Promise<Uint8Array>[] = [];
    let at = pos;
    const read = (i: number): Promise<Uint8Array> => {
      const len = count(i) * per + DIGEST, stage = seq.stagePages?.(batches[i][0], batches[i][1], count(i), DIGEST);
      if (stage) staged[i] = stage;
      const p = readAt(at, len, 'pages', stage?.bytes);
      at += len;
      reads.push(p);
      return p;
    };
    const ahead = readAhead(n, (i) => { const p = read(i); p.catch(() => {}); return p; });
    try {
      for (let i = 0; i < n; i++) {
        const batch = await ahead(i), len = count(i) * per, want = new DataView(batch.buffer, batch.byteOffset + len, DIGEST).getUint32(0, true);
        checks.push(workers.crc(pos, len).then((c) => c === want));
        if (staged[i]) { staged[i].commit(); delete staged[i]; } else seq.writePages(batches[i][0], batches[i][1], count(i), batch.subarray(0, len));
        pos += len + DIGEST;
        o.onProgress?.(pos, total);
      }
    } finally {
      // (a failed load: the staging buffers of batches read ahead are let go once their reads are over)
      const left = staged.filter(Boolean);
      if (left.length) { await Promise.allSettled(reads); left.forEach((x) => x.discard()); }
    }
    if (!(await Promise.all(checks)).every(Boolean)) throw corrupt();
  } finally {
    await f.close();
    await workers?.close();
  }
}