"""Time-varying links under the runner: every strategy meets the same link trace, and a link change
that fails stops the run with status failed and the reason."""
import json
from pathlib import Path

import pytest
import yaml

from lab.scenario import SCENARIO_DIR, load_scenario, parse_scenario
from lab.results import read_jsonl
from tests.e2e.test_scenarios import ROOT, leftovers, lab, only_run_dir

pytestmark = pytest.mark.root
STRATEGIES = ["fixed-k:5", "fixed-k:3"]
SPEEDUP = 5                      # oscillating's 20 s period shortened to 4 s (RTT 10 ms / 200 ms, 2 s each)
CLEAR_BEFORE_S, CLEAR_AFTER_S = 0.3, 0.1    # cycles this close to a change may straddle it: not judged


def _short_oscillating(tmp_path: Path) -> Path:
    doc = yaml.safe_load((SCENARIO_DIR / "oscillating.yaml").read_text())
    doc["name"] = "oscillating-short"
    doc["timeline"]["repeat_every_s"] /= SPEEDUP
    for step in doc["timeline"]["steps"]:
        step["at_s"] /= SPEEDUP
    path = tmp_path / "oscillating-short.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_oscillating_every_strategy_meets_the_same_trace(tmp_path):
    path = _short_oscillating(tmp_path)
    sc = load_scenario(str(path))
    period = sc.timeline.repeat_every_s
    out = tmp_path / "out"
    r = lab("scenario", str(path), "--models", "synthetic:fast", "--strategies", ",".join(STRATEGIES),
            "--queries", "8", "--warmup", "1", "--max-new-tokens", "48", "--out", str(out), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run_dir(out)
    meta = json.loads((run / "meta.json").read_text())
    queries = read_jsonl(run / "queries.jsonl")
    cycles = read_jsonl(run / "cycles.jsonl")
    assert meta["status"] == "complete"

    # Per-cycle network time against the trace, relative to each strategy's first measured query.
    starts = {q["strategy"]: q["t_start_mono_ms"] for q in queries if q["query_index"] == 1}
    q_start = {(q["strategy"], q["query_index"]): q["t_start_mono_ms"] for q in queries}
    for s in STRATEGIES:
        judged, wrong = {10: 0, 200: 0}, []
        for c in cycles:
            if c["strategy"] != s or c["warmup"]:
                continue
            t = (q_start[(s, c["query_index"])] + c["t_ms"] - c["cycle_ms"] - starts[s]) / 1000
            phase = t % (period / 2)
            if phase > period / 2 - CLEAR_BEFORE_S or phase < CLEAR_AFTER_S:
                continue
            rtt = sc.timeline.link_at(t, sc.link).rtt_ms
            judged[rtt] += 1
            if (c["network_ms"] > 105) != (rtt == 200):
                wrong.append((round(t, 3), round(c["network_ms"], 1), rtt))
        assert judged[10] >= 10 and judged[200] >= 5, f"{s} did not meet both phases: {judged}"
        assert len(wrong) <= 0.02 * sum(judged.values()), \
            f"{s}: cycles off the trace (s after its measured start, network ms, RTT expected): {wrong[:8]}"

    # meta.json says how the timeline was lined up, and the changes each strategy met.
    assert meta["timeline_alignment"] == "restart-per-strategy"
    assert [t["strategy"] for t in meta["timeline_starts"]] == STRATEGIES
    for t in meta["timeline_starts"]:        # the timeline starts just before the first measured query
        assert 0 <= starts[t["strategy"]] - t["t_mono_ms"] < 50
    changes = {s: [c for c in meta["link_changes"] if c["strategy"] == s and not c.get("reset")]
               for s in STRATEGIES}
    begun = {t["strategy"]: t["t_mono_ms"] for t in meta["timeline_starts"]}
    for s, cs in changes.items():
        assert len(cs) >= 2
        assert all(0 <= c["t_mono_ms"] - begun[s] - 1000 * c["due_s"] < 250 for c in cs), cs    # + apply_ms
    trace = {s: [(c["due_s"], c["link"]["uplink"]["delay_ms"]) for c in cs] for s, cs in changes.items()}
    n = min(map(len, trace.values()))
    assert trace[STRATEGIES[0]][:n] == trace[STRATEGIES[1]][:n] == [(2.0, 100), (4.0, 5), (6.0, 100)][:n]
    assert leftovers() == ([], [])


def test_a_failing_link_change_fails_the_run(tmp_path, monkeypatch):
    """Every link change raises (injected): the run stops at the timeline's first change, ends with
    status failed, says why in meta.json and on the RunError, and leaves nothing behind."""
    from lab.runner import RunError, RunOptions, run_scenario
    from netns.link import LinkError
    from netns.topology import Topology

    def refuse(self, link):
        raise LinkError("injected: the link refused the change")

    monkeypatch.setattr(Topology, "change", refuse)
    monkeypatch.chdir(ROOT)                 # the nodes start as `python -m …` from here
    sc = parse_scenario({"name": "refusing-link", "link": {"delay_ms": 5},
                         "timeline": {"steps": [{"at_s": 0, "link": {"delay_ms": 5}},
                                                {"at_s": 0.5, "link": {"delay_ms": 50}}]}})
    opts = RunOptions(models="synthetic:fast", strategies=("fixed-k:3",), queries=40, warmup_queries=0,
                      out=str(tmp_path), progress=False)
    with pytest.raises(RunError, match=r"link change at t=0.5 s of fixed-k:3's timeline .*LinkError: injected"):
        run_scenario(sc, opts, out=lambda s: None)
    meta = json.loads((only_run_dir(tmp_path) / "meta.json").read_text())
    assert meta["status"] == "failed"
    assert "LinkError: injected" in meta["failure_reason"]
    assert len(read_jsonl(only_run_dir(tmp_path) / "queries.jsonl")) < 40
    assert leftovers() == ([], [])
