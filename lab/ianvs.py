"""`report --export ianvs`: our points as KubeEdge Ianvs rank tables.

Ianvs's cloud-edge speculative decoding example writes rank/all_rank.csv: index label `rank`
(1-based), then IANVS_COLUMNS — latencies in seconds, Throughput in tokens/s, Internal Token
Latency = (E2E − TTFT)/(tokens − 1), Acceptance Rate a fraction — ordered by TTFT ascending, then
Throughput descending, and drafter-inference_mode one of edge-only, cloud-only, collaboration.
Ianvs ranks one network setting at a time (its network is a sleep), so we write one table per
network profile (link × payload × source): <out>/ianvs/<source>/<point>/rank/all_rank.csv, our extra
columns after theirs.  Values are medians over runs of the summary rows (`summary_rows` names them).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lab.core.strategies import fixed_k
from lab.verdict import placement

IANVS_COLUMNS = ["algorithm", "Time to First Token", "Throughput", "Internal Token Latency", "End-to-End Latency",
                 "Acceptance Rate", "dataset_processor-sample_size", "drafter-inference_mode", "drafter-model",
                 "verifier-model", "drafter-draft_tokens_per_step"]
EXTRA_COLUMNS = ["rtt_ms", "rate_mbit", "jitter_ms", "loss_pct", "payload", "source",
                 "End-to-End Latency P95", "End-to-End Latency P99", "tcp_retrans_segs", "summary_rows"]


def _mode(strategy: str) -> str:
    p = placement(strategy)
    return "edge-only" if p == "edge" else "cloud-only" if p == "cloud" else "collaboration"


def _models(models: str) -> tuple[str, str]:
    """(drafter, verifier) from a --models value."""
    if "," in str(models):
        d, _, t = str(models).partition(",")
        return d, t
    return f"{models}:draft", f"{models}:target"


def _tokens(r) -> float:
    """Tokens per query: the sweep's tokens_p50, else what tokens/s, TTFT and E2E imply."""
    if pd.notna(r.get("tokens_p50", float("nan"))):
        return r["tokens_p50"]
    return 1 + r["tokens_per_s_p50"] * (r["e2e_ms_p50"] - r["ttft_ms_p50"]) / 1e3


def rank_table(points: pd.DataFrame) -> pd.DataFrame:
    """One network profile's rows (medians over runs) → Ianvs's table, index `rank` from 1."""
    rows = []
    for _, r in points.iterrows():
        n = _tokens(r)
        ttft, e2e = r["ttft_ms_p50"] / 1e3, r["e2e_ms_p50"] / 1e3
        drafter, verifier = _models(r.get("models", ""))
        mode = _mode(r["strategy"])
        fixed = fixed_k(r["strategy"])
        k = str(fixed) if fixed is not None else (
            round(r["k_mean"], 2) if mode == "collaboration" and pd.notna(r.get("k_mean")) else "")
        rows.append({
            "algorithm": r["strategy"], "Time to First Token": round(ttft, 4),
            "Throughput": round(r["tokens_per_s_p50"], 2),
            "Internal Token Latency": round((e2e - ttft) / (n - 1), 4) if n > 1 else float("nan"),
            "End-to-End Latency": round(e2e, 4), "Acceptance Rate": round(r["acceptance"], 3)
            if pd.notna(r["acceptance"]) else "",
            "dataset_processor-sample_size": int(r["queries"]), "drafter-inference_mode": mode,
            "drafter-model": drafter if mode != "cloud-only" else "", "verifier-model": verifier if mode != "edge-only" else "",
            "drafter-draft_tokens_per_step": k,
            "rtt_ms": r["rtt_ms"], "rate_mbit": r["rate_mbit"], "jitter_ms": r["jitter_ms"], "loss_pct": r["loss_pct"],
            "payload": r["payload"], "source": r["source"], "End-to-End Latency P95": round(r["e2e_ms_p95"] / 1e3, 4),
            "End-to-End Latency P99": round(r["e2e_ms_p99"] / 1e3, 4), "tcp_retrans_segs": r["tcp_retrans_segs"],
            "summary_rows": r["summary_rows"]})
    df = pd.DataFrame(rows, columns=IANVS_COLUMNS + EXTRA_COLUMNS)
    df = df.sort_values(["Time to First Token", "Throughput"], ascending=[True, False], kind="stable")
    df.index = pd.RangeIndex(1, len(df) + 1, name="rank")
    return df


def export(points: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Write one all_rank.csv per source × network profile; return the paths."""
    written = []
    for (src, rtt, rate, jit, loss, pay), g in points.groupby(
            ["source", "rtt_ms", "rate_mbit", "jitter_ms", "loss_pct", "payload"], sort=True):
        name = f"rtt{rtt:g}ms-{rate:g}mbit" + (f"-j{jit:g}" if jit else "") + (f"-l{loss:g}" if loss else "") \
            + ("" if pay == "tokens" else f"-{str(pay).replace(':', '')}")
        d = Path(out_dir) / "ianvs" / src / name / "rank"
        d.mkdir(parents=True, exist_ok=True)
        rank_table(g).to_csv(d / "all_rank.csv", index_label="rank")
        written.append(d / "all_rank.csv")
    return written
