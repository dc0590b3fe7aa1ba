// Model file bytes wherever they come from (disk, fetch, a picked file): where they are kept, and the
// bounds-checked reader the format parsers use. Nothing here touches the file system.
import { wasm } from '../backend/wasm/runtime.js';

/** Room for a whole model file: in the WebAssembly memory when it fits there (so the SIMD kernels read
 *  the weights in place), else a SharedArrayBuffer where there is one (Node; cross-origin isolated
 *  pages), else a plain buffer. Tensors are views into it, never a second copy. */
export function allocModelBytes(size: number): Uint8Array {
  return wasm()?.allocWeights(size)
    ?? new Uint8Array(typeof SharedArrayBuffer === 'function' ? new SharedArrayBuffer(size) : new ArrayBuffer(size));
}

/** Every model file a loader took since the last `takeLoadedFiles()`: the loader hands them to the
 *  model, which returns their memory when disposed. */
const loadedFiles: Uint8Array[] = [];
export function takeLoadedFiles(): Uint8Array[] { return loadedFiles.splice(0); }
export function adoptModelBytes(bytes: Uint8Array): Uint8Array { loadedFiles.push(bytes); return bytes; }
/** Returns model files' memory (those in the WebAssembly memory; plain buffers are left to the GC). */
export function releaseModelBytes(files: Iterable<Uint8Array>): void { for (const f of files) wasm()?.releaseWeights(f); }

const decoder = new TextDecoder('utf-8');
/** UTF-8 text of bytes that may lie in shared memory (browsers' TextDecoder refuses those: copy first). */
export function utf8(bytes: Uint8Array): string {
  const shared = typeof SharedArrayBuffer === 'function' && bytes.buffer instanceof SharedArrayBuffer;
  return decoder.decode(shared ? bytes.slice() : bytes);
}

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
