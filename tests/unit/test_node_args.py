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
