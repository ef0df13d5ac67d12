#!/usr/bin/env python3
"""Golden PPO-clip loss (+ k3 KL) and its gradient w.r.t. the log-probs, by PyTorch autograd, for
tests/model/losses_test.cc. Regenerate:
    /usr/bin/python3 tests/model/golden/make_ppo_golden.py tests/model/data/ppo_golden.safetensors
"""
import json, struct, sys
import torch

N, EPS_LOW, EPS_HIGH, KL = 64, 0.2, 0.28, 0.05
g = torch.Generator().manual_seed(7)
logp = (-torch.rand(N, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
old = logp.detach() + torch.randn(N, generator=g, dtype=torch.float64) * 0.4
adv = torch.randn(N, generator=g, dtype=torch.float64)
mask = (torch.rand(N, generator=g) > 0.2).double()
ref = logp.detach() + torch.randn(N, generator=g, dtype=torch.float64) * 0.3
n = mask.sum()
ratio = torch.exp(logp - old)
obj = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - EPS_LOW, 1 + EPS_HIGH) * adv)
k3 = torch.exp(ref - logp) - (ref - logp) - 1
loss = -(mask * obj).sum() / n + KL * (mask * k3).sum() / n
loss.backward()
out = {"logp": logp.detach(), "logp_old": old, "adv": adv, "mask": mask, "logp_ref": ref,
       "loss": loss.detach().reshape(1), "grad": logp.grad}
meta = {"eps_low": str(EPS_LOW), "eps_high": str(EPS_HIGH), "kl_coef": str(KL),
        "generator": "tests/model/golden/make_ppo_golden.py (PyTorch %s)" % torch.__version__}
header, blobs, off = {"__metadata__": meta}, [], 0
for k, t in out.items():
    b = t.float().contiguous().numpy().tobytes()
    header[k] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
    blobs.append(b)
    off += len(b)
h = json.dumps(header).encode()
h += b" " * ((8 - len(h) % 8) % 8)
with open(sys.argv[1] if len(sys.argv) > 1 else "ppo_golden.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
print("loss", loss.item())
