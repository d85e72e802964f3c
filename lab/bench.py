"""`python -m lab bench colocated`: our co-located speculation against the obvious references.

For each dtype this CPU runs (float32 and bfloat16; `--dtype` picks one), first what the premise of
speculation rests on — t_decode and t_verify(K+1) for K = 1…5 — and the time to first token of a
three-line prompt at the chosen threads and at the old defaults (bf16, one pinned thread); then on
the same pair, prompts and thread count, in one process:
  cloud-spec   lab.core.decoding.speculative_generate (draft + target co-located, K fixed)
  cloud-spec:K,stop=P,min=M   the same with a confidence stop: at most K drafts a block, fewer once the
               draft's own estimate that all of them are accepted falls below P (`--stop`, `--stop-k`),
               but not fewer than M (`--stop-min`): the M the simulator finds fastest on this host's
               measured profile of the pair (simulated_stop_min), else the fewest drafts no shorter block
               verifies cheaper than (spec.min_block on t_verify(K+1) and t_draft as measured here)
  assisted     Hugging Face assisted generation: target.generate(assistant_model=draft), on the
               same loaded models as cloud-spec (the lab's kernels): the decoding loops side by side
  assisted-stock   the same call on the pair as transformers loads it (torch's own Linear kernels,
               no int8 draft): what `generate(assistant_model=…)` gives a user on this CPU
  plain        the target alone: target.generate (greedy)
and prints tokens/s of each, the ratios, and whether the three produced the same token ids
(at temperature 0 they should; bf16 can flip a near-tie, which is reported, not hidden).  The draft
runs with the lab's default kernels (int8 where that runs, lab/models/hf.py default_kernels), and
cloud-spec is run again with the other draft (packed fp32 beside int8, or int8 beside packed): the
target is untouched, so its tokens must stay the same; only the acceptance and the draft's time move.
Then (as root) the distributed path on the `lan` scenario: `fixed-k:K` (draft in sdl-edge,
target in sdl-cloud, every cycle over the kernel link) against `cloud-spec:K` (both in the
cloud), the lab's default threads per node, same prompts — what splitting costs when the network is free.
With the `gguf` extra installed, the same figures for the GGUF weights run by llama.cpp
(`--models embedded-gguf`), side by side: plain greedy decoding and cloud-spec through the lab's sessions.
`--isa avx2` reruns all of it with torch, oneDNN and MKL capped at AVX2: an emulation of an
AVX2-only CPU on this one (same cores, caches and memory; only the instruction set is limited).
A benchmark, not a test: it prints measured figures and asserts nothing.
"""
from __future__ import annotations

import time

from lab import usage
from lab.models import median_ms
from lab.prompts import load_prompts
from lab.sim.simulator import simulate
from lab.sweep import STRATEGIES, grid


THREE_LINE_PROMPT = ("Write a Python function merge_intervals(intervals) that merges overlapping intervals.\n"
                     "The input is a list of [start, end] pairs, possibly unsorted.\n"
                     "Return the merged list sorted by start, with a docstring and two doctest examples.")
OLD_DEFAULTS = {"dtype": "bfloat16", "threads": 1, "pinned": True}   # before issue 15: bf16, one pinned thread
VERIFY_KS = (1, 2, 3, 4, 5)
REPEATS = 5


def _tps(n_tokens: int, seconds: float) -> float:
    return n_tokens / seconds if seconds > 0 else float("nan")


class _Tally:
    """The rows of a bench table: tokens and seconds per row, and for speculation the drafts accepted
    and proposed; one timer and one report for every back-end."""

    def __init__(self):
        self.rows: dict[str, list] = {}          # name → [tokens, seconds, accepted, proposed]

    def run(self, name: str, fn) -> list[int]:
        """fn() timed under `name`; it returns the tokens, or a Generation (tokens, accepted, drafted)."""
        t0 = time.perf_counter()
        got = fn()
        row = self.rows.setdefault(name, [0, 0.0, 0, 0])
        row[1] += time.perf_counter() - t0
        tokens = got if isinstance(got, list) else got.tokens
        row[0] += len(tokens)
        if not isinstance(got, list):
            row[2] += sum(got.accepted)
            row[3] += sum(got.drafted)
        return tokens

    def tokens_per_s(self) -> dict[str, float]:
        return {name: _tps(n, sec) for name, (n, sec, _, _) in self.rows.items()}

    def report(self, out) -> dict[str, float]:
        tps = self.tokens_per_s()
        for name, (n, sec, accepted, proposed) in self.rows.items():
            acc = f", acceptance {accepted / proposed:.2f}" if proposed else ""
            out(f"  {name:21s} {tps[name]:7.2f} tok/s  ({n} tokens in {sec:.1f} s{acc})")
        return tps




def verify_costs(target, prompt_ids: list[int], ks=VERIFY_KS, repeats: int = REPEATS) -> dict:
    """t_decode (one token after the prompt) and t_verify(K+1) for each K, in ms, on one session
    rolled back after every forward: the premise of speculation is t_verify(K+1) ≈ t_decode."""
    s = target.new_session()
    s.prefill(list(prompt_ids))
    n = s.length
    toks = [int(t) for t in prompt_ids[-max(ks, default=0) - 1:]]            # ordinary ids of this prompt

    def fwd(m: int):
        s.extend(toks[:m])
        s.rollback(n)
    fwd(1)
    decode = median_ms(lambda: fwd(1), repeats)
    verify = {k: median_ms(lambda: fwd(k + 1), repeats) for k in ks}
    return {"t_decode_ms": decode, "t_verify_ms": verify, "ratio": {k: v / decode for k, v in verify.items()}}


def ttft_ms(target, prompt_ids: list[int], threads: int, pinned_cpu: int | None, repeats: int = 3) -> float:
    """Cloud-only's time to first token (prefill + the first token) at `threads`, optionally pinned."""
    import os

    import numpy as np

    from lab.core.decoding import TargetState
    from lab.models.hf import set_threads

    before_threads, before_cpus = _threads(), os.sched_getaffinity(0)
    set_threads(threads)
    if pinned_cpu is not None:
        os.sched_setaffinity(0, {pinned_cpu})
    try:
        return median_ms(lambda: TargetState.start(target, prompt_ids).step(0.0, np.random.default_rng(0)), repeats)
    finally:
        os.sched_setaffinity(0, before_cpus)
        set_threads(before_threads)


def _threads() -> int:
    import torch
    return torch.get_num_threads()


DEFAULT_STOP, DEFAULT_STOP_K = 0.5, 20       # docs/MEASUREMENTS.md, the confidence stop


def bench_colocated(models: str = "embedded", k: int = 5, max_new_tokens: int = 48, n_prompts: int | None = None,
                    threads: int = 2, dtypes: tuple[str, ...] = ("float32", "bfloat16"), out=print,
                    kernels: str | None = None, stop: float = DEFAULT_STOP, stop_k: int = DEFAULT_STOP_K,
                    stop_min: int | None = None) -> dict:
    """For each dtype: tokens/s of plain, assisted and cloud-spec decoding; t_verify(K+1)/t_decode;
    TTFT of a three-line prompt at `threads` and at the old defaults (one pinned thread)."""
    from lab.models import cpu

    for line in cpu.dtype_report():
        out(line)
    out(f"thread layout: {threads} torch thread(s), unpinned, one process (draft and target alternate, "
        f"so each phase gets every core)")
    results = {}
    for dtype in dtypes:
        results[dtype] = _bench_dtype(models, k, max_new_tokens, n_prompts, threads, dtype, out, kernels,
                                      (stop_k, stop, stop_min))
    gguf = None
    if models == "embedded":
        from lab.models.llamacpp import INSTALL_HINT, available
        if available():
            gguf = _bench_gguf(k, max_new_tokens, n_prompts, threads, out)
        else:
            out(f"\ngguf (llama.cpp) not measured: {INSTALL_HINT}")
    out("\nsummary (tok/s; verify ratio = t_verify(K+1) / t_decode):")
    for dtype, r in results.items():
        tps = r["tokens_per_s"]
        out(f"  {dtype:9s} plain {tps['plain']:6.2f}  assisted {tps['assisted']:6.2f}  cloud-spec "
            f"{tps['cloud-spec']:6.2f}  = {tps['cloud-spec'] / tps['plain']:.2f}x plain (goal >= 1.3), "
            f"{tps['cloud-spec'] / tps['assisted']:.2f}x assisted (goal >= 1.2); "
            f"draft {r['draft_kernels']} (assisted uses the same)")
        row = r["stop_row"]
        out(f"  {'':9s} {row}: {tps[row]:6.2f}  = {tps[row] / tps['plain']:.2f}x plain, "
            f"{tps[row] / tps['assisted']:.2f}x assisted (goal >= 1.2; the same draft)")
        if STOCK_ROW in tps:
            out(f"  {'':9s} {STOCK_ROW} {tps[STOCK_ROW]:6.2f}: cloud-spec {tps['cloud-spec'] / tps[STOCK_ROW]:.2f}x, "
                f"{row} {tps[row] / tps[STOCK_ROW]:.2f}x  (transformers' assisted generation on its own "
                f"{dtype} models, the same threads)")
        for row in (r for r in tps if r.startswith("cloud-spec-")):
            out(f"  {'':9s} {row.removeprefix('cloud-spec-').replace('-', ' ')}: cloud-spec {tps[row]:6.2f} = "
                f"{tps[row] / tps['plain']:.2f}x plain  (assisted ran with the {r['draft_kernels']} draft only)")
        out(f"  {'':9s} t_decode {r['verify']['t_decode_ms']:.0f} ms; verify ratio "
            + " ".join(f"K={kk}:{v:.2f}" for kk, v in r["verify"]["ratio"].items()) + "  (goal <= 1.3)")
    if gguf:
        tps = gguf["tokens_per_s"]
        out(f"  {'gguf':9s} plain {tps['plain']:6.2f}  cloud-spec {tps['cloud-spec']:6.2f}  = "
            f"{tps['cloud-spec'] / tps['plain']:.2f}x plain  (llama.cpp on the GGUF weights; its own greedy decode)")
        out(f"  {'':9s} t_decode {gguf['verify']['t_decode_ms']:.0f} ms; verify ratio "
            + " ".join(f"K={kk}:{v:.2f}" for kk, v in gguf["verify"]["ratio"].items()))
        results["gguf"] = gguf
    new, old = results.get("float32"), results.get(OLD_DEFAULTS["dtype"])
    if new and old:
        ratio = old["ttft_old_layout_ms"] / new["ttft_ms"]
        out(f"  TTFT of a 3-line prompt: new defaults (float32, {threads} threads) {new['ttft_ms']:.0f} ms; "
            f"old (bfloat16, 1 pinned thread) {old['ttft_old_layout_ms']:.0f} ms → {ratio:.2f}x lower (goal >= 2)")
    return results


def _bench_dtype(models: str, k: int, max_new_tokens: int, n_prompts: int | None, threads: int, dtype: str, out,
                 kernels: str | None = None,
                 stopping: tuple[int, float, int | None] = (DEFAULT_STOP_K, DEFAULT_STOP, None)) -> dict:
    import os

    from lab.core.decoding import speculative_generate
    from lab.models.select import kernels_of, load_role

    draft_kernels = kernels_of(models, "draft", dtype, kernels)
    draft = load_role(models, "draft", dtype=dtype, threads=threads, kernels=draft_kernels)
    target = load_role(models, "target", dtype=dtype, threads=threads, kernels=kernels)
    three, costs, t_draft = _pair_costs(draft, target, f"{dtype} (kernels: {target.kernels})", out)
    ttft = ttft_ms(target, three, threads, None)
    cpus = sorted(os.sched_getaffinity(0))
    ttft_old = ttft_ms(target, three, 1, cpus[-1])
    out(f"  TTFT (3-line prompt, {len(three)} tokens): {ttft:.0f} ms at {threads} threads; "
        f"{ttft_old:.0f} ms at 1 thread pinned to CPU {cpus[-1]}")
    prompts = load_prompts(None)[:n_prompts]
    tally, mismatches, greedy_reference = _Tally(), [], {}
    prompt_ids = {p["id"]: target.encode_prompt(p["prompt"]) for p in prompts}

    def cloud_spec(name: str, drafter, ids: list[int], kk: int = k, stop: float | None = None,
                   stop_min: int = 1) -> list[int]:
        """One co-located speculative generation, timed and counted under `name`; its tokens."""
        return tally.run(name, lambda: speculative_generate(drafter, target, ids, max_new_tokens, k_fn=lambda: kk,
                                                            stop=stop, stop_min=stop_min))

    stop_k, stop, stop_min = stopping
    if stop_min is None:
        stop_min, how = simulated_stop_min(models, dtype, draft_kernels, stop_k, stop)
        if stop_min is None:
            stop_min, how = least_block(costs, t_draft, stop_k), ("no shorter block verifies cheaper, drafts "
                                                                   "included: spec.min_block on the t_verify above")
        out(f"  the stop's minimum block: {stop_min} ({how})")
    stop_row = _stop_row(stop_k, stop, stop_min)
    for p in prompts:
        ids = prompt_ids[p["id"]]
        ours = cloud_spec("cloud-spec", draft, ids)
        stopped = cloud_spec(stop_row, draft, ids, stop_k, stop, stop_min)
        assisted = tally.run("assisted", lambda: hf_generate(target, ids, max_new_tokens, assistant_model=draft.model))
        plain = tally.run("plain", lambda: hf_generate(target, ids, max_new_tokens))
        greedy_reference[p["id"]] = plain
        for name, toks in (("assisted", assisted), ("plain", plain), (stop_row, stopped)):
            if toks != ours:
                mismatches.append(f"{p['id']}: {name} differs from cloud-spec at token {_first_difference(toks, ours)}")
        out(f"  {p['id']}: {len(ours)} tokens")
    other_kernels, other = _other_draft(models, dtype, threads, draft_kernels, out)
    if other is not None:
        row = f"cloud-spec-{other_kernels}-draft"
        out(f"  {other_kernels} draft step (t_draft) {verify_costs(other, three, ks=())['t_decode_ms']:.0f} ms")
        for p in prompts:
            toks, plain = cloud_spec(row, other, prompt_ids[p["id"]]), greedy_reference[p["id"]]
            if toks != plain:
                mismatches.append(f"{p['id']}: cloud-spec with the {other_kernels} draft differs from plain "
                                  f"at token {_first_difference(toks, plain)}")
        del other
    del draft, target
    _assisted_stock(models, dtype, threads, draft_kernels, kernels, prompt_ids, max_new_tokens, tally,
                    greedy_reference, out)
    out(f"  {models} ({dtype}, {threads} threads), K={k}, {len(prompts)} prompts × ≤{max_new_tokens} tokens")
    tps = tally.report(out)
    out(f"  cloud-spec / assisted = {tps['cloud-spec'] / tps['assisted']:.2f}x   (goal >= 1.2x)")
    out(f"  cloud-spec / plain    = {tps['cloud-spec'] / tps['plain']:.2f}x   (goal >= 1.3x)")
    out(f"  {stop_row} / assisted = {tps[stop_row] / tps['assisted']:.2f}x, / plain = "
        f"{tps[stop_row] / tps['plain']:.2f}x")
    if STOCK_ROW in tps:
        out(f"  cloud-spec / {STOCK_ROW} = {tps['cloud-spec'] / tps[STOCK_ROW]:.2f}x, {stop_row} / "
            f"{STOCK_ROW} = {tps[stop_row] / tps[STOCK_ROW]:.2f}x   (transformers' assisted generation as it "
            f"ships: its own {dtype} models)")
    out("  outputs: " + ("identical token ids" if not mismatches else "; ".join(mismatches)))
    return {"tokens_per_s": tps, "mismatches": mismatches, "verify": costs, "ttft_ms": ttft,
            "ttft_old_layout_ms": ttft_old, "draft_kernels": draft_kernels, "stop_row": stop_row}


def hf_generate(target, ids: list[int], max_new_tokens: int, **extra) -> list[int]:
    """transformers' own greedy `generate` of the target on `ids` (extra: assistant_model=…): the new tokens."""
    import torch

    x, eos = torch.tensor([ids]), list(target.eos_token_ids)
    with torch.inference_mode():
        return target.model.generate(x, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                                     pad_token_id=eos[0], attention_mask=torch.ones_like(x),
                                     **extra)[0, len(ids):].tolist()


# Assisted generation as transformers ships it: both models with torch's own Linear kernels (no packing,
# no int8 draft), the same dtype and threads.  The `assisted` row hands transformers the lab's kernels
# too, which isolates the decoding loop; this row is what a user gets from `generate(assistant_model=…)`.
STOCK_ROW = "assisted-stock"


def _assisted_stock(models: str, dtype: str, threads: int, draft_kernels: str, kernels: str | None,
                    prompt_ids: dict, max_new_tokens: int, tally: _Tally, greedy_reference: dict, out) -> None:
    """The STOCK_ROW: assisted generation on the pair loaded with kernels "default", timed into `tally`.
    Skipped when the lab's own rows already ran with those kernels.  Its tokens are compared with plain
    decoding's and a difference is printed, not counted a failure: torch's default GEMMs sum in another
    order than the packed ones, so a near-tie may go the other way (the comparison that must hold is
    cloud-spec against plain, on one target)."""
    from lab.models import warm_up
    from lab.models.select import kernels_of, load_role

    if draft_kernels == "default" and kernels_of(models, "target", dtype, kernels) == "default":
        return
    draft = load_role(models, "draft", dtype=dtype, threads=threads, kernels="default")
    target = load_role(models, "target", dtype=dtype, threads=threads, kernels="default")
    for m in (draft, target):
        warm_up(m)
    differ = []
    for pid, ids in prompt_ids.items():
        toks = tally.run(STOCK_ROW, lambda: hf_generate(target, ids, max_new_tokens, assistant_model=draft.model))
        if toks != greedy_reference[pid]:
            differ.append(f"{pid} at token {_first_difference(toks, greedy_reference[pid])}")
    out(f"  {STOCK_ROW}: transformers' own kernels for both models ({target.kernels}); tokens "
        + ("identical to plain" if not differ else "differ from the packed target's plain decoding: "
           + ", ".join(differ) + " (another GEMM summation order; a near-tie)"))
    del draft, target


def _bench_gguf(k: int, max_new_tokens: int, n_prompts: int | None, threads: int, out) -> dict:
    """The same measurements on the GGUF weights run by llama.cpp (`--models embedded-gguf`), side by
    side with torch's: t_decode, t_verify(K+1)/t_decode, the draft's step, TTFT, and tokens/s of plain
    greedy decoding against cloud-spec through the lab's sessions, whose tokens must be equal (there is
    no transformers `generate` of these weights to compare with)."""
    from lab.core.decoding import speculative_generate
    from lab.models.hf import greedy_generate
    from lab.models.select import load_role

    draft = load_role("embedded-gguf", "draft", threads=threads)
    target = load_role("embedded-gguf", "target", threads=threads)
    three, costs, _ = _pair_costs(draft, target, f"gguf ({target.kernels}; {threads} threads)", out)
    ttft = ttft_ms(target, three, threads, None)       # (torch's threads: llama.cpp keeps its own)
    out(f"  TTFT (3-line prompt, {len(three)} tokens): {ttft:.0f} ms")
    tally, mismatches = _Tally(), []
    for p in load_prompts(None)[:n_prompts]:
        ids = target.encode_prompt(p["prompt"])
        plain = tally.run("plain", lambda: greedy_generate(target, ids, max_new_tokens))
        ours = tally.run("cloud-spec", lambda: speculative_generate(draft, target, ids, max_new_tokens, k_fn=lambda: k))
        if ours != plain:
            mismatches.append(f"{p['id']}: cloud-spec differs from plain at token {_first_difference(ours, plain)}")
    tps = tally.report(out)
    out("  outputs: " + ("identical token ids" if not mismatches else "; ".join(mismatches)))
    del draft, target
    return {"tokens_per_s": tps, "mismatches": mismatches, "verify": costs, "ttft_ms": ttft}


STOP_MINS = tuple(range(1, 7))


def simulated_stop_min(models: str, dtype: str, draft_kernels: str | None, cap: int, stop: float,
                       mins=STOP_MINS, seeds: int = 2) -> tuple[int | None, str]:
    """The minimum block (cloud-spec:CAP,stop=P,min=M) the simulator finds fastest on `lan` for this
    host's measured profile of the pair, as nasd's table is calibrated (pooled tokens/s over the
    built-in prompts, `seeds` runs; a tie goes to the smaller M).  The profile's t_verify(n) is not a
    line on a CPU and its draft confidence is the real draft's; without a host profile that measured
    both, (None, why)."""
    from lab.core.cycle import pooled_tokens_per_s
    from lab.models.synthetic import confidence_measured, host_profile_path, load_profile
    from lab.scenario import load_scenario

    host = host_profile_path("embedded", dtype, draft_kernels) if models == "embedded" else None
    prof = load_profile(str(host)) if host is not None and host.is_file() else None
    if prof is None or not confidence_measured(prof) or not prof.verify_ms_by_n:
        return None, "no host profile with measured t_verify(n) and draft confidence: `python -m lab profile`"
    name = str(host)
    rows = {m: _stop_row(cap, stop, m) for m in mins if m <= cap}
    done: dict[str, list[dict]] = {r: [] for r in rows.values()}
    for seed in range(seeds):
        for rec, _ in simulate(load_scenario("lan"), list(rows.values()), name,
                               queries=len(load_prompts(None)), seed=seed):
            if not rec["warmup"]:
                done[rec["strategy"]].append(rec)
    rate = {m: pooled_tokens_per_s(done[r]) for m, r in rows.items()}
    best = max(rate, key=lambda m: (rate[m], -m))
    return best, ("the simulator's fastest on this host's profile: " +
                  ", ".join(f"min={m} {v:.2f}" for m, v in rate.items()) + " tok/s")


def _stop_row(cap: int, stop: float, least: int) -> str:
    """The strategy name of the stop row, spelled as lab.core.strategies spells it."""
    from lab.core.strategies import make_strategy
    return make_strategy(f"cloud-spec:{cap},stop={stop:g},min={least}").name


def least_block(costs: dict, t_draft_ms: float, cap: int) -> int:
    """spec.min_block on verify_costs' measurements: t_verify(1) = t_decode, t_verify(K+1) for the K
    measured; the cap bounded by them."""
    from lab.core import spec
    by_n = {1: costs["t_decode_ms"], **{kk + 1: v for kk, v in costs["t_verify_ms"].items()}}
    return spec.min_block(lambda n: by_n[n], t_draft_ms, min(cap, max(by_n) - 1))


def _pair_costs(draft, target, heading: str, out) -> tuple[list[int], dict, float]:
    """Warm the pair up; print and return the three-line prompt's ids, the target's verify costs
    (t_decode, t_verify(K+1)) and the draft's step (ms)."""
    from lab.models import warm_up

    for m in (draft, target):
        warm_up(m)
    out(f"\n{heading}:")
    three = target.encode_prompt(THREE_LINE_PROMPT)
    costs = verify_costs(target, three)
    out(f"  t_decode {costs['t_decode_ms']:.0f} ms; t_verify(K+1): "
        + ", ".join(f"K={kk} {v:.0f} ms ({costs['ratio'][kk]:.2f}x)" for kk, v in costs["t_verify_ms"].items()))
    t_draft = verify_costs(draft, three, ks=())["t_decode_ms"]
    out(f"  draft step (t_draft) {t_draft:.0f} ms ({draft.kernels})")
    return three, costs, t_draft


def _first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first token where two outputs differ (the shorter one's length if one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _other_draft(models: str, dtype: str, threads: int, used: str, out):
    """(kernels, the draft again with them): the other of int8 and packed than `used`; the draft is
    None where int8 cannot run (lab/models/quant.py: float32 and fbgemm)."""
    import torch

    from lab.models import warm_up
    from lab.models.quant import can_quantize
    from lab.models.select import load_role

    if used != "int8" and not can_quantize(getattr(torch, dtype)):
        out(f"  (no int8 draft: dynamic int8 needs float32 and fbgemm; this run is {dtype})")
        return "int8", None
    kernels = "packed" if used == "int8" else "int8"
    draft = load_role(models, "draft", dtype=dtype, threads=threads, kernels=kernels)
    warm_up(draft)
    out(f"  {kernels} draft: {draft.kernels}")
    return kernels, draft


def bench_lan(models: str = "embedded", k: int = 5, max_new_tokens: int = 48, n_prompts: int | None = None,
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
    n_prompts = len(load_prompts(None)[:n_prompts])
    opts = RunOptions(models=models, strategies=strategies, queries=n_prompts, warmup_queries=1,
                      max_new_tokens=max_new_tokens, seed=0, dtype=dtype, progress=False)
    out(f"\nlan: {' vs '.join(strategies)}, {n_prompts} queries each (+1 warm-up), the lab's default threads per node …")
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
    from lab.models.synthetic import load_profile, resolve_profile
    name, which = resolve_profile("embedded-cpu")
    out(which)
    prof = load_profile(name)
    k, tps = spec.best_k(prof.alpha, prof.t_draft_ms, lambda k: prof.verify_ms(k + 1), rtt_ms=0.0)
    out(f"K={k}: the throughput model's optimum for that profile "
        f"(α {prof.alpha:.2f}, t_draft {prof.t_draft_ms:.0f} ms, t_verify(K+1) {prof.verify_ms(k + 1):.0f} ms "
        f"→ {tps:.2f} tok/s predicted)")
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


def _rerun_capped(isa: str, argv: list[str], out=print) -> int | None:
    """--isa: torch, oneDNN and MKL read their ISA caps at import, so the benchmark reruns itself in a
    child with the caps set (an emulation of an older CPU on this one: same cores, caches and memory,
    only the instructions are limited).  None when this process already runs capped."""
    import os
    import subprocess
    import sys

    from lab.models.cpu import isa_env
    env = isa_env(isa)
    if all(os.environ.get(k) == v for k, v in env.items()):
        return None
    out(f"--isa {isa}: rerunning with {' '.join(f'{k}={v}' for k, v in env.items())}")
    return subprocess.run([sys.executable, "-m", "lab", "bench", *argv], env={**os.environ, **env}).returncode


def bench_args(argv: list[str]):
    """`bench`'s arguments, checked: bad input is refused before the lab lock is taken."""
    import os

    ap = usage.ArgumentParser(prog="python -m lab bench")
    ap.add_argument("what", choices=["colocated", "sim"])
    ap.add_argument("--models", type=usage.models, default="embedded")
    ap.add_argument("--k", type=usage.whole(1),
                    help="draft length (default: the throughput model's optimum for the profile)")
    ap.add_argument("--max-new-tokens", type=usage.whole(1), default=48)
    # Every prompt by default: the pair agrees differently on each, and a subset can favour one side (over
    # the first 3 the stop row read 1.18-1.22x assisted generation, over all 8 0.99-1.04x; MEASUREMENTS.md).
    ap.add_argument("--prompts", type=usage.whole(1),
                    help="use only the first N built-in prompts (default: all of them)")
    ap.add_argument("--threads", type=usage.whole(1), default=len(os.sched_getaffinity(0)),
                    help="torch threads of the co-located process (default: every CPU this process may use)")
    ap.add_argument("--dtype", default="all", choices=["all", "auto", "float32", "bfloat16"],
                    help="all: every dtype this CPU runs (float32 and bfloat16)")
    ap.add_argument("--isa", choices=["avx2"],
                    help="cap torch/oneDNN/MKL at this ISA (ATEN_CPU_CAPABILITY etc.): emulates an AVX2-only CPU")
    ap.add_argument("--kernels", choices=["auto", "default", "packed"], default="auto",
                    help="Linear kernels of both models: torch's default or oneDNN-packed weights "
                         "(auto: the lab's defaults, a packed target and an int8 draft where that runs); "
                         "cloud-spec is measured again with the other draft (packed beside int8)")
    ap.add_argument("--stop", type=usage.number(0.0, above=True, maximum=1.0), default=DEFAULT_STOP,
                    help="confidence stop of the cloud-spec:K,stop=P row: a block ends once the draft's own "
                         f"estimate that all of it is accepted falls below P (default {DEFAULT_STOP})")
    ap.add_argument("--stop-k", type=usage.whole(1), default=DEFAULT_STOP_K,
                    help=f"the most drafts a block of that row may hold (default {DEFAULT_STOP_K})")
    ap.add_argument("--stop-min", type=usage.whole(1),
                    help="the fewest drafts the stop leaves a block of that row with (default: the one the "
                         "simulator finds fastest on this host's profile, else where no shorter block verifies "
                         "cheaper by the t_verify measured here)")
    ap.add_argument("--no-lan", action="store_true", help="skip the distributed fixed-k over lan part")
    a = ap.parse_args(argv)
    if a.stop_min is not None and a.stop_min > a.stop_k:
        ap.error(f"--stop-min {a.stop_min} exceeds --stop-k {a.stop_k} (the most drafts a block may hold)")
    if a.what == "colocated" and a.models.startswith("synthetic"):
        ap.error("--models: colocated compares against Hugging Face generate, which needs a real pair "
                 "(embedded or DRAFT_ID,TARGET_ID)")
    if a.what == "colocated" and a.models == "embedded-gguf":
        ap.error("--models: the GGUF pair is measured within `bench colocated --models embedded`, beside "
                 "torch's, when the gguf extra is installed")
    return a


def bench_main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[2:] if argv is None else argv)
    a = bench_args(argv)
    if a.what == "sim":
        bench_grid()
        return 0
    if a.isa:
        rc = _rerun_capped(a.isa, argv)
        if rc is not None:
            return rc
        from lab.models.cpu import torch_capability
        if torch_capability() != a.isa.upper():
            print(f"error: --isa {a.isa}: torch dispatches to {torch_capability()} despite the caps", file=sys.stderr)
            return 1
    from lab.models.cpu import resolve_dtype
    dtypes = ("float32", "bfloat16") if a.dtype == "all" else (resolve_dtype(a.dtype),)
    a.k = a.k or default_k(a.models)
    bench_colocated(a.models, a.k, a.max_new_tokens, a.prompts, a.threads, dtypes,
                    kernels=None if a.kernels == "auto" else a.kernels, stop=a.stop, stop_k=a.stop_k,
                    stop_min=a.stop_min)
    if not a.no_lan:
        bench_lan(a.models, a.k, a.max_new_tokens, a.prompts, dtypes[0])
    return 0
