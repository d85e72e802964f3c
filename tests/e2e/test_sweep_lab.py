"""`python -m lab sweep --lab`: lab points through the runner, resumable; and the same through Ray."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.e2e.conftest import ctrl_c_as_in_a_terminal

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
ARGS = ["sweep", "--lab", "--rtt-ms", "10,200", "--rate-mbit", "10", "--jitter-ms", "0", "--models", "synthetic:fast",
        "--strategies", "cloud-only,fixed-k:5", "--queries", "2", "--runs", "1"]


def lab(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_lab_sweep_interrupted_and_resumed(tmp_path):
    out = tmp_path / "sweep"
    p = subprocess.Popen([sys.executable, "-m", "lab", *ARGS, "--out", str(out)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=ctrl_c_as_in_a_terminal)
    deadline = time.monotonic() + 300
    while not (out / "points" / "grid-10ms-10mbit" / "point.json").exists():      # the first point finished
        assert p.poll() is None and time.monotonic() < deadline, p.communicate(timeout=10)
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "1/2 points finished and kept" in err, err
    assert json.loads((out / "meta.json").read_text())["status"] == "interrupted"
    r = lab(*ARGS, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "1 already finished" in r.stdout
    df = pd.read_csv(out / "summary.csv")
    assert sorted(df["rtt_ms"].unique()) == [10, 200] and len(df) == 4 and (df["queries"] == 2).all()
    best = pd.read_csv(out / "best.csv").set_index("rtt_ms")
    assert best.loc[200, "best"] == "cloud-only"        # synthetic:fast: a 200 ms cycle costs more than streaming


def test_lab_sweep_through_local_ray_gives_the_same_table(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (optional extra); the --ray lab path was NOT tested")
    plain, viaray = tmp_path / "plain", tmp_path / "ray"
    for out, extra in ((plain, []), (viaray, ["--ray", "local"])):
        r = lab(*ARGS, "--out", str(out), *extra)
        assert r.returncode == 0, (r.stdout, r.stderr, (out / "meta.json").read_text())
    a, b = pd.read_csv(plain / "summary.csv"), pd.read_csv(viaray / "summary.csv")
    key = ["rtt_ms", "strategy", "run", "queries", "backend"]
    pd.testing.assert_frame_equal(a[key], b[key])
    assert list(pd.read_csv(plain / "best.csv")["best"]) == list(pd.read_csv(viaray / "best.csv")["best"])
    assert json.loads((viaray / "meta.json").read_text())["ray"] == "local"
    # the lab run folders came back whole from the Ray task
    assert all((viaray / d / "queries.jsonl").exists() and (viaray / d / "meta.json").exists() for d in b["run_dir"])
