"""The nodes over a real lab link, with synthetic models (fast, deterministic)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab.models.synthetic import load_synthetic
from netns.topology import CLOUD_ADDR
from tests.netns.conftest import sym

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
URL = f"tcp://{CLOUD_ADDR}:5555"
WORKLOAD = {"queries": 3, "warmup_queries": 0, "max_new_tokens": 40, "temperature": 0.0, "payload": "tokens",
            "prompts": None, "seed": 0}


def start_cloud(topo, models="synthetic:fast"):
    p = topo.popen("cloud", [sys.executable, "-m", "cloud_node", "--bind", URL, "--models", models],
                   stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert json.loads(line)["event"] == "ready", line
    return p


def run_edge(topo, out: Path, strategies: str, timeout_s=120, models="synthetic:fast", reply_timeout_s=3.0):
    return topo.popen("edge", [sys.executable, "-m", "edge_node", "--cloud", URL, "--models", models,
                               "--strategies", strategies, "--out", str(out), "--workload", json.dumps(WORKLOAD),
                               "--standalone", "--reply-timeout-s", str(reply_timeout_s)],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "queries.jsonl").read_text().splitlines()]


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def test_every_strategy_lossless_over_a_lossy_link(topo, tmp_path):
    topo.up(sym(delay_ms=10, loss_pct=5, rate_mbit=10))
    cloud = start_cloud(topo)
    try:
        edge = run_edge(topo, tmp_path, "cloud-only,cloud-spec,fixed-k:1,fixed-k:3,fixed-k:5,fixed-k:15")
        out, err = edge.communicate(timeout=180)
        assert edge.returncode == 0, err[-2000:]
    finally:
        stop(cloud)
    recs = records(tmp_path)
    by_prompt = {}
    for r in recs:
        assert not r["edge_fallback"], r["fallback_reason"]
        by_prompt.setdefault(r["prompt_id"], set()).add(tuple(r["output_token_ids"]))
    # Every strategy that uses the target produced the same tokens for each prompt.
    assert all(len(outputs) == 1 for outputs in by_prompt.values()), by_prompt
    spec_recs = [r for r in recs if r["placement"] == "split"]
    assert all(sum(r["k_per_cycle"]) > 0 for r in spec_recs)
    assert all(len(r["network_ms_per_cycle"]) == len(r["k_per_cycle"]) for r in recs)


def test_cloud_survives_hostile_frames(topo):
    topo.up(sym(delay_ms=1))
    cloud = start_cloud(topo)
    try:
        token_hash = load_synthetic("target", "fast").tokenizer_hash
        p = topo.popen("edge", [sys.executable, str(Path(__file__).with_name("fuzz_client.py")), URL, "1000",
                                token_hash], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        res = json.loads(out.strip().splitlines()[-1])
        assert res["sent"] == 1000 and res["errors"] >= 900 and res["alive"] and res["oversize_refused"]
        assert cloud.poll() is None, "the cloud node died"
    finally:
        stop(cloud)


def test_cloud_killed_mid_run_edge_finishes_edge_only(topo, tmp_path):
    topo.up(sym(delay_ms=5))
    cloud = start_cloud(topo)
    t0 = time.monotonic()
    edge = run_edge(topo, tmp_path, "fixed-k:3", reply_timeout_s=2.0)
    try:
        time.sleep(0.4)
        cloud.send_signal(signal.SIGKILL)
        out, err = edge.communicate(timeout=60)
    finally:
        stop(cloud)
        stop(edge)
    assert edge.returncode == 0, err[-2000:]
    recs = records(tmp_path)
    assert len(recs) == WORKLOAD["queries"]
    assert any(r["edge_fallback"] for r in recs)
    assert all(r["n_tokens"] == WORKLOAD["max_new_tokens"] for r in recs)
    assert time.monotonic() - t0 < 40
