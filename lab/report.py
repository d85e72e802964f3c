"""What a person reads: the link as the kernel has it, and (later) tables and plots of runs."""
from __future__ import annotations

SPEC_KEYS = ("delay_ms", "jitter_ms", "loss_pct", "rate_mbit", "limit_pkts")


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def print_link_status(rb: dict, out=print) -> None:
    """The applied link, read back from the kernel (and the relay), beside the configuration."""
    out(f"backend {rb.get('backend')}  TCP {rb.get('congestion_control')}  "
        f"{rb.get('edge_ns')} {rb.get('edge_addr')} ↔ {rb.get('cloud_ns')} {rb.get('cloud_addr')}")
    conf = rb.get("configured") or {}
    width = max(len(k) for k in SPEC_KEYS)
    out(f"  {'':{width}}  {'uplink (edge→cloud)':>24}  {'downlink (cloud→edge)':>24}")
    for k in SPEC_KEYS:
        cells = []
        for d in ("uplink", "downlink"):
            applied = (rb.get(d) or {}).get(k)
            configured = (conf.get(d) or {}).get(k)
            mark = "" if configured is None or applied is None or abs(float(applied) - float(configured)) < 1e-6 \
                else f" (configured {_fmt(configured)})"
            cells.append(f"{_fmt(applied)}{mark}")
        out(f"  {k:{width}}  {cells[0]:>24}  {cells[1]:>24}")
    for q in rb.get("qdiscs", []):
        out(f"  qdisc {q.get('ns')}/{q.get('dev')}: {q.get('kind')}")
    relay = rb.get("relay")
    if relay:
        for d in ("uplink", "downlink"):
            s = relay.get(d, {})
            out(f"  relay {d}: {s.get('delivered', 0)} delivered, {s.get('lost', 0)} lost, "
                f"{s.get('limit_dropped', 0)} over limit, {s.get('reordered', 0)} reordered")


# ---------------------------------------------------------------- `python -m lab report DIR…`

def write_report(dirs, out_dir=None, export: str | None = None, out=print) -> Path:
    """report.md + plots/ (+ ianvs/ with export="ianvs") for sweep, validation and run folders."""
    from pathlib import Path
    import pandas as pd
    from lab import claims as claims_mod, plots, verdict as vd

    folders = vd.load(dirs)
    out_path = Path(out_dir) if out_dir else folders[0].path / "report"
    out_path.mkdir(parents=True, exist_ok=True)
    rows = vd.summary_rows(folders)
    points = vd.by_point(rows)
    val_frames = [f.rows for f in folders if f.kind == "validation"]
    val = pd.concat(val_frames, ignore_index=True) if val_frames else pd.DataFrame()
    figs = plots.all_figures(out_path, points, rows, val)
    v = vd.verdict(points) if len(points) else pd.DataFrame()
    c = vd.curves(points) if len(points) else pd.DataFrame()
    agree = vd.agreement(v, c) if len(v) else []
    cl = claims_mod.all_claims(points, val)

    md = ["# sdlab report", ""]
    md += [f"Folders: {', '.join(f'`{f.path}` ({f.kind}, {f.source})' for f in folders)}.", ""]
    md += ["## Verdict", "",
           "Fastest **lossless** strategy (lowest median E2E P50 over runs; edge-only answers with the draft "
           "model's quality, so it is compared, not ranked) per RTT range on stable links (no jitter, no loss, "
           "tokens payload), and the **reversal RTT**: the grid RTTs between which the best split strategy "
           "stops beating cloud-only, and edge-only (≈ linear interpolation).", ""]
    if len(v):
        md += ["| bandwidth | source | winner by RTT range | split stops beating cloud-only | split stops beating edge-only |",
               "|---|---|---|---|---|"]
        for rate in sorted(v["rate_mbit"].unique(), reverse=True):
            for _, r in v[v["rate_mbit"] == rate].sort_values("source").iterrows():
                md.append(f"| {rate:g} Mbit/s | {r['source']} | {r['winners']} | {r['split_vs_cloud']} | {r['split_vs_edge']} |")
        md.append("")
        for a in agree:
            steps = lambda s: "∞" if s == float("inf") else f"{s:g}"
            md.append(f"* {a['rate_mbit']:g} Mbit/s, lab vs simulator: **{'agree' if a['agree'] else 'DISAGREE'}** — "
                      f"winners differ at {', '.join(f'{x:g} ms' for x in a['winners_differ_at']) or 'no RTT'} "
                      f"of {len(a['rtts'])}; reversal vs cloud-only {steps(a['reversal_cloud_steps'])} grid steps apart, "
                      f"vs edge-only {steps(a['reversal_edge_steps'])}.")
        md.append("")
        c.to_csv(out_path / "verdict_points.csv", index=False)
        md += ["Per-RTT winners with the summary rows they rest on: `verdict_points.csv`.", ""]
    else:
        md += ["No sweep or run rows: no verdict.", ""]
    md += ["## The seeds' claims", "", "| claim | source | verdict | this machine's numbers | note |", "|---|---|---|---|---|"]
    for _, r in cl.iterrows():
        md.append(f"| {r['claim']} | {r['source']} | **{r['verdict']}** | {r['numbers']} | {r['note']} |")
    md.append("")
    cl.to_csv(out_path / "claims.csv", index=False)
    md += ["## Figures", "", "Each figure's points are in `plots/<name>.csv`, whose `summary_rows` column names the "
           "summary.csv lines (file:line, line 1 the header) each point is the median of.", ""]
    for name, title, caption in figs.made:
        md += [f"### {title}", "", f"![{title}](plots/{name}.png)", "", f"{caption} Data: `plots/{name}.csv`; "
               f"vector: `plots/{name}.svg`.", ""]
    if export == "ianvs" and len(points):
        from lab.ianvs import export as ianvs_export
        written = ianvs_export(points, out_path)
        md += ["## Ianvs export", "", f"{len(written)} rank tables (one per network profile) under `ianvs/`, "
               "the layout of Ianvs's rank/all_rank.csv with our columns after theirs.", ""]
        out(f"ianvs: {len(written)} rank tables under {out_path / 'ianvs'}")
    (out_path / "report.md").write_text("\n".join(md) + "\n")
    out(f"report: {out_path / 'report.md'} ({len(figs.made)} figures in {out_path / 'plots'})")
    return out_path
