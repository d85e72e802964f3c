"""Synthetic models: calibrated timing and acceptance, fake token ids, deterministic by seed.

They implement the LanguageModel/Session protocol, so the same decoding code,
nodes and protocol run over them — only the compute is replaced by waiting
the profile's time for real (the nodes are real processes; the lab measures
the network, not the model).  The target's greedy token at position i is a
hash of (seed, i); the draft proposes that token with probability α (also
decided by a hash of (seed, i), so edge and cloud agree without talking) and
a wrong one otherwise.  Acceptance is therefore i.i.d. with rate α per
position, the regime of E[τ] = (1 − α^(K+1)) / (1 − α).

Profile (YAML): t_draft_ms (one draft forward), verify_a_ms + verify_b_ms·n
(a target forward over n tokens), prefill_ms_per_token, alpha, vocab, seed.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import yaml

from lab.models import ModelError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "embedded-cpu"
SPIN_MS = 0.3          # the last part of each wait is spent spinning, for sub-millisecond accuracy


@dataclass(frozen=True)
class Profile:
    t_draft_ms: float
    verify_a_ms: float
    verify_b_ms: float
    prefill_ms_per_token: float
    alpha: float
    vocab: int = 1000
    seed: int = 0
    name: str = "custom"
    source: str = ""

    def verify_ms(self, n: int) -> float:
        return self.verify_a_ms + self.verify_b_ms * n


def load_profile(name_or_path: str | None) -> Profile:
    p = Path(name_or_path) if name_or_path and (Path(name_or_path).suffix or "/" in name_or_path) \
        else PROFILE_DIR / f"{name_or_path or DEFAULT_PROFILE}.yaml"
    try:
        doc = yaml.safe_load(p.read_text())
    except OSError:
        known = ", ".join(sorted(x.stem for x in PROFILE_DIR.glob("*.yaml")))
        raise ModelError(f"no synthetic profile {name_or_path!r} ({p}); known: {known}") from None
    allowed = {f.name for f in fields(Profile)} | {"provenance"}
    if not isinstance(doc, dict):
        raise ModelError(f"{p}: a profile must be a mapping")
    unknown = set(doc) - allowed
    if unknown:
        raise ModelError(f"{p}: unknown key(s) {', '.join(sorted(unknown))}")
    doc.pop("provenance", None)
    try:
        prof = Profile(**{"name": p.stem, "source": str(p), **doc})
    except TypeError as e:
        raise ModelError(f"{p}: {e}") from None
    for k in ("t_draft_ms", "verify_a_ms", "verify_b_ms", "prefill_ms_per_token"):
        if not isinstance(getattr(prof, k), (int, float)) or getattr(prof, k) < 0:
            raise ModelError(f"{p}: {k} must be a number >= 0")
    if not 0 <= prof.alpha <= 1:
        raise ModelError(f"{p}: alpha must be between 0 and 1")
    return prof


def save_profile(profile: Profile, path: Path, provenance: dict | None = None) -> None:
    d = {k: v for k, v in asdict(profile).items() if k not in ("name", "source")}
    if provenance:
        d["provenance"] = provenance
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))


def spend(ms: float) -> None:
    """Take `ms` of wall time: sleep most of it, spin the rest (accurate to ~0.05 ms)."""
    end = time.perf_counter() + ms / 1000
    if ms > SPIN_MS:
        time.sleep((ms - SPIN_MS) / 1000)
    while time.perf_counter() < end:
        pass


def _u(seed: int, pos: int, salt: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{pos}:{salt}".encode(), digest_size=8).digest(), "big")


class SyntheticSession:
    def __init__(self, model: "SyntheticModel"):
        self.m = model
        self.length = 0

    def _logits(self, pos: int) -> np.ndarray:
        row = np.zeros(self.m.vocab_size, dtype=np.float32)
        row[self.m.token_at(pos)] = 10.0
        return row

    def prefill(self, token_ids: list[int]) -> np.ndarray:
        if self.length:
            raise ModelError("prefill on a non-empty session")
        spend(self.m.profile.prefill_ms_per_token * len(token_ids))
        self.length = len(token_ids)
        return self._logits(self.length)

    def extend(self, token_ids: list[int]) -> np.ndarray:
        n = len(token_ids)
        spend(self.m.forward_ms(n))
        start = self.length
        self.length += n
        return np.stack([self._logits(start + i + 1) for i in range(n)])

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ModelError(f"rollback to {length} outside 0..{self.length}")
        self.length = length


class SyntheticModel:
    """role "target": greedy token at position i is h(seed, i); role "draft": the same with probability α."""

    def __init__(self, role: str, profile: Profile):
        self.role, self.profile = role, profile
        self.model_id = f"synthetic:{profile.name}:{role}"
        self.vocab_size = profile.vocab
        self.tokenizer_hash = f"synthetic-vocab-{profile.vocab}"
        self.eos_token_ids: tuple[int, ...] = ()

    def forward_ms(self, n: int) -> float:
        return self.profile.t_draft_ms if self.role == "draft" else self.profile.verify_ms(n)

    def token_at(self, pos: int) -> int:
        true = _u(self.profile.seed, pos, "token") % self.vocab_size
        if self.role == "target":
            return true
        hit = (_u(self.profile.seed, pos, "accept") % 1_000_000) / 1_000_000 < self.profile.alpha
        return true if hit else (true + 1) % self.vocab_size

    def new_session(self) -> SyntheticSession:
        return SyntheticSession(self)

    def encode_prompt(self, prompt: str) -> list[int]:
        words = prompt.split() or ["<empty>"]
        return [1] + [_u(0, i, w) % self.vocab_size for i, w in enumerate(words)]

    def decode(self, token_ids: list[int]) -> str:
        return " ".join(f"<{t}>" for t in token_ids)

    def describe(self) -> dict:
        return {"model_id": self.model_id, **asdict(self.profile)}


def load_synthetic(role: str, profile: str | None = None) -> SyntheticModel:
    return SyntheticModel(role, load_profile(profile))
