#!/usr/bin/env python3
"""Golden data for the LoRA test in tests/model/lora_test.cc, computed by PyTorch (float64).

The base model is make_golden.py's (same weights, same definition); two LoRA adapters of different
ranks sit on every attention and MLP projection (qkv, attproj, fc, fcproj):
    y = x W^T + b + (alpha / r) (x A^T) B^T,   A (r, in), B (out, r).
Rows 0-1 of the batch use adapter 0 (rank 2, alpha 4), row 2 uses adapter 1 (rank 3, alpha 6),
row 3 the base model alone. The base is frozen; the loss is sum(w * logp).

Writes one safetensors file with the base weights (mobula names), lora<k>.<name> for each
adapter tensor ("h.<l>.<target>.lora_A" / "lora_B"), input.tokens/targets/w, out.logits,
out.logp and grad.lora<k>.<name>.

Regenerate (needs Debian's python3-torch; the test itself does not):
    /usr/bin/python3 tests/model/golden/make_lora_golden.py tests/model/data/lora_golden.safetensors
"""
import json, os, sys
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_golden as G  # noqa: E402

V, TMAX, L, NH, C, H = G.V, G.TMAX, G.L, G.NH, G.C, G.H
B, T = 4, 7
ADAPTERS = [(2, 4.0), (3, 6.0)]  # (rank, alpha)
ROW_ADAPTER = [0, 0, 1, None]
TARGETS = {"qkv": (3 * C, C), "attproj": (C, C), "fc": (H, C), "fcproj": (C, H)}


def adapters():
    g = torch.Generator().manual_seed(4321)
    out = []
    for r, _ in ADAPTERS:
        A = {}
        for l in range(L):
            for t, (o, i) in TARGETS.items():
                A[f"h.{l}.{t}.lora_A"] = (torch.randn(r, i, generator=g) * 0.3).double()
                A[f"h.{l}.{t}.lora_B"] = (torch.randn(o, r, generator=g) * 0.3).double()
        out.append(A)
    return out


def proj(x, W, b, l, t, lora):
    """x (B,T,in) -> (B,T,out): the base projection plus each row's adapter delta."""
    y = x @ W.T + b
    rows = []
    for row in range(x.shape[0]):
        k = ROW_ADAPTER[row]
        if k is None:
            rows.append(y[row])
            continue
        r, alpha = ADAPTERS[k]
        A, Bm = lora[k][f"h.{l}.{t}.lora_A"], lora[k][f"h.{l}.{t}.lora_B"]
        rows.append(y[row] + (alpha / r) * (x[row] @ A.T) @ Bm.T)
    return torch.stack(rows)


def forward(P, lora, tok):
    x = P["wte"][tok] + P["wpe"][: tok.shape[1]]
    hs = C // NH
    Tn = tok.shape[1]
    mask = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool))
    for l in range(L):
        p = f"h.{l}."
        h = F.layer_norm(x, (C,), P[p + "ln1w"], P[p + "ln1b"], eps=1e-5)
        q, k, v = proj(h, P[p + "qkvw"], P[p + "qkvb"], l, "qkv", lora).split(C, dim=-1)
        q, k, v = [t.view(B, Tn, NH, hs).transpose(1, 2) for t in (q, k, v)]
        att = (q @ k.transpose(-2, -1)) / hs ** 0.5
        att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, Tn, C)
        x = x + proj(y, P[p + "attprojw"], P[p + "attprojb"], l, "attproj", lora)
        h = F.layer_norm(x, (C,), P[p + "ln2w"], P[p + "ln2b"], eps=1e-5)
        f = F.gelu(proj(h, P[p + "fcw"], P[p + "fcb"], l, "fc", lora), approximate="tanh")
        x = x + proj(f, P[p + "fcprojw"], P[p + "fcprojb"], l, "fcproj", lora)
    x = F.layer_norm(x, (C,), P["lnfw"], P["lnfb"], eps=1e-5)
    return x @ P["wte"].T


def main(path):
    P = G.tensors()
    lora = adapters()
    for A in lora:
        for t in A.values():
            t.requires_grad_(True)
    g = torch.Generator().manual_seed(77)
    tok = torch.randint(0, V, (B, T), generator=g)
    tgt = torch.randint(0, V, (B, T), generator=g)
    tgt[1, 3] = -1
    w = torch.randn(B, T, generator=g).double()
    logits = forward(P, lora, tok)
    logsm = F.log_softmax(logits, dim=-1)
    valid = tgt >= 0
    logp = torch.where(valid, logsm.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1), torch.zeros(()).double())
    loss = (w * logp).sum()
    loss.backward()
    out = {name: t.float() for name, t in P.items()}
    for k, A in enumerate(lora):
        out.update({f"lora{k}.{n}": t.detach().float() for n, t in A.items()})
        out.update({f"grad.lora{k}.{n}": t.grad.float() for n, t in A.items()})
    out.update({"input.tokens": tok.int(), "input.targets": tgt.int(), "input.w": w.float(),
                "out.logits": logits.detach().float(), "out.logp": logp.detach().float()})
    meta = {"format": "mobula-gpt", "format_version": "1", "vocab": str(V), "max_seq": str(TMAX),
            "layers": str(L), "heads": str(NH), "d_model": str(C), "mlp_ratio": str(G.MLP),
            "lora": json.dumps([{"rank": r, "alpha": a} for r, a in ADAPTERS]),
            "row_adapter": json.dumps([-1 if k is None else k for k in ROW_ADAPTER]),
            "generator": "tests/model/golden/make_lora_golden.py (PyTorch %s, float64 reference)" % torch.__version__}
    G.write_safetensors(path, out, meta)
    print(f"wrote {path}: loss {loss.item():.6f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "lora_golden.safetensors")
