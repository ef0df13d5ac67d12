#!/usr/bin/env python3
"""PyTorch side of perf/model/bench_model: the identical GPT (pre-LN, GELU-tanh, learned positions,
tied head, same shapes), eager mode, one thread. Prints one JSON line with training and sampling
tokens/s (medians). Run pinned to one core for a fair comparison:
    taskset -c 0 /usr/bin/python3 perf/model/bench_torch.py --layers 4 --d-model 256 ...
"""
import argparse, json, math, statistics, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, NH, H):
        super().__init__()
        self.ln1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, H)
        self.fcproj = nn.Linear(H, C)
        self.NH = NH

    def attn(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        hs = C // self.NH
        q = q.view(B, T, self.NH, hs).transpose(1, 2)
        k = k.view(B, T, self.NH, hs).transpose(1, 2)
        v = v.view(B, T, self.NH, hs).transpose(1, 2)
        if cache is not None:
            if cache.get("k") is not None:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
            if T > 1:  # prefill of an empty cache: causal
                mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
                att = att.masked_fill(~mask, float("-inf"))
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
            mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
            att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, T, L, NH, C, H):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.blocks = nn.ModuleList([Block(C, NH, H) for _ in range(L)])
        self.lnf = nn.LayerNorm(C)

    def forward(self, idx, caches=None, pos0=0):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(pos0, pos0 + T))
        for i, b in enumerate(self.blocks):
            x = b(x, None if caches is None else caches[i])
        return self.lnf(x) @ self.wte.weight.t()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train-iters", type=int, default=5)
    ap.add_argument("--sample-batches", default="16,64")
    ap.add_argument("--prompt", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=56)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = GPT(a.vocab, a.context, a.layers, a.heads, a.d_model, 4 * a.d_model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x = torch.randint(0, a.vocab, (a.batch, a.context))
    y = torch.randint(0, a.vocab, (a.batch, a.context))
    times = []
    for i in range(a.train_iters + 1):
        t0 = time.perf_counter()
        logits = m(x)
        loss = F.cross_entropy(logits.view(-1, a.vocab), y.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i > 0:
            times.append(time.perf_counter() - t0)
    out = {"torch": torch.__version__, "train_tokens_per_s": a.batch * a.context / statistics.median(times), "sample": {}}
    with torch.no_grad():
        for bs in [int(s) for s in a.sample_batches.split(",")]:
            ts = []
            for _ in range(3):
                prompt = torch.randint(0, a.vocab, (bs, a.prompt))
                t0 = time.perf_counter()
                caches = [dict() for _ in m.blocks]
                logits = m(prompt[:, :-1], caches) if a.prompt > 1 else None
                tok = prompt[:, -1:]
                pos = a.prompt - 1
                for _ in range(a.new_tokens):
                    logits = m(tok, caches, pos0=pos)
                    probs = F.softmax(logits[:, -1, :], dim=-1)
                    tok = torch.multinomial(probs, 1)
                    pos += 1
                ts.append(time.perf_counter() - t0)
            out["sample"][str(bs)] = bs * a.new_tokens / statistics.median(ts)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
