"""Strong PyTorch peer for `npm run bench:e2e` (what gpt-fast does): a plain Llama decoder with random f16
weights, a preallocated (static) KV cache, SDPA attention (flash backend for the causal prefill), and the
decode step captured in a CUDA graph. Times a dense prefill of N prompt tokens from an empty cache (time
to first token: the forward over the prompt and the first token's argmax on the host) and decode
latency per token at given contexts (the cache's first `context` rows random; speed does not depend on
the values). Writes JSON that e2e.js reads with --peer.

  python3 bench/peers/torch_static.py --shapes 7b,8b --prefill 4096,32768 --contexts 32768 --out results/peer-static.json
"""
import argparse, json, statistics, time

import torch
import torch.nn.functional as F

SHAPES = {
    # name: (vocab, dim, hidden, layers, heads, kv heads)
    "7b": (32000, 4096, 11008, 32, 32, 32),   # Llama-2-7B
    "8b": (128256, 4096, 14336, 32, 32, 8),   # Llama-3-8B
}


class Decoder:
    def __init__(self, shape, max_len, theta=10000.0):
        self.vocab, self.dim, self.hidden, self.layers, self.heads, self.kv = SHAPES[shape]
        self.hd = self.dim // self.heads
        g = torch.Generator(device="cuda").manual_seed(0)
        w = lambda n, k: (torch.randn(n, k, device="cuda", generator=g) / k ** 0.5).half()
        self.embed = w(self.vocab, self.dim)
        self.out = w(self.vocab, self.dim)
        self.qkv = [w((self.heads + 2 * self.kv) * self.hd, self.dim) for _ in range(self.layers)]
        self.wo = [w(self.dim, self.dim) for _ in range(self.layers)]
        self.gate_up = [w(2 * self.hidden, self.dim) for _ in range(self.layers)]
        self.down = [w(self.dim, self.hidden) for _ in range(self.layers)]
        self.max_len = max_len
        self.k = torch.zeros(self.layers, 1, self.kv, max_len, self.hd, dtype=torch.half, device="cuda")
        self.v = torch.zeros_like(self.k)
        inv = 1.0 / theta ** (torch.arange(0, self.hd, 2, device="cuda").float() / self.hd)
        ang = torch.outer(torch.arange(max_len, device="cuda").float(), inv)
        self.cos, self.sin = ang.cos().half(), ang.sin().half()

    def rope(self, x, pos):  # x [1, h, n, hd], rotate-half
        c, s = self.cos[pos][None, None], self.sin[pos][None, None]
        a, b = x[..., : self.hd // 2], x[..., self.hd // 2 :]
        return torch.cat([a * c - b * s, a * s + b * c], -1)

    def forward(self, tokens, pos, causal):
        """tokens [n]; pos [n] positions (contiguous); returns logits of the last token."""
        n = tokens.shape[0]
        x = self.embed[tokens][None]
        for l in range(self.layers):
            h = F.rms_norm(x, (self.dim,), eps=1e-5)
            q, k, v = (h @ self.qkv[l].T).split([self.heads * self.hd, self.kv * self.hd, self.kv * self.hd], -1)
            q = self.rope(q.view(1, n, self.heads, self.hd).transpose(1, 2), pos)
            k = self.rope(k.view(1, n, self.kv, self.hd).transpose(1, 2), pos)
            v = v.view(1, n, self.kv, self.hd).transpose(1, 2)
            self.k[l].index_copy_(2, pos, k)
            self.v[l].index_copy_(2, pos, v)
            if causal:  # prefill from an empty cache: attention within the prompt
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv != self.heads)
            else:  # decode: over the whole static cache, positions after pos masked (static shapes for the graph)
                mask = (torch.arange(self.max_len, device="cuda") <= pos[-1])[None, None, None]
                a = F.scaled_dot_product_attention(q, self.k[l], self.v[l], attn_mask=mask, enable_gqa=self.kv != self.heads)
            x = x + a.transpose(1, 2).reshape(1, n, self.dim) @ self.wo[l].T
            h = F.rms_norm(x, (self.dim,), eps=1e-5)
            gate, up = (h @ self.gate_up[l].T).split(self.hidden, -1)
            x = x + (F.silu(gate) * up) @ self.down[l].T
        return F.rms_norm(x[:, -1], (self.dim,), eps=1e-5) @ self.out.T


def time_prefill(m, n, reps):
    tokens = torch.randint(0, m.vocab, (n,), device="cuda")
    pos = torch.arange(n, device="cuda")
    times = []
    with torch.inference_mode():
        for i in range(reps + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            m.forward(tokens, pos, causal=True).argmax(-1).item()
            if i > 0:
                times.append(time.perf_counter() - t0)
    return times


def time_decode(m, context, steps):
    m.k[:, :, :, :context].normal_()
    m.v[:, :, :, :context].normal_()
    tok = torch.ones(1, dtype=torch.long, device="cuda")
    pos = torch.tensor([context], device="cuda")
    with torch.inference_mode():
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                m.forward(tok, pos, causal=False)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = m.forward(tok, pos, causal=False)
            nxt = logits.argmax(-1)
        times = []
        for i in range(steps + 2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            graph.replay()
            tok.copy_(nxt)
            nxt.item()  # the greedy token on the host, like ours
            pos.add_(1)
            if i >= 2:
                times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="7b,8b")
    ap.add_argument("--prefill", default="4096,32768")
    ap.add_argument("--contexts", default="32768")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="results/peer-static.json")
    a = ap.parse_args()
    prefill = [int(x) for x in a.prefill.split(",") if int(x) > 0]
    contexts = [int(x) for x in a.contexts.split(",") if int(x) > 0]
    out = {"info": f"plain PyTorch decoder, static KV cache, SDPA, decode in a CUDA graph; torch {torch.__version__}, "
                   f"{torch.cuda.get_device_name()}, f16, batch 1", "shapes": {}}
    for shape in a.shapes.split(","):
        m = Decoder(shape, max(prefill + contexts) + a.steps + 8)
        res = {"prefill": [], "decode": []}
        for n in prefill:
            t = time_prefill(m, n, a.reps)
            res["prefill"].append({"tokens": n, "seconds": statistics.median(t), "runs": t})
            print(f"{shape} prefill {n}: {' / '.join(f'{x:.3f}' for x in t)} s ({n / statistics.median(t):.0f} tokens/s)", flush=True)
        for L in contexts:
            ms = time_decode(m, L, a.steps)
            res["decode"].append({"context": L, "ms": ms})
            print(f"{shape} decode at {L}: {ms:.2f} ms/token", flush=True)
        out["shapes"][shape] = res
        del m
        torch.cuda.empty_cache()
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    print(out["info"])


if __name__ == "__main__":
    main()
