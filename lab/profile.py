"""`python -m lab profile`: measure a real model pair on this machine; write a synthetic profile.

What is measured, with the torch threads per model the nodes run with (DEFAULT_THREADS_PER_NODE), the
times each in a process that holds that one model, as its node's does (time_alone):
  t_draft_ms            one draft forward of one token after a prompt (median)
  t_verify(n)           one target forward over n tokens, n in VERIFY_NS (median of repeats,
                        rolled back after each), kept as measured (verify_ms_by_n; a CPU's is
                        not a line) and fitted as verify_a_ms + verify_b_ms·n for past them
  prefill_ms_per_token  the target's prompt prefill divided by the prompt length (median over
                        prompts; the draft's is recorded beside it)
  alpha, trace          greedy agreement of the draft with the target along the target's own
                        greedy continuation of every prompt (teacher-forced): alpha is the
                        agreeing fraction, trace the runs of agreement (lab.models.synthetic
                        reads a trace as "n0 agreeing positions, one disagreeing, n1, …")
  prompt_agreement      the same agreement per prompt, position by position, so a synthetic run
                        (or the simulator) on these prompts accepts what the real pair accepts on
                        each of them, not the pooled pattern
  prompt_confidence     the draft's probability of its own greedy token at each of those positions
                        (percent, two digits each), so a confidence stop (strategy option stop=P)
                        ends a synthetic or simulated block where the real draft's would

`--from-run RUN_DIR` times the pair as the nodes ran it instead: t_draft and t_verify(n) from the
compute each node recorded per cycle in a lab run (queries.jsonl), fitted the same way, written into
this host's profile with its agreement kept.  The nodes are two processes sharing the host's cores
(each with every core's torch threads, as a run lays them out), and a run holds the host's speed of
its moment, which on a shared 2-vCPU VM moved by 15 % within 20 minutes (docs/MEASUREMENTS.md).
Calibrate on one run (say `lan` with cloud-only, fixed-k:1, fixed-k:3, fixed-k:5), then predict the
others.

`--acceptance-only` measures the agreement alone and writes it into an existing profile, keeping
its compute times: agreement depends on the pair, the dtype and the prompts, not on how busy the
host is, so it can be re-measured (say, for longer continuations) without re-timing.

The profile written reproduces the pair in the synthetic models and the
simulator: the same compute times, and (with the trace) the same acceptance
pattern at temperature 0.  The residuals of the verify fit are printed, so a
non-linear t_verify(K) is visible rather than hidden.
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from lab.core import spec

VERIFY_NS = (1, 2, 4, 6, 8, 11, 16)
REPEATS = 3


def _ms(fn) -> tuple[float, object]:
    t = time.perf_counter()
    r = fn()
    return (time.perf_counter() - t) * 1000, r


def fit_line(xs, ys, counts=None) -> tuple[float, float]:
    """Least-squares a + b·x; b clipped at 0 (a forward never gets cheaper with more tokens).
    counts: how many measurements each y summarises — its squared residual counts that many times, so
    a verify size a run met once (a query's last, shortened block) cannot tilt the line away from the
    sizes it ran in nearly every cycle."""
    w = None if counts is None else np.sqrt(np.asarray(counts, float))    # polyfit squares the weights
    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1, w=w)
    if b < 0:
        return float(np.average(ys, weights=counts)), 0.0
    return float(a), float(b)


def agreement_trace(agree: list[bool]) -> list[int]:
    """Runs of agreement each ended by a disagreement: [T, T, F, T, F, F, T] → [2, 1, 0, 1].

    A trailing run was cut by the end of the continuation, not by the draft; it is kept, read as
    ended by a disagreement (the trace's grammar).  That costs one position per prompt; leaving it
    out would drop whole runs — on these prompts most agreement sits in runs that reach the end
    (e.g. 47 of 48 positions), and the pooled trace would understate α (0.87 measured)."""
    trace, run = [], 0
    for a in agree:
        if a:
            run += 1
        else:
            trace.append(run)
            run = 0
    if run:
        trace.append(run)
    return trace


def measure_pair(draft, target, prompts: list[dict], max_new_tokens: int,
                 out: Callable[[str], None] = print) -> dict:
    """The pair's agreement (alpha, trace, prompt_agreement, prompt_answer, prompt_confidence) and each
    prompt's `runs` (its ids and the target's greedy continuation), which time_target / time_draft
    time in a process of each model's own (time_alone)."""
    from lab.models.synthetic import encode_confidence, encode_words, prompt_key

    agree, trace, runs = [], [], []
    per_prompt: dict[str, str] = {}
    confidence: dict[str, str] = {}
    answer: dict[str, int] = {}
    eos = set(getattr(target, "eos_token_ids", ()) or ())
    for i, p in enumerate(prompts, 1):
        # Keyed as a synthetic session on the same prompt text will key it (lab.models.synthetic).
        key = prompt_key(encode_words(p["prompt"], int(target.vocab_size)))
        ids = target.encode_prompt(p["prompt"], p.get("template", "chat"))     # as the edge encodes it
        # The target's greedy continuation, one token per forward.
        s = target.new_session()
        cont = [int(np.argmax(s.prefill(ids)))]
        while len(cont) < max_new_tokens and cont[-1] not in eos:
            cont.append(int(np.argmax(s.extend([cont[-1]])[-1])))
        runs.append((list(map(int, ids)), cont))
        # The draft, teacher-forced along the target's path: does its argmax agree at each position?
        d = draft.new_session()
        dl = d.prefill(ids)
        preds = [int(np.argmax(dl))]
        sure = [spec.token_confidence(dl, preds[0])]       # its probability of its own token (a confidence stop's)
        for tok in cont[:-1]:
            lg = d.extend([tok])
            preds.append(int(np.argmax(lg[-1])))
            sure.append(spec.token_confidence(lg[-1], preds[-1]))
        mine = [a == b for a, b in zip(preds, cont)]
        # The continuation stops at the target's EOS, as a query on this prompt does: its length is kept.
        end = len(cont) if cont[-1] in eos else None
        if end is not None:
            answer[key] = end
        agree += mine
        trace += agreement_trace(mine)
        per_prompt[key] = "".join("01"[a] for a in mine)
        confidence[key] = encode_confidence(sure)
        out(f"  [{i}/{len(prompts)}] {p['id']:14s} prompt {len(ids)} tokens, agreement "
            f"{sum(mine)}/{len(mine)}" + ("" if end is None else f" (the answer ends at token {end})"))
    m = {"alpha": float(np.mean(agree)), "trace": trace, "prompt_agreement": per_prompt, "prompt_answer": answer,
         "prompt_confidence": confidence, "positions": len(agree), "runs": runs}
    return m


def time_target(target, runs: list[tuple[list[int], list[int]]]) -> dict:
    """The target's prefill per prompt token (median over prompts) and t_verify(n) for n in VERIFY_NS:
    n tokens of each prompt's continuation after its prompt, REPEATS times, rolled back after each;
    medians, and the line a + b·n through them."""
    prefill, verify = [], {n: [] for n in VERIFY_NS}
    for ids, cont in runs:
        s = target.new_session()
        ms, _ = _ms(lambda: s.prefill(ids))
        prefill.append(ms / len(ids))
        for n in VERIFY_NS:
            for _ in range(REPEATS):
                ms, _ = _ms(lambda: s.extend((cont * (n // len(cont) + 1))[:n]))
                verify[n].append(ms)
                s.rollback(len(ids))
    med = [statistics.median(verify[n]) for n in VERIFY_NS]
    a, b = fit_line(VERIFY_NS, med)
    return {"prefill_ms_per_token": statistics.median(prefill), "verify_a_ms": a, "verify_b_ms": b,
            "verify_ms_by_n": dict(zip(VERIFY_NS, med))}


def time_draft(draft, runs: list[tuple[list[int], list[int]]]) -> dict:
    """The draft's prefill per prompt token and t_draft: one forward of one token, along the target's
    continuation (as the edge drafts; the tokens do not change its cost); medians."""
    prefill, steps = [], []
    for ids, cont in runs:
        d = draft.new_session()
        ms, _ = _ms(lambda: d.prefill(ids))
        prefill.append(ms / len(ids))
        for tok in cont[:-1]:
            ms, _ = _ms(lambda: d.extend([tok]))
            steps.append(ms)
    return {"t_draft_ms": statistics.median(steps), "draft_prefill_ms_per_token": statistics.median(prefill)}


TIME_ALONE_TIMEOUT_S = 1800     # loading one model and timing it: 1–3 min on the hosts measured


def _time_role(conn, models: str, role: str, dtype: str, threads: int, kernels: str | None, runs) -> None:
    """time_alone's child: load `role` as its node does, warm it up, time it, send back the figures
    (or the error).  Ctrl-C is the parent's to handle: it stops this process."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from lab.models import warm_up
        from lab.models.select import load_role
        model = load_role(models, role, dtype=dtype, threads=threads, kernels=kernels)
        warm_up(model)
        conn.send(("ok", (time_target if role == "target" else time_draft)(model, runs)))
    except Exception as e:      # noqa: BLE001 — reported by the parent, by name
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def time_alone(models: str, role: str, runs, dtype: str, threads: int, kernels: str | None = None,
               timeout_s: float = TIME_ALONE_TIMEOUT_S) -> dict:
    """time_target or time_draft in a fresh process holding that one model, as its node's process does.
    In the process that holds both, the target's step read 290–310 ms where the cloud node's read
    231–241 (docs/MEASUREMENTS.md), and the simulator, given that profile, predicted cloud-only on
    wan-50ms 17.6 % slow.  The child is stopped on every way out: a timeout, an error, Ctrl-C."""
    import multiprocessing

    from lab.models import ModelError
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_time_role, args=(theirs, models, role, dtype, threads, kernels, runs),
                        name=f"sdl-profile-{role}", daemon=True)
    child.start()
    theirs.close()
    try:
        if not mine.poll(timeout_s):
            raise ModelError(f"profile: timing the {role} in its own process took over {timeout_s:.0f} s "
                             "(is another model run or benchmark using the cores?)")
        try:
            status, value = mine.recv()
        except EOFError:
            child.join(5)
            raise ModelError(f"profile: the process timing the {role} died (exit code {child.exitcode}); "
                             "out of memory?") from None
        if status != "ok":
            raise ModelError(f"profile: timing the {role} failed: {value}")
        return value
    finally:
        mine.close()
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join(5)


def cycle_compute(record: dict):
    """(n, the cloud's verify ms, the edge's ms per draft forward …) for each measured cycle of one
    query record: n = K + 1 (split) or 1 (cloud-only); the query's first cycle (it holds the prefills)
    and cycles without a verify are left out.  The drafting is a sequential cycle's over its K drafts
    where the block before was not accepted whole (after one that was, the first forward also took in
    its last draft and bonus, in one forward or, an int8 draft, two: lab/core/decoding.py feed_logits);
    a pipelined one's, the block drafted ahead (hidden_ms over its guessed bonus and K drafts) and the
    one drafted after a refuted guess (edge_ms over K), where there was one."""
    split = record.get("placement") == "split"
    pipelined = record["strategy"].startswith("pipelined")
    ks = record["k_per_cycle"]
    hidden = record.get("hidden_ms_per_cycle") or [0.0] * len(ks)
    accepted = record.get("accepted_per_cycle") or [0] * len(ks)
    cycles = zip(ks, record["cloud_compute_ms_per_cycle"], record["edge_compute_ms_per_cycle"], hidden)
    for i, (k, cloud_ms, edge_ms, hidden_ms) in enumerate(cycles):
        if i == 0 or cloud_ms is None or (split and not k):
            continue
        if not split:
            drafts = []
        elif not pipelined:
            caught_up = ks[i - 1] > 0 and accepted[i - 1] == ks[i - 1]
            drafts = [] if edge_ms is None or caught_up else [edge_ms / k]
        else:
            drafts = ([hidden_ms / (k + 1)] if hidden_ms else []) + ([edge_ms / k] if edge_ms else [])
        yield (k + 1 if split else 1), float(cloud_ms), [float(d) for d in drafts]


def compute_from_run(records: list[dict], strategy: str | None = None) -> dict:
    """t_draft and t_verify(n) = a + b·n as the nodes computed them in a lab run: every measured
    cycle (cycle_compute) of the split strategies (fixed-k, the adaptive ones) and of cloud-only.
    Co-located cycles are left out (the cloud's compute there is two models'), so are queries the
    edge finished alone.  Pipelined cycles are left out too unless `strategy` names one: the cloud
    verifies while the edge drafts ahead, and on a host whose nodes share cores or caches each then
    runs slower than alone (docs/MEASUREMENTS.md) — they time the pipelined layout, not the pair.
    `strategy`: that strategy's cycles only."""
    from lab.models import ModelError
    verify: dict[int, list[float]] = {}
    draft: list[float] = []
    for r in records:
        if r.get("warmup") or r.get("edge_fallback") or r.get("placement") not in ("split", "cloud"):
            continue
        if (r["strategy"] != strategy) if strategy else r["strategy"].startswith("pipelined"):
            continue
        for n, cloud_ms, drafts in cycle_compute(r):
            verify.setdefault(n, []).append(cloud_ms)
            draft += drafts
    if len(verify) < 2 or not draft:
        which = f"strategy {strategy}" if strategy else "run"
        raise ModelError(f"--from-run: the {which} needs measured cycles of at least two verify sizes and of a "
                         f"split strategy (it has n = {sorted(verify) or 'none'}); run e.g. `scenario lan "
                         "--strategies cloud-only,fixed-k:1,fixed-k:3,fixed-k:5`")
    ns = sorted(verify)
    med = [statistics.median(verify[n]) for n in ns]
    a, b = fit_line(ns, med, [len(verify[n]) for n in ns])
    return {"t_draft_ms": statistics.median(draft), "verify_a_ms": a, "verify_b_ms": b,
            "verify_ms_by_n": dict(zip(ns, med)), "cycles_by_n": {n: len(verify[n]) for n in ns},
            "draft_cycles": len(draft)}


# A verify size a run met this often is simulated at its own median, not the line's value there.
VERIFY_BY_N_MIN_CYCLES = 5


def well_measured(m: dict) -> tuple[tuple[int, float], ...]:
    """compute_from_run's t_verify(n) at the sizes met at least VERIFY_BY_N_MIN_CYCLES times."""
    return tuple((n, ms) for n, ms in m["verify_ms_by_n"].items() if m["cycles_by_n"][n] >= VERIFY_BY_N_MIN_CYCLES)


def profile_from_run(run_dir: str | Path, out_path: str | None = None, out: Callable[[str], None] = print) -> int:
    """`profile --from-run`: this host's profile of the run's pair, its compute times replaced by the
    run's own (compute_from_run), its agreement kept.  Written where `lab profile` writes it (or --out)."""
    import json

    from lab.models import ModelError
    from lab.models.synthetic import host_profile_path, load_profile, profile_provenance, save_profile
    from lab.results import read_jsonl

    run = Path(run_dir)
    try:
        meta = json.loads((run / "meta.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"--from-run {run}: no readable meta.json ({e}); give a `lab scenario` results folder") from None
    models, dtype = meta.get("models"), meta.get("dtype")
    if not models or str(models).startswith("synthetic"):
        raise ModelError(f"--from-run {run}: a run of a real pair is needed (this one ran {models!r})")
    host = host_profile_path(models, dtype, (meta.get("options") or {}).get("draft_kernels"))
    if not host.is_file():
        raise ModelError(f"--from-run: no profile of this host for the run's pair to take the agreement from "
                         f"({host}); run `python -m lab profile` first")
    m = compute_from_run(read_jsonl(run / "queries.jsonl"))
    base = load_profile(str(host))
    prof = replace(base, t_draft_ms=round(m["t_draft_ms"], 2), verify_a_ms=round(m["verify_a_ms"], 2),
                   verify_b_ms=round(m["verify_b_ms"], 3),
                   verify_ms_by_n=tuple((n, round(ms, 2)) for n, ms in well_measured(m)) or None)
    out(f"{run.name}: {m['draft_cycles']} split cycles; t_verify(n) measured by the cloud node vs the fit a + b·n "
        f"(the profile keeps the sizes met at least {VERIFY_BY_N_MIN_CYCLES} times):")
    for n, ms in m["verify_ms_by_n"].items():
        out(f"  n={n:2d}  {ms:7.1f} ms ({m['cycles_by_n'][n]:3d} cycles)   fit {m['verify_a_ms'] + m['verify_b_ms'] * n:7.1f} ms   "
            f"the profile before {base.verify_ms(n):7.1f} ms")
    out(f"t_draft {prof.t_draft_ms:.1f} ms/token (the profile before {base.t_draft_ms:.1f})")
    provenance = profile_provenance(host)
    provenance["compute"] = {"measured_by": f"python -m lab profile --from-run {run}", "run": str(run.resolve()),
                             "scenario": (meta.get("scenario") or {}).get("name"),
                             "verify_ms_by_n": {int(n): round(v, 2) for n, v in m["verify_ms_by_n"].items()},
                             "cycles_by_n": m["cycles_by_n"],
                             "before": {"t_draft_ms": base.t_draft_ms, "verify_a_ms": base.verify_a_ms,
                                        "verify_b_ms": base.verify_b_ms}}
    path = Path(out_path) if out_path else host
    save_profile(prof, path, provenance)
    out(f"\nwrote {path} (compute as the nodes ran it; agreement kept)")
    return 0


def profile_path(kind: str, out_path: str | None = None, replace_shipped: bool = False,
                 results_base: Path | None = None, models: str = "embedded", dtype: str = "float32",
                 draft_kernels: str | None = None) -> Path:
    """Where the profile goes: --out, the shipped profile (only when asked to replace it), or this
    host's profile in the model cache (keyed by CPU, dtype and the draft's kernels) — a measurement never overwrites a
    tracked file by default.  `results_base` (tests): a new results folder instead of the cache."""
    from lab.models.synthetic import PROFILE_DIR, host_profile_path
    from lab.results import new_run_dir

    name = "embedded-cpu.yaml" if kind == "embedded" else "measured.yaml"
    if out_path:
        return Path(out_path)
    if replace_shipped:
        return PROFILE_DIR / name
    if results_base is not None:
        return new_run_dir("profile", results_base) / name
    path = host_profile_path(models, dtype, draft_kernels)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def profile_main(models: str = "embedded", out_path: str | None = None, max_new_tokens: int = 48,
                 prompts_file: str | None = None, dtype: str = "auto", limit: int | None = None,
                 out: Callable[[str], None] = print, replace_shipped: bool = False,
                 results_base: Path | None = None, threads: int | None = None,
                 acceptance_only: bool = False, draft_kernels: str | None = None) -> int:
    from lab.affinity import DEFAULT_THREADS_PER_NODE
    from lab.models.select import load_role, parse_models, prepare
    from lab.models.synthetic import (PROFILE_DIR, Profile, load_profile, nasd_table_path, profile_provenance,
                                      save_profile)
    from lab.prompts import load_prompts

    from lab.models import cpu
    from lab.models.select import resolved

    kind, _, _ = parse_models(models)
    dtype = resolved(dtype)
    if kind == "synthetic":
        out("error: profile measures a real pair (embedded or DRAFT_ID,TARGET_ID); a synthetic pair "
            "already is a profile")
        return 2
    path = profile_path(kind, out_path, replace_shipped, results_base, models, dtype, draft_kernels)
    if acceptance_only and not path.is_file():
        out(f"error: --acceptance-only updates an existing profile and there is none at {path}: run "
            f"`python -m lab profile` first (or name one with --out)")
        return 2
    prepare(models, dtype=dtype)
    prompts = load_prompts(prompts_file)[:limit] if limit else load_prompts(prompts_file)
    t0 = time.monotonic()
    threads = threads or DEFAULT_THREADS_PER_NODE
    what = "agreement only" if acceptance_only else f"t_verify(n) for n in {', '.join(map(str, VERIFY_NS))}"
    out(f"profile: {models} ({dtype}, {threads} torch thread(s) per model, as the nodes run), {len(prompts)} prompts × "
        f"{max_new_tokens} tokens; {what}")
    draft = load_role(models, "draft", dtype=dtype, threads=threads, kernels=draft_kernels)
    target = load_role(models, "target", dtype=dtype, threads=threads)
    kernels = {"draft_kernels": getattr(draft, "kernels", None), "target_kernels": getattr(target, "kernels", None)}
    # how the draft takes a fully accepted block's catch-up, as it is measured here: in one forward or two
    catch_up = 2 if getattr(draft, "rows_interact", False) else 1
    if kernels["draft_kernels"]:
        out(f"draft: {kernels['draft_kernels']}; target: {kernels['target_kernels']}")
    m = measure_pair(draft, target, prompts, max_new_tokens, out)
    vocab = int(target.vocab_size)
    if not acceptance_only:
        del draft, target           # each is timed alone in a process of its own, as its node runs it
        for role in ("target", "draft"):
            out(f"timing the {role} in a process of its own (as its node runs it) …")
            m.update(time_alone(models, role, m["runs"], dtype, threads, draft_kernels if role == "draft" else None))
    acceptance = {"alpha": round(m["alpha"], 4), "trace": tuple(m["trace"]) or None,
                  "prompt_agreement": tuple(m["prompt_agreement"].items()) or None,
                  "prompt_answer": tuple(m["prompt_answer"].items()) or None,
                  "prompt_confidence": tuple(m["prompt_confidence"].items()) or None,
                  "draft_catch_up_forwards": catch_up}
    measured = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "prompts": prompts_file or "built-in",
                "max_new_tokens": max_new_tokens}
    if acceptance_only:
        prof = replace(load_profile(str(path)), **acceptance)
        provenance = profile_provenance(path)
        # the agreement's own conditions: the compute kept beside it may come from another host
        provenance["acceptance"] = {"measured_by": "python -m lab profile --acceptance-only", "dtype": dtype,
                                    **kernels, **{k: cpu.describe()[k] for k in ("cpu_model", "cpu_flags")},
                                    **measured}
        out(f"alpha {prof.alpha:.3f} over {m['positions']} positions (trace of {len(prof.trace or ())} runs, "
            f"{len(m['prompt_agreement'])} prompts); compute times kept from {path}")
    else:
        prof = Profile(t_draft_ms=round(m["t_draft_ms"], 2), verify_a_ms=round(m["verify_a_ms"], 2),
                       verify_b_ms=round(m["verify_b_ms"], 3),
                       prefill_ms_per_token=round(m["prefill_ms_per_token"], 3), vocab=vocab,
                       verify_ms_by_n=tuple((n, round(ms, 2)) for n, ms in m["verify_ms_by_n"].items()), **acceptance)
        out("\nt_verify(n), measured vs the fit a + b·n (the profile keeps the measured; the line's slope goes past them):")
        for n, ms in m["verify_ms_by_n"].items():
            fit = prof.verify_a_ms + prof.verify_b_ms * n
            out(f"  n={n:2d}  {ms:7.1f} ms   fit {fit:7.1f} ms   residual {ms - fit:+6.1f} ms")
        out(f"t_draft {prof.t_draft_ms:.1f} ms/token; prefill {prof.prefill_ms_per_token:.2f} ms/token (target), "
            f"{m['draft_prefill_ms_per_token']:.2f} (draft); alpha {prof.alpha:.3f} over {m['positions']} positions "
            f"(trace of {len(prof.trace or ())} runs)")
        provenance = {"measured_by": "python -m lab profile", "models": models, "dtype": dtype,
                      "threads_per_model": threads, **kernels,
                      "host": platform.node(), "cpu": platform.processor() or platform.machine(),
                      "cpu_model": cpu.describe()["cpu_model"], "cpu_flags": cpu.describe()["cpu_flags"],
                      "isa_cap": cpu.isa_cap(), "torch_capability": cpu.torch_capability(),
                      "host_key": cpu.host_key(dtype), **measured,
                      "draft_prefill_ms_per_token": round(m["draft_prefill_ms_per_token"], 3),
                      "target_token_ms": round(prof.verify_ms(1), 2)}
    save_profile(prof, path, provenance)
    back = load_profile(str(path))
    if replace(back, name="custom", source="") != replace(prof, name="custom", source=""):
        out(f"error: {path} does not read back as the profile written")
        return 1
    use = path.stem if path.parent.resolve() == PROFILE_DIR.resolve() else str(path)
    # nasd's RTT → K table goes beside the profile, calibrated on it (seconds, in the simulator).  A
    # table left from the profile just replaced would steer nasd by the old times and agreement (on
    # this project's AVX2 host once −40 % at 200 ms); none at all leaves the edge's nasd to the shipped one.
    from lab.calibrate import calibrate_main
    table = nasd_table_path(str(path))
    out(f"\n{'re' if table.is_file() else ''}calibrating nasd's table for this profile (python -m lab calibrate):")
    calibrate_main(str(path), emit=out)                 # the defaults of `python -m lab calibrate`
    out(f"\nwrote {path} in {time.monotonic() - t0:.0f} s (use: --models synthetic:{use})")
    return 0
