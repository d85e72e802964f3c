"""The results folder: self-describing, appended as it happens, never silently partial.

    results/<UTC time>-<scenario>/
        meta.json       resolved scenario, git commit, kernel, backend, qdisc read-back,
                        models + hashes, seeds, host, threads; `status` running→complete|interrupted|failed
        queries.jsonl   one record per query (written by the edge node or the simulator)
        cycles.jsonl    one record per cycle
        summary.csv     one row per strategy — only when the run completed;
                        an interrupted run gets summary.partial.csv instead
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = REPO_ROOT / "results"


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item"):          # numpy scalars
        return v.item()
    return v


_LINE = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def json_line(record: dict) -> str:
    """One record as a jsonl line: non-finite floats as null, numpy scalars as numbers.  Most records
    have neither, and encoding them directly skips _jsonable's walk over every per-cycle list (a
    fifth of a simulated sweep's time); the encoder refuses the rest (ValueError for NaN, TypeError
    for numpy integers), which are then walked."""
    try:
        return _LINE.encode(record) + "\n"
    except (ValueError, TypeError):
        return _LINE.encode(_jsonable(record)) + "\n"


class JsonlWriter:
    """Append one JSON object per line and flush it to disk at once: a crash loses nothing written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json_line(record))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ResultsError(Exception):
    """A results file is malformed; the message names the file and the line."""


def read_jsonl(path: Path, report: Callable[[str], None] | None = None) -> list[dict]:
    """Records of a jsonl file (none if it does not exist).

    JsonlWriter ends every record with a newline in the same write, so a writer killed mid-record
    leaves a last line without one: that line is skipped and reported (to `report`, default stderr).
    Any other line that is not a JSON object raises ResultsError naming the file and the line."""
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_bytes().split(b"\n")
    complete = lines[:-1]        # each ended by its newline; lines[-1] is what follows the last one
    out = []
    for n, raw in enumerate(complete, 1):
        rec = _record(raw, p, n)
        if rec is not None:
            out.append(rec)
    tail = lines[-1]
    if tail.strip():
        try:
            rec = _record(tail, p, len(lines))
        except ResultsError:
            (report or _to_stderr)(f"{p}: line {len(lines)}: torn last record skipped "
                                   f"({len(tail)} bytes without a newline: the writer stopped mid-record)")
        else:
            if rec is not None:
                out.append(rec)
    return out


def _record(raw: bytes, path: Path, line: int) -> dict | None:
    """One line's record; None for a blank line (it holds no record, so nothing is lost)."""
    return json_object(raw, path, line)


def json_object(raw: bytes | str, where, line: int, error: type[Exception] = ResultsError) -> dict | None:
    """One JSONL line's object, None for a blank line; anything else raises `error` naming the file and
    the line — the one parser of every JSONL file the lab reads (results, prompts, datasets)."""
    if not raw.strip():
        return None
    try:
        rec = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{where}: line {line}: not JSON ({getattr(e, 'msg', None) or e.reason})") from None
    if not isinstance(rec, dict):
        raise error(f"{where}: line {line}: a record must be a JSON object, got {type(rec).__name__}")
    return rec


def json_objects(text: str, where, error: type[Exception] = ResultsError):
    """(line number, object) for every non-blank line of a JSONL text."""
    for n, line in enumerate(text.splitlines(), 1):
        rec = json_object(line, where, n, error)
        if rec is not None:
            yield n, rec


def _to_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def new_run_dir(scenario_name: str, base: Path | None = None) -> Path:
    base = Path(base) if base else DEFAULT_RESULTS
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    d = base / f"{stamp}-{scenario_name}"
    n = 1
    while d.exists():
        n += 1
        d = base / f"{stamp}-{scenario_name}-{n}"
    d.mkdir(parents=True)
    return d


def git_commit() -> str:
    try:
        r = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                           text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return r.stdout.strip() + ("-dirty" if dirty else "") if r.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def host_facts() -> dict:
    return {"hostname": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
            "python": platform.python_version(), "cpus": os.cpu_count()}


class Meta:
    """meta.json, rewritten atomically whenever something is learned."""

    def __init__(self, run_dir: Path, initial: dict):
        self.path = Path(run_dir) / "meta.json"
        self.data = {"status": "running", "started_utc": datetime.now(timezone.utc).isoformat(),
                     "git_commit": git_commit(), "host": host_facts(), **initial}
        self.save()

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.save()

    def finish(self, status: str) -> None:
        self.update(status=status, finished_utc=datetime.now(timezone.utc).isoformat())

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(_jsonable(self.data), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, self.path)
