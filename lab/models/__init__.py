"""Model back-ends behind one small interface.

A `LanguageModel` loads once per process; a `Session` is one sequence with its
KV cache.  Speculative decoding needs exactly three operations on a session:
prefill the prompt, extend by several tokens in one forward pass (returning
the logits after each of them), and roll the cache back to an earlier length
(no recompute of the kept prefix).

Implementations: `hf.py` (transformers, real weights: any HF id pair or the
embedded pair), `synthetic.py` (calibrated timing and acceptance, fake ids).
`embedded.py` fetches and caches the default pair.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class ModelError(Exception):
    """A model cannot be fetched, verified or loaded; the message says what to do."""


class Session(Protocol):
    length: int                      # tokens currently in the KV cache

    def prefill(self, token_ids: list[int]) -> np.ndarray:
        """Run the prompt; returns logits for the next token, shape [vocab] (float32)."""

    def extend(self, token_ids: list[int]) -> np.ndarray:
        """Append tokens in ONE forward pass; returns logits after each, shape [len, vocab]."""

    def rollback(self, length: int) -> None:
        """Crop the KV cache to its first `length` tokens."""


class CachedSession:
    """What every back-end's session shares: the checks around prefill, extend and rollback.  A
    subclass keeps `length` and provides `_forward(ids, keep)` (run ids after the cached prefix; the
    logits of the last `keep` positions, [keep, vocab] float32), `_crop(length)` and `vocab_size`."""
    length: int = 0
    # Whether a forward's rows move each other's logits (an int8 draft: activations quantised over all
    # rows); a draft's short catch-up then goes one token a forward (lab/core/decoding.py feed_logits).
    rows_interact: bool = False

    def prefill(self, token_ids: list[int]) -> np.ndarray:
        """Run the prompt on an empty session; logits for the next token, [vocab]."""
        if self.length != 0:
            raise ModelError(f"prefill on a session holding {self.length} tokens; "
                             "use a new session (or rollback(0)) per query")
        if not token_ids:
            raise ModelError("prefill needs at least one token")
        return self._forward(token_ids, keep=1)[-1]

    def extend(self, token_ids: list[int]) -> np.ndarray:
        """Append tokens in one forward pass; logits after each of them, [len, vocab]."""
        if self.length == 0:
            raise ModelError("extend before prefill")
        if not token_ids:
            return np.zeros((0, self.vocab_size), dtype=np.float32)
        return self._forward(token_ids, keep=len(token_ids))

    @staticmethod
    def _check_ids(token_ids: list[int], bound: int) -> None:
        """Refuse anything but ints in 0..bound-1 before a forward sees it (an id past the embedding
        would index out of range in the back-end)."""
        if any(not isinstance(t, (int, np.integer)) or not 0 <= t < bound for t in token_ids):
            raise ModelError(f"token ids must be ints in 0..{bound - 1}, got {list(token_ids)[:8]}…")

    def rollback(self, length: int) -> None:
        """Crop the cache to its first `length` tokens; the kept prefix is not recomputed."""
        if not 0 <= length <= self.length:
            raise ModelError(f"rollback to {length} outside 0..{self.length}")
        if length < self.length:
            self._crop(length)
            self.length = length


class LanguageModel(Protocol):
    model_id: str                    # e.g. "Qwen/Qwen2.5-Coder-0.5B-Instruct" or "synthetic:draft"
    vocab_size: int
    tokenizer_hash: str              # sha256 of the tokenizer's vocabulary; edge and cloud must agree
    eos_token_ids: tuple[int, ...]
    # Whether the model's probabilities are its own, so a draft's confidence can end a block
    # (strategies.ADAPTIVE_STOP): a real model's are; a synthetic one's only where its profile
    # measured them (lab/models/synthetic.py confidence_measured).
    confidence_measured: bool

    def new_session(self) -> Session: ...

    def encode_prompt(self, prompt: str, template: str = "chat") -> list[int]:
        """Token ids of the prompt wrapped in the model's chat template ("raw": the text as it is)."""

    def decode(self, token_ids: list[int]) -> str: ...


def warm_up(model: LanguageModel) -> None:
    """One prefill and one extend, so the first measured query does not pay lazy initialisation
    (kernel selection, allocator growth) — seconds on a CPU, in fp32 especially."""
    s = model.new_session()
    s.prefill([1, 2, 3, 4])
    s.extend([5, 6])


def median_ms(fn, repeats: int) -> float:
    """fn's median wall time over `repeats` calls (ms): the profile's and bench's one timer."""
    import statistics
    import time
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def measure_compute(target: LanguageModel, draft: LanguageModel | None = None, prompt_tokens: int = 64,
                    repeats: int = 2) -> dict:
    """This process's own compute times, for the edge's reply budget (lab/core/budget.py): the
    target's prefill per token, t_verify(n) = a + b·n from n = 1 and 8, and the co-located draft's
    step and prefill share.  A second or two on a CPU; run after warm_up."""
    ids = [(i * 7919) % 1000 + 10 for i in range(prompt_tokens)]     # ordinary ids, no special tokens
    s = target.new_session()
    prefill = median_ms(lambda: (s.rollback(0), s.prefill(ids)), 1) / prompt_tokens
    v = {}
    for n in (1, 8):
        v[n] = median_ms(lambda: (s.extend(ids[:n]), s.rollback(prompt_tokens)), repeats)
    b = max(0.0, (v[8] - v[1]) / 7)
    out = {"prefill_ms_per_token": prefill, "verify_a_ms": v[1] - b, "verify_b_ms": b}
    if draft is not None:
        d = draft.new_session()
        d_prefill = median_ms(lambda: d.prefill(ids), 1) / prompt_tokens
        out["draft_ms"] = median_ms(lambda: (d.extend(ids[:1]), d.rollback(prompt_tokens)), repeats)
        out["draft_prefill_share"] = d_prefill / prefill if prefill > 0 else 0.0
    return {k: round(v, 3) for k, v in out.items()}
