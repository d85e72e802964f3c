"""The results folder keeps what was written, even when the writer dies mid-line."""
import json

import pytest

from lab.results import JsonlWriter, Meta, ResultsError, _jsonable, json_line, new_run_dir, read_jsonl


def test_jsonl_is_flushed_per_record_and_torn_lines_are_skipped(tmp_path):
    p = tmp_path / "q.jsonl"
    w = JsonlWriter(p)
    w.write({"a": 1, "x": float("nan")})
    # Visible to another reader before close: flushed per record.
    assert json.loads(p.read_text().splitlines()[0]) == {"a": 1, "x": None}
    w.close()
    with open(p, "a") as f:
        f.write('{"b": 2}\n{"torn": ')
    reported = []
    assert read_jsonl(p, report=reported.append) == [{"a": 1, "x": None}, {"b": 2}]
    assert len(reported) == 1 and f"{p}: line 3: torn last record skipped" in reported[0]


def test_jsonl_torn_line_goes_to_stderr_by_default(tmp_path, capsys):
    p = tmp_path / "q.jsonl"
    p.write_text('{"a": 1}\n{"to')
    assert read_jsonl(p) == [{"a": 1}]
    assert "line 2: torn last record skipped" in capsys.readouterr().err


@pytest.mark.parametrize("text, line, words", [
    ('{"a": 1}\n{"bad": \n{"c": 3}\n', 2, "not JSON"),      # a malformed line in the middle
    ('{"a": 1}\n{"bad": \n', 2, "not JSON"),                 # a malformed last line that has its newline
    ('{"a": 1}\n[1, 2]\n', 2, "JSON object"),                # valid JSON, not a record
    ('{"a": 1}\n\xff\n{"c": 3}', 2, "not JSON"),             # not UTF-8
])
def test_jsonl_malformed_line_is_an_error_naming_file_and_line(tmp_path, text, line, words):
    p = tmp_path / "q.jsonl"
    p.write_bytes(text.encode("latin-1"))
    with pytest.raises(ResultsError) as e:
        read_jsonl(p, report=lambda m: pytest.fail(f"reported instead of raised: {m}"))
    assert str(e.value).startswith(f"{p}: line {line}: ") and words in str(e.value)


def test_meta_status_and_atomic_updates(tmp_path):
    d = new_run_dir("demo", base=tmp_path)
    assert d.name.endswith("-demo")
    m = Meta(d, {"scenario": {"name": "demo"}})
    assert json.loads((d / "meta.json").read_text())["status"] == "running"
    m.update(backend="wire")
    m.finish("interrupted")
    data = json.loads((d / "meta.json").read_text())
    assert data["status"] == "interrupted" and data["backend"] == "wire" and "git_commit" in data
    assert not list(d.glob("*.tmp"))
    # Two runs in the same second get distinct folders.
    assert new_run_dir("demo", base=tmp_path) != new_run_dir("demo", base=tmp_path)


def test_a_jsonl_line_is_the_walked_encoding_whether_or_not_the_fast_path_takes_it():
    import math

    import numpy as np
    plain = {"k": [3, 3], "net": [1.5, 2.25], "fallback": None, "label": "fixed-k:3", "pair": (1, 2)}
    odd = {"tps": math.nan, "inf": [math.inf], "n": np.int64(7), "x": np.float64(0.5), "ok": np.bool_(True)}
    for rec in (plain, odd):
        line = json_line(rec)
        assert line.endswith("\n") and line == json.dumps(_jsonable(rec), separators=(",", ":")) + "\n"
    assert json.loads(json_line(odd)) == {"tps": None, "inf": [None], "n": 7, "x": 0.5, "ok": True}
