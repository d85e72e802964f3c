"""Whole scenarios through `python -m lab scenario`, as a user runs them."""
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]


def lab(*args, timeout=900, **kw):
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


def only_run_dir(base: Path) -> Path:
    dirs = [d for d in base.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def summary(run: Path) -> dict[str, dict]:
    with open(run / "summary.csv") as f:
        return {row["strategy"]: row for row in csv.DictReader(f)}


def leftovers() -> tuple[list[str], list[str]]:
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    procs = subprocess.run(["pgrep", "-af", "edge_node|cloud_node|netns.wire"], capture_output=True, text=True,
                           timeout=10).stdout
    return [l for l in ns.splitlines() if l.startswith("sdl-")], [l for l in procs.splitlines() if l.strip()]


def test_lan_synthetic_no_retransmissions(tmp_path):
    r = lab("scenario", "lan", "--models", "synthetic:fast", "--strategies", "cloud-only,fixed-k:3,edge-only",
            "--queries", "2", "--warmup", "1", "--max-new-tokens", "30", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run_dir(tmp_path)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "complete" and meta["backend"] in ("wire", "netem")
    s = summary(run)
    assert set(s) == {"cloud-only", "fixed-k:3", "edge-only"}
    assert all(int(float(row["tcp_retrans_segs"])) == 0 for row in s.values())
    assert float(s["fixed-k:3"]["acceptance"]) > 0
    lines = (run / "queries.jsonl").read_text().splitlines()
    assert len(lines) == 9 and sum(json.loads(l)["warmup"] for l in lines) == 3
    assert "fixed-k:3" in r.stdout and "TTFT" in r.stdout


def _ctrl_c_as_in_a_terminal():
    """SIGINT back to its default in the child: a suite started in the background (CI under `&`,
    nohup) inherits SIGINT *ignored*, and Python then never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_leaves_nothing_and_marks_the_run(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "lab", "scenario", "wan-50ms", "--models", "synthetic:fast",
                          "--strategies", "fixed-k:3,cloud-only", "--queries", "20", "--warmup", "0",
                          "--out", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=_ctrl_c_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 120
        run = None
        while time.monotonic() < deadline:
            dirs = [d for d in tmp_path.iterdir() if d.is_dir()] if tmp_path.exists() else []
            if dirs and (dirs[0] / "queries.jsonl").exists() and (dirs[0] / "queries.jsonl").stat().st_size:
                run = dirs[0]
                break
            time.sleep(0.2)
        assert run is not None, "no query finished in time"
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert p.returncode == 130
    ns, procs = leftovers()
    assert not ns and not procs, (ns, procs)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    assert not (run / "summary.csv").exists()
    assert (run / "summary.partial.csv").exists()


@pytest.mark.models
def test_embedded_pair_lossy_lossless_and_retransmits(tmp_path):
    """The real pair across 5 % loss: fp32 (bf16 ties can flip a token), every strategy that uses
    the target yields the target's own greedy output, and the kernel retransmitted."""
    r = lab("scenario", "lossy-5pct", "--models", "embedded", "--dtype", "float32",
            "--strategies", "cloud-only,fixed-k:1,fixed-k:3,fixed-k:5,fixed-k:15,cloud-spec",
            "--queries", "2", "--warmup", "0", "--max-new-tokens", "24", "--out", str(tmp_path), timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    run = only_run_dir(tmp_path)
    recs = [json.loads(l) for l in (run / "queries.jsonl").read_text().splitlines()]
    by_prompt: dict[str, set] = {}
    for rec in recs:
        assert not rec["edge_fallback"], rec["fallback_reason"]
        by_prompt.setdefault(rec["prompt_id"], set()).add(tuple(rec["output_token_ids"]))
    assert len(by_prompt) == 2 and all(len(v) == 1 for v in by_prompt.values()), by_prompt
    s = summary(run)
    assert sum(int(float(row["tcp_retrans_segs"])) for row in s.values()) > 0
