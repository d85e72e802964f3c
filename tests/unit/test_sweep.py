"""python -m lab sweep --sim: the grid, the files it writes, the ranking."""
import json

import pandas as pd

from lab.cli import main
from lab.sweep import GridPoint, best_by_link, grid, run_sweep


def test_grid_sizes_and_names():
    assert len(grid()) == 21 and len(grid(full=True)) == 189
    assert GridPoint(50, 10, 10, 5).name == "grid-50ms-10mbit-j10-l5"
    sc = GridPoint(50, 10, 10, 5).scenario(["cloud-only"])
    assert sc.link.uplink.delay_ms == 25 and sc.link.downlink.loss_pct == 5 and sc.link.uplink.jitter_ms == 10


def test_sweep_writes_one_row_per_link_strategy_run_and_ranks_lossless_only(tmp_path):
    pts = grid(rtt=(0, 500), rate=(10,))
    run_dir = run_sweep(pts, ("cloud-only", "edge-only", "fixed-k:3"), runs=2, profile="embedded-cpu",
                        queries=2, out_dir=str(tmp_path), out=lambda s: None)
    df = pd.read_csv(run_dir / "summary.csv")
    assert len(df) == 2 * 3 * 2 and set(df["backend"]) == {"sim"} and set(df["run"]) == {0, 1}
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "complete"
    best = pd.read_csv(run_dir / "best.csv")
    assert "edge-only" not in set(best["best"])          # edge-only answers with the draft's quality
    assert (best["edge_only_e2e_ms_p50"] > 0).all()
    # At RTT 500 ms every speculation cycle pays the RTT; streaming from the cloud wins.
    assert best.set_index("rtt_ms").loc[500, "best"] == "cloud-only"


def test_best_by_link_margin():
    df = pd.DataFrame([{"rtt_ms": 0, "rate_mbit": 1, "jitter_ms": 0, "loss_pct": 0, "strategy": s, "e2e_ms_p50": v}
                       for s, v in (("cloud-only", 200.0), ("fixed-k:3", 100.0), ("edge-only", 50.0))])
    b = best_by_link(df).iloc[0]
    assert b["best"] == "fixed-k:3" and b["runner_up"] == "cloud-only" and b["margin_pct"] == 100.0
    assert b["edge_only_e2e_ms_p50"] == 50.0


def test_cli_sweep_needs_sim_and_checks_lists(capsys):
    assert main(["sweep"]) == 2
    assert "add --sim" in capsys.readouterr().err
    assert main(["sweep", "--sim", "--rtt-ms", "5,x"]) == 2
    assert "'5,x'" in capsys.readouterr().err
    assert main(["sweep", "--sim", "--strategies", "warp-speed"]) == 2
