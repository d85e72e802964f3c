"""lab.validate's judging (pure, synthetic records) and its host calibration arithmetic."""
import json
import math

import pytest

from lab.models.synthetic import save_profile

from lab.sim.simulator import ComputeProfile
from lab.validate import (E2E_TOLERANCE_FRAC, NETWORK_TOLERANCE_MS, PROFILE, HostCalibration, Row, RunRow,
                          calibration_from, ranking_line, quantile_interval, compare, default_cases, select_cases)


def q(strategy, nets, e2e, index=None):
    r = {"strategy": strategy, "network_ms_per_cycle": list(nets), "e2e_ms": e2e}
    if index is not None:
        r["query_index"] = index
    return r


def test_compare_takes_percentiles_per_strategy_and_signs_delta_sim_minus_lab():
    lab = [q("fixed-k:5", [50.0, 51.0, 52.0], 1000.0) for _ in range(10)] + [q("cloud-only", [0.0], 5.0)]
    sim = [q("fixed-k:5", [50.0, 50.0, 50.0], 990.0) for _ in range(10)]
    naive = [q("fixed-k:5", [40.0] * 3, 900.0) for _ in range(10)]
    r = compare("c", "fixed-k:5", lab, sim, naive)
    assert r.cycles == 30 and r.lab_p50 == 51.0 and r.sim_p50 == 50.0
    assert r.d50 == -1.0 and r.e2e_frac == pytest.approx(-0.01) and r.naive_d50 == -11.0
    assert r.strict and r.verdict == "ok"


def _row(**kw):
    base = dict(case="c", strategy="s", cycles=100, lab_p50=50.0, lab_p95=60.0, sim_p50=50.0, sim_p95=60.0,
                naive_p50=50.0, naive_p95=50.0, lab_e2e_p50=1000.0, sim_e2e_p50=1000.0, naive_e2e_p50=900.0)
    return Row(**{**base, **kw})


def test_verdicts_strict_loose_and_fail():
    assert _row(sim_p95=60.0 + NETWORK_TOLERANCE_MS).verdict == "ok"
    assert _row(sim_p95=60.0 + NETWORK_TOLERANCE_MS + 0.01).verdict == "FAIL"
    # The same Δ with a lab sample that cannot pin its own P95 to better than ±3 ms: ok~, not ok.
    loose = _row(sim_p95=68.0, u95=3.0)
    assert loose.ok and not loose.strict and loose.verdict == "ok~"
    assert _row(sim_p95=68.1, u95=3.0).verdict == "FAIL"
    # E2E: 3 % of the lab's median, widened by its own relative uncertainty.
    assert _row(sim_e2e_p50=1000 * (1 + E2E_TOLERANCE_FRAC) - 0.01).verdict == "ok"
    assert _row(sim_e2e_p50=1040.0).verdict == "FAIL"
    assert _row(sim_e2e_p50=1040.0, u_e2e=15.0).verdict == "ok~"
    # A case that errored has NaN figures: never ok.
    assert _row(lab_p50=math.nan).verdict == "FAIL"


def test_quantile_interval_is_distribution_free_and_brackets_the_sample_quantile():
    x = list(range(1, 101))                      # 1..100
    lo, hi = quantile_interval(x, 50)
    assert lo < 50.5 < hi and 38 <= lo <= 42 and 59 <= hi <= 63
    lo, hi = quantile_interval(x, 95)
    assert lo <= 95 <= hi and hi <= 100
    assert all(math.isnan(v) for v in quantile_interval([], 50))


def test_a_median_on_a_cluster_boundary_gets_room_in_the_direction_of_the_simulator():
    # E2E under loss: 0 or 1 recoveries per query, about half each — the sample median sits on one
    # cluster, the population's may be on the other.
    lab = [q("k", [50.0], 1000.0 + 280 * (i % 2)) for i in range(40)]
    sim = [q("k", [50.0], 1000.0) for _ in range(320)]
    r = compare("c", "k", lab, sim, sim)
    assert r.lab_e2e_p50 == 1140.0 and r.sim_e2e_p50 == 1000.0
    assert r.u_e2e == 140.0 and r.verdict == "ok~"
    # With all lab queries in one cluster there is no room: a real disagreement fails.
    lab = [q("k", [50.0], 1280.0) for _ in range(40)]
    assert compare("c", "k", lab, sim, sim).verdict == "FAIL"


def test_calibration_from_a_delay_only_run():
    p = ComputeProfile.of(PROFILE)
    cycles = []
    for i in range(1, 11):
        cycles.append({"strategy": "fixed-k:3", "k": 3, "cycle": i, "network_ms": 30.6,
                       "edge_compute_ms": 3 * (p.t_draft_ms + 0.02), "cloud_compute_ms": p.verify_ms(4) + 0.1})
        cycles.append({"strategy": "cloud-only", "k": 0, "cycle": i, "network_ms": 0.0, "cycle_ms": p.step_ms() + 0.05,
                       "edge_compute_ms": 0.0, "cloud_compute_ms": p.step_ms() + 0.03})
    # First cycles carry the prefill exchange and are left out.
    cycles.append({"strategy": "fixed-k:3", "k": 3, "cycle": 0, "network_ms": 9.0, "edge_compute_ms": 0.0,
                   "cloud_compute_ms": 0.0})
    cal = calibration_from(cycles, rtt_ms=30.0)
    assert cal.message_ms == pytest.approx(0.3)
    assert cal.draft_extra_ms == pytest.approx(0.02)
    assert cal.verify_extra_ms == pytest.approx(0.1)
    assert cal.token_extra_ms == pytest.approx(0.05)                 # the stream's pace, not the compute report
    c = HostCalibration(((15.0, cal),)).compute(15.0)
    assert c.verify_ms(4) == pytest.approx(p.verify_ms(4) + 0.1) and c.step_ms() == pytest.approx(p.step_ms() + 0.05)
    with pytest.raises(RuntimeError, match="no split or cloud-only cycles"):
        calibration_from([])


def test_default_sets():
    quick, full = default_cases(True), default_cases(False)
    assert 4 <= len(quick) <= 8
    names = {c.scenario.name for c in full}
    # The shipped scenarios, the 21-point grid, and loss/jitter/payload points beyond them.
    assert {"lan", "lossy-5pct", "jittery", "slow-1mbit", "sat-500ms", "oscillating"} <= names
    assert sum(n.startswith("grid-") for n in names) == 21
    assert any(c.payload == "full" for c in full) and any(c.scenario.link.uplink.loss_pct == 1 for c in full)
    assert [c.scenario.name for c in select_cases(["grid-50ms-10mbit", "lan"], False)] == ["grid-50ms-10mbit", "lan"]
    # a name in both sets gets the set asked for
    full_jittery = select_cases(["jittery"], False)[0]
    quick_jittery = select_cases(["jittery"], True)[0]
    assert full_jittery == next(c for c in full if c.scenario.name == "jittery")
    assert quick_jittery == next(c for c in default_cases(True) if c.scenario.name == "jittery")
    assert full_jittery != quick_jittery


def test_host_costs_interpolate_between_the_calibration_links_and_stay_flat_beyond():
    from lab.validate import HostCosts
    cal = HostCalibration(((0.0, HostCosts(message_ms=0.2, verify_extra_ms=0.1)),
                           (15.0, HostCosts(message_ms=0.5, verify_extra_ms=0.3)),
                           (60.0, HostCosts(message_ms=0.8, verify_extra_ms=0.3))))
    assert cal.message_overhead_ms(0) == pytest.approx(0.2)
    assert cal.message_overhead_ms(7.5) == pytest.approx(0.35)
    assert cal.message_overhead_ms(37.5) == pytest.approx(0.65)
    assert cal.message_overhead_ms(250) == pytest.approx(0.8)
    p = ComputeProfile.of(PROFILE)
    assert cal.compute(7.5).verify_ms(4) == pytest.approx(p.verify_ms(4) + 0.2)
    assert HostCalibration().message_overhead_ms(10) == 0.0
    assert HostCalibration().compute(10).verify_ms(4) == p.verify_ms(4)
    # saved and read back; the two-link form of earlier versions still reads
    assert HostCalibration.from_json(cal.to_json()) == cal
    old = HostCalibration.from_json({"message_ms": 0.4, "message_ms_0": 0.2, "draft_extra_ms": 0.01,
                                     "verify_extra_ms": 0.1, "token_extra_ms": 0.0, "cycles": 9, "enabled": True})
    assert old.message_overhead_ms(7.5) == pytest.approx(0.3) and old.at(100).draft_extra_ms == 0.01


def test_simulator_applies_a_delay_dependent_host_overhead():
    from lab.scenario import parse_scenario
    from lab.sim.simulator import simulate
    sc = parse_scenario({"name": "t", "link": {"delay_ms": 10}})

    def net(overhead):
        return [x for rec, _ in simulate(sc, ["fixed-k:3"], "fast", queries=2, warmup_queries=0,
                                         host_overhead_ms=overhead, acceptance="synthetic")
                for x in rec["network_ms_per_cycle"][1:]]
    base = net(0.0)
    assert all(b == pytest.approx(20.0) for b in base)
    # One message each way per cycle, each charged f(10 ms one-way) = 0.35 ms.
    assert all(x == pytest.approx(20.7) for x in net(lambda d: 0.035 * d))


def test_clock_phases_place_each_query_on_the_kernels_jiffy_grid():
    from lab.validate import clock_phases, jiffy_grid_period_ms
    period = jiffy_grid_period_ms(250)
    assert period == pytest.approx(2048.0)                          # 512 jiffies of 4 ms
    queries = [{"strategy": "fixed-k:3", "query_index": 0, "t_start_mono_ms": 10_000.0},
               {"strategy": "fixed-k:3", "query_index": 1, "t_start_mono_ms": 10_000.0 + period + 5}]
    phase = clock_phases({"jiffy_grid_ms": 1_000.0}, queries)       # no kernel_hz recorded: HZ=250
    assert phase("fixed-k:3", 0) == pytest.approx((10_000.0 - 1_000.0) % period)
    assert phase("fixed-k:3", 1) == pytest.approx((phase("fixed-k:3", 0) + 5) % period)
    assert phase("cloud-only", 0) is None
    assert clock_phases({}, queries) is None                        # older runs: the clock is left alone


def test_the_grid_and_the_simulators_timers_follow_the_recorded_kernel_hz():
    from lab.validate import clock_phases, tcp_config_of
    meta = {"jiffy_grid_ms": 1_000.0, "kernel_hz": 1000}
    queries = [{"strategy": "fixed-k:3", "query_index": 0, "t_start_mono_ms": 10_000.0}]
    # HZ=1000: the grid's period is 512 ms, not 2048 ms
    assert clock_phases(meta, queries)("fixed-k:3", 0) == pytest.approx((10_000.0 - 1_000.0) % 512.0)
    assert tcp_config_of(meta).hz == 1000
    assert tcp_config_of({}).hz == 250                              # runs that predate the record


def test_the_simulators_timers_follow_the_clock_phase_they_are_given():
    """Recovery timers fire on the jiffy/timer-wheel grid of the clock: a shifted phase moves the lossy
    queries' end times, not the loss-free ones."""
    from lab.scenario import load_scenario
    from lab.sim.simulator import simulate
    sc = load_scenario("lossy-5pct")
    def e2e(phase):
        return [q["e2e_ms"] for q, _ in simulate(sc, ["fixed-k:3"], queries=12, clock_phase=lambda s, i, c: phase)]
    a, b = e2e(0.0), e2e(17.0)
    assert a != b
    clean = load_scenario("wan-50ms")
    same = [[q["e2e_ms"] for q, _ in simulate(clean, ["fixed-k:3"], queries=4, clock_phase=lambda s, i, c: ph)]
            for ph in (0.0, 17.0)]
    assert same[0] == pytest.approx(same[1], abs=1e-6)


def test_rejudge_recomputes_the_calibration_from_the_saved_calibration_runs(tmp_path):
    import json
    from lab.validate import recalibrate_from_saved
    p = ComputeProfile.of(PROFILE)
    for delay, extra in ((0, 0.2), (15, 0.5)):
        d = tmp_path / f"20261125T000000Z-calibration-{delay}ms"
        d.mkdir()
        rows = [{"strategy": "fixed-k:3", "k": 3, "cycle": i, "network_ms": 2 * delay + 2 * extra,
                 "edge_compute_ms": 3 * p.t_draft_ms, "cloud_compute_ms": p.verify_ms(4)} for i in range(1, 5)]
        rows += [{"strategy": "cloud-only", "k": 0, "cycle": i, "network_ms": 0.0, "cycle_ms": p.step_ms(),
                  "edge_compute_ms": 0.0, "cloud_compute_ms": p.step_ms()} for i in range(1, 5)]
        (d / "cycles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cal = recalibrate_from_saved(tmp_path)
    assert [d for d, _ in cal.points] == [0.0, 15.0]
    assert cal.message_overhead_ms(0) == pytest.approx(0.2) and cal.message_overhead_ms(15) == pytest.approx(0.5)
    assert recalibrate_from_saved(tmp_path / "nothing-here") is None


def test_host_drift_is_the_cases_draft_overshoot_minus_the_calibrations_at_its_delay():
    from lab.validate import HostCosts, host_drift

    p = ComputeProfile.of(PROFILE)
    cal = HostCalibration(((0.0, HostCosts(draft_extra_ms=0.10)), (60.0, HostCosts(draft_extra_ms=0.30))))
    split = [{"strategy": "fixed-k:3", "cycle": j, "k": 3, "edge_compute_ms": 3 * (p.t_draft_ms + 0.25)}
             for j in range(1, 6)]
    first = {"strategy": "fixed-k:3", "cycle": 0, "k": 3, "edge_compute_ms": 99.0}       # carries the prefill
    stream = {"strategy": "cloud-only", "cycle": 3, "k": 0, "edge_compute_ms": 0.0}
    assert host_drift(split + [first, stream], cal, 30.0) == pytest.approx(0.25 - 0.20)
    assert host_drift(split, cal, 0.0) == pytest.approx(0.15)
    assert host_drift([stream], cal, 0.0) is None                # nothing to measure it on
    assert host_drift(split, HostCalibration(), 0.0) is None     # nothing to compare with


def test_rejudge_takes_the_newest_calibration_made_before_each_case(tmp_path):
    import json
    from lab.validate import recalibrate_from_saved
    p = ComputeProfile.of(PROFILE)
    for stamp, extra in (("20261125T000000Z", 0.2), ("20261125T000500Z", 0.6)):   # calibrated again at 00:05
        d = tmp_path / f"{stamp}-calibration-0ms"
        d.mkdir()
        rows = [{"strategy": "fixed-k:3", "k": 3, "cycle": i, "network_ms": 2 * extra,
                 "edge_compute_ms": 3 * p.t_draft_ms, "cloud_compute_ms": p.verify_ms(4)} for i in range(1, 5)]
        rows += [{"strategy": "cloud-only", "k": 0, "cycle": i, "network_ms": 0.0, "cycle_ms": p.step_ms(),
                  "edge_compute_ms": 0.0, "cloud_compute_ms": p.step_ms()} for i in range(1, 5)]
        (d / "cycles.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert recalibrate_from_saved(tmp_path, before="20261125T000200Z-lan").message_overhead_ms(0) == pytest.approx(0.2)
    assert recalibrate_from_saved(tmp_path, before="20261125T000600Z-lan").message_overhead_ms(0) == pytest.approx(0.6)
    assert recalibrate_from_saved(tmp_path, before="20261124T235900Z-lan") is None


def test_a_case_whose_host_drifted_is_run_again_after_a_new_calibration(tmp_path, monkeypatch):
    import csv
    import json
    import lab.validate as v

    cases = [v.Case(v._point("steady"), ("fixed-k:3",)), v.Case(v._point("drifted"), ("fixed-k:3",))]
    calls = {"calibrate": 0, "runs": []}
    # the drifted case's first run: host +0.07 ms/forward and E2E −5 %; its second: +0.01 and −1 %
    outcome = {("steady", 1): (0.01, 990.0), ("drifted", 1): (0.07, 950.0), ("drifted", 2): (0.01, 990.0)}

    def fake_calibrate(backend, base):
        calls["calibrate"] += 1
        return HostCalibration(((0.0, v.HostCosts(message_ms=0.1 * calls["calibrate"])),))

    def fake_run_case(case, backend, base, cal, out):
        name = case.scenario.name
        calls["runs"].append((name, cal.message_overhead_ms(0)))
        drift, sim_e2e = outcome[(name, sum(n == name for n, _ in calls["runs"]))]
        return [_row(case=name, strategy="fixed-k:3", sim_e2e_p50=sim_e2e, host_drift_ms=drift)]

    monkeypatch.setattr(v, "select_cases", lambda names, quick: cases)
    monkeypatch.setattr(v, "calibrate", fake_calibrate)
    monkeypatch.setattr(v, "run_case", fake_run_case)
    lines = []
    assert v.run_validation(out_dir=str(tmp_path), out=lines.append) == 0
    # the steady case once with the first calibration; the drifted one again with a second
    assert calls["runs"] == [("steady", 0.1), ("drifted", 0.1), ("drifted", pytest.approx(0.2))]
    base = next(tmp_path.iterdir())
    written = list(csv.DictReader(open(base / "validation.csv")))
    assert [(r["case"], r["rerun"], r["verdict"]) for r in written] == [
        ("steady", "", "ok"), ("drifted", "superseded", "superseded"), ("drifted", "rerun", "ok")]
    assert len(json.loads((base / "calibration.json").read_text())["later"]) == 1
    text = "\n".join(lines)
    assert "calibrating again" in text and "2/2 rows within tolerance" in text
    # a second run that fails is judged like any other: no third try
    outcome[("drifted", 2)] = (0.07, 950.0)
    calls["runs"].clear()
    calls["calibrate"] = 0
    assert v.run_validation(out_dir=str(tmp_path), out=lines.append) == 1
    assert [n for n, _ in calls["runs"]] == ["steady", "drifted", "drifted"]


def test_rejudge_refuses_a_run_made_with_another_profile(tmp_path):
    import json
    from lab.validate import _check_profile
    (tmp_path / "meta.json").write_text(json.dumps({"models": "synthetic:fast"}))
    with pytest.raises(RuntimeError, match="synthetic:fast.*synthetic:" + PROFILE):
        _check_profile(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"models": f"synthetic:{PROFILE}"}))
    _check_profile(tmp_path)


def test_judge_refuses_a_timeline_run_lined_up_otherwise(tmp_path):
    """A lab run with one timeline for the whole run (before restart-per-strategy) cannot pair with
    today's simulator on a time-varying link; a static link pairs whatever the run recorded."""
    from lab.scenario import load_scenario
    from lab.validate import _check_alignment
    osc, lan = load_scenario("oscillating"), load_scenario("lan")
    with pytest.raises(RuntimeError, match="one timeline for the whole run.*restart-per-strategy"):
        _check_alignment(osc, {}, tmp_path)
    _check_alignment(osc, {"timeline_alignment": "restart-per-strategy"}, tmp_path)
    _check_alignment(lan, {}, tmp_path)


# ------------------------------------------------------------------ a real pair's run (judge_run)

STRATS = ["cloud-only", "fixed-k:3", "pipelined:3", "cloud-spec"]


@pytest.fixture(scope="module")
def one_trace(tmp_path_factory) -> str:
    """The shipped embedded-cpu profile with one agreement trace for every prompt (its per-prompt
    agreement, answers and confidence left out): a run's queries are then alike, so the lab sample's
    own uncertainty (ok~) does not blur the verdicts these tests check."""
    from dataclasses import replace

    from lab.models.synthetic import load_profile
    path = tmp_path_factory.mktemp("profiles") / "one-trace.yaml"
    save_profile(replace(load_profile("embedded-cpu"), prompt_agreement=None, prompt_answer=None,
                         prompt_confidence=None), path)
    return str(path)


@pytest.fixture
def real_run(tmp_path, one_trace):
    """A results folder shaped like a real pair's lab run, its records the simulator's own (so its
    compute is the profile's and the link exactly the scenario's)."""
    import json

    from lab.scenario import load_scenario
    from lab.sim.simulator import write_run
    run = write_run(load_scenario("wan-50ms"), tmp_path, strategies=STRATS, profile=one_trace, queries=4,
                    warmup_queries=1, max_new_tokens=24, seed=0)
    meta = json.loads((run / "meta.json").read_text())
    meta.update(models="embedded", dtype="float32", strategies=STRATS, congestion_control="cubic",
                workload={"queries": 4, "warmup_queries": 1, "max_new_tokens": 24, "payload": "tokens",
                          "temperature": 0.0, "prompts": None, "seed": 0})
    (run / "meta.json").write_text(json.dumps(meta))
    return run


def _rewrite(run, strategy, change):
    import json
    path = run / "queries.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(change(r) if r["strategy"] == strategy else r) + "\n" for r in recs))


def test_a_real_pairs_run_judged_on_its_own_compute_agrees_where_nothing_differs(real_run, one_trace):
    from lab.validate import judge_run
    lines = []
    rows = {r.strategy: r for r in judge_run(real_run, profile=one_trace, seeds=1, out=lines.append)}
    # cloud-spec's cloud computes both models in one figure: not judged, and said so.
    assert set(rows) == {"cloud-only", "fixed-k:3", "pipelined:3"}
    assert any("cloud-spec: not judged" in s for s in lines)
    # The compute the run's cycles hold is the shipped profile's, in both regimes; the host cost nothing
    # and every query ran at the run's speed.
    import re
    assert "host 0.00 ms/message" in lines[0]
    for regime in ("sequential strategies", "pipelined:3 (both nodes at once)"):
        line = next(s for s in lines if f"compute, {regime}:" in s)
        td, a, b = map(float, re.search(r"t_draft ([\d.]+) ms, t_verify\(n\) ([\d.]+) \+ ([\d.]+)·n", line).groups())
        assert (td, a, b) == (pytest.approx(78.7, abs=0.05), pytest.approx(192.0, abs=0.2), pytest.approx(4.5, abs=0.05))
    assert any("verify ×1.00–1.00, draft ×1.00–1.00" in s for s in lines)
    for r in rows.values():
        assert r.verdict == "ok" and r.d50 == pytest.approx(0, abs=1e-6) and r.tps_frac == pytest.approx(0, abs=1e-9)
    k, n = rows["pipelined:3"].lab_used
    assert n > 0 and rows["pipelined:3"].sim_used == (k, n)
    # the drafts accepted over those sent, each side: equal where the run was the simulator's; none for cloud-only
    assert 0 < rows["fixed-k:3"].lab_accept < 1 and rows["fixed-k:3"].lab_accept == pytest.approx(rows["fixed-k:3"].sim_accept)
    assert math.isnan(rows["cloud-only"].lab_accept) and math.isnan(rows["cloud-only"].sim_accept)


def test_a_real_pairs_run_fails_the_row_whose_tokens_per_s_or_share_used_differs(real_run, one_trace):
    from lab.validate import judge_run
    _rewrite(real_run, "fixed-k:3", lambda r: {**r, "tokens_per_s": r["tokens_per_s"] * 0.9})
    _rewrite(real_run, "pipelined:3", lambda r: {**r, "optimistic_per_cycle":
                                                 [None if f is None else 1 for f in r["optimistic_per_cycle"]]})
    rows = {r.strategy: r for r in judge_run(real_run, profile=one_trace, seeds=1, out=lambda s: None)}
    assert rows["fixed-k:3"].verdict == "FAIL" and rows["fixed-k:3"].tps_frac == pytest.approx(1 / 0.9 - 1)
    assert not rows["pipelined:3"].used_ok and rows["pipelined:3"].verdict == "FAIL"
    assert rows["cloud-only"].verdict == "ok"


@pytest.mark.parametrize("slower,verdict", [(1.08, "ok"), (1.2, "FAIL")])
def test_a_real_pairs_run_predicted_from_the_profile_alone_is_judged_within_ten_percent(real_run, tmp_path, one_trace,
                                                                                        slower, verdict):
    """--compute profile: the simulator computes at the profile's speed, not the run's.  A profile
    that times the pair `slower` than the run ran predicts every strategy that much slower (less the
    network's share); 10 % is the tolerance."""
    from dataclasses import replace

    from lab.models.synthetic import load_profile
    from lab.validate import PROFILE_TPS_TOLERANCE_FRAC, judge_run
    base = load_profile(one_trace)
    slow = replace(base, t_draft_ms=base.t_draft_ms * slower, verify_a_ms=base.verify_a_ms * slower,
                   verify_b_ms=base.verify_b_ms * slower)
    path = tmp_path / "slow.yaml"
    save_profile(slow, path)
    lines = []
    rows = {r.strategy: r for r in judge_run(real_run, profile=str(path), seeds=1, out=lines.append,
                                             compute_from="profile")}
    assert any(f"t_draft {slow.t_draft_ms:.1f} ms" in s and "from the profile" in s for s in lines)
    assert not any("each query at its own speed" in s for s in lines)
    # the run's compute over the profile's, and the warning once it moved past half the tolerance
    host = next(s for s in lines if "the host during this run" in s)
    assert f"cloud-only ×{1 / slower:.2f}, fixed-k:3 ×{1 / slower:.2f}/×{1 / slower:.2f}" in host
    assert ("off the speed it was profiled at" in host) == (1 - 1 / slower > PROFILE_TPS_TOLERANCE_FRAC / 2)
    for r in rows.values():
        assert -(1 - 1 / slower) - 1e-9 <= r.tps_frac < -0.03 and r.tps_tolerance == PROFILE_TPS_TOLERANCE_FRAC
    # (pipelined:3's network time per cycle moves with the compute: the edge drafts ahead meanwhile)
    assert {rows[s].verdict for s in ("cloud-only", "fixed-k:3")} == {verdict}


def test_a_querys_speed_is_its_nodes_compute_over_the_runs():
    """query_speed: the median ratio of a query's verifies to t_verify(n) and of its draft forwards
    (sequential: edge_ms over K; drafted ahead: hidden_ms over K + 1) to t_draft, first cycle left out."""
    from lab.sim.simulator import ComputeProfile
    from lab.validate import query_speed
    c = ComputeProfile(t_draft_ms=50, verify_a_ms=400, verify_b_ms=50, prefill_ms_per_token=1, alpha=0.8)
    seq = {"strategy": "fixed-k:3", "placement": "split", "k_per_cycle": [3, 3, 3, 1], "cloud_compute_ms_per_cycle": [999, 720, 720, 600],
           "edge_compute_ms_per_cycle": [999, 165, 165, 55]}
    assert query_speed(seq, c) == (pytest.approx(1.2), pytest.approx(1.1))
    pipe = {**seq, "strategy": "pipelined:3", "edge_compute_ms_per_cycle": [999, 0, 0, 0], "hidden_ms_per_cycle": [999, 240, 240, 0]}
    assert query_speed(pipe, c) == (pytest.approx(1.2), pytest.approx(1.2))
    cloud = {"strategy": "cloud-only", "placement": "cloud", "k_per_cycle": [0, 0, 0], "cloud_compute_ms_per_cycle": [999, 450, 450],
             "edge_compute_ms_per_cycle": [0, 0, 0]}
    assert query_speed(cloud, c) == (pytest.approx(1.0), 1.0)


def test_judge_run_refuses_a_synthetic_run_by_name(real_run, one_trace):
    import json

    from lab.results import ResultsError
    from lab.validate import judge_run
    meta = json.loads((real_run / "meta.json").read_text())
    (real_run / "meta.json").write_text(json.dumps({**meta, "models": "synthetic:fast"}))
    with pytest.raises(ResultsError, match=r"ran 'synthetic:fast'.*`validate SCENARIO`"):
        judge_run(real_run, profile=one_trace, out=lambda s: None)


def test_a_runs_ranking_is_by_pooled_tokens_per_s_on_each_side():
    row = lambda s, lab, sim: RunRow(s, 12, 80, 50.0, 55.0, 50.0, 52.0, lab, sim,  # noqa: E731
                                     lab_pooled=lab, sim_pooled=sim)
    same = [row("cloud-only", 4.0, 4.1), row("fixed-k:5", 7.5, 7.6), row("nasd", 7.0, 7.1)]
    assert ranking_line(same).endswith("the same order")
    assert "lab: fixed-k:5 7.50 > nasd 7.00 > cloud-only 4.00" in ranking_line(same)
    swapped = same[:2] + [row("nasd", 7.0, 7.9)]
    assert ranking_line(swapped).endswith("orders differ: fixed-k:5 vs nasd")
    assert "simulator: nasd 7.90 > fixed-k:5" in ranking_line(swapped)


def test_a_tie_in_the_ranking_agrees_with_either_order():
    """nasd and ucb-specstop drafting the same blocks in the simulator tie there; the lab's order of the
    two then contradicts nothing, but an order the simulator does resolve still counts."""
    row = lambda s, lab, sim: RunRow(s, 12, 80, 50.0, 55.0, 50.0, 52.0, lab, sim,  # noqa: E731
                                     lab_pooled=lab, sim_pooled=sim)
    rows = [row("nasd", 12.24, 12.48), row("ucb-specstop", 12.44, 12.48), row("fixed-k:9", 10.78, 11.32)]
    line = ranking_line(rows)
    assert "simulator: nasd 12.48 = ucb-specstop 12.48 > fixed-k:9 11.32" in line
    assert line.endswith("the same order but for ties within 0.5 %")
    rows[2] = row("fixed-k:9", 12.74, 11.32)
    assert ranking_line(rows).endswith("orders differ: nasd vs fixed-k:9, ucb-specstop vs fixed-k:9")


def test_a_nasd_table_rewritten_after_the_run_is_said(tmp_path):
    from lab.validate import table_changes
    table = tmp_path / "t.nasd.json"
    prov = {"date": "2026-12-05 15:14 UTC", "git_commit": "a"}
    table.write_text(json.dumps({"rows": [], "provenance": prov}))
    q = {"strategy": "nasd", "controller": {"table": str(table), "table_provenance": prov}}
    assert table_changes([q, {"strategy": "fixed-k:3"}]) == []
    table.write_text(json.dumps({"rows": [], "provenance": {**prov, "date": "2026-12-05 18:20 UTC"}}))
    notes = table_changes([q, q])
    assert len(notes) == 1 and "rewritten after this run (2026-12-05 15:14 UTC → 2026-12-05 18:20 UTC)" in notes[0]
    table.unlink()
    assert "is gone" in table_changes([q])[0]


def test_the_host_speed_line_warns_only_past_half_the_profiles_tolerance():
    """validate --compute profile says how long the host took against the profile, per strategy (medians
    over its queries; draft time where it drafts) and warns once either moved by more than half the
    10 % a prediction is allowed."""
    from lab.validate import host_speed_line
    steady = host_speed_line({"cloud-only": [(1.02, 1.0), (0.98, 1.0), (1.03, 1.0)],
                              "nasd": [(0.99, 0.97), (1.01, 1.03), (1.04, 1.01)]}, {"nasd"})
    assert "cloud-only ×1.02, nasd ×1.01/×1.01" in steady and "off the speed" not in steady
    slow = host_speed_line({"cloud-only": [(1.0, 1.0)], "nasd": [(1.2, 1.0), (1.25, 1.04), (1.1, 0.99)]}, {"nasd"})
    assert "nasd ×1.20/×1.00; it ran up to 20 % off the speed it was profiled at" in slow
    assert "no split or cloud-only cycle" in host_speed_line({})


def test_a_profile_that_timed_other_kernels_than_the_run_is_named():
    """The padding choice and the kernels are compared, not the timings they were chosen by."""
    from lab.validate import kernels_differ
    padded = "onednn-packed (197 Linear layers; short forwards padded to 4 rows: a step {} ms, {} unpadded)"
    unpadded = "onednn-packed (197 Linear layers; unpadded: a step 88 ms, 91 padded to 4 rows)"
    int8 = "int8-dynamic (fbgemm, per-channel; 169 Linear layers)"
    run = {"cloud": {"target_kernels": padded.format(277, 306)}, "edge": {"draft_kernels": int8}}
    assert kernels_differ({"target_kernels": padded.format(159, 209), "draft_kernels": int8}, run) == []
    (note,) = kernels_differ({"target_kernels": unpadded, "draft_kernels": int8}, run)
    assert note.startswith("the profile timed the target as 'onednn-packed (197 Linear layers; unpadded'")
    assert "padded to 4 rows'" in note
    assert kernels_differ({}, run) == [] and kernels_differ({"target_kernels": unpadded}, {}) == []


def test_an_int8_drafts_profile_from_before_the_one_token_catch_up_is_named():
    from dataclasses import replace

    from lab.models.synthetic import load_profile, stale_catch_up
    prof, int8 = load_profile("fast"), {"draft_kernels": "int8-dynamic (fbgemm, per-channel; 169 Linear layers)"}
    assert "predates its one-token-a-forward catch-up" in stale_catch_up(int8, prof)
    assert stale_catch_up(int8, replace(prof, draft_catch_up_forwards=2)) is None
    assert stale_catch_up({"draft_kernels": "onednn-packed (169 Linear layers)"}, prof) is None
    assert stale_catch_up({}, prof) is None
