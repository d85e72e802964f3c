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


class LanguageModel(Protocol):
    model_id: str                    # e.g. "Qwen/Qwen2.5-Coder-0.5B-Instruct" or "synthetic:draft"
    vocab_size: int
    tokenizer_hash: str              # sha256 of the tokenizer's vocabulary; edge and cloud must agree
    eos_token_ids: tuple[int, ...]

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
