"""fallback: cloud on the real nodes (synthetic pair, localhost, no namespaces): the cloud continues
alone from the accepted prefix and the output is the target's greedy output, token for token."""
import json
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cloud_wins_table(tmp_path: Path) -> Path:
    """A table whose every row says the cloud beats speculation (localhost is never past the reversal)."""
    def row(net):
        return {"rtt_ms": net, "network_ms": net, "k": 3, "split_tokens_per_s": 100.0,
                "tokens_per_s_by_k": {str(k): 100.0 - k for k in range(1, 21)},
                "cloud_tokens_per_s": 1e6, "edge_tokens_per_s": 1.0}
    p = tmp_path / "cloud-wins.nasd.json"
    p.write_text(json.dumps({"rows": [row(0), row(100)], "provenance": {"test": True}}))
    return p


def test_nasd_cloud_fallback_on_the_nodes_is_lossless(tmp_path):
    port, table = _free_port(), _cloud_wins_table(tmp_path)
    cloud = subprocess.Popen([sys.executable, "-m", "cloud_node", "--bind", f"tcp://127.0.0.1:{port}",
                              "--models", "synthetic:validation"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        assert '"ready"' in cloud.stdout.readline()
        workload = {"queries": 2, "warmup_queries": 0, "max_new_tokens": 20, "temperature": 0.0,
                    "payload": "tokens", "prompts": None, "seed": 0}
        edge = subprocess.run([sys.executable, "-m", "edge_node", "--cloud", f"tcp://127.0.0.1:{port}",
                               "--models", "synthetic:validation", "--standalone", "--out", str(tmp_path),
                               "--strategies", f"cloud-only,nasd:table={table},probe=3,fixed-k:3",
                               "--workload", json.dumps(workload), "--reply-timeout-s", "10"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert edge.returncode == 0, edge.stderr[-2000:]
    finally:
        cloud.terminate()
        cloud.wait(timeout=10)
    recs = [json.loads(line) for line in (tmp_path / "queries.jsonl").read_text().splitlines()]
    by_query: dict[int, set] = {}
    for r in recs:
        assert r["n_tokens"] == 20 and not r["edge_fallback"]
        by_query.setdefault(r["query_index"], set()).add(tuple(r["output_token_ids"]))
    assert all(len(v) == 1 for v in by_query.values())         # every strategy: the target's tokens
    nasd = [r for r in recs if r["strategy"].startswith("nasd")]
    assert any("cloud" in r["fallback_per_cycle"] for r in nasd)
    assert nasd[0]["controller"]["table"] == str(table)
