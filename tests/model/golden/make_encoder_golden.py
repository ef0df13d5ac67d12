#!/usr/bin/env python3
"""Golden data for tests/model/encoder_test.cc: mobula's convolutional VAE encoder (rl/encoder/vae_encoder.h)
computed in float64 by an independent implementation.

The architecture (NCHW, PyTorch conventions):
    conv_in 3x3 pad 1                                     in -> C_0
    for l < D: GroupNorm(G, eps 1e-6) -> SiLU -> down.l.conv 3x3 pad 1     C_l -> C_l
               down.l.downsample 3x3 stride 2 pad 1                        C_l -> C_{l+1} = min(2 C_l, 4 C_0)
    norm_out GroupNorm -> SiLU -> conv_out 3x3 pad 1      C_D -> 2L
    mean = channels [0, L), logvar = channels [L, 2L) clamped to [-30, 20]

With PyTorch importable the layers are torch.nn.functional's (conv2d, group_norm, silu) in float64;
otherwise NumPy implementations with the same semantics: convolution as a sum over the 3x3 kernel
offsets of strided slices of the zero-padded input (no im2col, no GEMM-shaped reshapes), GroupNorm
with the biased variance over each (sample, group). Weights and inputs come from NumPy's PCG64
with a fixed seed either way, so both paths write the same data up to float64 rounding.

Writes ONE safetensors file (hand-written: 8-byte little-endian header length, JSON header padded
with spaces to a multiple of 8, raw little-endian bytes) with:
  * every weight, named and shaped as vae_encoder_tensors() (loadable by VaeEncoder::load),
  * input (B, in, image, image) in [-1, 1],
  * mean, logvar (B, L, image / 2^D, image / 2^D),
  * metadata: format mobula-vae-encoder, format_version 1, the config, the generator.

Regenerate (Debian's python3-numpy is enough):
    /usr/bin/python3 tests/model/golden/make_encoder_golden.py tests/model/data/vae_encoder_golden.safetensors
"""
import json
import struct
import sys

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # no PyTorch: the NumPy reference
    torch = None

CONFIG = {"in_channels": 3, "image": 16, "base_channels": 8, "downsamples": 2, "groups": 4, "latent_channels": 4}
BATCH = 2
EPS = 1e-6


def channels(cfg, level):
    c = cfg["base_channels"]
    for _ in range(level):
        c = min(2 * c, 4 * cfg["base_channels"])
    return c


def param_table(cfg):
    """(name, shape) in the order of vae_encoder_tensors()."""
    t = []

    def conv(p, oc, ic):
        t.append((p + ".weight", (oc, ic, 3, 3)))
        t.append((p + ".bias", (oc,)))

    conv("conv_in", channels(cfg, 0), cfg["in_channels"])
    for l in range(cfg["downsamples"]):
        p, c = f"down.{l}.", channels(cfg, l)
        t.append((p + "norm.weight", (c,)))
        t.append((p + "norm.bias", (c,)))
        conv(p + "conv", c, c)
        conv(p + "downsample", channels(cfg, l + 1), c)
    cd = channels(cfg, cfg["downsamples"])
    t.append(("norm_out.weight", (cd,)))
    t.append(("norm_out.bias", (cd,)))
    conv("conv_out", 2 * cfg["latent_channels"], cd)
    return t


def make_params(cfg, rng):
    P = {}
    for name, shape in param_table(cfg):
        if len(shape) == 4:  # conv kernel: N(0, 1/fan_in), scaled up a little so activations are O(1)
            P[name] = rng.standard_normal(shape) * (1.5 / np.sqrt(shape[1] * shape[2] * shape[3]))
        elif name.endswith("norm.weight") or name == "norm_out.weight":
            P[name] = 1.0 + 0.2 * rng.standard_normal(shape)
        else:  # conv and GroupNorm biases
            P[name] = 0.1 * rng.standard_normal(shape)
    return P


# ---- NumPy float64 layers -------------------------------------------------------------------------
def np_conv2d(x, w, b, stride, pad):
    """x (B,IC,H,W), w (OC,IC,K,K), b (OC): PyTorch Conv2d (cross-correlation, zero padding)."""
    B, IC, H, W = x.shape
    OC, _, K, _ = w.shape
    OH, OW = (H + 2 * pad - K) // stride + 1, (W + 2 * pad - K) // stride + 1
    xp = np.zeros((B, IC, H + 2 * pad, W + 2 * pad))
    xp[:, :, pad:pad + H, pad:pad + W] = x
    out = np.zeros((B, OC, OH, OW))
    for ky in range(K):
        for kx in range(K):
            patch = xp[:, :, ky:ky + stride * (OH - 1) + 1:stride, kx:kx + stride * (OW - 1) + 1:stride]
            out += np.einsum("oi,bihw->bohw", w[:, :, ky, kx], patch)
    return out + b[None, :, None, None]


def np_group_norm(x, groups, w, b, eps):
    B, C, H, W = x.shape
    g = x.reshape(B, groups, -1)
    m = g.mean(axis=2, keepdims=True)
    v = ((g - m) ** 2).mean(axis=2, keepdims=True)
    y = ((g - m) / np.sqrt(v + eps)).reshape(B, C, H, W)
    return y * w[None, :, None, None] + b[None, :, None, None]


def np_silu(x):
    return x / (1.0 + np.exp(-x))


# ---- torch.nn.functional float64 layers (used when PyTorch is installed) ---------------------------
def torch_conv2d(x, w, b, stride, pad):
    return F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=stride, padding=pad).numpy()


def torch_group_norm(x, groups, w, b, eps):
    return F.group_norm(torch.from_numpy(x), groups, torch.from_numpy(w), torch.from_numpy(b), eps=eps).numpy()


def torch_silu(x):
    return F.silu(torch.from_numpy(x)).numpy()


NUMPY_LAYERS = (np_conv2d, np_group_norm, np_silu)
TORCH_LAYERS = (torch_conv2d, torch_group_norm, torch_silu)


def encode(cfg, P, x, layers):
    conv2d, group_norm, silu = layers
    G = cfg["groups"]
    h = conv2d(x, P["conv_in.weight"], P["conv_in.bias"], 1, 1)
    for l in range(cfg["downsamples"]):
        p = f"down.{l}."
        h = silu(group_norm(h, G, P[p + "norm.weight"], P[p + "norm.bias"], EPS))
        h = conv2d(h, P[p + "conv.weight"], P[p + "conv.bias"], 1, 1)
        h = conv2d(h, P[p + "downsample.weight"], P[p + "downsample.bias"], 2, 1)
    h = silu(group_norm(h, G, P["norm_out.weight"], P["norm_out.bias"], EPS))
    h = conv2d(h, P["conv_out.weight"], P["conv_out.bias"], 1, 1)
    L = cfg["latent_channels"]
    return h[:, :L], np.clip(h[:, L:], -30.0, 20.0)


def write_safetensors(path, tensors, metadata):
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype="<f4")
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def main(path):
    cfg = CONFIG
    rng = np.random.Generator(np.random.PCG64(20240611))
    P = make_params(cfg, rng)
    # The reference runs on the float32-rounded weights and inputs the C++ side will read.
    P = {k: v.astype(np.float32).astype(np.float64) for k, v in P.items()}
    x = rng.uniform(-1.0, 1.0, (BATCH, cfg["in_channels"], cfg["image"], cfg["image"]))
    x = x.astype(np.float32).astype(np.float64)
    mean, logvar = encode(cfg, P, x, TORCH_LAYERS if torch is not None else NUMPY_LAYERS)
    if torch is not None:  # where both exist, the NumPy reference must agree with PyTorch
        m2, l2 = encode(cfg, P, x, NUMPY_LAYERS)
        assert np.allclose(m2, mean, rtol=1e-10, atol=1e-10) and np.allclose(l2, logvar, rtol=1e-10, atol=1e-10)
    out = dict(P)
    out.update({"input": x, "mean": mean, "logvar": logvar})
    meta = {"format": "mobula-vae-encoder", "format_version": "1"}
    meta.update({k: str(v) for k, v in cfg.items()})
    meta["generator"] = "tests/model/golden/make_encoder_golden.py (%s, float64 reference)" % (
        "PyTorch " + torch.__version__ if torch is not None else "NumPy " + np.__version__)
    write_safetensors(path, out, meta)
    print(f"wrote {path}: {sum(v.size for v in P.values())} parameters, mean in "
          f"[{mean.min():.4f}, {mean.max():.4f}], logvar in [{logvar.min():.4f}, {logvar.max():.4f}]")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vae_encoder_golden.safetensors")
