"""The results folder keeps what was written, even when the writer dies mid-line."""
import json

from lab.results import JsonlWriter, Meta, new_run_dir, read_jsonl


def test_jsonl_is_flushed_per_record_and_torn_lines_are_skipped(tmp_path):
    p = tmp_path / "q.jsonl"
    w = JsonlWriter(p)
    w.write({"a": 1, "x": float("nan")})
    # Visible to another reader before close: flushed per record.
    assert json.loads(p.read_text().splitlines()[0]) == {"a": 1, "x": None}
    w.close()
    with open(p, "a") as f:
        f.write('{"b": 2}\n{"torn": ')
    assert read_jsonl(p) == [{"a": 1, "x": None}, {"b": 2}]


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
