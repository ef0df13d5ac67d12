#!/usr/bin/env python3
"""GRPO on 2-digit addition against `mobula serve`, with only the Python standard library.

The service's base should be the GRPO demo's warm start (a noisy labeler's policy; docs/serve.md):
    mobula run examples/grpo-addition.toml --set job.steps=0 --set job.workdir=runs/serve-base
    mobula serve examples/serve.toml --set serve.base=runs/serve-base/policy.safetensors &
    TOKEN=$(mobula serve token create examples/serve.toml --name alice)
    python3 examples/serve/rl_addition.py --url http://127.0.0.1:8480 --token $TOKEN

Each step samples `--group` completions for `--prompts` problems from this client's LoRA adapter,
rewards exact answers, computes group-relative advantages, and queues forward_backward (ppo) and
optim_step without waiting (the service runs a client's calls in order). It prints the mean reward
per step, greedy accuracy on 100 problems before and after, and a JSON summary as its last line.
"""
import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "serve", "python"))
import mobula_serve as ms  # noqa: E402

ALPHABET = "0123456789+="  # rl/tasks/task.cc (addition); ids 0..2 are <pad>, <bos>, <eos>
EOS = 2


def encode(text):
    return [3 + ALPHABET.index(c) for c in text]


def decode(ids):
    return "".join(ALPHABET[i - 3] for i in ids if 3 <= i < 3 + len(ALPHABET))


def completion_text(tokens):
    return decode(tokens[:-1] if tokens and tokens[-1] == EOS else tokens)


def accuracy(tc, problems):
    prompts = [encode(f"{a}+{b}=") for a, b in problems]
    samples = []
    for i in range(0, len(prompts), 64):
        samples += tc.sample(prompts[i:i + 64], num_samples=1, max_tokens=4, temperature=0.0, stop=[EOS],
                             seed=0).result()["samples"]
    return sum(completion_text(s["tokens"]) == str(a + b) for s, (a, b) in zip(samples, problems)) / len(problems)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8480")
    ap.add_argument("--token", default=os.environ.get("MOBULA_TOKEN", ""))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if not args.token:
        sys.exit("rl_addition.py: --token is required (mobula serve token create SPEC --name NAME)")
    rng = random.Random(args.seed)
    svc = ms.ServiceClient(args.url, args.token)
    tc = svc.create_lora_training_client(rank=args.rank, alpha=2 * args.rank, seed=args.seed)
    held_out = [(rng.randrange(100), rng.randrange(100)) for _ in range(100)]
    before = accuracy(tc, held_out)
    print(f"adapter {tc.adapter_id}: greedy accuracy before RL {before:.2f}", flush=True)
    rewards = []
    t0 = time.monotonic()
    pending = None
    held = set(held_out)
    for step in range(args.steps):
        problems = []
        while len(problems) < args.prompts:  # training problems never include the held-out ones
            p = (rng.randrange(100), rng.randrange(100))
            if p not in held:
                problems.append(p)
        prompts = [encode(f"{a}+{b}=") for a, b in problems]
        samples = tc.sample(prompts, num_samples=args.group, max_tokens=4, temperature=1.0, stop=[EOS],
                            seed=args.seed * 100003 + step).result()["samples"]
        data, total = [], 0.0
        for p, (a, b) in enumerate(problems):
            group = samples[p * args.group:(p + 1) * args.group]
            r = [1.0 if completion_text(s["tokens"]) == str(a + b) else 0.0 for s in group]
            total += sum(r)
            mean = sum(r) / len(r)
            std = (sum((x - mean) ** 2 for x in r) / len(r)) ** 0.5
            if std == 0:
                continue  # equal rewards: no signal
            for s, x in zip(group, r):
                data.append(ms.datum(prompts[p], s["tokens"], s["logprobs"], (x - mean) / (std + 1e-6)))
        rewards.append(total / len(samples))
        if pending:
            pending.result()  # the previous step's optim_step (its failure would surface here)
            pending = None
        if data:
            fbs = [tc.forward_backward(data[i:i + 64], "ppo", clip_low=0.2, clip_high=0.28)
                   for i in range(0, len(data), 64)]
            pending = tc.optim_step(lr=args.lr)
            fbs[-1].result()
        print(f"step {step:3d}  reward {rewards[-1]:.3f}  trained {len(data)}", flush=True)
    if pending:
        pending.result()
    after = accuracy(tc, held_out)
    k = max(1, min(5, len(rewards) // 2))
    summary = {"adapter": tc.adapter_id, "accuracy_before": before, "accuracy_after": after,
               "reward_first": sum(rewards[:k]) / k, "reward_last": sum(rewards[-k:]) / k,
               "steps": args.steps, "seconds": round(time.monotonic() - t0, 2)}
    print(f"greedy accuracy {before:.2f} -> {after:.2f}; mean reward {summary['reward_first']:.3f} (first {k} "
          f"steps) -> {summary['reward_last']:.3f} (last {k})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
