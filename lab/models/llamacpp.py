"""The embedded pair's GGUF weights run natively by llama.cpp: the optional `gguf` back-end.

Why a second back-end.  On an AVX2-only CPU torch's fp32 GEMM at 4–6 rows is no longer bound by
memory bandwidth, and a block verify of K = 4–5 costs 1.35–1.76 decode steps (docs/MEASUREMENTS.md,
"On a real AVX2-only CPU"): the premise of speculative decoding weakens.  llama.cpp reads the GGUF's
own 4–6-bit blocks (Q4_K_M: about 4.9 bits a weight, against 32 in the converted fp32 copy), so a
step reads a sixth of the bytes, and its quantised dot products batch the K+1 rows of a verify.

What it is.  `--models embedded-gguf`: the same two GGUF files the embedded pair is converted from
(lab/models/embedded.py), loaded by llama-cpp-python (`pip install .[gguf]`; it compiles llama.cpp,
minutes).  Token ids come from the converted pair's Hugging Face tokenizer (lab/models/hf.py
Tokenized), so prompts, the chat template, eos ids and the tokenizer hash are the embedded pair's.
Its outputs are its own: the target computes on quantised weights and activations, so its greedy
decode is not the fp32 target's.  Lossless means the split output equals *this* target's greedy
decode, token for token (tests/unit/test_llamacpp.py; `bench colocated` checks it on every run).

One sequence per model.  A llama.cpp context here holds one KV cache; the lab uses one session per
model at a time (a query), so a new session takes the cache over and the older one refuses to run.

The calls below the high-level `Llama` object (its context and batch: `_ctx`, `_batch`) are
llama-cpp-python's own wrappers of llama.cpp's C API (llama_decode, llama_get_logits,
llama_memory_seq_rm), pinned with the package version in pyproject.toml.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lab.models import CachedSession, ModelError
from lab.models.hf import Tokenized

N_CTX = 4096            # tokens per sequence: an MMLU 5-shot prompt is ~600, a scenario's ~100 + 48
N_BATCH = 512           # prompt tokens per llama_decode call (and the most logits one call returns)
INSTALL_HINT = ("the gguf back-end needs llama-cpp-python: `make setup SDLAB_EXTRAS=gguf` or "
                "`.venv/bin/pip install '.[gguf]'` (it compiles llama.cpp: a C++ compiler and cmake, minutes)")
# llama.cpp's repacked weights (REPACK) and llamafile's sgemm (LLAMAFILE) compute a batch of tokens by
# other kernels than one token, with other roundings: K + 1 tokens in one verify then read logits up to
# 0.5 apart from the one-token steps', and a near-tie flips (bench colocated at K = 5: 2 of 3 prompts
# left the target's own greedy decode at token 9 and 13; docs/MEASUREMENTS.md).  Built without both,
# a verify's logits are the steps' bit for bit.  scripts/setup.sh builds the gguf extra so.
BATCH_VARIANT_FEATURES = ("REPACK", "LLAMAFILE")
BUILD_FLAGS = "-DGGML_LLAMAFILE=OFF -DGGML_CPU_REPACK=OFF"


def batch_variant_features(system_info: str) -> list[str]:
    """Which of BATCH_VARIANT_FEATURES a llama.cpp build has (its llama_print_system_info line)."""
    return [f for f in BATCH_VARIANT_FEATURES if f"{f} = 1" in system_info]


def available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


class LlamaCppSession(CachedSession):
    """One sequence in the model's llama.cpp context: its KV cache and length."""

    def __init__(self, model: "LlamaCppModel"):
        self._model = model
        model._owner = self
        model.llm._ctx.kv_cache_clear()
        self.length = 0

    @property
    def vocab_size(self) -> int:
        return self._model.vocab_size

    def _forward(self, token_ids: list[int], keep: int) -> np.ndarray:
        """Run token_ids after the cached prefix; logits of the last `keep` positions, [keep, vocab]."""
        m = self._model
        if m._owner is not self:
            raise ModelError(f"{m.model_id}: a newer session took this model's llama.cpp context "
                             "(one sequence per model); start a new session per query")
        self._check_ids(token_ids, m.vocab_size)
        if self.length + len(token_ids) > N_CTX:
            raise ModelError(f"{m.model_id}: {self.length + len(token_ids)} tokens exceed the llama.cpp "
                             f"context of {N_CTX}")
        if keep > N_BATCH:
            raise ModelError(f"extend by {keep} tokens in one pass: at most {N_BATCH} here")
        ctx, batch = m.llm._ctx, m.llm._batch
        ctx.kv_cache_seq_rm(0, self.length, -1)        # whatever a rollback left beyond the kept prefix
        ids = [int(t) for t in token_ids]
        for i in range(0, len(ids), N_BATCH):
            chunk = ids[i:i + N_BATCH]
            batch.set_batch(batch=chunk, n_past=self.length, logits_all=keep > 1)
            try:
                ctx.decode(batch)
            except RuntimeError as e:
                raise ModelError(f"{m.model_id}: llama.cpp: {e}") from None
            self.length += len(chunk)
        rows = len(chunk) if keep > 1 else 1
        out = np.ctypeslib.as_array(ctx.get_logits(), shape=(rows * m.vocab_size,))
        return out.reshape(rows, m.vocab_size)[-keep:].copy()

    def _crop(self, length: int) -> None:
        pass          # the cells past `length` are removed at the start of the next forward


class LlamaCppModel(Tokenized):
    """A GGUF file run by llama.cpp, with a Hugging Face tokenizer, behind the LanguageModel protocol."""

    confidence_measured = True           # its own logits

    def __init__(self, gguf: str | Path, tokenizer_dir: str | Path, model_id: str, threads: int | None = None):
        try:
            from llama_cpp import Llama, llama_print_system_info
        except ImportError:
            raise ModelError(INSTALL_HINT) from None
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        variant = batch_variant_features(llama_print_system_info().decode(errors="replace"))
        if variant:
            raise ModelError(f"this llama-cpp-python was built with {' and '.join(variant)}: its block verify would "
                             "not be its own one-token decode, so no split output could equal it; rebuild it: "
                             f"CMAKE_ARGS='{BUILD_FLAGS}' .venv/bin/pip install --force-reinstall --no-cache-dir "
                             "--no-deps llama-cpp-python==0.3.36 (or `make setup SDLAB_EXTRAS=gguf` on a fresh .venv)")

        n = threads or len(os.sched_getaffinity(0))
        try:
            self.llm = Llama(model_path=str(gguf), n_ctx=N_CTX, n_batch=N_BATCH, n_ubatch=N_BATCH, n_threads=n,
                             n_threads_batch=n, logits_all=False, verbose=False)
        except ValueError as e:                       # llama-cpp-python's "Failed to load model from file"
            raise ModelError(f"llama.cpp cannot load {gguf}: {e}") from None
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        eos = [AutoConfig.from_pretrained(str(tokenizer_dir))]
        try:
            eos.insert(0, GenerationConfig.from_pretrained(str(tokenizer_dir)))
        except OSError:
            pass
        self._init(self.llm, tok, model_id, n, f"llama.cpp ({Path(gguf).name})", *eos)

    @classmethod
    def from_objects(cls, llm, tokenizer, model_id: str, threads: int = 1, kernels: str = "llama.cpp",
                     *eos_sources) -> "LlamaCppModel":
        """Wrap an already-loaded `Llama` (or anything with its _ctx, _batch and n_vocab: tests)."""
        self = cls.__new__(cls)
        self._init(llm, tokenizer, model_id, threads, kernels, *eos_sources)
        return self

    def _init(self, llm, tokenizer, model_id: str, threads: int, kernels: str, *eos_sources) -> None:
        self.llm, self.model_id, self.threads, self.kernels = llm, model_id, threads, kernels
        self.dtype = "gguf"                   # the file's own block types (Q4_K_M: Q4_K, Q6_K, ...)
        self.source: dict | None = None
        self._owner: LlamaCppSession | None = None
        self._set_tokenizer(tokenizer, int(llm.n_vocab()), model_id, *eos_sources)

    def new_session(self) -> LlamaCppSession:
        return LlamaCppSession(self)

    def describe(self) -> dict:
        from importlib.metadata import PackageNotFoundError, version
        try:
            backend = f"llama-cpp-python {version('llama-cpp-python')}"
        except PackageNotFoundError:
            backend = None
        return {"model_id": self.model_id, "dtype": self.dtype, "vocab_size": self.vocab_size,
                "tokenizer_sha256": self.tokenizer_hash, "eos_token_ids": list(self.eos_token_ids),
                "threads": self.threads, "kernels": self.kernels, "backend": backend,
                "chat_template": self.has_chat_template, "source": self.source}

    def __repr__(self) -> str:
        return f"<LlamaCppModel {self.model_id} vocab={self.vocab_size}>"
