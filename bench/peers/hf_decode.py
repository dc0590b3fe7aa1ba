"""Peer for `npm run bench:e2e`: decode latency per token of a Llama-2-7B-shaped model (random f16
weights) through Hugging Face transformers with PyTorch SDPA attention, on the same GPU.
The context's KV cache is random (no prefill), as in our benchmark. Writes JSON for e2e.js --peer.

  python3 bench/peers/hf_decode.py --contexts 4096,8192,16384,32768 --out results/peer.json
"""
import argparse, json, statistics, time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.cache_utils import DynamicCache


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", default="4096,8192,16384,32768")
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--out", default="results/peer.json")
    a = ap.parse_args()
    contexts = [int(x) for x in a.contexts.split(",")]
    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=max(contexts) + 256,
                      attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.float16).eval()
    results = []
    for L in contexts:
        cache = DynamicCache()
        for layer in range(cfg.num_hidden_layers):
            k = torch.randn(1, 32, L, 128, dtype=torch.float16, device="cuda")
            v = torch.randn(1, 32, L, 128, dtype=torch.float16, device="cuda")
            cache.update(k, v, layer)
        tok = torch.ones(1, 1, dtype=torch.long, device="cuda")
        times = []
        with torch.inference_mode():
            for i in range(a.steps + 2):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                out = model(input_ids=tok, past_key_values=cache, use_cache=True,
                            cache_position=torch.tensor([L + i], device="cuda"))
                tok = out.logits[:, -1].argmax(-1, keepdim=True)
                tok.item()  # the greedy token on the host, like ours
                if i >= 2:
                    times.append((time.perf_counter() - t0) * 1000)
        results.append({"context": L, "ms": statistics.median(times)})
        print(f"context {L}: {results[-1]['ms']:.2f} ms/token", flush=True)
        del cache
        torch.cuda.empty_cache()
    info = (f"transformers {transformers.__version__}, torch {torch.__version__}, "
            f"{torch.cuda.get_device_name()}, sdpa, f16, batch 1")
    with open(a.out, "w") as f:
        json.dump({"info": info, "results": results}, f, indent=1)
    print(info)


if __name__ == "__main__":
    main()
