"""`python -m lab trace RESULTS_DIR`: K and the link over time, per strategy (PNG + SVG).

Top: the K each cycle used (0 where the cycle was not speculative; cloud stretches marked "×" at 0,
edge-alone tokens "▽").  Bottom: the network time each cycle measured, and — when the scenario has a
timeline — the configured RTT it was meeting, so one can see that every strategy met the same link
trace and how soon each reacted.  Time runs from each strategy's first measured query, where its
timeline starts (TIMELINE_ALIGNMENT), so the strategies line up.  Warm-up queries are left out.
"""
from __future__ import annotations

from pathlib import Path


class TraceError(Exception):
    """The folder holds no per-cycle records to draw; the message names it."""


def cycles_over_time(run_dir: Path):
    """A DataFrame of measured cycles with t_s (seconds since the strategy's timeline start)."""
    import pandas as pd
    from lab.results import read_jsonl

    queries = [q for q in read_jsonl(run_dir / "queries.jsonl") if not q.get("warmup")]
    if not queries:
        raise TraceError(f"{run_dir}: no measured queries in queries.jsonl")
    if any("t_submit_ms" not in q for q in queries):
        raise TraceError(f"{run_dir}: the query records lack t_submit_ms (written before `lab trace` existed)")
    rows = []
    for strategy in dict.fromkeys(q["strategy"] for q in queries):
        qs = sorted((q for q in queries if q["strategy"] == strategy), key=lambda q: q["t_submit_ms"])
        origin = qs[0]["t_submit_ms"]
        for q in qs:
            fb = q.get("fallback_per_cycle") or [None] * len(q["k_per_cycle"])
            for j, (k, net, t) in enumerate(zip(q["k_per_cycle"], q["network_ms_per_cycle"], q["t_ms_per_cycle"])):
                rows.append({"strategy": strategy, "query_index": q["query_index"], "cycle": j, "k": k,
                             "network_ms": net, "fallback": fb[j],
                             "t_s": (q["t_submit_ms"] + t - origin) / 1000.0})
    return pd.DataFrame(rows)


def configured_rtt(run_dir: Path, t_end_s: float):
    """(times s, RTT ms) of the scenario's timeline over [0, t_end_s], or None without a timeline."""
    from lab.scenario import ScenarioError, scenario_of_run
    try:
        sc = scenario_of_run(run_dir)
    except ScenarioError:
        return None
    if not sc.timeline.steps:
        return None
    ts = [i * t_end_s / 2000 for i in range(2001)]
    return ts, [sc.timeline.link_at(t, sc.link).rtt_ms for t in ts]


def draw(run_dir: Path, out_stem: Path | None = None) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    df = cycles_over_time(run_dir)
    fig, (ax_k, ax_n) = plt.subplots(2, 1, sharex=True, figsize=(11, 7), constrained_layout=True)
    for strategy, g in df.groupby("strategy", sort=False):
        line, = ax_k.step(g["t_s"], g["k"], where="post", label=strategy, linewidth=1.2)
        cloud = g[g["fallback"] == "cloud"]
        edge = g[(g["fallback"] == "edge") & (g["k"] == 0)]
        if len(cloud):
            ax_k.scatter(cloud["t_s"], [0] * len(cloud), marker="x", s=12, color=line.get_color())
        if len(edge):
            ax_k.scatter(edge["t_s"], [0] * len(edge), marker="v", s=12, color=line.get_color())
        ax_n.plot(g["t_s"], g["network_ms"], ".", markersize=3, color=line.get_color(), label=strategy)
    rtt = configured_rtt(run_dir, float(df["t_s"].max()))
    if rtt:
        ax_n.plot(*rtt, "k--", linewidth=1, label="configured RTT")
    ax_k.set_ylabel("K (draft tokens per cycle)")
    ax_k.set_title(f"{run_dir.name}: K per cycle (× cloud stretch, ▽ edge alone)")
    ax_n.set_ylabel("network time per cycle (ms)")
    ax_n.set_xlabel("time since the strategy's first measured query (s)")
    ax_n.set_title("measured network time per cycle, and the timeline's RTT")
    ax_k.legend(loc="upper left", fontsize=8, ncol=3)
    ax_n.legend(loc="upper left", fontsize=8, ncol=3)
    for ax in (ax_k, ax_n):
        ax.grid(alpha=0.3)
    stem = out_stem or run_dir / "trace"
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths
