"""Checks tools/gguf_weights.py: a GGUF written by `quest convert` from a Hugging Face folder reads back as
that folder's weights (HF names and row order), within each tensor type's error per block of 32: half a
step of Q8_0 (plus its f16 scale's rounding); one step of Q5_1 (our quantiser searches the block's scale
and offset for the least squared error, so one element may land further than half a step). A wrong bit
layout or row order is off by many steps.
  python3 tools/test_gguf_weights.py FILE.gguf MODEL.safetensors TYPE   (run by src/test/long-model.test.ts)"""
import json, os, struct, sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_weights as gw  # noqa: E402


def read_safetensors(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    header, out = json.loads(b[8:8 + n]), {}
    kinds = {"F16": np.float16, "F32": np.float32}
    for k, v in header.items():
        if k != "__metadata__":
            s, e = v["data_offsets"]
            out[k] = np.frombuffer(b[8 + n + s:8 + n + e], kinds[v["dtype"]]).astype(np.float32).reshape(v["shape"])
    return out


def main(gguf, st, kind):
    _, got = gw.hf_state_dict(gguf)
    want = read_safetensors(st)
    want.pop("lm_head.weight", None)  # (tied)
    assert set(got) == set(want), f"names differ: {sorted(set(got) ^ set(want))[:6]}"
    for k, w in want.items():
        g = got[k]
        assert g.shape == w.shape, f"{k}: shape {g.shape} vs {w.shape}"
        if kind == "f16" or w.ndim == 1:  # norms stay f32 in the file
            assert np.array_equal(g, w), f"{k}: not exact"
            continue
        b, e = w.reshape(-1, 32), np.abs(g - w).reshape(-1, 32)
        if kind == "q8_0":
            bound = np.abs(b).max(1) / 127 * (0.5 + 127 * 2 ** -11) + 1e-7
        elif kind == "q5_1":
            step = (b.max(1) - b.min(1)) / 31
            bound = step * (1 + 31 * 2 ** -10) + np.abs(b.min(1)) * 2 ** -10 + 1e-7
        else:
            raise SystemExit(f"unknown type {kind}")
        bad = (e.max(1) > bound).sum()
        assert bad == 0, f"{k}: {bad} blocks over the {kind} bound (worst {(e.max(1) - bound).max():.3g})"
    print(f"{os.path.basename(gguf)} ({kind}): {len(want)} tensors match their HF originals")


if __name__ == "__main__":
    main(*sys.argv[1:4])
