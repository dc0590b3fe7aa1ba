import { openSync, readSync, fstatSync, closeSync } from 'node:fs';
import { wasm } from '../backend/wasm/runtime.js';

/** Reads a whole model file once into the WebAssembly memory (so the SIMD kernels read the weights in
 *  place) or, when it does not fit there, into a SharedArrayBuffer: tensors are views into it, never a
 *  second copy. */
export function readModelFile(path: string, onProgress?: (done: number, total: number) => void): Uint8Array {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new Error(`cannot open model file ${path}: ${(e as Error).message}`);
  }
  try {
    const size = fstatSync(fd).size;
    const bytes = wasm()?.allocWeights(size) ?? new Uint8Array(new SharedArrayBuffer(size));
    const chunk = 64 << 20;
    for (let off = 0; off < size;) {
      const n = readSync(fd, bytes, off, Math.min(chunk, size - off), off);
      if (n <= 0) throw new Error(`unexpected end of ${path} at byte ${off}`);
      off += n;
      onProgress?.(off, size);
    }
    loadedFiles.push(bytes);
    return bytes;
  } finally {
    closeSync(fd);
  }
}

/** Every model file read since the last `takeLoadedFiles()`: the loader hands them to the model, which
 *  returns their memory when disposed. */
const loadedFiles: Uint8Array[] = [];
export function takeLoadedFiles(): Uint8Array[] { return loadedFiles.splice(0); }

/** Bounds-checked little-endian reader over a byte array. */
export class ByteReader {
  private readonly view: DataView;
  pos = 0;
  constructor(readonly bytes: Uint8Array, readonly what: string) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  need(n: number): void {
    if (this.pos + n > this.bytes.byteLength) {
      throw new Error(`${this.what} is truncated: needs ${n} more bytes at offset ${this.pos}, file has ${this.bytes.byteLength}`);
    }
  }
  u8() { this.need(1); return this.view.getUint8(this.pos++); }
  i8() { this.need(1); return this.view.getInt8(this.pos++); }
  u16() { this.need(2); const v = this.view.getUint16(this.pos, true); this.pos += 2; return v; }
  i16() { this.need(2); const v = this.view.getInt16(this.pos, true); this.pos += 2; return v; }
  u32() { this.need(4); const v = this.view.getUint32(this.pos, true); this.pos += 4; return v; }
  i32() { this.need(4); const v = this.view.getInt32(this.pos, true); this.pos += 4; return v; }
  f32() { this.need(4); const v = this.view.getFloat32(this.pos, true); this.pos += 4; return v; }
  f64() { this.need(8); const v = this.view.getFloat64(this.pos, true); this.pos += 8; return v; }
  u64() {
    this.need(8);
    const v = this.view.getBigUint64(this.pos, true); this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${this.what}: 64-bit value ${v} at ${this.pos - 8} is implausibly large (corrupt file?)`);
    return Number(v);
  }
  i64() { this.need(8); const v = this.view.getBigInt64(this.pos, true); this.pos += 8; return Number(v); }
  bytesOf(n: number): Uint8Array { this.need(n); const b = this.bytes.subarray(this.pos, this.pos + n); this.pos += n; return b; }
}
