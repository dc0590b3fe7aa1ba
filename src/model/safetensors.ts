// Hugging Face safetensors: an 8-byte header length, a JSON header, then raw little-endian tensors.
import { ByteReader, utf8 } from './file-bytes.js';
import type { DType } from './tensor.js';

export interface SafeTensorInfo { name: string; dtype: DType; shape: number[]; data: Uint8Array }

const DTYPES: Record<string, { dtype: DType; size: number }> = {
  F32: { dtype: 'f32', size: 4 }, F16: { dtype: 'f16', size: 2 }, BF16: { dtype: 'bf16', size: 2 },
};

export function parseSafetensors(bytes: Uint8Array, what: string): Map<string, SafeTensorInfo> {
  const r = new ByteReader(bytes, what);
  const headerLen = r.u64();
  if (headerLen > bytes.byteLength - 8) {
    throw new Error(`${what} is not a valid safetensors file: header length ${headerLen} exceeds the file size ${bytes.byteLength}`);
  }
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  try {
    header = JSON.parse(utf8(r.bytesOf(headerLen)));
  } catch (e) {
    throw new Error(`${what} is not a valid safetensors file: header is not JSON (${(e as Error).message})`);
  }
  const base = 8 + headerLen;
  const out = new Map<string, SafeTensorInfo>();
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const t = info as { dtype: string; shape: number[]; data_offsets: [number, number] };
    const dt = DTYPES[t.dtype];
    if (!dt) throw new Error(`${what}: tensor ${name} has dtype ${t.dtype}, not supported (F32, F16, BF16)`);
    const [a, b] = t.data_offsets ?? [];
    const count = (t.shape ?? []).reduce((x, y) => x * y, 1);
    if (!Number.isInteger(a) || !Number.isInteger(b) || b < a || b - a !== count * dt.size) {
      throw new Error(`${what}: header of tensor ${name} lies about its size: shape [${t.shape}] ${t.dtype} needs ` +
        `${count * dt.size} bytes, offsets say ${b - a}`);
    }
    if (base + b > bytes.byteLength) {
      throw new Error(`${what} is truncated: tensor ${name} ends at byte ${base + b}, file has ${bytes.byteLength}`);
    }
    out.set(name, { name, dtype: dt.dtype, shape: t.shape, data: bytes.subarray(base + a, base + b) });
  }
  return out;
}

/** Writes a safetensors file (tests and conversions). */
export function writeSafetensors(tensors: { name: string; dtype: 'F32' | 'F16' | 'BF16'; shape: number[]; data: Uint8Array }[]): Uint8Array {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const t of tensors) { header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.byteLength] }; off += t.data.byteLength; }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8) json += ' ';
  const hb = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hb.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(hb.length), true);
  out.set(hb, 8);
  let p = 8 + hb.length;
  for (const t of tensors) { out.set(t.data, p); p += t.data.byteLength; }
  return out;
}
