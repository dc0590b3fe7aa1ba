// GGUF (llama.cpp's model format): reader and writer. Spec: ggml/docs/gguf.md.
import { ByteReader, utf8 } from './file-bytes.js';
import { rowBytes, type DType } from './tensor.js';
import { QUANT_FORMATS, type QuantType } from './quants.js';

export const GGUF_MAGIC = 0x46554747; // "GGUF" little-endian

// ggml tensor type ids we read and write
const DTYPE_IDS = {
  f32: 0, f16: 1, bf16: 30,
  ...Object.fromEntries(Object.entries(QUANT_FORMATS).map(([t, f]) => [t, f.ggmlId])) as Record<QuantType, number>,
} as Record<DType, number>;
const GGML_TYPES: Record<number, DType> = Object.fromEntries(Object.entries(DTYPE_IDS).map(([t, id]) => [id, t as DType]));
const GGML_TYPE_NAMES: Record<number, string> = {
  9: 'Q8_1', 15: 'Q8_K', 16: 'IQ2_XXS', 17: 'IQ2_XS', 18: 'IQ3_XXS', 19: 'IQ1_S', 21: 'IQ3_S', 22: 'IQ2_S', 24: 'I8',
  25: 'I16', 26: 'I32', 27: 'I64', 28: 'F64', 29: 'IQ1_M', 34: 'TQ1_0', 35: 'TQ2_0', 39: 'MXFP4',
};
/** What we read, as llama.cpp names the types (for error messages). */
const SUPPORTED = ['F32', 'F16', 'BF16', ...Object.values(QUANT_FORMATS).map((f) => f.name)].join(', ');

enum VT { U8 = 0, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 }

export type GGUFValue = number | bigint | boolean | string | GGUFValue[];

export interface GGUFTensorInfo {
  name: string;
  /** ggml order: dims[0] is the fastest-varying (columns) */
  dims: number[];
  dtype: DType;
  /** absolute byte offset of the data in the file */
  offset: number;
  byteLength: number;
}

export interface GGUFFile {
  version: number;
  metadata: Map<string, GGUFValue>;
  tensors: Map<string, GGUFTensorInfo>;
  bytes: Uint8Array;
}


export function parseGGUF(bytes: Uint8Array, what = 'GGUF file'): GGUFFile {
  const r = new ByteReader(bytes, what);
  if (bytes.byteLength < 4 || r.u32() !== GGUF_MAGIC) {
    throw new Error(`${what} is not a GGUF file: bad magic (expected "GGUF")`);
  }
  const version = r.u32();
  if (version < 2 || version > 3) throw new Error(`${what}: unsupported GGUF version ${version} (2 and 3 are supported)`);
  const nTensors = r.u64();
  const nKV = r.u64();
  if (nTensors > 1e6 || nKV > 1e6) throw new Error(`${what}: implausible counts (${nTensors} tensors, ${nKV} keys): corrupt header`);
  const str = () => { const n = r.u64(); return utf8(r.bytesOf(n)); };
  const value = (t: number): GGUFValue => {
    switch (t) {
      case VT.U8: return r.u8(); case VT.I8: return r.i8();
      case VT.U16: return r.u16(); case VT.I16: return r.i16();
      case VT.U32: return r.u32(); case VT.I32: return r.i32();
      case VT.F32: return r.f32(); case VT.F64: return r.f64();
      case VT.U64: return r.u64(); case VT.I64: return r.i64();
      case VT.BOOL: return r.u8() !== 0;
      case VT.STRING: return str();
      case VT.ARRAY: {
        const et = r.u32(); const n = r.u64();
        if (n > bytes.byteLength) throw new Error(`${what}: array of ${n} elements cannot fit in the file: corrupt metadata`);
        const out: GGUFValue[] = new Array(n);
        for (let i = 0; i < n; i++) out[i] = value(et);
        return out;
      }
      default: throw new Error(`${what}: unknown metadata value type ${t} at offset ${r.pos - 4}: corrupt file`);
    }
  };
  const metadata = new Map<string, GGUFValue>();
  for (let i = 0; i < nKV; i++) { const k = str(); metadata.set(k, value(r.u32())); }

  const infos: Omit<GGUFTensorInfo, 'offset' | 'byteLength'>[] = [];
  const rel: number[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = r.u32();
    if (nd < 1 || nd > 4) throw new Error(`${what}: tensor ${name} has ${nd} dimensions: corrupt file`);
    const dims: number[] = [];
    for (let d = 0; d < nd; d++) dims.push(r.u64());
    const tid = r.u32();
    const dtype = GGML_TYPES[tid];
    if (!dtype) {
      throw new Error(`${what}: tensor ${name} has type ${GGML_TYPE_NAMES[tid] ?? `#${tid}`}, not supported ` +
        `(supported: ${SUPPORTED}; requantise with llama.cpp's llama-quantize)`);
    }
    infos.push({ name, dims, dtype });
    rel.push(r.u64());
  }
  const alignment = Number(metadata.get('general.alignment') ?? 32);
  const dataStart = Math.ceil(r.pos / alignment) * alignment;
  const tensors = new Map<string, GGUFTensorInfo>();
  infos.forEach((t, i) => {
    const rows = t.dims.slice(1).reduce((a, b) => a * b, 1);
    let byteLength: number;
    try { byteLength = rowBytes(t.dtype, t.dims[0]) * rows; } catch (e) { throw new Error(`${what}: tensor ${t.name} (${t.dims.join(' x ')}): ${(e as Error).message}: corrupt file`); }
    const offset = dataStart + rel[i];
    if (offset + byteLength > bytes.byteLength) {
      throw new Error(`${what} is truncated: tensor ${t.name} needs bytes ${offset}..${offset + byteLength}, file has ${bytes.byteLength}`);
    }
    tensors.set(t.name, { ...t, offset, byteLength });
  });
  return { version, metadata, tensors, bytes };
}

// ------------------------------------------------------------------------------------------ writer
export interface GGUFWriteTensor { name: string; dims: number[]; dtype: DType; data: Uint8Array }

/** Metadata values are typed explicitly where JavaScript numbers are ambiguous. */
export type GGUFWriteValue =
  | { type: 'u32' | 'i32' | 'f32' | 'u64'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'array'; of: 'u32' | 'i32' | 'f32' | 'string'; value: (number | string)[] };

const encoder = new TextEncoder();

/** Serialises a GGUF v3 file. */
export function writeGGUF(metadata: [string, GGUFWriteValue][], tensors: GGUFWriteTensor[], alignment = 32): Uint8Array {
  const parts: Uint8Array[] = [];
  const push = (b: Uint8Array) => parts.push(b);
  const num = (type: string, v: number) => {
    const b = new Uint8Array(type === 'u64' ? 8 : 4); const dv = new DataView(b.buffer);
    if (type === 'u32') dv.setUint32(0, v, true); else if (type === 'i32') dv.setInt32(0, v, true);
    else if (type === 'f32') dv.setFloat32(0, v, true); else dv.setBigUint64(0, BigInt(v), true);
    push(b);
  };
  const str = (s: string) => { const e = encoder.encode(s); num('u64', e.length); push(e); };
  const typeId: Record<string, number> = { u32: VT.U32, i32: VT.I32, f32: VT.F32, u64: VT.U64, bool: VT.BOOL, string: VT.STRING, array: VT.ARRAY };
  num('u32', GGUF_MAGIC); num('u32', 3); num('u64', tensors.length); num('u64', metadata.length + 1);
  str('general.alignment'); num('u32', VT.U32); num('u32', alignment);
  for (const [k, v] of metadata) {
    str(k); num('u32', typeId[v.type]);
    if (v.type === 'string') str(v.value);
    else if (v.type === 'bool') push(new Uint8Array([v.value ? 1 : 0]));
    else if (v.type === 'array') {
      num('u32', typeId[v.of]); num('u64', v.value.length);
      for (const x of v.value) { if (v.of === 'string') str(x as string); else num(v.of, x as number); }
    } else num(v.type, v.value);
  }
  let off = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    str(t.name); num('u32', t.dims.length); for (const d of t.dims) num('u64', d);
    num('u32', DTYPE_IDS[t.dtype]);
    offsets.push(off); num('u64', off);
    off = Math.ceil((off + t.data.byteLength) / alignment) * alignment;
  }
  let headerLen = parts.reduce((a, b) => a + b.byteLength, 0);
  const dataStart = Math.ceil(headerLen / alignment) * alignment;
  const out = new Uint8Array(dataStart + off);
  let p = 0;
  for (const b of parts) { out.set(b, p); p += b.byteLength; }
  tensors.forEach((t, i) => out.set(t.data, dataStart + offsets[i]));
  headerLen = 0;
  return out;
}
