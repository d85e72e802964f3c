"""python -m lab report: the verdict, the claims, the figures' traces, the Ianvs export."""
import json
import math

import pandas as pd
import pytest

from lab import claims, verdict as vd
from lab.cli import main
from lab.ianvs import IANVS_COLUMNS, rank_table
from lab.report import write_report
from lab.sweep import Plan, grid, run_sweep


def _points(e2e: dict, source="sim", rate=10.0) -> pd.DataFrame:
    """by_point-shaped rows from {rtt: {strategy: e2e_ms}}."""
    rows = []
    for rtt, per in e2e.items():
        for s, v in per.items():
            rows.append({"source": source, "rtt_ms": float(rtt), "rate_mbit": rate, "jitter_ms": 0.0, "loss_pct": 0.0,
                         "payload": "tokens", "strategy": s, "e2e_ms_p50": v, "summary_rows": f"x.csv:{len(rows) + 2}"})
    return pd.DataFrame(rows)


CURVE = {0: {"cloud-only": 100, "edge-only": 60, "fixed-k:3": 50},
         50: {"cloud-only": 110, "edge-only": 60, "fixed-k:3": 90},
         100: {"cloud-only": 120, "edge-only": 60, "fixed-k:3": 140},
         200: {"cloud-only": 130, "edge-only": 60, "fixed-k:3": 230}}


def test_verdict_ranges_and_reversals():
    v = vd.verdict(_points(CURVE)).iloc[0]
    assert v["winners"] == "0–50 ms: fixed-k:3; 100–200 ms: cloud-only"
    assert v["reversal_cloud_ms"] == 100
    # split − cloud: −20 at 50 ms, +20 at 100 ms → the crossover half way
    assert v["split_vs_cloud"] == "50–100 ms (≈ 75)"
    assert v["reversal_edge_ms"] == 50 and v["split_vs_edge"].startswith("0–50 ms")
    never = vd.verdict(_points({0: {"cloud-only": 10, "fixed-k:3": 20}, 50: {"cloud-only": 10, "fixed-k:3": 30}})).iloc[0]
    assert never["split_vs_cloud"].startswith("never")


def test_agreement_within_one_grid_step():
    lab = _points(CURVE, "lab")
    shifted = {**CURVE, 100: {"cloud-only": 120, "edge-only": 60, "fixed-k:3": 110}}      # sim reverses a step later
    pts = pd.concat([lab, _points(shifted, "sim")], ignore_index=True)
    a = vd.agreement(vd.verdict(pts), vd.curves(pts))[0]
    assert a["winners_differ_at"] == [100.0] and a["reversal_cloud_steps"] == 1 and not a["agree"]
    pts = pd.concat([lab, _points(CURVE, "sim")], ignore_index=True)
    assert vd.agreement(vd.verdict(pts), vd.curves(pts))[0]["agree"]


def test_e_tau_claim_uses_one_alpha_across_k():
    p = 0.7
    rows = []
    for k in (3, 5, 10):
        frac = p * (1 - p ** k) / (k * (1 - p))
        rows.append({"source": "sim", "rtt_ms": 0.0, "rate_mbit": 10.0, "jitter_ms": 0.0, "loss_pct": 0.0,
                     "payload": "tokens", "strategy": f"fixed-k:{k}", "e2e_ms_p50": 1.0, "acceptance": frac,
                     "tokens_per_cycle": claims.expected_tau(p, k)})
    df = pd.DataFrame(rows)
    assert claims.iid_alpha(rows[0]["acceptance"], 3) == pytest.approx(p, abs=1e-6)
    assert claims.e_tau(df, "sim")["verdict"] == "confirmed"
    df.loc[df["strategy"] == "fixed-k:10", "tokens_per_cycle"] *= 1.5       # not i.i.d. any more
    r = claims.e_tau(df, "sim")
    assert r["verdict"] == "refuted" and "K=10" in r["numbers"]


def test_missing_strategies_are_not_measured_and_oracle_gap_is_judged():
    pts = _points(CURVE)
    assert claims.near_oracle(pts, "sim", "nasd", (0, 4), "seed")["verdict"] == "not measured"
    extra = _points({0: {"nasd": 103, "oracle": 10}, 50: {"nasd": 106, "oracle": 100}})
    extra.loc[extra["strategy"] == "oracle", "e2e_ms_p50"] = 100.0
    r = claims.near_oracle(pd.concat([pts, extra]), "sim", "nasd", (0, 4), "seed")
    assert r["verdict"] == "refuted" and "worst +6.0 % at 50 ms" in r["numbers"]
    within = _points({0: {"nasd:cutoff=0.5": 102, "oracle": 100}})
    assert claims.near_oracle(within, "sim", "nasd", (0, 4), "seed")["verdict"] == "confirmed"
    # a split-only controller is judged against the split-only oracle, not against the cloud fallback
    split = _points({0: {"nasd:fallback=none": 203, "oracle": 100, "oracle:fallback=none": 200}})
    r = claims.near_oracle(split, "sim", "nasd", (0, 4), "seed")
    assert r["verdict"] == "confirmed" and "gap to oracle:fallback=none" in r["numbers"]
    # faster than the oracle (the confidence stop, which the oracle of fixed K lacks) is no refutation
    faster = _points({0: {"nasd": 85, "oracle": 100}})
    r = claims.near_oracle(faster, "sim", "nasd", (0, 4), "seed")
    assert r["verdict"] == "confirmed" and "faster than the oracle everywhere" in r["numbers"]
    # the oracle bounds the others; it is never the verdict's winner
    assert vd.curves(pd.concat([pts, _points({0: {"oracle": 1}})]))["winner"].iloc[0] == "fixed-k:3"


def test_a_controller_is_judged_against_the_best_fixed_k_or_its_own_fallback_in_pooled_tokens_per_s():
    def pts(per_rtt):
        p = _points({rtt: {s: 0.0 for s in per} for rtt, per in per_rtt.items()})
        p["tokens_per_s_pooled"] = [per_rtt[r][s] for r, s in zip(p["rtt_ms"], p["strategy"])]
        return p
    grid = {0: {"fixed-k:3": 10.0, "fixed-k:5": 9.0, "cloud-only": 5.0, "nasd": 9.95, "ucb-specstop": 9.75},
            200: {"fixed-k:3": 4.0, "fixed-k:5": 4.2, "cloud-only": 6.0, "nasd": 6.0, "ucb-specstop": 4.0}}
    assert claims.near_best_fixed(pts(grid), "sim", "nasd", 1.0)["verdict"] == "confirmed"
    r = claims.near_best_fixed(pts(grid), "sim", "ucb-specstop", 3.0)
    assert r["verdict"] == "refuted" and "worst -33.3 % at 200 ms" in r["numbers"] and "best there cloud-only" in r["numbers"]
    # fallback=none runs without the cloud, so it is held to the fixed K alone
    split = {0: {"fixed-k:3": 10.0, "cloud-only": 20.0, "ucb-specstop:fallback=none": 9.8}}
    r = claims.near_best_fixed(pts(split), "sim", "ucb-specstop", 3.0)
    assert r["verdict"] == "confirmed" and "best there fixed-k:3" in r["numbers"]
    # a folder written before the pooled column existed says so rather than judging
    assert claims.near_best_fixed(_points(CURVE), "sim", "nasd", 1.0)["verdict"] == "not measured"


def test_k_star_is_read_from_pooled_tokens_per_s_when_the_folders_have_it():
    grid = {10: {"fixed-k:2": (100.0, 9.0), "fixed-k:6": (90.0, 8.0)},
            200: {"fixed-k:2": (300.0, 4.0), "fixed-k:6": (280.0, 5.0)}}
    p = _points({r: {s: e2e for s, (e2e, _) in per.items()} for r, per in grid.items()})
    assert "10 ms→K=6, 200 ms→K=6" in claims.k_star(p, "sim")["numbers"]              # by E2E P50
    p["tokens_per_s_pooled"] = [grid[r][s][1] for r, s in zip(p["rtt_ms"], p["strategy"])]
    r = claims.k_star(p, "sim")
    assert "10 ms→K=2, 200 ms→K=6" in r["numbers"] and r["verdict"] == "confirmed" and "pooled" in r["note"]


def test_ianvs_rank_table_layout_and_order():
    pts = _points({50: {"cloud-only": 900, "edge-only": 400, "fixed-k:5": 700}})
    pts = pts.assign(ttft_ms_p50=[300.0, 20.0, 120.0], tokens_per_s_p50=[60.0, 130.0, 70.0],
                     e2e_ms_p95=1.0, e2e_ms_p99=1.0, acceptance=[math.nan, math.nan, 0.6], queries=4,
                     tcp_retrans_segs=0, models="synthetic:fast", tokens_p50=[49.0, 49.0, 49.0])
    t = rank_table(pts)
    assert list(t.columns[:len(IANVS_COLUMNS)]) == IANVS_COLUMNS and t.index.name == "rank"
    assert list(t["algorithm"]) == ["edge-only", "fixed-k:5", "cloud-only"]          # TTFT ascending
    assert list(t["drafter-inference_mode"]) == ["edge-only", "collaboration", "cloud-only"]
    k5 = t.set_index("algorithm").loc["fixed-k:5"]
    assert k5["Internal Token Latency"] == pytest.approx((0.7 - 0.12) / 48, abs=1e-4)
    assert k5["End-to-End Latency"] == 0.7 and k5["drafter-draft_tokens_per_step"] == "5"


def test_report_end_to_end_with_ianvs_export_read_back(tmp_path):
    plan = Plan(backend="sim", strategies=("cloud-only", "edge-only", "fixed-k:3", "fixed-k:10"), runs=2, queries=2,
                models="synthetic:fast")
    pts = grid(rtt=(0, 100, 500), rate=(10,)) + grid(rtt=(100,), rate=(10,), loss=(1, 5))
    sweep = run_sweep(pts, plan, out_dir=tmp_path / "sw", out=lambda s: None, progress=False)
    out = write_report([sweep], tmp_path / "rep", export="ianvs", out=lambda s: None)
    md = (out / "report.md").read_text()
    assert md.index("## Verdict") < md.index("## The seeds' claims") < md.index("## Figures")
    assert "| 10 Mbit/s | sim |" in md and "not measured" in md
    for name in ("tokens_per_s", "ttft", "e2e_percentiles", "network_overhead", "acceptance", "bytes_per_cycle",
                 "retrans_vs_loss"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000 and (out / "plots" / f"{name}.svg").exists()
        data = pd.read_csv(out / "plots" / f"{name}.csv")
        # every plotted point names summary.csv lines that exist and hold its link and strategy
        summary = pd.read_csv(sweep / "summary.csv")
        for trace in " ".join(data["summary_rows"]).split()[:20]:
            path, line = trace.rsplit(":", 1)
            assert path == str(sweep / "summary.csv") and 2 <= int(line) <= len(summary) + 1
    lossy = pd.read_csv(out / "plots" / "retrans_vs_loss.csv")
    assert lossy.groupby("loss_pct")["retrans_per_query"].sum()[5] > 0
    ranks = sorted((out / "ianvs" / "sim").glob("*/rank/all_rank.csv"))
    assert len(ranks) == len(pts)
    df = pd.read_csv(ranks[0], index_col="rank")
    assert list(df.columns[:len(IANVS_COLUMNS)]) == IANVS_COLUMNS and list(df.index) == list(range(1, len(df) + 1))
    key = list(zip(df["Time to First Token"], -df["Throughput"]))
    assert key == sorted(key)
    assert set(df["drafter-inference_mode"]) == {"edge-only", "cloud-only", "collaboration"}
    assert {"rtt_ms", "rate_mbit", "loss_pct", "End-to-End Latency P95", "tcp_retrans_segs"} <= set(df.columns)


def test_cli_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "neither a sweep" in capsys.readouterr().err


def test_adaptive_trace_drawn_when_k_changes(tmp_path):
    from lab.plots import Figures, adaptive_traces
    run = tmp_path / "run-0"
    run.mkdir()
    rec = {"strategy": "nasd", "warmup": False, "k_per_cycle": [3, 5, 8, 8], "t_ms_per_cycle": [0, 90, 200, 330],
           "network_ms_per_cycle": [40, 60, 80, 80]}
    (run / "queries.jsonl").write_text(json.dumps({**rec, "warmup": True}) + "\n" + json.dumps(rec) + "\n")
    rows = pd.DataFrame([{"source": "sim", "strategy": s, "rtt_ms": 50.0, "rate_mbit": 10.0, "folder": str(tmp_path),
                          "run_dir": "run-0", "summary_csv": "s.csv", "summary_line": 2 + i}
                         for i, s in enumerate(("fixed-k:3", "nasd"))])
    figs = Figures(tmp_path / "rep")
    adaptive_traces(figs, rows)
    assert [m[0] for m in figs.made] == ["adaptive_traces"]
    data = pd.read_csv(tmp_path / "rep" / "plots" / "adaptive_traces.csv")
    assert list(data["strategy"]) == ["nasd"] and data["summary_rows"][0] == "s.csv:3"


def test_validation_folder_gives_deltas_figure_and_sleep_claim(tmp_path):
    v = tmp_path / "val"
    for name, loss in (("lossy", 5), ("clean", 0)):
        (v / f"20260101T000000Z-{name}").mkdir(parents=True)
        (v / f"20260101T000000Z-{name}" / "meta.json").write_text(json.dumps(
            {"scenario": {"name": name, "link": {"uplink": {"delay_ms": 25, "loss_pct": loss}}}}))
    pd.DataFrame([{"case": "lossy", "strategy": "fixed-k:5", "e2e_frac": 0.01, "naive_e2e_frac": -0.30},
                  {"case": "clean", "strategy": "fixed-k:5", "e2e_frac": 0.005, "naive_e2e_frac": 0.01}]
                 ).to_csv(v / "validation.csv", index=False)
    out = write_report([v], tmp_path / "rep", out=lambda s: None)
    md = (out / "report.md").read_text()
    assert "validation_deltas.png" in md and "No sweep or run rows" in md
    row = [l for l in md.splitlines() if "sleep-based" in l][0]
    assert "**confirmed**" in row and "30.0 % on 1 lossy rows vs 1.0 % on 1 clean" in row
