"""Result folders → one table of rows that trace back, and the answers drawn from it.

`load(dirs)` reads sweep folders (lab/sweep.py: sweep.json + summary.csv), validation folders
(lab/validate.py: validation.csv) and single run folders (summary.csv), and keeps with every row
the file and line it came from (`summary_csv`, `summary_line`: line 1 is the header), so every
figure and table of the report names its rows.  `by_point` takes the median over runs.

The verdict: for each bandwidth (stable links: no jitter, no loss, the tokens payload), the
fastest lossless strategy per RTT (lowest median E2E P50; edge-only answers with the draft's
quality, so it is compared, not ranked), grouped into RTT ranges, and the reversal RTTs — the
first grid RTT at which the best split strategy stops beating cloud-only, and edge-only.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

KEYS = ["rtt_ms", "rate_mbit", "jitter_ms", "loss_pct", "payload"]
METRICS = ["ttft_ms_p50", "ttft_ms_p95", "ttft_ms_p99", "tokens_per_s_p50", "tokens_per_s_pooled",
           "e2e_ms_p50", "e2e_ms_p95", "e2e_ms_p99", "acceptance", "network_overhead_ratio",
           "cycle_network_ms_p50", "bytes_per_cycle", "tcp_retrans_segs", "tokens_per_cycle", "k_mean",
           "tokens_p50", "queries"]


class ReportError(Exception):
    """A folder the report cannot read; the message names it."""


@dataclass
class Folder:
    path: Path
    kind: str            # sweep | validation | run
    source: str          # lab | sim | sim-sleep (validation: lab+sim)
    rows: pd.DataFrame   # summary rows (validation: validation.csv rows), with summary_csv/summary_line
    plan: dict


def _traced(csv: Path) -> pd.DataFrame:
    df = pd.read_csv(csv)
    return df.assign(summary_csv=str(csv), summary_line=np.arange(len(df)) + 2)


def load_folder(path: str | Path) -> Folder:
    p = Path(path)
    if not p.is_dir():
        raise ReportError(f"{p}: no such folder")
    if (p / "sweep.json").exists():
        plan = json.loads((p / "sweep.json").read_text())["plan"]
        if not (p / "summary.csv").exists():
            raise ReportError(f"{p}: a sweep with no finished point yet (no summary.csv)")
        source = plan["backend"] if plan["backend"] == "lab" else \
            ("sim" if plan.get("link_model", "tcp") == "tcp" else f"sim-{plan['link_model']}")
        rows = _traced(p / "summary.csv")
        rows["payload"] = rows["payload"].fillna("tokens") if "payload" in rows else "tokens"
        return Folder(p, "sweep", source, rows.assign(source=source, folder=str(p)), plan)
    for name in ("validation.csv", "validation-rejudged.csv"):
        if (p / name).exists():
            rows = _traced(p / name)
            return Folder(p, "validation", "lab+sim", rows.assign(folder=str(p), loss_pct=_case_loss(p, rows)), {})
    if (p / "summary.csv").exists():
        meta = json.loads((p / "meta.json").read_text()) if (p / "meta.json").exists() else {}
        rows = _traced(p / "summary.csv")
        link = ((meta.get("scenario") or {}).get("link") or {}).get("uplink") or {}
        source = "sim" if (rows["backend"] == "sim").all() else "lab"
        rows = rows.assign(source=source, folder=str(p), rtt_ms=2 * float(link.get("delay_ms") or 0),
                           rate_mbit=link.get("rate_mbit"), jitter_ms=float(link.get("jitter_ms") or 0),
                           loss_pct=float(link.get("loss_pct") or 0),
                           payload=(meta.get("workload") or {}).get("payload", "tokens"), run=0)
        return Folder(p, "run", source, rows, {})
    raise ReportError(f"{p}: neither a sweep (sweep.json), a validation (validation.csv) nor a run folder (summary.csv)")


def _case_loss(base: Path, rows: pd.DataFrame) -> list[float]:
    """Each validation row's link loss, from its lab run's meta.json (the case's scenario)."""
    loss: dict[str, float] = {}
    for meta in base.glob("*/meta.json"):
        try:
            sc = json.loads(meta.read_text()).get("scenario") or {}
        except (OSError, json.JSONDecodeError):
            continue
        up = (sc.get("link") or {}).get("uplink") or {}
        if sc.get("name"):
            loss[sc["name"]] = float(up.get("loss_pct") or 0)
    return [loss.get(str(c).split(" [")[0], math.nan) for c in rows["case"]]


def load(dirs) -> list[Folder]:
    return [load_folder(d) for d in dirs]


def summary_rows(folders: list[Folder]) -> pd.DataFrame:
    """Every sweep and run row, one frame (validation rows are not summary rows)."""
    frames = [f.rows for f in folders if f.kind in ("sweep", "run")]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def by_point(rows: pd.DataFrame) -> pd.DataFrame:
    """Median over runs per source × link × strategy; `summary_rows` lists the lines it rests on."""
    if rows.empty:
        return rows
    rows = rows.assign(trace=rows["summary_csv"] + ":" + rows["summary_line"].astype(str))
    metrics = [m for m in METRICS if m in rows.columns]
    g = rows.groupby(["source"] + KEYS + ["strategy"], sort=False, dropna=False)
    out = g[metrics].median(numeric_only=True)
    out["runs"] = g.size()
    if "models" in rows:
        out["models"] = g["models"].first()
    out["summary_rows"] = g["trace"].agg(lambda t: " ".join(t))
    return out.reset_index()


def placement(strategy: str) -> str:
    from lab.core.strategies import StrategyError, make_strategy
    try:
        return make_strategy(strategy).placement
    except StrategyError:    # a strategy this checkout does not know (a newer branch's folder): by its name
        return "edge" if strategy == "edge-only" else "cloud" if strategy.startswith("cloud") else "split"


def stable(points: pd.DataFrame) -> pd.DataFrame:
    return points[(points["jitter_ms"] == 0) & (points["loss_pct"] == 0) & (points["payload"] == "tokens")]


@dataclass
class Reversal:
    last_win: float | None      # the largest grid RTT at which split still wins (before the first loss)
    first_loss: float | None    # the first grid RTT at which it no longer does
    estimate: float | None      # linear interpolation of the E2E difference between the two

    def describe(self, rtts, rival: str = "the rival") -> str:
        if self.first_loss is None:
            return f"none up to {max(rtts):g} ms (split wins at every RTT)" if self.last_win is not None else "–"
        if self.last_win is None:
            return f"never: {rival} is faster at every RTT from {min(rtts):g} ms"
        return f"{self.last_win:g}–{self.first_loss:g} ms (≈ {self.estimate:.0f})"


def reversal(curve: pd.DataFrame, rival: str) -> Reversal:
    """curve: per RTT, `split` (best split E2E) and the rival's column.  Where split stops beating it."""
    c = curve.dropna(subset=["split", rival]).sort_values("rtt_ms")
    diff = (c["split"] - c[rival]).to_numpy()        # < 0: split faster
    rtt = c["rtt_ms"].to_numpy()
    if not len(c):
        return Reversal(None, None, None)
    if diff[0] >= 0:
        return Reversal(None, float(rtt[0]), None)
    for i in range(1, len(diff)):
        if diff[i] >= 0:
            a, b = diff[i - 1], diff[i]
            est = rtt[i - 1] + (rtt[i] - rtt[i - 1]) * (-a) / (b - a) if b != a else rtt[i]
            return Reversal(float(rtt[i - 1]), float(rtt[i]), float(est))
    return Reversal(float(rtt[-1]), None, None)


def rank_link(g: pd.DataFrame) -> dict:
    """One link's rows (strategy, e2e_ms_p50; one per strategy): the fastest lossless strategy and the
    runner-up with its margin, the best split strategy, cloud-only's and edge-only's E2E.  The one
    ranking of the sweep's best.csv and of the report's verdict; the oracle is never ranked."""
    from lab.core.strategies import deployable
    g = g[g["strategy"].map(deployable)]
    pl = g["strategy"].map(placement)
    lossless = g[pl != "edge"].sort_values("e2e_ms_p50", kind="stable")
    split = g[pl == "split"].sort_values("e2e_ms_p50", kind="stable")
    cloud, edge = g[g["strategy"] == "cloud-only"]["e2e_ms_p50"], g[pl == "edge"]["e2e_ms_p50"]
    first = lossless.iloc[0] if len(lossless) else None
    second = lossless.iloc[1] if len(lossless) > 1 else None
    return {"winner": first["strategy"] if first is not None else None,
            "winner_e2e_ms": float(first["e2e_ms_p50"]) if first is not None else math.nan,
            "runner_up": second["strategy"] if second is not None else None,
            "margin_pct": (100 * (second["e2e_ms_p50"] - first["e2e_ms_p50"]) / first["e2e_ms_p50"]
                           if second is not None else math.nan),
            "best_split": split.iloc[0]["strategy"] if len(split) else None,
            "split": float(split.iloc[0]["e2e_ms_p50"]) if len(split) else math.nan,
            "cloud": float(cloud.min()) if len(cloud) else math.nan,
            "edge": float(edge.min()) if len(edge) else math.nan}


def curves(points: pd.DataFrame) -> pd.DataFrame:
    """Per source × rate × RTT on stable links: the winner, best split and its E2E, cloud-only's, edge-only's."""
    from lab.core.strategies import deployable
    ranked = stable(points)[stable(points)["strategy"].map(deployable)]     # rows the ranking rests on
    rows = []
    for (src, rate, rtt), g in ranked.groupby(["source", "rate_mbit", "rtt_ms"], sort=True):
        r = rank_link(g)
        rows.append({"source": src, "rate_mbit": rate, "rtt_ms": rtt,
                     **{k: r[k] for k in ("winner", "winner_e2e_ms", "best_split", "split", "cloud", "edge")},
                     "summary_rows": " ".join(g["summary_rows"])})
    return pd.DataFrame(rows)


def ranges(c: pd.DataFrame) -> list[tuple[float, float, str]]:
    """Consecutive RTTs with the same winner: [(from, to, winner)]."""
    out: list[list] = []
    for _, r in c.sort_values("rtt_ms").iterrows():
        if out and out[-1][2] == r["winner"]:
            out[-1][1] = r["rtt_ms"]
        else:
            out.append([r["rtt_ms"], r["rtt_ms"], r["winner"]])
    return [tuple(x) for x in out]


def verdict(points: pd.DataFrame) -> pd.DataFrame:
    """One row per source × bandwidth: winner per RTT range, the two reversals."""
    c = curves(points)
    rows = []
    for (src, rate), g in c.groupby(["source", "rate_mbit"], sort=False):
        rtts = sorted(g["rtt_ms"])
        rc, re = reversal(g, "cloud"), reversal(g, "edge")
        rows.append({"rate_mbit": rate, "source": src,
                     "winners": "; ".join(f"{a:g}{'' if a == b else f'–{b:g}'} ms: {w}" for a, b, w in ranges(g)),
                     "split_vs_cloud": rc.describe(rtts, "cloud-only"), "split_vs_edge": re.describe(rtts, "edge-only"),
                     "reversal_cloud_ms": rc.first_loss, "reversal_cloud_est_ms": rc.estimate,
                     "reversal_edge_ms": re.first_loss, "rtts": rtts})
    return pd.DataFrame(rows)


def agreement(v: pd.DataFrame, c: pd.DataFrame) -> list[dict]:
    """Lab vs simulator per bandwidth: same winner at every common RTT, reversal within one grid step."""
    out = []
    for rate in sorted(v["rate_mbit"].unique(), reverse=True):
        lab = v[(v["rate_mbit"] == rate) & (v["source"] == "lab")]
        sim = v[(v["rate_mbit"] == rate) & (v["source"] == "sim")]
        if lab.empty or sim.empty:
            continue
        lc = c[(c["rate_mbit"] == rate) & (c["source"] == "lab")].set_index("rtt_ms")["winner"]
        sc = c[(c["rate_mbit"] == rate) & (c["source"] == "sim")].set_index("rtt_ms")["winner"]
        common = sorted(set(lc.index) & set(sc.index))
        differ = [r for r in common if lc[r] != sc[r]]
        grid = common
        steps = {}
        for col in ("reversal_cloud_ms", "reversal_edge_ms"):
            a, b = lab.iloc[0][col], sim.iloc[0][col]
            if _none(a) and _none(b):
                steps[col] = 0
            elif _none(a) or _none(b):
                steps[col] = math.inf
            else:
                steps[col] = abs(_index(grid, a) - _index(grid, b))
        out.append({"rate_mbit": rate, "rtts": common, "winners_differ_at": differ,
                    "reversal_cloud_steps": steps["reversal_cloud_ms"], "reversal_edge_steps": steps["reversal_edge_ms"],
                    "agree": not differ and all(s <= 1 for s in steps.values())})
    return out


def _none(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _index(grid: list, v: float) -> int:
    return min(range(len(grid)), key=lambda i: abs(grid[i] - v)) if grid else 0
