"""`python -m lab sweep --sim`: the experiment grid in the simulator, in seconds.

Grid (BACKGROUND.md "Experiment grid"): RTT {0, 10, 25, 50, 100, 200, 500} ms
× rate {100, 10, 1} Mbit/s — 21 links — and, with `--full`, × jitter
{0, 10, 25} ms × loss {0, 1, 5} % (189 links).  Jitter is uniform ±J, the
lab's LinkSpec (BACKGROUND writes σ; ±J has σ = J/√3).  Every link runs every
strategy `--runs` times with different link seeds; each run starts with its
own warm-up query, not summarized.

Output, in results/<UTC>-sweep-sim/: `summary.csv` — one row per link ×
strategy × run, the lab's summary columns plus rtt_ms, rate_mbit, jitter_ms,
loss_pct, run — appended and flushed as each link finishes; `best.csv` — per
link, the strategy with the lowest median E2E (over runs) and its margin
over the runner-up; `meta.json`.  Only the simulator sweeps: a lab point is
`python -m lab scenario`, and `python -m lab validate` says how far the
simulator can be trusted.
"""
from __future__ import annotations

import csv
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

RTT_MS = (0, 10, 25, 50, 100, 200, 500)
RATE_MBIT = (100, 10, 1)
JITTER_MS = (0, 10, 25)
LOSS_PCT = (0, 1, 5)
STRATEGIES = ("cloud-only", "edge-only", "fixed-k:3", "fixed-k:5", "fixed-k:10", "fixed-k:15")


@dataclass(frozen=True)
class GridPoint:
    rtt_ms: float
    rate_mbit: float
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    @property
    def name(self) -> str:
        extra = (f"-j{self.jitter_ms:g}" if self.jitter_ms else "") + (f"-l{self.loss_pct:g}" if self.loss_pct else "")
        return f"grid-{self.rtt_ms:g}ms-{self.rate_mbit:g}mbit{extra}"

    def scenario(self, strategies):
        from lab.scenario import parse_scenario
        link = {"delay_ms": self.rtt_ms / 2, "rate_mbit": self.rate_mbit}
        if self.jitter_ms:
            link["jitter_ms"] = self.jitter_ms
        if self.loss_pct:
            link["loss_pct"] = self.loss_pct
        return parse_scenario({"name": self.name, "link": link, "strategies": list(strategies),
                               "description": f"grid: RTT {self.rtt_ms:g} ms, {self.rate_mbit:g} Mbit/s"
                                              f"{f', ±{self.jitter_ms:g} ms' if self.jitter_ms else ''}"
                                              f"{f', {self.loss_pct:g} % loss' if self.loss_pct else ''}"})


def grid(full: bool = False, rtt=None, rate=None, jitter=None, loss=None) -> list[GridPoint]:
    """The grid's links; an axis left None takes BACKGROUND.md's values (jitter and loss only with full)."""
    rtt = rtt if rtt is not None else RTT_MS
    rate = rate if rate is not None else RATE_MBIT
    jitter = jitter if jitter is not None else (JITTER_MS if full else (0,))
    loss = loss if loss is not None else (LOSS_PCT if full else (0,))
    return [GridPoint(*p) for p in itertools.product(rtt, rate, jitter, loss)]


def run_sweep(points: list[GridPoint], strategies=STRATEGIES, runs: int = 3, profile: str = "embedded-cpu",
              queries: int | None = None, link_model: str = "tcp", out_dir: str | None = None,
              out: Callable[[str], None] = print) -> Path:
    """Simulate every point × strategy × run; write summary.csv and best.csv; return the folder."""
    from lab import metrics
    from lab.results import Meta, new_run_dir
    from lab.sim.simulator import simulate

    run_dir = new_run_dir("sweep-sim", Path(out_dir) if out_dir else None)
    meta = Meta(run_dir, {"backend": "sim", "link_model": link_model, "profile": profile, "runs": runs,
                          "strategies": list(strategies), "queries": queries,
                          "points": [p.__dict__ for p in points]})
    out(f"sweep: {len(points)} links × {len(strategies)} strategies × {runs} runs in the simulator "
        f"({link_model} link model, synthetic:{profile}) → {run_dir}")
    t0 = time.perf_counter()
    status, n_queries, frames = "failed", 0, []
    try:
        with open(run_dir / "summary.csv", "w", newline="") as f:
            writer = None
            for i, p in enumerate(points, 1):
                sc = p.scenario(strategies)
                for r in range(runs):
                    records = [q for q, _ in simulate(sc, list(strategies), profile, queries=queries, seed=r,
                                                      link_model=link_model)]
                    n_queries += len(records)
                    df = metrics.summarize(records, scenario=p.name, backend="sim", models=f"synthetic:{profile}")
                    df = df.assign(rtt_ms=p.rtt_ms, rate_mbit=p.rate_mbit, jitter_ms=p.jitter_ms,
                                   loss_pct=p.loss_pct, run=r)
                    if writer is None:
                        writer = csv.DictWriter(f, fieldnames=list(df.columns))
                        writer.writeheader()
                    writer.writerows(df.to_dict("records"))
                    frames.append(df)
                f.flush()
                if i % max(1, len(points) // 10) == 0 or i == len(points):
                    out(f"  {i}/{len(points)} links, {n_queries} queries, {time.perf_counter() - t0:.1f} s")
        status = "complete"
    finally:
        meta.update(sim_wall_s=round(time.perf_counter() - t0, 3), queries_simulated=n_queries)
        meta.finish(status)
    best = best_by_link(pd.concat(frames, ignore_index=True))
    best.to_csv(run_dir / "best.csv", index=False)
    out(format_best(best))
    out(f"\n{n_queries} queries simulated in {time.perf_counter() - t0:.2f} s; {run_dir / 'summary.csv'}")
    return run_dir


def best_by_link(df: pd.DataFrame) -> pd.DataFrame:
    """Per link: the lossless strategy (one whose output is the target's) with the lowest median (over
    runs) E2E P50, its margin over the runner-up, and edge-only's E2E beside it — edge-only is faster
    where the network is bad but answers with the draft model's quality, so it is shown, not ranked."""
    from lab.core.strategies import make_strategy

    keys = ["rtt_ms", "rate_mbit", "jitter_ms", "loss_pct"]
    agg = df.groupby(keys + ["strategy"], sort=False)["e2e_ms_p50"].median().reset_index()
    edge = {s for s in agg["strategy"].unique() if make_strategy(s).placement == "edge"}
    rows = []
    for link, g in agg.groupby(keys, sort=False):
        ranked = g[~g["strategy"].isin(edge)].sort_values("e2e_ms_p50")
        e = g[g["strategy"].isin(edge)]["e2e_ms_p50"]
        row = {**dict(zip(keys, link)), "best": None, "e2e_ms_p50": float("nan"), "runner_up": None,
               "margin_pct": float("nan"), "edge_only_e2e_ms_p50": float(e.min()) if len(e) else float("nan")}
        if len(ranked):
            first = ranked.iloc[0]
            row.update(best=first["strategy"], e2e_ms_p50=first["e2e_ms_p50"])
            if len(ranked) > 1:
                second = ranked.iloc[1]
                row.update(runner_up=second["strategy"],
                           margin_pct=100 * (second["e2e_ms_p50"] - first["e2e_ms_p50"]) / first["e2e_ms_p50"])
        rows.append(row)
    return pd.DataFrame(rows)


def format_best(best: pd.DataFrame) -> str:
    lines = ["", f"{'RTT ms':>7} {'Mbit/s':>7} {'jitter':>7} {'loss %':>7}  {'best lossless (E2E p50)':24s} "
                 f"{'ms':>7}  {'runner-up (+%)':24s} {'edge-only ms':>12}"]
    for _, r in best.iterrows():
        runner = f"{r.runner_up} (+{r.margin_pct:.0f} %)" if r.runner_up else "–"
        lines.append(f"{r.rtt_ms:7g} {r.rate_mbit:7g} {r.jitter_ms:7g} {r.loss_pct:7g}  {str(r.best):24s} "
                     f"{r.e2e_ms_p50:7.0f}  {runner:24s} {r.edge_only_e2e_ms_p50:12.0f}")
    return "\n".join(lines)
