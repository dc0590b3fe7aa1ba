#!/usr/bin/env python3
"""Train quest's own long-context test model (issue 3) on the GPU machine.

A small Llama (grouped-query attention, RoPE, RMSNorm, SwiGLU, tied embeddings) trained on Gutenberg
books with synthetic retrieval samples mixed in (passkeys hidden at random depths, key-value lookups),
so that it has real long-range behaviour for Quest to get right. Everything is exported in Hugging Face
format: config.json, model.safetensors (f16), tokenizer.json (byte-level BPE trained here with the
`tokenizers` library), tokenizer_config.json, generation_config.json.

Run (on the device machine, corpus carried in .corpus/):
  python3 tools/train_test_model.py --corpus .corpus --out $OUT --minutes 8
"""
import argparse, json, math, os, random, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F

HELD_OUT = "pride_and_prejudice.txt"  # never seen in training: held-out perplexity
PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. "
                 "Find it and memorize it. I will quiz you about the important information there.")
PASSKEY_FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NAMES = ("Anna Boris Clara Dmitri Elena Fyodor Galina Hugo Irene Jonas Karl Lena Marco Nadia Oscar "
         "Petra Quentin Rosa Stefan Tanya Ulrich Vera Walter Xenia Yuri Zoe Alba Bruno Cora Dario").split()
THINGS = ["secret number", "room number", "code", "ticket number", "lucky number"]


def log(msg):
    print(msg, flush=True)


# ----------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts, vocab_size):
    from tokenizers import Tokenizer, models, trainers, pre_tokenizers, decoders, processors
    tok = Tokenizer(models.BPE())
    # Digits one by one: keys and numbers are copied digit by digit, never merged into odd chunks.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


# --------------------------------------------------------------------------------------------- model
class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(cfg, T, device):
    hd = cfg["head_dim"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, device=device).float() / hd))
    f = torch.outer(torch.arange(T, device=device).float(), inv)
    emb = torch.cat([f, f], dim=-1)  # Hugging Face's rotate_half layout
    return emb.cos(), emb.sin()


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, hd = cfg["hidden_size"], cfg["head_dim"]
        self.nh, self.nkv, self.hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], hd
        self.q_proj = nn.Linear(d, self.nh * hd, bias=False)
        self.k_proj = nn.Linear(d, self.nkv * hd, bias=False)
        self.v_proj = nn.Linear(d, self.nkv * hd, bias=False)
        self.o_proj = nn.Linear(self.nh * hd, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, h = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.down_proj = nn.Linear(h, d, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = MLP(cfg)
        self.cfg_dropout = cfg.get("dropout", 0.0)

    def forward(self, x, cos, sin):
        drop = self.cfg_dropout if self.training else 0.0
        x = x + F.dropout(self.self_attn(self.input_layernorm(x), cos, sin), drop)
        return x + F.dropout(self.mlp(self.post_attention_layernorm(x)), drop)


class Inner(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg["num_hidden_layers"])])
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class Llama(nn.Module):
    """Parameter names follow transformers' LlamaForCausalLM, so the state dict is the HF checkpoint."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.model = Inner(cfg)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg["num_hidden_layers"]) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx):
        T = idx.shape[1]
        cos, sin = rope_tables(self.cfg, T, idx.device)
        x = F.dropout(self.model.embed_tokens(idx), self.cfg.get("dropout", 0.0) if self.training else 0.0)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return F.linear(self.model.norm(x), self.model.embed_tokens.weight)  # tied classifier


# ---------------------------------------------------------------------------------------------- data
class Data:
    def __init__(self, tok, books, rng):
        self.tok, self.rng = tok, rng
        self.books = [torch.tensor(tok.encode(t).ids, dtype=torch.long) for t in books]
        self.book_weights = [len(b) for b in self.books]
        enc = lambda s: tok.encode(s).ids
        self.intro = enc(PASSKEY_INTRO)
        self.filler = enc(PASSKEY_FILLER)
        self.enc = enc

    def book_window(self, n):
        b = self.rng.choices(self.books, weights=self.book_weights)[0]
        s = self.rng.randrange(0, len(b) - n - 1)
        return b[s:s + n].tolist()

    def filler_tokens(self, n, kind):
        if kind == "book":
            return self.book_window(n)
        reps = n // len(self.filler) + 1
        return (self.filler * reps)[:n]

    def key(self):
        n = self.rng.choice([5, 5, 5, 6, 7])
        return str(self.rng.randrange(10 ** (n - 1), 10 ** n))

    def passkey(self, T):
        """One passkey sample padded with book text to T tokens. Returns tokens, loss mask, answer mask."""
        k = self.key()
        needle = self.enc(f" The pass key is {k}. Remember it. {k} is the pass key.")
        question = self.enc(" What is the pass key? The pass key is")
        answer = self.enc(f" {k}.")
        L = self.rng.randint(min(256, T // 2), T - 16)  # the sample's own length, rest is book text
        body = L - len(self.intro) - len(needle) - len(question) - len(answer)
        fill = self.filler_tokens(max(body, 0), self.rng.choice(["book", "repeat"]))
        depth = self.rng.random()
        cut = int(len(fill) * depth)
        toks = self.intro + fill[:cut] + needle + fill[cut:] + question
        ans_start = len(toks)
        toks = toks + answer
        tail = self.book_window(T - len(toks) + 1)[:T - len(toks)]
        toks += tail
        ans = [0] * T
        for i in range(ans_start, ans_start + len(answer) - 1):  # the digits (and not the final '.')
            ans[i] = 1
        return toks[:T], ans

    def lookups(self, T):
        """Book text with several named facts inserted early and asked for later."""
        n = self.rng.randint(2, 8)
        names = self.rng.sample(NAMES, n)
        thing = self.rng.choice(THINGS)
        keys = [self.key() for _ in names]
        facts = [self.enc(f" The {thing} of {nm} is {k}.") for nm, k in zip(names, keys)]
        order = list(range(n)); self.rng.shuffle(order)
        qs = [(self.enc(f" What is the {thing} of {names[i]}? The {thing} of {names[i]} is"), self.enc(f" {keys[i]}."))
              for i in order]
        budget = T - sum(map(len, facts)) - sum(len(a) + len(b) for a, b in qs)
        text = self.book_window(max(budget, 16))
        # facts in the first 60% of the text, questions spread over the last 40%
        fpos = sorted(self.rng.randrange(0, int(len(text) * 0.6) + 1) for _ in facts)
        qpos = sorted(self.rng.randrange(int(len(text) * 0.6), len(text) + 1) for _ in qs)
        toks, ans, fi, qi = [], [], 0, 0
        for p in range(len(text) + 1):
            while fi < n and fpos[fi] == p:
                toks += facts[fi]; ans += [0] * len(facts[fi]); fi += 1
            while qi < n and qpos[qi] == p:
                q, a = qs[qi]
                toks += q + a; ans += [0] * len(q) + [1] * (len(a) - 1) + [0]; qi += 1
            if p < len(text):
                toks.append(text[p]); ans.append(0)
        toks, ans = toks[:T], ans[:T]
        return toks + [0] * (T - len(toks)), ans + [0] * (T - len(ans))

    def batch(self, B, T, device, mix=(0.4, 0.3, 0.3)):
        X, A = [], []
        for _ in range(B):
            r = self.rng.random()
            if r < mix[0]:
                t, a = self.book_window(T + 1), [0] * (T + 1)
            elif r < mix[0] + mix[1]:
                t, a = self.passkey(T + 1)
            else:
                t, a = self.lookups(T + 1)
            X.append(t); A.append(a)
        X = torch.tensor(X, dtype=torch.long, device=device)
        A = torch.tensor(A, dtype=torch.bool, device=device)
        return X[:, :-1], X[:, 1:], A[:, 1:]


# ---------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def eval_passkey(model, data, T, depths, samples, device):
    """Dense passkey accuracy at length T: greedy digits (teacher forcing equals greedy on exact match)."""
    model.eval()
    acc = {}
    for d in depths:
        ok = 0
        for _ in range(samples):
            k = data.key()
            needle = data.enc(f" The pass key is {k}. Remember it. {k} is the pass key.")
            question = data.enc(" What is the pass key? The pass key is")
            answer = data.enc(f" {k}")
            body = T - len(data.intro) - len(needle) - len(question) - len(answer)
            fill = data.filler_tokens(body, "repeat")
            cut = int(len(fill) * d / 100)
            toks = data.intro + fill[:cut] + needle + fill[cut:] + question + answer
            x = torch.tensor([toks], device=device)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(x)
            pred = logits[0, -len(answer) - 1:-1].argmax(-1).tolist()
            ok += int(pred == answer)
        acc[d] = ok / samples
    model.train()
    return acc


@torch.no_grad()
def eval_ppl(model, ids, T, device, max_windows=8):
    model.eval()
    nll, n = 0.0, 0
    for w in range(min(max_windows, (len(ids) - 1) // T)):
        x = ids[w * T:(w + 1) * T + 1].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x[None, :-1])
        nll += F.cross_entropy(logits[0].float(), x[1:], reduction="sum").item(); n += T
    model.train()
    return math.exp(nll / n)


def write_hf_side_files(out, cfg, tok):
    """config.json, generation_config.json, tokenizer.json and tokenizer_config.json of a Hugging Face
    LlamaForCausalLM folder (the weights are written beside them)."""
    hf = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=cfg["vocab_size"],
              hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
              num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
              num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"], hidden_act="silu",
              max_position_embeddings=cfg["max_position_embeddings"], rms_norm_eps=cfg["rms_norm_eps"],
              rope_theta=cfg["rope_theta"], tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
              bos_token_id=0, eos_token_id=1, torch_dtype="float16")
    json.dump(hf, open(os.path.join(out, "config.json"), "w"), indent=2)
    json.dump(dict(bos_token_id=0, eos_token_id=1, do_sample=False), open(os.path.join(out, "generation_config.json"), "w"), indent=2)
    tok.save(os.path.join(out, "tokenizer.json"))
    json.dump(dict(tokenizer_class="PreTrainedTokenizerFast", bos_token="<s>", eos_token="</s>",
                   add_bos_token=False, model_max_length=cfg["max_position_embeddings"]),
              open(os.path.join(out, "tokenizer_config.json"), "w"), indent=2)


# ---------------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget for the training loop")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--dropout", type=float, default=0.1, help="the corpus is small: without it the model memorises the books")
    ap.add_argument("--short-frac", type=float, default=0.35, help="share of the time trained at 1024 tokens")
    args = ap.parse_args()

    random.seed(args.seed); torch.manual_seed(args.seed)
    device = "cuda"
    t0 = time.time()
    names = sorted(f for f in os.listdir(args.corpus) if f.endswith(".txt"))
    texts = {f: open(os.path.join(args.corpus, f), encoding="utf-8").read().replace("\r\n", "\n") for f in names}
    train_books = [texts[f] for f in names if f != HELD_OUT]
    log(f"books: train {[f for f in names if f != HELD_OUT]}, held out {HELD_OUT}")
    extra = [PASSKEY_INTRO + PASSKEY_FILLER * 4 + " The pass key is 0123456789."] * 50
    tok = train_tokenizer(train_books + extra, args.vocab)
    log(f"tokenizer: {tok.get_vocab_size()} tokens ({time.time() - t0:.1f}s)")
    rng = random.Random(args.seed)
    data = Data(tok, train_books, rng)
    held = torch.tensor(tok.encode(texts[HELD_OUT]).ids, dtype=torch.long)
    log(f"tokens: train {sum(data.book_weights)}, held-out {len(held)} ({time.time() - t0:.1f}s)")

    cfg = dict(vocab_size=tok.get_vocab_size(), hidden_size=args.hidden, intermediate_size=args.hidden * 3,
               num_hidden_layers=args.layers, num_attention_heads=8, num_key_value_heads=2,
               head_dim=args.hidden // 8, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=args.ctx)
    model = Llama(dict(cfg, dropout=args.dropout)).to(device)
    nparams = sum(p.numel() for p in model.parameters())
    log(f"model: {nparams / 1e6:.2f}M parameters, {json.dumps(cfg)}")
    decay = [p for p in model.parameters() if p.dim() == 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=True)

    budget = args.minutes * 60
    tstart = time.time()
    step, warm = 0, 200
    phases = [(1024, 64), (args.ctx, max(1, 65536 // args.ctx))]
    while True:
        el = time.time() - tstart
        frac = el / budget
        if frac >= 1:
            break
        T, B = phases[0] if frac < args.short_frac else phases[1]
        lr = args.lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y, amask = data.batch(B, T, device, mix=(0.25, 0.35, 0.4))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(x)
        ce = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1), reduction="none").view(B, T)
        lm = ce.mean()
        ans = (ce * amask).sum() / amask.sum().clamp(min=1)
        loss = lm + ans  # retrieval answers get their own average so their few tokens are not drowned out
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0:
            val = ""
            if step % 250 == 0:
                val = f" held_out_loss={math.log(eval_ppl(model, held, 1024, device, max_windows=16)):.4f}"
            log(f"step {step:5d} t={el:6.1f}s T={T:5d} lr={lr:.2e} lm_loss={lm.item():.4f} answer_loss={ans.item():.4f}{val}")
        step += 1
    log(f"trained {step} steps in {time.time() - tstart:.1f}s")

    os.makedirs(args.out, exist_ok=True)
    from safetensors.torch import save_file
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    write_hf_side_files(args.out, cfg, tok)

    try:
        ppl = eval_ppl(model, held, args.ctx, device)
        log(f"held-out perplexity ({HELD_OUT}, {args.ctx}-token windows): {ppl:.2f}")
        acc = eval_passkey(model, data, args.ctx, [0, 25, 50, 75, 100], 10, device)
        log(f"passkey accuracy at {args.ctx} tokens (dense, PyTorch, 10 samples per depth): {acc}")
    except Exception as e:
        log(f"evaluation failed: {e!r}")
    # The export is checked against transformers' own Llama: same logits from the saved folder.
    try:
        from transformers import AutoModelForCausalLM
        ref = AutoModelForCausalLM.from_pretrained(args.out, torch_dtype=torch.float32).to(device).eval()
        x = held[:512][None].to(device)
        ours = Llama(cfg).to(device).eval()
        ours.load_state_dict({k: v.float() for k, v in sd.items()})
        with torch.no_grad():
            d = (ref(x).logits - ours(x)).abs().max().item()
        log(f"export check: transformers LlamaForCausalLM vs training model, max |dlogit| = {d:.2e}")
    except Exception as e:  # informative only; the TS engine's own tests are the real check
        log(f"export check skipped: {e}")
    log(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
