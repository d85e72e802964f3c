"""The report's figures (matplotlib, PNG + SVG), one style: a colour per strategy, a line style per
source (lab solid with circles, simulator dashed with squares), the legend outside on the right, units
on every axis.  Each figure also writes <name>.csv — exactly the points drawn, with `summary_rows`
naming the summary.csv lines (file:line) each rests on."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from lab.core.strategies import fixed_k  # noqa: E402
from lab.results import read_jsonl  # noqa: E402
from lab.verdict import placement, stable  # noqa: E402

SOURCE_STYLE = {"lab": dict(linestyle="-", marker="o"), "sim": dict(linestyle="--", marker="s"),
                "sim-sleep": dict(linestyle=":", marker="^")}


class Figures:
    """Writes figures into plots/ and remembers (name, title, caption) for report.md."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir) / "plots"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.made: list[tuple[str, str, str]] = []
        self.colours: dict[str, tuple] = {}

    def colour(self, strategy: str):
        if strategy not in self.colours:
            # tab20's dark shades first, then its light ones: 20 distinct colours before any repeats
            # (the default grid alone has eleven strategies; tab10 gave two of them the same blue)
            cmap, i = plt.get_cmap("tab20"), len(self.colours) % 20
            self.colours[strategy] = cmap(2 * i if i < 10 else 2 * (i - 10) + 1)
        return self.colours[strategy]

    def save(self, fig, name: str, title: str, caption: str, data: pd.DataFrame) -> None:
        fig.suptitle(title, fontsize=11)
        handles, labels = [], []
        for ax in fig.axes:
            for h, l in zip(*ax.get_legend_handles_labels()):
                if l not in labels:
                    handles.append(h)
                    labels.append(l)
        if handles:
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
        fig.tight_layout()
        for ext in ("png", "svg"):
            fig.savefig(self.dir / f"{name}.{ext}", bbox_inches="tight", dpi=110)
        plt.close(fig)
        data.to_csv(self.dir / f"{name}.csv", index=False)
        self.made.append((name, title, caption))


def _rtt_axis(ax) -> None:
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("RTT (ms)")
    ax.grid(True, alpha=0.3)


def _lines(figs: Figures, ax, data: pd.DataFrame, y: str, x: str = "rtt_ms") -> None:
    for (src, strat), g in data.groupby(["source", "strategy"], sort=False):
        g = g.sort_values(x)
        ax.plot(g[x], g[y], color=figs.colour(strat), label=f"{strat} ({src})", markersize=4,
                **SOURCE_STYLE.get(src, {}))


def _by_rate(points: pd.DataFrame) -> list[float]:
    return sorted(points["rate_mbit"].dropna().unique(), reverse=True)


def per_rate_vs_rtt(figs: Figures, points: pd.DataFrame, y: str, ylabel: str, name: str, title: str,
                    caption: str, where=None, scale: float = 1.0) -> None:
    data = stable(points)
    if where is not None:
        data = data[data["strategy"].map(where)]
    data = data.dropna(subset=[y])
    if data.empty:
        return
    data = data.assign(**{y: data[y] * scale})
    rates = _by_rate(data)
    fig, axes = plt.subplots(1, len(rates), figsize=(4.2 * len(rates), 3.4), squeeze=False, sharey=True)
    for ax, rate in zip(axes[0], rates):
        _lines(figs, ax, data[data["rate_mbit"] == rate], y)
        ax.set_title(f"{rate:g} Mbit/s", fontsize=10)
        _rtt_axis(ax)
    axes[0][0].set_ylabel(ylabel)
    figs.save(fig, name, title, caption, data[["source", "rate_mbit", "rtt_ms", "strategy", y, "summary_rows"]])


def e2e_percentiles(figs: Figures, points: pd.DataFrame) -> None:
    data = stable(points)
    if data.empty:
        return
    rates = _by_rate(data)
    fig, axes = plt.subplots(3, len(rates), figsize=(4.2 * len(rates), 8), squeeze=False, sharex=True)
    for i, pct in enumerate(("p50", "p95", "p99")):
        for j, rate in enumerate(rates):
            ax = axes[i][j]
            _lines(figs, ax, data[data["rate_mbit"] == rate], f"e2e_ms_{pct}")
            ax.set_yscale("log")
            ax.set_title(f"E2E {pct.upper()}, {rate:g} Mbit/s", fontsize=9)
            _rtt_axis(ax)
            if j == 0:
                ax.set_ylabel(f"E2E {pct.upper()} (ms)")
    figs.save(fig, "e2e_percentiles", "End-to-end latency per query: P50, P95, P99",
              "Per bandwidth (columns) and percentile (rows), log scale.",
              data[["source", "rate_mbit", "rtt_ms", "strategy", "e2e_ms_p50", "e2e_ms_p95", "e2e_ms_p99",
                    "summary_rows"]])


def bytes_by_payload(figs: Figures, points: pd.DataFrame) -> None:
    data = points[points["strategy"].map(placement) == "split"].dropna(subset=["bytes_per_cycle"])
    if data.empty:
        return
    agg = data.groupby(["source", "payload", "strategy"], sort=True).agg(
        bytes_per_cycle=("bytes_per_cycle", "median"),
        summary_rows=("summary_rows", " ".join)).reset_index()
    payloads = list(agg.groupby("payload")["bytes_per_cycle"].median().sort_values().index)   # smallest first
    strategies = list(dict.fromkeys(agg["strategy"]))
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(payloads) * max(1, len(strategies)) / 3, 3.4))
    width = 0.8 / max(1, len(strategies) * agg["source"].nunique())
    n = 0
    for src in dict.fromkeys(agg["source"]):
        for s in strategies:
            g = agg[(agg["source"] == src) & (agg["strategy"] == s)].set_index("payload")
            xs = [i + n * width for i, p in enumerate(payloads) if p in g.index]
            ax.bar(xs, [g.loc[p, "bytes_per_cycle"] for p in payloads if p in g.index], width,
                   color=figs.colour(s), label=f"{s} ({src})", hatch="" if src == "lab" else "//",
                   edgecolor="black", linewidth=0.4)
            n += 1
    ax.set_xticks([i + width * (n - 1) / 2 for i in range(len(payloads))], payloads)
    ax.set_yscale("log")
    ax.set_xlabel("payload mode")
    ax.set_ylabel("bytes per cycle (up + down, B)")
    ax.grid(True, axis="y", alpha=0.3)
    figs.save(fig, "bytes_per_cycle", "Bytes on the wire per speculation cycle, by payload mode",
              "Median over every link of the sweep; draft tokens up, verdict down.", agg)


def retrans_vs_loss(figs: Figures, points: pd.DataFrame) -> None:
    data = points[(points["jitter_ms"] == 0) & (points["payload"] == "tokens")].dropna(subset=["tcp_retrans_segs"])
    data = data[data["strategy"].map(placement) != "edge"]
    lossy = set(zip(data[data["loss_pct"] > 0]["rtt_ms"], data[data["loss_pct"] > 0]["rate_mbit"]))
    data = data[[k in lossy for k in zip(data["rtt_ms"], data["rate_mbit"])]]     # links with a lossy variant
    if data.empty:
        return
    data = data.assign(retrans_per_query=data["tcp_retrans_segs"] / data["queries"])
    keys = sorted(lossy)
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.4), squeeze=False, sharey=True)
    for ax, (rtt, rate) in zip(axes[0], keys):
        _lines(figs, ax, data[(data["rtt_ms"] == rtt) & (data["rate_mbit"] == rate)], "retrans_per_query", x="loss_pct")
        ax.set_title(f"RTT {rtt:g} ms, {rate:g} Mbit/s", fontsize=10)
        ax.set_xlabel("loss each way (%)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("TCP retransmitted segments per query")
    figs.save(fig, "retrans_vs_loss", "TCP retransmissions vs packet loss",
              "Lab: the kernel's RetransSegs (both namespaces); simulator: its modelled retransmissions.",
              data[["source", "rtt_ms", "rate_mbit", "loss_pct", "strategy", "retrans_per_query", "summary_rows"]])


def adaptive_traces(figs: Figures, rows: pd.DataFrame, limit: int = 3) -> None:
    """K and network time per cycle for strategies whose K changes within a query (adaptive ones)."""
    picked = []
    for _, r in rows.drop_duplicates(["source", "strategy", "rtt_ms", "rate_mbit"]).iterrows():
        if placement(r["strategy"]) != "split" or fixed_k(r.get("strategy", "")) is not None:
            continue
        # read_jsonl: a missing file has no records, and an interrupted run's torn last record is skipped
        for rec in read_jsonl(Path(r["folder"]) / str(r["run_dir"]) / "queries.jsonl"):
            if rec.get("strategy") == r["strategy"] and not rec.get("warmup") and len(set(rec.get("k_per_cycle", []))) > 1:
                picked.append((r, rec))
                break
        if len(picked) >= limit:
            break
    if not picked:
        return
    fig, axes = plt.subplots(2, len(picked), figsize=(4.2 * len(picked), 5), squeeze=False, sharex="col")
    data = []
    for j, (r, rec) in enumerate(picked):
        t = [x / 1e3 for x in rec.get("t_ms_per_cycle", range(len(rec["k_per_cycle"])))]
        axes[0][j].step(t, rec["k_per_cycle"], where="post", color=figs.colour(r["strategy"]), label=r["strategy"])
        axes[1][j].plot(t, rec.get("network_ms_per_cycle", []), ".", color=figs.colour(r["strategy"]))
        axes[0][j].set_title(f"{r['strategy']} ({r['source']}), RTT {r['rtt_ms']:g} ms", fontsize=9)
        axes[0][j].set_ylabel("K (draft tokens)")
        axes[1][j].set_ylabel("network per cycle (ms)")
        axes[1][j].set_xlabel("time in query (s)")
        data.append({"source": r["source"], "strategy": r["strategy"], "rtt_ms": r["rtt_ms"],
                     "k_per_cycle": rec["k_per_cycle"], "summary_rows": f"{r['summary_csv']}:{r['summary_line']}"})
    figs.save(fig, "adaptive_traces", "Adaptive strategies: K and network time per cycle",
              "The first measured query of each adaptive strategy whose K changed.", pd.DataFrame(data))


def lab_vs_sim(figs: Figures, points: pd.DataFrame) -> pd.DataFrame | None:
    """Sweep points measured in both: the simulator's E2E P50 relative to the lab's."""
    lab = points[points["source"] == "lab"].set_index(["rtt_ms", "rate_mbit", "jitter_ms", "loss_pct", "payload", "strategy"])
    sim = points[points["source"] == "sim"].set_index(lab.index.names)
    common = lab.index.intersection(sim.index)
    if not len(common):
        return None
    d = pd.DataFrame({"lab_e2e_ms_p50": lab.loc[common, "e2e_ms_p50"], "sim_e2e_ms_p50": sim.loc[common, "e2e_ms_p50"],
                      "summary_rows": lab.loc[common, "summary_rows"] + " " + sim.loc[common, "summary_rows"]}
                     ).reset_index()
    d["delta_pct"] = 100 * (d["sim_e2e_ms_p50"] - d["lab_e2e_ms_p50"]) / d["lab_e2e_ms_p50"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for s, g in d.groupby("strategy", sort=False):
        clean = (g["loss_pct"] == 0) & (g["jitter_ms"] == 0)
        ax.plot(g[clean]["rtt_ms"], g[clean]["delta_pct"], "o", color=figs.colour(s), label=s, markersize=4)
        ax.plot(g[~clean]["rtt_ms"], g[~clean]["delta_pct"], "x", color=figs.colour(s), markersize=6)
    ax.axhline(0, color="black", linewidth=0.6)
    _rtt_axis(ax)
    ax.set_xlim(left=0)
    ax.set_ylabel("simulator − lab, E2E P50 (%)")
    figs.save(fig, "lab_vs_sim", "Lab vs simulator: E2E P50 at the points both ran",
              "Positive: the simulator is slower than the lab; ○ stable links, × with jitter or loss.", d)
    return d


def validation_deltas(figs: Figures, val: pd.DataFrame) -> None:
    if val.empty:
        return
    d = val.assign(label=val["case"].astype(str) + " · " + val["strategy"].astype(str))
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(d) + 1.2))
    y = range(len(d))
    ax.barh([i + 0.2 for i in y], 100 * d["e2e_frac"], height=0.4, color=figs.colour("simulator (tcp)"),
            label="simulator (tcp link model)")
    if "naive_e2e_frac" in d:
        ax.barh([i - 0.2 for i in y], 100 * d["naive_e2e_frac"], height=0.4, color=figs.colour("naive sleep"),
                label="naive sleep model")
    ax.set_yticks(list(y), d["label"], fontsize=6)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.set_xlabel("model − lab, E2E P50 (%)")
    ax.grid(True, axis="x", alpha=0.3)
    figs.save(fig, "validation_deltas", "Validation: simulator and naive model vs the lab, per case",
              "From validation.csv (lab/validate.py).",
              d[["folder", "case", "strategy", "e2e_frac"] + (["naive_e2e_frac"] if "naive_e2e_frac" in d else [])
                + ["summary_csv", "summary_line"]])


def all_figures(out_dir: Path, points: pd.DataFrame, rows: pd.DataFrame, val: pd.DataFrame) -> Figures:
    figs = Figures(out_dir)
    for s in sorted(points["strategy"].unique()) if len(points) else []:
        figs.colour(s)
    if len(points):
        per_rate_vs_rtt(figs, points, "tokens_per_s_p50", "decode throughput P50 (tokens/s)", "tokens_per_s",
                        "Decode throughput vs RTT", "Stable links; one panel per bandwidth.")
        per_rate_vs_rtt(figs, points, "ttft_ms_p50", "TTFT P50 (ms)", "ttft", "Time to first token vs RTT",
                        "Stable links; one panel per bandwidth.")
        e2e_percentiles(figs, points)
        per_rate_vs_rtt(figs, points, "network_overhead_ratio", "network time / cycle time (%)", "network_overhead",
                        "Network overhead per cycle vs RTT", "Split strategies (and cloud-only's streaming).",
                        where=lambda s: placement(s) != "edge", scale=100)
        per_rate_vs_rtt(figs, points, "acceptance", "acceptance α (accepted / drafted)", "acceptance",
                        "Acceptance vs RTT", "Split strategies; α should not depend on the link.",
                        where=lambda s: placement(s) == "split")
        bytes_by_payload(figs, points)
        retrans_vs_loss(figs, points)
        adaptive_traces(figs, rows)
        lab_vs_sim(figs, points)
    validation_deltas(figs, val)
    return figs


def nan_safe(v, fmt="{:.0f}") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)
