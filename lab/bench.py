"""`python -m lab bench colocated`: our co-located speculation against the obvious references.

On the same pair, prompts and thread count, in one process:
  cloud-spec   lab.core.decoding.speculative_generate (draft + target co-located, K fixed)
  assisted     Hugging Face assisted generation: target.generate(assistant_model=draft)
  plain        the target alone: target.generate (greedy)
and prints tokens/s of each, the ratios, and whether the three produced the same token ids
(at temperature 0 they should; bf16 can flip a near-tie, which is reported, not hidden).
Then (as root) the distributed path on the `lan` scenario: `fixed-k:K` (draft in sdl-edge,
target in sdl-cloud, every cycle over the kernel link) against `cloud-spec:K` (both in the
cloud), one torch thread per node, same prompts — what splitting costs when the network is free.
A benchmark, not a test: it prints measured figures and asserts nothing.
"""
from __future__ import annotations

import time

from lab import usage
from lab.prompts import load_prompts
from lab.sim.simulator import simulate
from lab.sweep import STRATEGIES, grid


def _tps(n_tokens: int, seconds: float) -> float:
    return n_tokens / seconds if seconds > 0 else float("nan")


def bench_colocated(models: str = "embedded", k: int = 5, max_new_tokens: int = 48, n_prompts: int = 3,
                    threads: int = 2, dtype: str = "bfloat16", out=print) -> dict:
    import torch
    from lab.core.decoding import speculative_generate
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


def bench_lan(models: str = "embedded", k: int = 5, max_new_tokens: int = 48, n_prompts: int = 3,
              dtype: str = "bfloat16", out=print) -> dict | None:
    """fixed-k:K over the lan link vs cloud-spec:K, in the lab (needs root)."""
    import os

    import pandas as pd

    from lab.runner import RunOptions, run_scenario
    from lab.scenario import load_scenario

    if os.geteuid() != 0:
        out("\nlan part skipped: the distributed run needs root (network namespaces): sudo … bench colocated")
        return None
    strategies = (f"fixed-k:{k}", f"cloud-spec:{k}")
    opts = RunOptions(models=models, strategies=strategies, queries=n_prompts, warmup_queries=1,
                      max_new_tokens=max_new_tokens, seed=0, dtype=dtype, progress=False)
    out(f"\nlan: {' vs '.join(strategies)}, {n_prompts} queries each (+1 warm-up), one torch thread per node …")
    run_dir = run_scenario(load_scenario("lan"), opts, out=lambda s: None)
    df = pd.read_csv(run_dir / "summary.csv").set_index("strategy")
    tps = {s: float(df.loc[s, "tokens_per_s_p50"]) for s in strategies}
    for s, v in tps.items():
        out(f"  {s:12s} {v:7.2f} tok/s p50  (E2E p50 {df.loc[s, 'e2e_ms_p50']:.0f} ms, "
            f"net/cycle {df.loc[s, 'network_overhead_ratio']:.1%})")
    out(f"  fixed-k over lan / cloud-spec = {tps[strategies[0]] / tps[strategies[1]]:.2f}x   (goal >= 0.95x)  [{run_dir}]")
    return {"tokens_per_s": tps, "run_dir": str(run_dir)}


def default_k(models: str, out=print) -> int:
    """K for the benchmark: the throughput model's optimum (BACKGROUND.md, lab.core.spec.best_k at RTT 0)
    for the measured embedded-cpu profile; otherwise cloud-spec's default."""
    from lab.core import spec
    from lab.core.strategies import COLOCATED_DEFAULT_K

    if models != "embedded":
        return COLOCATED_DEFAULT_K
    from lab.models.synthetic import load_profile
    prof = load_profile("embedded-cpu")
    k, tps = spec.best_k(prof.alpha, prof.t_draft_ms, lambda k: prof.verify_ms(k + 1), rtt_ms=0.0)
    out(f"K={k}: the throughput model's optimum for the measured embedded-cpu profile "
        f"(α {prof.alpha:.2f}, t_draft {prof.t_draft_ms:.0f} ms, t_verify(K+1) {prof.verify_a_ms:.0f} + "
        f"{prof.verify_b_ms:.1f}·(K+1) ms → {tps:.2f} tok/s predicted at 1 thread)")
    return k


def bench_grid(runs: int = 3, profile="fast", link_model: str = "tcp", out=print) -> float:
    """Simulate the 21-point grid × the six baseline strategies × `runs` (lab/sweep.py's grid);
    print and return the wall time (target < 60 s)."""
    t0 = time.perf_counter()
    points = grid()
    n_queries = 0
    for p in points:
        sc = p.scenario(STRATEGIES)
        for r in range(runs):
            for _ in simulate(sc, list(STRATEGIES), profile, seed=r, link_model=link_model):
                n_queries += 1
    wall = time.perf_counter() - t0
    out(f"bench_grid: {len(points)} links × {len(STRATEGIES)} strategies × "
        f"{runs} runs = {n_queries} queries simulated in {wall:.2f} s (target < 60 s) [{link_model}]")
    return wall


def bench_main(argv: list[str] | None = None) -> int:
    ap = usage.ArgumentParser(prog="python -m lab bench")
    ap.add_argument("what", choices=["colocated", "sim"])
    ap.add_argument("--models", type=usage.models, default="embedded")
    ap.add_argument("--k", type=usage.whole(1),
                    help="draft length (default: the throughput model's optimum for the profile)")
    ap.add_argument("--max-new-tokens", type=usage.whole(1), default=48)
    ap.add_argument("--prompts", type=usage.whole(1), default=3, help="how many of the built-in prompts")
    ap.add_argument("--threads", type=usage.whole(1), default=2)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--no-lan", action="store_true", help="skip the distributed fixed-k over lan part")
    a = ap.parse_args(argv)
    if a.what == "colocated" and a.models.startswith("synthetic"):
        ap.error("--models: colocated compares against Hugging Face generate, which needs a real pair "
                 "(embedded or DRAFT_ID,TARGET_ID)")
    if a.what == "sim":
        bench_grid()
        return 0
    a.k = a.k or default_k(a.models)
    bench_colocated(a.models, a.k, a.max_new_tokens, a.prompts, a.threads, a.dtype)
    if not a.no_lan:
        bench_lan(a.models, a.k, a.max_new_tokens, a.prompts, a.dtype)
    return 0
