"""python -m lab sweep --sim: the grid, the resumable folder, the ranking."""
import json

import pandas as pd
import pytest

import lab.sweep as sweep
from lab.cli import main
from lab.sweep import GridPoint, Plan, SweepError, best_by_link, default_grid, grid, load_grid_file, run_sweep

QUIET = dict(out=lambda s: None, progress=False)


def test_grid_sizes_and_names():
    assert len(grid()) == 21 and len(grid(full=True)) == 189
    d = default_grid()
    assert len(d) == 33 and len(set(d)) == 33
    layered = [p for p in d if p.jitter_ms or p.loss_pct]
    assert {p.rtt_ms for p in layered} == {50, 100, 200} and {p.rate_mbit for p in layered} == {10}
    assert all(not (p.jitter_ms and p.loss_pct) for p in layered)       # one impairment at a time
    assert GridPoint(50, 10, 10, 5).name == "grid-50ms-10mbit-j10-l5"
    assert GridPoint(50, 10, payload="topk:4").name == "grid-50ms-10mbit-topk4"
    sc = GridPoint(50, 10, 10, 5).scenario(["cloud-only"])
    assert sc.link.uplink.delay_ms == 25 and sc.link.downlink.loss_pct == 5 and sc.link.uplink.jitter_ms == 10


def test_grid_file(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("axes: {rtt_ms: [0, 50], rate_mbit: [10]}\npoints:\n  - {rtt_ms: 100, rate_mbit: 1, loss_pct: 1}\n")
    pts = load_grid_file(str(f))
    assert [p.name for p in pts] == ["grid-0ms-10mbit", "grid-50ms-10mbit", "grid-100ms-1mbit-l1"]
    f.write_text("points:\n  - {rtt_ms: 10, rate_mbit: 1, jitter_ms: 20}\n")
    with pytest.raises(SweepError, match="jitter_ms"):
        load_grid_file(str(f))
    f.write_text("rtt: [1]\n")
    with pytest.raises(SweepError, match="axes"):
        load_grid_file(str(f))


def _plan(**kw):
    return Plan(backend="sim", **{"strategies": ("cloud-only", "edge-only", "fixed-k:3"), "runs": 2,
                                  "queries": 2, **kw})


def test_sweep_writes_one_row_per_link_strategy_run_and_ranks_lossless_only(tmp_path):
    pts = grid(rtt=(0, 500), rate=(10,))
    run_dir = run_sweep(pts, _plan(), out_dir=tmp_path / "s", **QUIET)
    df = pd.read_csv(run_dir / "summary.csv")
    assert len(df) == 2 * 3 * 2 and set(df["backend"]) == {"sim"} and set(df["run"]) == {0, 1}
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "complete"
    for p in pts:
        assert json.loads((run_dir / "points" / p.name / "point.json").read_text())["status"] == "complete"
    # every row names the run folder it came from
    assert all((run_dir / r / "queries.jsonl").exists() for r in df["run_dir"])
    k3 = df[df["strategy"] == "fixed-k:3"]
    assert ((k3["tokens_per_cycle"] >= 1) & (k3["tokens_per_cycle"] <= 4)).all() and k3["k_mean"].between(2, 3).all()   # the last cycle may draft fewer
    best = pd.read_csv(run_dir / "best.csv")
    assert "edge-only" not in set(best["best"])          # edge-only answers with the draft's quality
    assert (best["edge_only_e2e_ms_p50"] > 0).all()
    # At RTT 500 ms every speculation cycle pays the RTT; streaming from the cloud wins.
    assert best.set_index("rtt_ms").loc[500, "best"] == "cloud-only"


def test_resume_skips_finished_redoes_half_written_and_interrupt_keeps_finished(tmp_path, monkeypatch):
    pts = grid(rtt=(0, 100, 500), rate=(10,))
    ref = pd.read_csv(run_sweep(pts, _plan(), out_dir=tmp_path / "ref", **QUIET) / "summary.csv")

    calls, real = [], sweep.execute_point

    def interrupted_on_second(p, plan, dest):
        calls.append(p.name)
        if len(calls) == 2:
            (dest / "run-0").mkdir(parents=True)          # half-written when Ctrl-C comes
            raise KeyboardInterrupt
        return real(p, plan, dest)
    monkeypatch.setattr(sweep, "execute_point", interrupted_on_second)
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(pts, _plan(), out_dir=out, **QUIET)
    assert json.loads((out / "meta.json").read_text())["status"] == "interrupted"
    assert (out / "points" / pts[0].name / "point.json").exists()
    assert not (out / "points" / pts[1].name).exists() and (out / "points" / f".partial-{pts[1].name}").exists()
    assert len(pd.read_csv(out / "summary.csv")) == 6           # the finished point's rows only

    calls.clear()
    monkeypatch.setattr(sweep, "execute_point", lambda p, plan, dest: (calls.append(p.name), real(p, plan, dest))[1])
    run_sweep(pts, _plan(), out_dir=out, **QUIET)
    assert calls == [pts[1].name, pts[2].name]                  # the finished point was skipped
    assert not list((out / "points").glob(".partial-*"))
    got = pd.read_csv(out / "summary.csv")
    pd.testing.assert_frame_equal(got, ref)                     # resumed to the same result
    assert json.loads((out / "meta.json").read_text())["status"] == "complete"
    calls.clear()
    run_sweep(pts, _plan(), out_dir=out, **QUIET)
    assert calls == []


def test_points_in_worker_processes_give_the_serial_result(tmp_path):
    pts = grid(rtt=(0, 100, 500), rate=(10,))
    ref = pd.read_csv(run_sweep(pts, _plan(), out_dir=tmp_path / "ref", **QUIET) / "summary.csv")
    out = run_sweep(pts, _plan(), out_dir=tmp_path / "par", jobs=2, **QUIET)
    got = pd.read_csv(out / "summary.csv")
    pd.testing.assert_frame_equal(got, ref)
    assert json.loads((out / "meta.json").read_text())["jobs"] == 2
    assert not list((out / "points").glob(".partial-*"))
    assert all((out / "points" / p.name / "point.json").exists() for p in pts)


def test_resume_with_another_plan_or_into_a_foreign_folder_is_refused(tmp_path):
    run_sweep(grid(rtt=(0,), rate=(10,)), _plan(), out_dir=tmp_path / "s", **QUIET)
    with pytest.raises(SweepError, match="runs = 2, this one asks 3"):
        run_sweep(grid(rtt=(0,), rate=(10,)), _plan(runs=3), out_dir=tmp_path / "s", **QUIET)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(SweepError, match="not a sweep folder"):
        run_sweep(grid(rtt=(0,), rate=(10,)), _plan(), out_dir=tmp_path / "other", **QUIET)


def test_best_by_link_margin():
    df = pd.DataFrame([{"rtt_ms": 0, "rate_mbit": 1, "jitter_ms": 0, "loss_pct": 0, "strategy": s, "e2e_ms_p50": v}
                       for s, v in (("cloud-only", 200.0), ("fixed-k:3", 100.0), ("edge-only", 50.0))])
    b = best_by_link(df).iloc[0]
    assert b["best"] == "fixed-k:3" and b["runner_up"] == "cloud-only" and b["margin_pct"] == 100.0
    assert b["edge_only_e2e_ms_p50"] == 50.0


def test_best_by_link_never_ranks_the_oracle():
    """The oracle knows the link in hindsight: the fastest row, but no edge could deploy it."""
    df = pd.DataFrame([{"rtt_ms": 0, "rate_mbit": 1, "jitter_ms": 0, "loss_pct": 0, "strategy": s, "e2e_ms_p50": v}
                       for s, v in (("oracle", 90.0), ("nasd", 95.0), ("cloud-only", 200.0))])
    b = best_by_link(df).iloc[0]
    assert b["best"] == "nasd" and b["runner_up"] == "cloud-only"


def test_cli_sweep_needs_one_mode_and_checks_lists(capsys, tmp_path):
    assert main(["sweep"]) == 2
    assert "exactly one of --sim" in capsys.readouterr().err
    assert main(["sweep", "--sim", "--lab"]) == 2
    assert main(["sweep", "--sim", "--rtt-ms", "5,x"]) == 2
    assert "'5,x'" in capsys.readouterr().err
    assert main(["sweep", "--sim", "--strategies", "warp-speed"]) == 2
    assert main(["sweep", "--sim", "--payloads", "tokens,bogus"]) == 2
    assert main(["sweep", "--sim", "--grid", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_a_simulated_sweep_runs_every_built_in_prompt_by_default(tmp_path, capsys):
    from lab.prompts import load_prompts
    out = tmp_path / "s"
    assert main(["sweep", "--sim", "--rtt-ms", "10", "--rate-mbit", "100", "--strategies", "fixed-k:3",
                 "--runs", "1", "--jobs", "1", "--out", str(out)]) == 0
    assert json.loads((out / "sweep.json").read_text())["plan"]["queries"] == len(load_prompts(None)) > 3
    assert pd.read_csv(out / "summary.csv")["queries"].tolist() == [len(load_prompts(None))]


def test_a_sweep_measures_after_the_warm_up_it_is_given(tmp_path):
    """--warmup N: N warm-up queries per strategy and run before the measured ones (a learning
    controller is compared after its warm-up); kept in queries.jsonl, marked, not summarized."""
    out = tmp_path / "s"
    assert main(["sweep", "--sim", "--rtt-ms", "10", "--rate-mbit", "100", "--strategies", "ucb-specstop",
                 "--runs", "1", "--jobs", "1", "--queries", "2", "--warmup", "3", "--out", str(out)]) == 0
    assert json.loads((out / "sweep.json").read_text())["plan"]["warmup_queries"] == 3
    (queries,) = out.glob("points/*/run-0/queries.jsonl")
    flags = [json.loads(line)["warmup"] for line in queries.read_text().splitlines()]
    assert flags == [True] * 3 + [False] * 2
    assert pd.read_csv(out / "summary.csv")["queries"].tolist() == [2]
