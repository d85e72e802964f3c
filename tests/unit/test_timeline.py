"""Time-varying links are fair across strategies: every strategy meets the same link trace.

The timeline restarts from its t=0 with each strategy's first measured query (warm-up runs on the
t=0 link), in the simulator (simulate) and in the lab (lab/runner.py's _Timeline, driven here with
a fake topology); a link change that raises stops a lab run with the reason.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from lab.runner import RunError, _next_event, _Proc, _Timeline
from lab.scenario import TIMELINE_ALIGNMENT, load_scenario, parse_scenario
from lab.sim.simulator import simulate, write_run

STRATEGIES = ["fixed-k:5", "fixed-k:3"]


def _measured_cycles(records: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """strategy → (cycle start relative to the strategy's first measured query, network ms) per cycle.

    Simulated queries run back to back on one clock (each starts where the previous one ended), so a
    query's start is the sum of the E2E times before it; the few ms before the first query (the hello)
    shift every start alike and are far below the tolerances used."""
    out: dict[str, list[tuple[float, float]]] = {}
    t, start = 0.0, {}
    for r in records:
        s = r["strategy"]
        if not r["warmup"]:
            start.setdefault(s, t)
            for t_end, cycle, net in zip(r["t_ms_per_cycle"], r["cycle_ms_per_cycle"], r["network_ms_per_cycle"]):
                out.setdefault(s, []).append((t + t_end - cycle - start[s], net))
        t += r["e2e_ms"]
    return out


def test_simulated_strategies_meet_the_same_link_trace_on_oscillating():
    """Each strategy's split cycles see RTT 10 ms for the first 10 s after its measured start, RTT 200 ms
    for the next 10 s, and so on — whatever the strategies before it took."""
    sc = load_scenario("oscillating")
    records = [q for q, _ in simulate(sc, STRATEGIES, "fast", queries=60, max_new_tokens=48, seed=0)]
    cycles = _measured_cycles(records)
    assert set(cycles) == set(STRATEGIES)
    for s, cs in cycles.items():
        assert cs[-1][0] > 25_000, f"{s} spans only {cs[-1][0]:.0f} ms: both phases must be seen"
        judged = [(t, net) for t, net in cs if 300 < t % 10_000 < 9_500]    # clear of a change
        wrong = [(round(t), round(net, 1)) for t, net in judged
                 if abs(net - sc.timeline.link_at(t / 1000, sc.link).rtt_ms) > 2.0]
        assert len(judged) > 50 and not wrong, f"{s}: cycles off the trace (t ms, network ms): {wrong[:8]}"


def test_simulated_link_changes_restart_at_each_measured_start():
    """The link model's own record of the changes it applied: the same offsets and links relative to
    each strategy's measured start, and the t=0 link from each strategy's start until then."""
    sc = load_scenario("oscillating")
    links, starts = [], []
    records = [q for q, _ in simulate(sc, STRATEGIES, "fast", queries=60, max_new_tokens=48, seed=0,
                                      link_out=links, timeline_out=starts)]
    assert [s["strategy"] for s in starts] == STRATEGIES
    link0 = sc.timeline.link_at(0.0, sc.link)
    log = links[0].link_log
    traces = []
    for s in starts:
        end = s["start_ms"] + sum(r["e2e_ms"] for r in records if r["strategy"] == s["strategy"] and not r["warmup"])
        trace = [(round(t - s["start_ms"], 6), link) for t, link in log if s["start_ms"] <= t < end - 1e-6]
        traces.append(trace)
        assert trace and all(link == sc.timeline.link_at(dt / 1000, sc.link) for dt, link in trace)
        assert [dt for dt, _ in trace[:2]] == [10_000, 20_000]
    n = min(len(t) for t in traces)
    assert n >= 2 and traces[0][:n] == traces[1][:n]
    # Between the first strategy's last change and the second's measured start the link went back to
    # its t=0 state (held through the second strategy's warm-up).
    before_second = [link for t, link in log if t <= starts[1]["start_ms"]]
    assert before_second[-1] == link0
    warm = [r for r in records if r["strategy"] == STRATEGIES[1] and r["warmup"]]
    assert warm and all(abs(x - link0.rtt_ms) < 2.0 for r in warm for x in r["network_ms_per_cycle"])


def test_write_run_records_the_alignment(tmp_path):
    sc = load_scenario("oscillating")
    run_dir = write_run(sc, tmp_path, strategies=STRATEGIES, profile="fast", queries=2, max_new_tokens=8)
    import json
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["timeline_alignment"] == TIMELINE_ALIGNMENT == "restart-per-strategy"
    assert [s["strategy"] for s in meta["timeline_starts"]] == STRATEGIES
    assert meta["timeline_starts"][1]["start_ms"] > meta["timeline_starts"][0]["start_ms"] > 0


def test_timeline_changes_agree_with_link_at():
    """Timeline.changes (both the runner's and the simulator's schedule) says what link_at says, also
    for a repeating timeline whose first step comes after the period's start (that period begins on
    the base link)."""
    sc = parse_scenario({"name": "t", "link": {"delay_ms": 5, "rate_mbit": 50},
                         "timeline": {"repeat_every_s": 4, "steps": [{"at_s": 1, "link": {"delay_ms": 30}},
                                                                     {"at_s": 2, "link": {"delay_ms": 60}}]}})
    got = []
    for t, link in sc.timeline.changes(sc.link, start_s=100.0):
        if t > 110:
            break
        got.append((t, link.rtt_ms))
        assert link == sc.timeline.link_at(t - 100.0 + 1e-9, sc.link)
        assert link.uplink.rate_mbit == 50
    assert got == [(101, 60), (102, 120), (104, 10), (105, 60), (106, 120), (108, 10), (109, 60), (110, 120)]
    assert list(parse_scenario({"name": "s", "link": {}}).timeline.changes(sc.link)) == []


# ------------------------------------------------------------------ the lab runner's timeline

class FakeTopo:
    """Topology's change() and link, recording what was applied; `fail_at`: the call that raises."""

    def __init__(self, link, fail_at: int | None = None):
        self.link, self.fail_at, self.calls = link, fail_at, []

    def check_intact(self) -> None:
        pass                                      # the namespaces are still there

    def change(self, link) -> float:
        self.calls.append((time.monotonic(), link))
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise OSError("injected failure")
        self.link = link
        return 0.1


def _short_oscillating():
    return parse_scenario({"name": "osc", "link": {"delay_ms": 5},
                           "timeline": {"repeat_every_s": 0.4, "steps": [{"at_s": 0, "link": {"delay_ms": 5}},
                                                                         {"at_s": 0.2, "link": {"delay_ms": 50}}]}})


def test_runner_timeline_restarts_per_strategy():
    sc = _short_oscillating()
    link0 = sc.timeline.link_at(0, sc.link)
    topo = FakeTopo(link0)
    tl = _Timeline(topo, sc)
    for strategy, runs_s in (("a", 0.3), ("b", 0.3)):
        tl.hold(strategy)
        assert topo.link == link0          # the warm-up runs on the t=0 link
        tl.start(strategy)
        time.sleep(runs_s)
        tl.stop()
    meta = tl.meta()
    assert meta["timeline_alignment"] == "restart-per-strategy" and "failure_reason" not in meta
    starts = {s["strategy"]: s["t_mono_ms"] for s in meta["timeline_starts"]}
    changes = [c for c in meta["link_changes"] if not c.get("reset")]
    rel = {s: [(round(c["t_mono_ms"] - starts[s]), c["link"]["uplink"]["delay_ms"])
               for c in changes if c["strategy"] == s] for s in starts}
    due = {s: [(round(c["due_s"] * 1000), c["link"]["uplink"]["delay_ms"]) for c in changes if c["strategy"] == s]
           for s in starts}
    assert due["a"] == [(200, 50)]
    assert due["b"][:1] == [(200, 50)]
    for s in starts:                       # applied when due, relative to the strategy's own start
        assert all(abs(t - d) < 60 for (t, _), (d, _) in zip(rel[s], due[s])), rel
    # b's start put the link back to the t=0 state (a ended on 50 ms after 0.3 s)
    resets = [c for c in meta["link_changes"] if c.get("reset")]
    assert [c["strategy"] for c in resets] == ["b"] and resets[0]["link"] == link0.to_dict()


@pytest.fixture
def silent_edge():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE)
    proc = _Proc("edge", p)
    try:
        yield proc
    finally:
        proc.stop()


def test_a_failing_link_change_stops_the_run_with_the_reason(silent_edge):
    """The change at t=0.2 s raises: the runner's wait for the edge's next event ends with RunError
    naming the change and the error, and meta() carries it as failure_reason."""
    sc = _short_oscillating()
    topo = FakeTopo(sc.timeline.link_at(0, sc.link), fail_at=1)
    tl = _Timeline(topo, sc)
    tl.hold("fixed-k:3")
    tl.start("fixed-k:3")
    t0 = time.monotonic()
    with pytest.raises(RunError, match=r"link change at t=0.2 s of fixed-k:3's timeline .*OSError: injected"):
        _next_event(silent_edge, tl, topo)
    assert time.monotonic() - t0 < 3.0
    tl.close()
    assert "injected failure" in tl.meta()["failure_reason"]
