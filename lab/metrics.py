"""Per-query records → the numbers a reader compares: TTFT, tokens/s, E2E, α, overhead.

A query record (one line of queries.jsonl, written by the edge node or the
simulator) carries per-cycle lists; `summarize` turns the records of one run
into one row per strategy (the columns of summary.csv).  Warm-up queries are
kept in the files, marked, and left out of every statistic.

    tokens/s      decode throughput after the first token: (n_tokens − 1) / (e2e − ttft), per query
                  (its P50/P95/P99), and pooled over the queries, Σ (n − 1) / Σ (e2e − ttft) — the
                  workload's rate, what adaptive K is judged by (lab.core.cycle.pooled_tokens_per_s)
    acceptance α  accepted draft tokens / drafted tokens, over all cycles with K > 0
    overhead      Σ network time / Σ cycle time (network = cycle − draft − verify compute)

A query the edge finished alone because the cloud did not answer (`edge_fallback`) is counted in
`edge_fallbacks` and left out of every other statistic: its tokens are the draft's, not the
strategy's target output.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

from lab.core.cycle import pooled_tokens_per_s


SUMMARY_COLUMNS = [
    "scenario", "strategy", "backend", "models", "queries",
    "ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99",
    "tokens_per_s_p50", "tokens_per_s_p95", "tokens_per_s_p99", "tokens_per_s_pooled",
    "e2e_ms_p50", "e2e_ms_p95", "e2e_ms_p99",
    "acceptance", "network_overhead_ratio", "cycle_network_ms_p50", "cycle_network_ms_p95",
    "bytes_per_cycle", "tcp_retrans_segs", "edge_fallbacks",
]
# pipelined:K — the share of the blocks drafted ahead (during a verify's round trip) that were used
SUMMARY_COLUMNS += ["optimistic_used"]


def percentiles(values: Iterable[float], ps=(50, 95, 99)) -> list[float]:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return [math.nan] * len(ps)
    return [float(np.percentile(arr, p)) for p in ps]


def _concat(records: list[dict], key: str) -> np.ndarray:
    return np.asarray([x for r in records for x in r.get(key, [])], dtype=float)


def acceptance(records: list[dict]) -> float:
    """Drafts accepted over drafts sent to the target, pooled over the records' cycles (NaN: none sent)."""
    k, acc = _concat(records, "k_per_cycle"), _concat(records, "accepted_per_cycle")
    drafted = k.sum() if k.size else 0.0
    return float(acc.sum() / drafted) if drafted > 0 else math.nan


def summarize_strategy(records: list[dict], *, scenario: str, strategy: str, backend: str,
                       models: str, tcp_retrans_segs: int | None = None) -> dict:
    """One summary row from the measured (non-warm-up) query records of one strategy; fallback
    queries are counted, not summarized (module docstring)."""
    measured = [r for r in records if not r.get("warmup")]
    rs = [r for r in measured if not r.get("edge_fallback")]
    row: dict = {"scenario": scenario, "strategy": strategy, "backend": backend, "models": models,
                 "queries": len(measured)}
    for name, key in (("ttft_ms", "ttft_ms"), ("tokens_per_s", "tokens_per_s"), ("e2e_ms", "e2e_ms")):
        p50, p95, p99 = percentiles(r.get(key) for r in rs)
        row.update({f"{name}_p50": p50, f"{name}_p95": p95, f"{name}_p99": p99})
    row["tokens_per_s_pooled"] = pooled_tokens_per_s(rs)
    row["acceptance"] = acceptance(rs)
    cyc = _concat(rs, "cycle_ms_per_cycle")
    net = _concat(rs, "network_ms_per_cycle")
    row["network_overhead_ratio"] = float(net.sum() / cyc.sum()) if cyc.size and cyc.sum() > 0 else math.nan
    p50, p95 = percentiles(net, (50, 95)) if net.size else (math.nan, math.nan)
    row["cycle_network_ms_p50"], row["cycle_network_ms_p95"] = p50, p95
    up, down = _concat(rs, "bytes_up_per_cycle"), _concat(rs, "bytes_down_per_cycle")
    row["bytes_per_cycle"] = float((up.sum() + down.sum()) / len(up)) if up.size else math.nan
    row["tcp_retrans_segs"] = tcp_retrans_segs if tcp_retrans_segs is not None else math.nan
    row["edge_fallbacks"] = len(measured) - len(rs)
    used = _concat(rs, "optimistic_per_cycle")                  # None (nothing drafted ahead) → NaN
    used = used[~np.isnan(used)]
    row["optimistic_used"] = float(used.mean()) if used.size else math.nan
    return row


def summarize(records: list[dict], *, scenario: str, backend: str, models: str,
              retrans_by_strategy: dict[str, int] | None = None) -> pd.DataFrame:
    """summary.csv as a DataFrame: one row per strategy, in the order strategies first appear."""
    order: list[str] = []
    for r in records:
        if r["strategy"] not in order:
            order.append(r["strategy"])
    rows = [summarize_strategy([r for r in records if r["strategy"] == s], scenario=scenario, strategy=s,
                               backend=backend, models=models,
                               tcp_retrans_segs=(retrans_by_strategy or {}).get(s))
            for s in order]
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def format_table(df: pd.DataFrame) -> str:
    """The short terminal table: what a person reads first."""
    cols = [("strategy", "strategy", "{}"), ("queries", "n", "{:d}"),
            ("ttft_ms_p50", "TTFT p50 ms", "{:.0f}"), ("tokens_per_s_p50", "tok/s p50", "{:.2f}"),
            ("tokens_per_s_pooled", "tok/s all", "{:.2f}"), ("e2e_ms_p50", "E2E p50 ms", "{:.0f}"),
            ("e2e_ms_p95", "E2E p95 ms", "{:.0f}"),
            ("acceptance", "α", "{:.2f}"), ("network_overhead_ratio", "net/cycle", "{:.0%}"),
            ("cycle_network_ms_p50", "net p50 ms", "{:.1f}"), ("tcp_retrans_segs", "retrans", "{:.0f}"),
            ("edge_fallbacks", "fallbacks", "{:d}")]
    header = [h for _, h, _ in cols]
    body = []
    for _, row in df.iterrows():
        cells = []
        for key, _, fmt in cols:
            v = row[key]
            if isinstance(v, float) and math.isnan(v):
                cells.append("–")
            else:
                cells.append(fmt.format(int(v) if fmt == "{:d}" else v))
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def fallback_note(df: pd.DataFrame) -> str | None:
    """The line under the table when some queries were finished by the edge alone, else None."""
    fb = [f"{r.strategy} {int(r.edge_fallbacks)}/{int(r.queries)}" for r in df.itertuples() if r.edge_fallbacks]
    if not fb:
        return None
    return ("fallbacks: " + ", ".join(fb) + " queries finished by the draft alone (cloud did not answer in "
            "time); left out of every other column (queries.jsonl: edge_fallback, fallback_reason)")


def token_equality(records: list[dict], reference: dict[str, list[int]]) -> tuple[list[str], list[str]]:
    """The lossless check: each measured query's output against reference[prompt_id] (the target's own
    greedy decode).  Returns (differences, skipped): a fallback query is skipped and listed, since
    its tokens after `fallback_at_token` are the draft's and say nothing about the strategy."""
    wrong, skipped = [], []
    for r in records:
        if r.get("warmup"):
            continue
        where = f"{r['strategy']} query {r['query_index']} ({r['prompt_id']})"
        if r.get("edge_fallback"):
            skipped.append(f"{where}: skipped, finished by the draft alone from token "
                           f"{r.get('fallback_at_token')} ({r.get('fallback_reason')})")
            continue
        ours, ref = r["output_token_ids"], reference[r["prompt_id"]]
        if ours != ref:
            i = next((j for j, (x, y) in enumerate(zip(ours, ref)) if x != y), min(len(ours), len(ref)))
            wrong.append(f"{where}: differs at token {i}: ours {ours[i:i + 4]}… ({len(ours)} tokens) "
                         f"vs reference {ref[i:i + 4]}… ({len(ref)})")
    return wrong, skipped
