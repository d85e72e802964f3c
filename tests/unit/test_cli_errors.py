"""Bad input to any command ends in one line naming the value, exit code 2, and no traceback.

Each case runs `python -m lab …` as a subprocess, as a person would.  As root the subprocess runs as
`nobody` (setpriv): the commands check their input before they ask for root, so the expected line
still comes out, while a check that went missing could only fail on "needs root" or a permission
error — never go on to build namespaces or write results.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

CASES = [
    # (argv, words the one line must contain)
    ([], "the following arguments are required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    # sim
    (["sim", "lan", "--strategies", "teleport"], "--strategies: unknown strategy 'teleport' (known: cloud-only, cloud-spec"),
    (["sim", "no-such-scenario"], "no-such-scenario: no scenario of that name"),
    (["sim", "lan", "--models", "synthetic:nope"], "--models: no synthetic profile 'nope'"),
    (["sim", "lan", "--models", "embedded"], "the simulator takes --models synthetic"),
    (["sim", "lan", "--payload", "bogus"], "--payload: payload mode must be"),
    (["sim", "lan", "--queries", "-1"], "--queries: must be a whole number >= 1, got '-1'"),
    (["sim", "lan", "--warmup", "-2"], "--warmup: must be a whole number >= 0"),
    (["sim", "lan", "--max-new-tokens", "0"], "--max-new-tokens: must be a whole number >= 1"),
    (["sim", "lan", "--temperature", "-0.5"], "--temperature: must be >= 0"),
    (["sim", "lan", "--seed", "x"], "--seed: must be a whole number"),
    (["sim", "lan", "--delay-ms", "nan"], "--delay-ms: must be finite"),
    (["sim", "lan", "--loss-pct", "101"], "--loss-pct: must be between 0 and 100"),
    (["sim", "lan", "--prompts", "{missing}"], "--prompts: {missing}: cannot read"),
    (["sim", "lan", "--prompts", "{malformed}"], "--prompts: {malformed}: line 2: not JSON"),
    (["sim", "{bad_strategy_yaml}"], "{bad_strategy_yaml}: strategies[1]: unknown strategy 'teleport'"),
    (["sim", "lan", "--congestion-control", "vegas"], "--congestion-control: 'vegas' is not modelled"),
    # scenario (root): the same checks, before the root check
    (["scenario", "lan", "--strategies", "cloud-only,teleport"], "--strategies: unknown strategy 'teleport'"),
    (["scenario", "no-such-scenario"], "no scenario of that name"),
    (["scenario", "lan", "--models", "synthetic:nope"], "--models: no synthetic profile 'nope'"),
    (["scenario", "lan", "--models", "just-one-id"], "--models: --models must be embedded, embedded-gguf, synthetic"),
    (["scenario", "lan", "--dtype", "float16"], "--dtype: invalid choice: 'float16'"),
    (["scenario", "lan", "--payload", "topk:0"], "--payload: payload mode must be"),
    (["scenario", "lan", "--queries", "0"], "--queries: must be a whole number >= 1"),
    (["scenario", "lan", "--reply-timeout-s", "0"], "--reply-timeout-s: must be > 0"),
    (["scenario", "lan", "--rate-mbit", "-1"], "--rate-mbit: must be > 0"),
    (["scenario", "lan", "--prompts", "{malformed}"], "line 2: not JSON"),
    (["scenario", "{bad_strategy_yaml}"], "strategies[1]: unknown strategy 'teleport'"),
    # link, probe, linkcheck, validate (root)
    (["link", "up"], "link up needs a SCENARIO"),
    (["link", "up", "no-such-scenario"], "no scenario of that name"),
    (["link", "up", "lan", "--delay-ms", "-5"], "--delay-ms: must be >= 0"),
    (["link", "sideways"], "invalid choice: 'sideways'"),
    (["probe", "no-such-scenario"], "no scenario of that name"),
    (["linkcheck", "--backend", "carrier-pigeon"], "--backend: invalid choice"),
    (["validate", "no-such-case"], "no-such-case: no scenario of that name"),
    (["validate", "--rejudge", "{missing}"], "--rejudge: {missing}: no such folder"),
    (["validate", "--rejudge", "{tmp}"], "no calibration.json"),
    # sweep
    (["sweep", "--sim", "--strategies", "teleport"], "--strategies: unknown strategy 'teleport'"),
    (["sweep", "--sim", "--rtt-ms", "10,x"], "--rtt-ms: must be a number, got 'x'"),
    (["sweep", "--sim", "--rtt-ms", "-10"], "--rtt-ms: must be >= 0, got '-10'"),
    (["sweep", "--sim", "--rate-mbit", "0"], "--rate-mbit: must be > 0"),
    (["sweep", "--sim", "--loss-pct", "150"], "--loss-pct: must be <= 100"),
    (["sweep", "--sim", "--runs", "0"], "--runs: must be a whole number >= 1"),
    (["sweep", "--sim", "--models", "synthetic:nope"], "--models: no synthetic profile 'nope'"),
    (["sweep"], "sweep: give exactly one of --sim"),
    (["sweep", "--sim", "--lab"], "sweep: give exactly one of --sim"),
    # profile, bench, models
    (["profile", "--models", "synthetic"], "profile measures a real pair"),
    (["profile", "--limit", "0"], "--limit: must be a whole number >= 1"),
    (["profile", "--max-new-tokens", "1"], "--max-new-tokens: must be a whole number >= 2"),
    (["profile", "--threads", "999"], "profile --threads 999: this host's profile in the cache is the nodes' default"),
    (["profile", "--prompts", "{missing}"], "--prompts: {missing}: cannot read"),
    (["profile", "--dtype", "int8"], "--dtype: invalid choice"),
    (["profile", "--out", "x.yaml", "--replace-shipped"], "--replace-shipped: not allowed with argument --out"),
    (["bench", "warp"], "invalid choice: 'warp'"),
    (["bench", "colocated", "--k", "0"], "--k: must be a whole number >= 1"),
    (["bench", "colocated", "--prompts", "-1"], "--prompts: must be a whole number >= 1"),
    (["bench", "colocated", "--models", "synthetic"], "needs a real pair"),
    (["models", "nuke"], "invalid choice: 'nuke'"),
]


@pytest.fixture(scope="module")
def files():
    """Input files `nobody` can read (pytest's tmp_path is root's, mode 0700)."""
    d = Path(tempfile.mkdtemp(prefix="sdlab-cli-errors-"))
    d.chmod(0o755)
    malformed = d / "prompts.jsonl"
    malformed.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": \n')
    bad_yaml = d / "bad-strategy.yaml"
    bad_yaml.write_text("link: {delay_ms: 5}\nstrategies: [cloud-only, teleport]\n")
    for p in (malformed, bad_yaml):
        p.chmod(0o644)
    yield {"missing": str(d / "no-such-file"), "malformed": str(malformed), "bad_strategy_yaml": str(bad_yaml),
           "tmp": str(d)}
    shutil.rmtree(d)


def _lab(argv: list[str]) -> subprocess.CompletedProcess:
    prefix = NOBODY if os.geteuid() == 0 and shutil.which("setpriv") else []
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*prefix, sys.executable, "-m", "lab", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(a) or "(none)" for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, words, files):
    argv = [a.format(**files) for a in argv]
    words = words.format(**files)
    r = _lab(argv)
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert "\n" not in err and err.startswith("error: "), err
    assert words in err, err
    assert r.stdout == "", r.stdout
