"""`python -m lab calibrate`: NASD's RTT → K table, from a simulator sweep over the profile in use.

Per RTT bucket (a stable link at `rate_mbit`), every fixed K = 1..k_max, cloud-only and edge-only are
simulated with the profile and the default workload, over every built-in prompt; a row keeps each
one's tokens/s pooled over the measured queries (the workload's rate, what NASD maximises:
lab.core.cycle.pooled_tokens_per_s), and the network time a cycle measured there — what NASD
compares its own measurement with, so the row a cycle picks is the one whose link it saw (the
measured time includes serialization, so a slow link looks like a longer RTT, which is how NASD
meets bandwidth).  The best K of a row, and where cloud-only (the lossless fallback) overtakes it —
the reversal — follow.

    python -m lab calibrate --models synthetic:gpu-orin-3090ti     # → lab/models/profiles/<name>.nasd.json

`synthetic:embedded-cpu` means this host's measured profile when `lab profile` wrote one (as for `sim`),
and its table then goes beside it in the cache, where the edge's nasd finds it for the embedded pair.

Where the profile measured the draft's confidence, nasd drafts with the confidence stop by default
(strategies.ADAPTIVE_STOP) and its K is a cap: every K is then also simulated as a cap under that
stop, and the longest cap under each stop of STOP_GRID; the table gains `stop`, each row's `stopped`
(the best cap and the stop to draft it with, tokens/s of every cap and of every stop, the mean block
drafted) and the transitions and reversal under it (`stopped`).  Without measured confidence the
table is as before.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from lab.core.cycle import pooled_tokens_per_s

# The stops nasd may draft the longest cap with, beside ADAPTIVE_STOP: one more draft pays while the
# chance that the block is still accepted exceeds tokens/s × t_draft, so the stop worth drafting to
# falls as the RTT lowers tokens/s (docs/MEASUREMENTS.md, "The stop by RTT").
STOP_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
RTT_BUCKETS_MS = (0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 60, 70, 80, 90, 100, 110, 120, 140, 160, 180,
                  200, 250, 300, 400, 500, 750, 1000)


def calibrate(profile: str, rate_mbit: float = 100.0, k_max: int = 20, link_model: str = "tcp",
              rtts=RTT_BUCKETS_MS, queries: int | None = None) -> dict:
    """The table document: rows per RTT bucket, the transitions of K*, the reversal, provenance."""
    from lab.core.strategies import ADAPTIVE_STOP, NasdTable
    from lab.models.synthetic import confidence_measured, load_profile
    from lab.prompts import load_prompts
    from lab.results import git_commit
    from lab.sim.simulator import ComputeProfile, simulate
    from lab.sweep import GridPoint

    # Every prompt once (after the warm-up query) by default: a profile measured per prompt accepts
    # differently on each, and a table fitted to the default workload's three would be fitted to them.
    queries = queries or len(load_prompts(None))
    # Where the profile measured the draft's confidence NASD drafts with the confidence stop unless
    # told otherwise (strategies.ADAPTIVE_STOP): its K is then a cap, calibrated the way it is played,
    # beside the rows without the stop (nasd:stop=0; and K* by RTT as the seeds define it).
    stop = ADAPTIVE_STOP if confidence_measured(load_profile(profile)) else None
    split = {k: f"fixed-k:{k}" for k in range(1, k_max + 1)}
    capped = {k: f"fixed-k:{k},stop={stop:g}" for k in range(1, k_max + 1)} if stop is not None else {}
    by_stop = {p: capped[k_max] if p == stop else f"fixed-k:{k_max},stop={p:g}" for p in STOP_GRID} if capped else {}
    cands = list(split.values()) + list(capped.values()) + [c for c in by_stop.values() if c not in capped.values()] \
        + ["cloud-only", "edge-only"]
    rows, t0 = [], time.perf_counter()
    for rtt in rtts:
        sc = GridPoint(rtt, rate_mbit).scenario(cands)
        recs: dict[str, list[dict]] = {c: [] for c in cands}
        net: dict[str, list[float]] = {c: [] for c in cands}
        drafted: dict[str, list[int]] = {c: [] for c in cands}
        for rec, _ in simulate(sc, cands, profile, queries=queries, seed=0, link_model=link_model):
            if rec["warmup"]:
                continue
            recs[rec["strategy"]].append(rec)
            net[rec["strategy"]].extend(rec["network_ms_per_cycle"])
            drafted[rec["strategy"]].extend(k for k in rec["k_per_cycle"] if k > 0)
        med = {c: pooled_tokens_per_s(v, empty=0.0) for c, v in recs.items()}
        by_k = {k: med[split[k]] for k in range(1, k_max + 1)}
        best = max(by_k, key=lambda k: (by_k[k], -k))
        rows.append({"rtt_ms": rtt, "network_ms": round(statistics.median(net[split[best]]), 3),
                     "k": best, "split_tokens_per_s": round(by_k[best], 4),
                     "tokens_per_s_by_k": {str(k): round(v, 4) for k, v in by_k.items()},
                     "cloud_tokens_per_s": round(med["cloud-only"], 4),
                     "edge_tokens_per_s": round(med["edge-only"], 4)})
        if capped:
            # the choice nasd makes from this row (NasdTable.best), on the values the table keeps
            by_cap = {k: round(med[name], 4) for k, name in capped.items()}
            tps_stop = {p: round(med[name], 4) for p, name in by_stop.items()}
            cap, p, tps = NasdTable.best(by_cap, tps_stop, stop, 1, k_max)
            name = capped[cap] if p == stop else by_stop[p]
            rows[-1]["stopped"] = {"k": cap, "stop": p, "split_tokens_per_s": tps,
                                   "drafted_mean": round(statistics.fmean(drafted[name]), 2) if drafted[name] else 0.0,
                                   "tokens_per_s_by_k": {str(k): v for k, v in by_cap.items()},
                                   "tokens_per_s_by_stop": {f"{q:g}": v for q, v in tps_stop.items()}}
    prof = ComputeProfile.of(profile)
    under = {}
    if capped:
        stopped = [{**r, **r["stopped"]} for r in rows]
        under = {"stop": stop, "stopped": {"transitions": transitions(stopped),
                                           "stop_transitions": transitions(stopped, "stop"),
                                           "reversal": reversal(stopped)}}
    return {"profile": prof.name, **under, "rows": rows, "transitions": transitions(rows), "reversal": reversal(rows),
            "provenance": {"command": "python -m lab calibrate " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["calibrate"] else "lab.calibrate.calibrate()",
                           "profile": {**{k: getattr(prof, k) for k in ("t_draft_ms", "verify_a_ms", "verify_b_ms",
                                                                        "prefill_ms_per_token", "alpha", "vocab")},
                                       **({"verify_ms_by_n": dict(prof.verify_by_n)} if prof.verify_by_n else {})},
                           "rate_mbit": rate_mbit, "k_max": k_max, "link_model": link_model,
                           "queries": queries, "git_commit": git_commit(),
                           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "wall_s": round(time.perf_counter() - t0, 2)}}


def transitions(rows: list[dict], key: str = "k") -> list[dict]:
    """Where K* (or the row's `key`: the stop) changes between consecutive buckets:
    [{from_<key>, to_<key>, rtt_ms: (below, at)}]."""
    out = []
    for a, b in zip(rows, rows[1:]):
        if b[key] != a[key]:
            out.append({f"from_{key}": a[key], f"to_{key}": b[key], "rtt_ms": [a["rtt_ms"], b["rtt_ms"]]})
    return out


def reversal(rows: list[dict]) -> dict:
    """The first bucket from which the fallback beats the best split K, for each fallback (None: never)."""
    out = {}
    for fb in ("cloud", "edge"):
        at = next((r["rtt_ms"] for r in rows if r[f"{fb}_tokens_per_s"] > r["split_tokens_per_s"]), None)
        out[fb] = at
    return out


def format_table(doc: dict) -> str:
    stop = doc.get("stop")
    lines = [f"NASD table for synthetic:{doc['profile']} ({doc['provenance']['rate_mbit']:g} Mbit/s, "
             f"{doc['provenance']['link_model']} link model)"
             + (f"; 'stop': K as a cap under the confidence stop P (default {stop:g}), as nasd plays it on "
                f"this profile, and the mean block it drafts" if stop is not None else ""),
             f"{'RTT ms':>7} {'net ms':>8} {'K*':>3} {'split tok/s':>11}"
             + (f" {'stop K*':>7} {'P':>5} {'block':>5} {'tok/s':>7}" if stop is not None else "")
             + f" {'cloud tok/s':>11} {'edge tok/s':>10}"]
    for r in doc["rows"]:
        s = r.get("stopped")
        best = max(r["split_tokens_per_s"], s["split_tokens_per_s"] if s else 0.0)
        mark = "  ← cloud wins" if r["cloud_tokens_per_s"] > best else ""
        lines.append(f"{r['rtt_ms']:7g} {r['network_ms']:8.1f} {r['k']:3d} {r['split_tokens_per_s']:11.2f}"
                     + (f" {s['k']:7d} {s['stop']:5g} {s['drafted_mean']:5.1f}"
                        f" {s['split_tokens_per_s']:7.2f}" if s else "")
                     + f" {r['cloud_tokens_per_s']:11.2f} {r['edge_tokens_per_s']:10.2f}{mark}")
    for label, part in (("", doc), ("with the stop: ", doc.get("stopped"))):
        if not part:
            continue
        tr = ", ".join(f"K* {t['from_k']}→{t['to_k']} between {t['rtt_ms'][0]:g} and {t['rtt_ms'][1]:g} ms"
                       for t in part["transitions"]) or "K* constant"
        rv = part["reversal"]
        if part.get("stop_transitions") is not None:
            tr += "; " + (", ".join(f"P {t['from_stop']:g}→{t['to_stop']:g} between {t['rtt_ms'][0]:g} and "
                                    f"{t['rtt_ms'][1]:g} ms" for t in part["stop_transitions"]) or "P constant")
        lines += [f"{label}transitions: {tr}",
                  f"{label}reversal: cloud-only from {rv['cloud']} ms, edge-only from {rv['edge']} ms (None: never in range)"]
    return "\n".join(lines)


def calibrate_main(profile: str, out: str | None = None, rate_mbit: float = 100.0, link_model: str = "tcp",
                   queries: int | None = None, emit: Callable[[str], None] = print) -> Path:
    from lab.models.synthetic import nasd_table_path
    doc = calibrate(profile, rate_mbit=rate_mbit, link_model=link_model, queries=queries)
    path = Path(out) if out else nasd_table_path(profile)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    emit(format_table(doc))
    emit(f"\n{path} ({doc['provenance']['wall_s']} s)")
    return path
