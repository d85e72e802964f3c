"""`python -m lab bench colocated`: our co-located speculation against the obvious references.

On the same pair, prompts and thread count, in one process:
  cloud-spec   lab.decoding.speculative_generate (draft + target co-located, K fixed)
  assisted     Hugging Face assisted generation: target.generate(assistant_model=draft)
  plain        the target alone: target.generate (greedy)
and prints tokens/s of each, the ratios, and whether the three produced the same token ids
(at temperature 0 they should; bf16 can flip a near-tie, which is reported, not hidden).
A benchmark, not a test: it prints measured figures and asserts nothing.
"""
from __future__ import annotations

import argparse
import time

from lab.prompts import load_prompts


def _tps(n_tokens: int, seconds: float) -> float:
    return n_tokens / seconds if seconds > 0 else float("nan")


def bench_colocated(models: str = "embedded", k: int = 5, max_new_tokens: int = 48, n_prompts: int = 3,
                    threads: int = 2, dtype: str = "bfloat16", out=print) -> dict:
    import torch
    from lab.decoding import speculative_generate
    from lab.models import warm_up
    from lab.models.select import load_role

    draft = load_role(models, "draft", dtype=dtype, threads=threads)
    target = load_role(models, "target", dtype=dtype, threads=threads)
    for m in (draft, target):
        warm_up(m)
    prompts = load_prompts(None)[:n_prompts]
    totals = {"cloud-spec": [0, 0.0], "assisted": [0, 0.0], "plain": [0, 0.0]}
    mismatches = []
    for p in prompts:
        ids = target.encode_prompt(p["prompt"])
        t0 = time.perf_counter()
        ours = speculative_generate(draft, target, ids, max_new_tokens, k_fn=lambda: k).tokens
        totals["cloud-spec"][0] += len(ours)
        totals["cloud-spec"][1] += time.perf_counter() - t0
        x = torch.tensor([ids])
        eos = list(target.eos_token_ids)
        gen_kw = dict(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos[0])
        with torch.inference_mode():
            t0 = time.perf_counter()
            assisted = target.model.generate(x, assistant_model=draft.model, **gen_kw)[0, len(ids):].tolist()
            totals["assisted"][1] += time.perf_counter() - t0
            totals["assisted"][0] += len(assisted)
            t0 = time.perf_counter()
            plain = target.model.generate(x, **gen_kw)[0, len(ids):].tolist()
            totals["plain"][1] += time.perf_counter() - t0
            totals["plain"][0] += len(plain)
        for name, toks in (("assisted", assisted), ("plain", plain)):
            if toks != ours:
                first = next((i for i, (a, b) in enumerate(zip(toks, ours)) if a != b), min(len(toks), len(ours)))
                mismatches.append(f"{p['id']}: {name} differs from cloud-spec at token {first}")
        out(f"  {p['id']}: {len(ours)} tokens")
    tps = {name: _tps(n, s) for name, (n, s) in totals.items()}
    out(f"\ncolocated benchmark: {models} ({dtype}, {threads} threads), K={k}, {len(prompts)} prompts × "
        f"≤{max_new_tokens} tokens")
    for name, v in tps.items():
        out(f"  {name:10s} {v:7.2f} tok/s  ({totals[name][0]} tokens in {totals[name][1]:.1f} s)")
    out(f"  cloud-spec / assisted = {tps['cloud-spec'] / tps['assisted']:.2f}x   (goal >= 1.2x)")
    out(f"  cloud-spec / plain    = {tps['cloud-spec'] / tps['plain']:.2f}x")
    out("  outputs: " + ("identical token ids" if not mismatches else "; ".join(mismatches)))
    return {"tokens_per_s": tps, "mismatches": mismatches}


def bench_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab bench")
    ap.add_argument("what", choices=["colocated"])
    ap.add_argument("--models", default="embedded")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    a = ap.parse_args(argv)
    bench_colocated(a.models, a.k, a.max_new_tokens, a.prompts, a.threads, a.dtype)
    return 0
