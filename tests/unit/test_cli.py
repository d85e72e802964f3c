"""The CLI as a user meets it: usage errors are one line with exit 2; `sim` writes a results folder."""
import csv

import pytest

from lab.cli import main


def test_sim_writes_results(tmp_path, capsys):
    rc = main(["sim", "lossy-5pct", "--strategies", "cloud-only,fixed-k:3", "--queries", "2", "--warmup", "0",
               "--out", str(tmp_path)])
    assert rc == 0
    (run,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    rows = list(csv.DictReader(open(run / "summary.csv")))
    assert [r["strategy"] for r in rows] == ["cloud-only", "fixed-k:3"]
    assert all(r["backend"] == "sim" for r in rows)
    assert "fixed-k:3" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["sim", "no-such-scenario"], "no scenario of that name"),
    (["sim", "lan", "--models", "embedded"], "synthetic"),
    (["sim", "lan", "--delay-ms", "-3"], "--delay-ms"),
    # The flag given is named even when the field it breaks is another (jittery has ±10 ms jitter).
    (["sim", "jittery", "--delay-ms", "1"], "--delay-ms 1: the link's jitter_ms must be <= delay_ms (1.0)"),
])
def test_usage_errors_are_one_line(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err
