#!/usr/bin/env python3
"""Golden data for tests/model/golden_test.cc, computed by PyTorch from the same model definition.

Builds mobula's GPT (pre-LN blocks, causal multi-head attention, GELU tanh, learned positions,
output head tied to wte) functionally from a dict of tensors named like mobula's parameter table,
runs a fixed batch, and writes ONE safetensors file with:
  * the weights (mobula names and shapes; loadable by rl::load_weights),
  * inputs:  input.tokens (B,T) I32, input.targets (B,T) I32 (-1 = masked), input.w (B,T) F32,
  * outputs: out.logits (B,T,V), out.logp (B,T), out.entropy (B,T), out.loss (1,) = sum(w*logp),
  * grad.<name> = d loss / d <name> for every parameter.

Regenerate (needs Debian's python3-torch; the test itself does not):
    /usr/bin/python3 tests/model/golden/make_golden.py tests/model/data/gpt_golden.safetensors
"""
import json, struct, sys
import torch
import torch.nn.functional as F

V, TMAX, L, NH, C, MLP = 13, 8, 2, 2, 16, 4
B, T = 3, 7
H = MLP * C


def tensors():
    g = torch.Generator().manual_seed(1234)
    n = lambda *s, std=0.3: (torch.randn(*s, generator=g) * std).double()
    P = {"wte": n(V, C), "wpe": n(TMAX, C)}
    for l in range(L):
        p = f"h.{l}."
        P[p + "ln1w"] = 1 + n(C, std=0.1)
        P[p + "ln1b"] = n(C, std=0.1)
        P[p + "qkvw"] = n(3 * C, C)
        P[p + "qkvb"] = n(3 * C, std=0.1)
        P[p + "attprojw"] = n(C, C)
        P[p + "attprojb"] = n(C, std=0.1)
        P[p + "ln2w"] = 1 + n(C, std=0.1)
        P[p + "ln2b"] = n(C, std=0.1)
        P[p + "fcw"] = n(H, C)
        P[p + "fcb"] = n(H, std=0.1)
        P[p + "fcprojw"] = n(C, H)
        P[p + "fcprojb"] = n(C, std=0.1)
    P["lnfw"] = 1 + n(C, std=0.1)
    P["lnfb"] = n(C, std=0.1)
    return P


def forward(P, tok):
    x = P["wte"][tok] + P["wpe"][: tok.shape[1]]
    hs = C // NH
    Tn = tok.shape[1]
    mask = torch.tril(torch.ones(Tn, Tn, dtype=torch.bool))
    for l in range(L):
        p = f"h.{l}."
        h = F.layer_norm(x, (C,), P[p + "ln1w"], P[p + "ln1b"], eps=1e-5)
        q, k, v = (h @ P[p + "qkvw"].T + P[p + "qkvb"]).split(C, dim=-1)
        q, k, v = [t.view(B, Tn, NH, hs).transpose(1, 2) for t in (q, k, v)]
        att = (q @ k.transpose(-2, -1)) / hs ** 0.5
        att = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, Tn, C)
        x = x + y @ P[p + "attprojw"].T + P[p + "attprojb"]
        h = F.layer_norm(x, (C,), P[p + "ln2w"], P[p + "ln2b"], eps=1e-5)
        x = x + F.gelu(h @ P[p + "fcw"].T + P[p + "fcb"], approximate="tanh") @ P[p + "fcprojw"].T + P[p + "fcprojb"]
    x = F.layer_norm(x, (C,), P["lnfw"], P["lnfb"], eps=1e-5)
    return x @ P["wte"].T


def write_safetensors(path, tensors, meta):
    """tensors: name -> float32 / int32 torch tensor; meta: str -> str (the __metadata__)."""
    header, blobs, off = {"__metadata__": meta}, [], 0
    for name, t in tensors.items():
        b = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": "I32" if t.dtype == torch.int32 else "F32", "shape": list(t.shape),
                        "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main(path):
    P = tensors()
    for t in P.values():
        t.requires_grad_(True)
    g = torch.Generator().manual_seed(99)
    tok = torch.randint(0, V, (B, T), generator=g)
    tgt = torch.randint(0, V, (B, T), generator=g)
    tgt[0, 2] = -1
    tgt[2, 6] = -1
    w = torch.randn(B, T, generator=g).double()
    logits = forward(P, tok)  # float64 reference
    logsm = F.log_softmax(logits, dim=-1)
    valid = tgt >= 0
    logp = torch.where(valid, logsm.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1), torch.zeros(()).double())
    ent = -(logsm.exp() * logsm).sum(-1)
    loss = (w * logp).sum()
    loss.backward()
    out = {name: t.detach().float() for name, t in P.items()}
    out.update({"input.tokens": tok.int(), "input.targets": tgt.int(), "input.w": w.float(),
                "out.logits": logits.detach().float(), "out.logp": logp.detach().float(),
                "out.entropy": ent.detach().float(), "out.loss": loss.detach().float().reshape(1)})
    out.update({"grad." + name: t.grad.float() for name, t in P.items()})
    meta = {"format": "mobula-gpt", "format_version": "1", "vocab": str(V), "max_seq": str(TMAX),
            "layers": str(L), "heads": str(NH), "d_model": str(C), "mlp_ratio": str(MLP),
            "generator": "tests/model/golden/make_golden.py (PyTorch %s, float64 reference)" % torch.__version__}
    write_safetensors(path, out, meta)
    print(f"wrote {path}: loss {loss.item():.6f}, {sum(t.numel() for t in P.values())} parameters")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpt_golden.safetensors")
