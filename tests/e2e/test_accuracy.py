"""`python -m lab accuracy` end to end: the embedded pair, MMLU 5-shot, across a lossy link."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.models, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
# Every strategy that speculates with the target, the adaptive ones included (nasd's cloud fallback
# too): each must answer exactly as the target does.
SPECULATIVE = ("fixed-k:3", "fixed-k:5", "cloud-spec", "nasd", "ucb-specstop")
N_QUESTIONS = 3


def test_mmlu_speculative_answers_are_cloud_onlys_question_by_question(tmp_path):
    """Temperature 0, fp32, 5 % loss each way: every speculative strategy's output (so its answer) is
    cloud-only's on every question, none finished by the draft alone; edge-only is scored beside them
    with its counts."""
    out_dir = tmp_path / "acc"
    strategies = ("cloud-only", "edge-only", *SPECULATIVE)
    r = subprocess.run([sys.executable, "-m", "lab", "accuracy", "--bench", "mmlu", "--subjects", "abstract_algebra",
                        "--subset", str(N_QUESTIONS), "--scenario", "lossy-5pct", "--models", "embedded",
                        "--dtype", "float32", "--strategies", ",".join(strategies), "--out", str(out_dir)],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(line) for line in (out_dir / "records.jsonl").read_text().splitlines()]
    by = {(rec["strategy"], rec["question_id"]): rec for rec in recs}
    qids = [f"mmlu/abstract_algebra/{i}" for i in range(N_QUESTIONS)]
    assert sorted(by) == sorted((s, q) for s in strategies for q in qids)
    fallbacks = [k for k, rec in by.items() if rec["edge_fallback"]]
    assert not fallbacks, f"finished by the draft alone: {fallbacks}"
    differ = [f"{s} {q}: {by[s, q]['output_text']!r} vs cloud-only {by['cloud-only', q]['output_text']!r}"
              for s in SPECULATIVE for q in qids
              if by[s, q]["output_token_ids"] != by["cloud-only", q]["output_token_ids"]
              or by[s, q]["answer"] != by["cloud-only", q]["answer"]]
    assert not differ, "speculative answers differ from the target's:\n" + "\n".join(differ)
    assert all(by["cloud-only", q]["answer"] in tuple("ABCD") for q in qids), "the target gave no letter"
    with open(out_dir / "summary.csv") as f:
        s = {row["strategy"]: row for row in csv.DictReader(f)}
    for name in strategies:
        assert int(s[name]["questions"]) == N_QUESTIONS and 0 <= int(s[name]["correct"]) <= N_QUESTIONS
        assert float(s[name]["ci95_lo"]) <= float(s[name]["ci95_hi"])
    for name in SPECULATIVE:
        assert s[name]["correct"] == s["cloud-only"]["correct"]
        assert int(float(s[name]["same_as_cloud_only"])) == N_QUESTIONS
    assert f"/{N_QUESTIONS} =" in r.stdout and "edge-only" in r.stdout
    from lab.models.cpu import int8_runs_here
    if int8_runs_here("float32"):     # the draft proposes in int8; edge-only answers as the fp32 model
        (meta,) = [json.loads(p.read_text()) for p in (out_dir / "runs").glob("*/meta.json")]
        assert meta["edge"]["draft_kernels"].startswith("int8"), meta["edge"]
        assert meta["edge"]["alone_kernels"].startswith("onednn-packed"), meta["edge"]
