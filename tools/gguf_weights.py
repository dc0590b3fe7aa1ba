"""Weights of a Llama GGUF file (as `quest convert` writes it) back in Hugging Face's names and layout, as
float32 numpy arrays: so tools/train_long_model.py can resume from the shipped model file (issue 21).
Reads F32, F16, Q8_0, Q5_0 and Q5_1 tensors; undoes the Q/K row permutation of llama.cpp's converter.
Pure numpy; tested against the safetensors export it came from (tools/test_gguf_weights.py)."""
import struct

import numpy as np

F32, F16, Q5_0, Q5_1, Q8_0 = 0, 1, 6, 7, 8
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class _Reader:
    def __init__(self, data):
        self.d, self.o = data, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.d, self.o)
        self.o += struct.calcsize("<" + fmt)
        return v[0] if len(v) == 1 else v

    def string(self):
        n = self.take("Q")
        s = bytes(self.d[self.o:self.o + n]).decode("utf-8")
        self.o += n
        return s

    def value(self, t):
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.take("I"), self.take("Q")
            return [self.value(et) for _ in range(n)]
        return self.take(_SCALAR[t])


def read_gguf(path):
    """(metadata dict, {name: float32 array shaped (rows, cols) or (n,)})."""
    data = memoryview(open(path, "rb").read())
    r = _Reader(data)
    if bytes(data[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    r.o = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    if version < 2:
        raise ValueError(f"{path}: GGUF version {version} is too old")
    meta = {}
    for _ in range(n_kv):
        k = r.string()
        meta[k] = r.value(r.take("I"))
    infos = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.take("Q") for _ in range(r.take("I"))]
        infos.append((name, dims, r.take("I"), r.take("Q")))
    align = meta.get("general.alignment", 32)
    base = (r.o + align - 1) // align * align
    tensors = {}
    for name, dims, t, off in infos:
        n = int(np.prod(dims))
        x = _decode(data, base + off, n, t, name)
        tensors[name] = x.reshape(dims[::-1]) if len(dims) > 1 else x
    return meta, tensors


def _decode(data, at, n, t, name):
    if t == F32:
        return np.frombuffer(data, np.float32, n, at).copy()
    if t == F16:
        return np.frombuffer(data, np.float16, n, at).astype(np.float32)
    nb = n // 32
    if t == Q8_0:  # d f16, 32 x i8
        b = np.frombuffer(data, np.uint8, nb * 34, at).reshape(nb, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        return (d * b[:, 2:].view(np.int8).astype(np.float32)).reshape(-1)
    if t in (Q5_0, Q5_1):  # d f16, (m f16,) qh u32, 16 bytes of nibbles; value j: low nibble of byte j, j+16: high
        size, head = (22, 2) if t == Q5_0 else (24, 4)
        b = np.frombuffer(data, np.uint8, nb * size, at).reshape(nb, size)
        d = b[:, :2].copy().view(np.float16).astype(np.float32)
        qh = b[:, head:head + 4].copy().view(np.uint32)
        qs = b[:, head + 4:]
        bits = (qh >> np.arange(32, dtype=np.uint32)) & 1
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.uint32) | (bits << 4)
        if t == Q5_0:
            return (d * (q.astype(np.float32) - 16)).reshape(-1)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        return (d * q.astype(np.float32) + m).reshape(-1)
    raise ValueError(f"tensor {name}: GGUF type {t} is not read here (F32, F16, Q8_0, Q5_0, Q5_1)")


def _unpermute(w, heads):
    """llama.cpp's permute(w, n_head) undone: interleaved RoPE pairs back to HF's rotate-half rows."""
    rows = w.shape[0]
    hd = rows // heads
    return w.reshape(heads, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_state_dict(path):
    """(config values, {HF LlamaForCausalLM parameter name: float32 array}) of a llama GGUF file."""
    meta, t = read_gguf(path)
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"{path}: architecture {meta.get('general.architecture')}, not llama")
    nh, nkv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    sd = {"model.embed_tokens.weight": t["token_embd.weight"], "model.norm.weight": t["output_norm.weight"]}
    for l in range(meta["llama.block_count"]):
        p, q = f"blk.{l}.", f"model.layers.{l}."
        sd[q + "input_layernorm.weight"] = t[p + "attn_norm.weight"]
        sd[q + "post_attention_layernorm.weight"] = t[p + "ffn_norm.weight"]
        sd[q + "self_attn.q_proj.weight"] = _unpermute(t[p + "attn_q.weight"], nh)
        sd[q + "self_attn.k_proj.weight"] = _unpermute(t[p + "attn_k.weight"], nkv)
        sd[q + "self_attn.v_proj.weight"] = t[p + "attn_v.weight"]
        sd[q + "self_attn.o_proj.weight"] = t[p + "attn_output.weight"]
        sd[q + "mlp.gate_proj.weight"] = t[p + "ffn_gate.weight"]
        sd[q + "mlp.up_proj.weight"] = t[p + "ffn_up.weight"]
        sd[q + "mlp.down_proj.weight"] = t[p + "ffn_down.weight"]
    if "output.weight" in t:
        raise ValueError(f"{path}: an untied output matrix (the test models tie it to the embedding)")
    return meta, sd
