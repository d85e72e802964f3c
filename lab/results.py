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
import time
from datetime import datetime, timezone
from pathlib import Path

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


class JsonlWriter:
    """Append one JSON object per line and flush it to disk at once: a crash loses nothing written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(_jsonable(record), separators=(",", ":")) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path: Path) -> list[dict]:
    """Records of a jsonl file; a torn last line (the writer was killed mid-write) is skipped."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


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


def monotonic_ms() -> float:
    return time.monotonic_ns() / 1e6
