#!/usr/bin/env python3
"""Train quest's 32K-token test model (issue 21) on the GPU machine, resumably.

A Llama with grouped-query attention (the architecture of tools/train_test_model.py) trained on the
training books and on retrieval samples from tools/retrieval_data.py (many phrasings, layouts, key formats,
distractors, key-value lists, two-hop lookups), in three phases of growing length: 2K, 8K, then 32K tokens.
The evaluation's books and phrasings are held out (see retrieval_data.py).

Each run trains for --minutes and leaves in --out a Hugging Face folder that is also the checkpoint: f16
weights in shards under 16 MiB (what the device tool brings back), config and tokenizer files, and
train_state.json (steps, the time trained so far, the seed). --resume DIR continues from such a folder: the
schedule (phase, learning rate) follows the time trained across all runs out of --total-minutes; the
optimizer's moments start afresh (they would triple what comes back), with a short warm-up.

  python3 tools/train_long_model.py --corpus .corpus --out $OUT/m --minutes 9 --total-minutes 18 [--resume .ckpt]
The shipped model resumes from its GGUF file (its Q5_1 rounding is far below what training moves):
  ... --resume tools/logs/quest-long-32k --weights models/quest-long-32k-q5_1.gguf
"""
import argparse, json, math, multiprocessing as mp, os, random, sys, time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_test_model as base  # noqa: E402  (the model and tokenizer code of the 8K model)
import retrieval_data as rd  # noqa: E402


def log(msg):
    print(msg, flush=True)


class Attention(base.Attention):
    """K/V heads repeated for the group before SDPA: the flash kernel then runs at 32K whatever the
    PyTorch version's GQA support (the math fallback would need tens of GB per layer)."""

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + base.rotate_half(q) * sin
        k = k * cos + base.rotate_half(k) * sin
        rep = self.nh // self.nkv
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


base.Attention = Attention  # (Layer builds base.Attention)

# phases by the share of the total training time: (share it ends at, tokens, sequences per step)
# and the share of easy (plain induction) passkeys: they start retrieval off; the varied kinds follow
PHASES = [(0.12, 512, 128, 0.7), (0.45, 2048, 32, 0.25), (0.7, 8192, 8, 0.15), (1.0, 32768, 2, 0.15)]

# ------------------------------------------------------------------------------ batches (worker processes)
_gen = None


def _init_worker(tok_json, books, seed, words):
    global _gen
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(tok_json)
    _gen = rd.Generator(lambda s: tok.encode(s).ids, books, seed + os.getpid(), words)


def _make_batch(args):
    T, B, easy = args
    xs, ms = zip(*(_gen.sample(T + 1, easy) for _ in range(B)))
    return list(xs), list(ms)


# ------------------------------------------------------------------------------------------- checkpoint
def save(model, cfg, tok, state, out):
    from safetensors.torch import save_file
    os.makedirs(out, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    shards, cur, size, limit = [], {}, 0, 12 * 2 ** 20
    for k in sorted(sd):
        n = sd[k].numel() * 2
        if cur and size + n > limit:
            shards.append(cur); cur, size = {}, 0
        cur[k] = sd[k]; size += n
    shards.append(cur)
    index = {"metadata": {"total_size": sum(v.numel() * 2 for v in sd.values())}, "weight_map": {}}
    for i, sh in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(sh, os.path.join(out, name), metadata={"format": "pt"})
        for k in sh:
            index["weight_map"][k] = name
    json.dump(index, open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=1)
    base.write_hf_side_files(out, cfg, tok)
    json.dump(state, open(os.path.join(out, "train_state.json"), "w"), indent=1)


def load(path, device, dropout=0.0, weights=None):
    """A folder this script wrote; `weights`: a GGUF file to take the weights from instead (the shipped
    model, converted from such a folder: the folder then needs only its config, tokenizer and state)."""
    from safetensors.torch import load_file
    hf = json.load(open(os.path.join(path, "config.json")))
    cfg = {k: hf[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                              "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings")}
    if weights:
        import gguf_weights
        sd = {k: torch.from_numpy(v) for k, v in gguf_weights.hf_state_dict(weights)[1].items()}
    else:
        index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
        sd = {}
        for name in sorted(set(index["weight_map"].values())):
            sd.update(load_file(os.path.join(path, name)))
    model = base.Llama(dict(cfg, dropout=dropout)).to(device)
    model.load_state_dict({k: v.float() for k, v in sd.items()})
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    return model, cfg, tok, json.load(open(os.path.join(path, "train_state.json")))


# ------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def eval_passkey(model, tok, filler_ids, T, samples, template, device, seed):
    """Dense passkey accuracy at T tokens, teacher-forced greedy digits (equal to greedy decoding on an
    exact match): the paper's template or the held-out phrasings (cycled), in the given filler."""
    enc = lambda s: tok.encode(s).ids
    r = random.Random(seed)
    model.eval()
    ok = 0
    for i in range(samples):
        t = rd.PAPER if template == "paper" else rd.TEMPLATES["heldout"][i % len(rd.TEMPLATES["heldout"])]
        key = str(r.randrange(10000, 100000))
        intro, needle, question = (enc(t["intro"]) if t["intro"] else []), enc(t["needle"].replace("{key}", key)), enc(t["question"])
        answer = enc(" " + key)
        body = T - len(intro) - len(needle) - len(question) - len(answer)
        start = r.randrange(0, len(filler_ids) - body)
        fill = filler_ids[start:start + body]
        cut = int(body * (i % 11) / 10)  # depths 0%..100%
        toks = intro + fill[:cut] + needle + fill[cut:] + question + answer
        x = torch.tensor([toks], device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
        ok += int(logits[0, -len(answer) - 1:-1].argmax(-1).tolist() == answer)
    model.train()
    return ok / samples


# ------------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True, help="folder of .txt books (the held-out ones are skipped for training)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", help="a folder this script wrote (or, with --weights, its config.json, tokenizer.json and train_state.json)")
    ap.add_argument("--weights", help="with --resume: the weights from this GGUF file (the shipped model) instead of the folder's")
    ap.add_argument("--minutes", type=float, default=9.0, help="training time of this run")
    ap.add_argument("--total-minutes", type=float, default=18.0, help="training time over all runs (the schedule's length)")
    ap.add_argument("--new-schedule", type=float, metavar="F", help="with --resume: start a new schedule of --total-minutes "
                    "at position F (0..1) from the resumed weights (e.g. 0.12: straight to the 2K phase with new data)")
    ap.add_argument("--seed", type=int, default=2126)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=32768)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--eval-samples", type=int, default=22)
    ap.add_argument("--dropout", type=float, default=0.1, help="the books are small: without it the model memorises them")
    args = ap.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # (the batch makers are forked)
    t0 = time.time()
    device = "cuda"
    random.seed(args.seed); torch.manual_seed(args.seed)
    books = rd.read_books(args.corpus)
    log(f"training books: {list(books)}; held out: {rd.HELDOUT_BOOKS}")

    if args.resume:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(os.path.join(args.resume, "tokenizer.json"))
        state = json.load(open(os.path.join(args.resume, "train_state.json")))
    else:
        # the tokenizer sees the books and generated samples (the templates' words become tokens)
        g = rd.Generator(lambda s: list(s.encode()), [list(t.encode()) for t in books.values()], args.seed)
        samples = [bytes(g.sample(3000)[0]).decode("utf-8", errors="ignore") for _ in range(300)]
        tok = base.train_tokenizer(list(books.values()) + samples, args.vocab)
        state = dict(step=0, trained_s=0.0, seed=args.seed, runs=[])
    enc = lambda s: tok.encode(s).ids
    book_ids = [enc(t) for t in books.values()]
    words = rd.word_list(books.values())
    log(f"tokens: {sum(map(len, book_ids))} of training books ({time.time() - t0:.1f}s)")
    held = {f: enc(rd._read(os.path.join(args.corpus, f)).replace("\r\n", "\n")) for f in rd.HELDOUT_BOOKS if os.path.exists(os.path.join(args.corpus, f))}
    # batch makers forked before CUDA starts in this process
    pool = mp.get_context("fork").Pool(args.workers, _init_worker, (tok.to_str(), book_ids, args.seed + state["step"], words))
    if args.resume:
        model, cfg, _, _ = load(args.resume, device, args.dropout, args.weights)
        log(f"resumed from {args.resume}: step {state['step']}, {state['trained_s']:.0f} s trained")
    else:
        hd = args.hidden // args.heads
        cfg = dict(vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, intermediate_size=args.hidden * 3,
                   num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                   head_dim=hd, rms_norm_eps=1e-5, rope_theta=1_000_000.0, max_position_embeddings=args.ctx)
        model = base.Llama(dict(cfg, dropout=args.dropout)).to(device)
    log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {json.dumps(cfg)}")

    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=True)
    total, budget = args.total_minutes * 60, args.minutes * 60
    if args.new_schedule is not None:  # the schedule counts the time trained since its start
        state["schedule_from_s"] = state["trained_s"] - args.new_schedule * total
        log(f"new schedule of {args.total_minutes} minutes from position {args.new_schedule}")
    since = state.get("schedule_from_s", 0.0)
    phase = lambda f: next((T, B, easy) for end, T, B, easy in PHASES if f < end or end == 1.0)
    pending = []
    tstart, step0, warm = time.time(), state["step"], 200 if state["step"] == 0 else 50
    step = step0
    while True:
        el = time.time() - tstart
        frac = (state["trained_s"] - since + el) / total
        if el >= budget or frac >= 1:
            break
        T, B, easy = phase(frac)
        while len(pending) < 2 * args.workers:
            pending.append(pool.apply_async(_make_batch, ((T, B, easy),)))
        xs, ms = pending.pop(0).get()
        if len(xs[0]) != T + 1:  # (a batch made before the phase changed)
            continue
        lr = args.lr * min(1.0, (step - step0 + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        for gr in opt.param_groups:
            gr["lr"] = lr
        X = torch.tensor(xs, dtype=torch.long, device=device)
        A = torch.tensor(ms, dtype=torch.bool, device=device)
        x, y, amask = X[:, :-1], X[:, 1:], A[:, 1:]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
        ce = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view(B, T)
        lm = ce.mean()
        ans = (ce * amask).sum() / amask.sum().clamp(min=1)
        loss = lm + 2 * ans  # the answers' few tokens get their own average, not drowned in the text's
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 1500 == 0 and step > step0:
            model.eval()
            for template in ("paper", "heldout"):
                log(f"  passkey at 2048 ({template} template, training filler, 20 samples): {eval_passkey(model, tok, book_ids[0], 2048, 20, template, device, step):.3f}")
            if T > 2048:  # and at the phase's length, where the held-out phrasings have been lost before
                fill = held.get("pride_and_prejudice.txt") or book_ids[0]
                log(f"  passkey at {T - 16} (heldout template, held-out filler, 11 samples): {eval_passkey(model, tok, fill, T - 16, 11, 'heldout', device, step):.3f}")
            model.train()
        if step % 100 == 0:
            log(f"step {step:6d} t={state['trained_s'] + el:7.1f}s T={T:6d} B={B:3d} lr={lr:.2e} lm_loss={lm.item():.4f} answer_loss={ans.item():.4f}")
        step += 1
    pool.terminate()
    trained = time.time() - tstart
    state["runs"].append(dict(steps=step - step0, seconds=round(trained, 1)))
    state["step"], state["trained_s"] = step, state["trained_s"] + trained
    log(f"this run: {step - step0} steps in {trained:.1f}s; total {state['step']} steps, {state['trained_s']:.0f}s; schedule at {state['trained_s'] - since:.0f}s of {total:.0f}s")

    # evaluation (PyTorch, dense): held-out perplexity and passkey at the full context
    try:
        for f, ids in held.items():
            ppl = base.eval_ppl(model, torch.tensor(ids), min(args.ctx, 8192), device, max_windows=4)
            state[f"ppl_{f}"] = round(ppl, 2)
            log(f"held-out perplexity ({f}, 8192-token windows): {ppl:.2f}")
        fill = held.get("pride_and_prejudice.txt") or book_ids[0]
        for template in ("paper", "heldout"):
            acc = eval_passkey(model, tok, fill, cfg["max_position_embeddings"] - 16, args.eval_samples, template, device, 7)
            state[f"passkey_{template}_32k"] = acc
            log(f"passkey at {cfg['max_position_embeddings'] - 16} tokens, {template} template, held-out filler (dense, PyTorch, {args.eval_samples} samples): {acc:.3f}")
    except Exception as e:
        log(f"evaluation failed: {e!r}")
    save(model, cfg, tok, state, args.out)
    try:  # the export against transformers' own Llama
        from transformers import AutoModelForCausalLM
        ref = AutoModelForCausalLM.from_pretrained(args.out, dtype=torch.float32).to(device).eval()
        ours = load(args.out, device)[0].eval()
        x = torch.tensor([book_ids[0][:512]], device=device)
        with torch.no_grad():
            log(f"export check: transformers vs training model, max |dlogit| = {(ref(x).logits - ours(x)).abs().max().item():.2e}")
    except Exception as e:
        log(f"export check skipped: {e}")
    log(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
