"""A node run by hand with a bad argument says which, as an error event, and exits 2 (no traceback)."""
import json

import pytest

from edge_node.__main__ import main as edge_main


def _edge(capsys, tmp_path, **over) -> tuple[int, dict]:
    args = {"--cloud": "tcp://198.18.0.2:5555", "--models": "synthetic:fast", "--strategies": "fixed-k:3",
            "--out": str(tmp_path), "--workload": json.dumps({"queries": 1, "warmup_queries": 0}), **over}
    rc = edge_main([x for kv in args.items() for x in kv] + ["--standalone"])
    return rc, json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("flag,value,named", [
    ("--strategies", "fixed-k:3,warp-drive", "warp-drive"),
    ("--workload", "{queries: 1", "--workload"),
    ("--workload", "[1, 2]", "--workload"),
    ("--reply-budget", "nope", "--reply-budget"),
    ("--models", "synthetic:no-such-profile", "no-such-profile"),
    ("--draft-kernels", "int8", "kernels 'int8'"),          # synthetic models have no Linear layers
])
def test_edge_names_the_bad_argument(capsys, tmp_path, flag, value, named):
    rc, event = _edge(capsys, tmp_path, **{flag: value})
    assert rc == 2 and event["event"] == "error" and named in event["message"]


def test_an_int8_draft_proposes_but_the_named_model_answers_alone(monkeypatch):
    """edge-only's answers are the draft model's own: with an int8 draft (faster proposals, the
    target's output untouched) the edge loads the draft again, packed fp32, for what it answers alone."""
    import argparse

    import edge_node.__main__ as edge
    from lab.core.strategies import make_strategy
    from lab.models import cpu, select
    loaded = []
    monkeypatch.setattr(select, "load_role", lambda models, role, **kw: loaded.append(kw["kernels"]) or f"{role}:{kw['kernels']}")
    monkeypatch.setattr(edge, "warm_up", lambda m: None)
    monkeypatch.setattr(cpu, "int8_runs_here", lambda dtype: dtype == "float32")
    a = argparse.Namespace(models="embedded", dtype="auto", threads=2, draft_kernels=None)
    split, with_alone = [make_strategy("fixed-k:3")], [make_strategy("fixed-k:3"), make_strategy("edge-only")]
    assert edge._alone_model(a, "int8 draft", split) == "int8 draft" and loaded == []
    assert edge._alone_model(a, "int8 draft", with_alone) == "draft:packed" and loaded == ["packed"]
    a.draft_kernels = "packed"
    assert edge._alone_model(a, "packed draft", with_alone) == "packed draft"
    a.models, a.draft_kernels = "synthetic:fast", None
    assert edge._alone_model(a, "synthetic draft", with_alone) == "synthetic draft" and loaded == ["packed"]
