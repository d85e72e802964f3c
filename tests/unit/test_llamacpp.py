"""The llama.cpp back-end's session bookkeeping (lab/models/llamacpp.py), without llama.cpp.

A stand-in for llama-cpp-python's context and batch keeps llama.cpp's contract — a KV cache of
positions, `kv_cache_seq_rm` to cut it, `decode` that must continue at the cache's end, logits only
for the rows the batch flags — and computes each row with the tiny Qwen2 of test_hf_session run
over the whole sequence.  So every logit our session returns is checked against an uncached
forward pass, whatever the rollbacks and chunks in between.  The real library and GGUF files are
exercised by tests/e2e/test_gguf_backend.py when the `gguf` extra is installed.
"""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from lab.core.decoding import speculative_generate
from lab.models import ModelError
from lab.models import llamacpp
from lab.models.hf import greedy_generate
from lab.models.llamacpp import LlamaCppModel
from tests.unit.test_hf_session import VOCAB, _NoTokenizer, full_logits, ids, tiny  # noqa: F401 (fixture)

ATOL = 1e-4
NOISE = 0.005          # enough to flip some of the tiny model's near-flat argmaxes, not all


class FakeBatch:
    def set_batch(self, batch, n_past, logits_all):            # as llama-cpp-python's LlamaBatch
        self.tokens, self.pos = list(batch), [n_past + i for i in range(len(batch))]
        self.logits = [logits_all] * len(batch)
        self.logits[-1] = True


class FakeCtx:
    def __init__(self, model):
        self.model, self.cache, self.out, self.decodes = model, [], None, []

    def kv_cache_clear(self):
        self.cache = []

    def kv_cache_seq_rm(self, seq_id, p0, p1):
        assert seq_id == 0 and p1 == -1
        del self.cache[p0:]
        return True

    def decode(self, batch):
        if batch.pos[0] != len(self.cache):       # llama.cpp: positions must follow the cache
            raise RuntimeError(f"position {batch.pos[0]} after a cache of {len(self.cache)}")
        self.cache += batch.tokens
        self.decodes.append(len(batch.tokens))
        rows = full_logits(self.model, self.cache)[-len(batch.tokens):][np.array(batch.logits)]
        flat = np.ascontiguousarray(rows, dtype=np.float32).ravel()
        self.out = (ctypes.c_float * flat.size)(*flat)

    def get_logits(self):
        return ctypes.cast(self.out, ctypes.POINTER(ctypes.c_float))


class FakeLlama:
    def __init__(self, model):
        self._ctx, self._batch = FakeCtx(model), FakeBatch()

    def n_vocab(self):
        return VOCAB


@pytest.fixture
def model(tiny):   # noqa: F811
    return LlamaCppModel.from_objects(FakeLlama(tiny), _NoTokenizer(), "tiny-qwen2 (fake llama.cpp)")


def test_prefill_extend_and_rollback_give_the_full_forwards_logits(model, tiny, monkeypatch):  # noqa: F811
    monkeypatch.setattr(llamacpp, "N_BATCH", 4)             # a prompt of 10 goes in chunks of 4, 4, 2
    seq = ids(10, 1)
    s = model.new_session()
    np.testing.assert_allclose(s.prefill(seq), full_logits(tiny, seq)[-1], atol=ATOL)
    assert model.llm._ctx.decodes == [4, 4, 2] and s.length == 10
    more = ids(3, 2)
    np.testing.assert_allclose(s.extend(more), full_logits(tiny, seq + more)[-3:], atol=ATOL)
    s.rollback(11)                                          # keep the first extended token only
    other = ids(2, 3)
    np.testing.assert_allclose(s.extend(other), full_logits(tiny, seq + more[:1] + other)[-2:], atol=ATOL)
    assert s.length == 13 and model.llm._ctx.cache == seq + more[:1] + other


def test_speculation_through_the_backend_equals_its_own_greedy_decode(model, tiny):  # noqa: F811
    """Target and draft both behind the back-end; the draft is the target with noise on its output
    layer, so it agrees on some tokens and not on others."""
    import copy

    import torch
    noisy = copy.deepcopy(tiny)
    with torch.no_grad():
        torch.manual_seed(1)
        noisy.lm_head.weight.add_(torch.randn_like(noisy.lm_head.weight) * NOISE)
    draft = LlamaCppModel.from_objects(FakeLlama(noisy), _NoTokenizer(), "noisy tiny-qwen2 (fake llama.cpp)")
    prompt = ids(6, 13)
    reference = greedy_generate(model, prompt, 24)
    for k in (1, 3, 5):
        gen = speculative_generate(draft, model, prompt, 24, k_fn=lambda: k)
        assert gen.tokens == reference
        assert 0 < sum(gen.accepted) < sum(gen.drafted)        # both paths taken


def test_misuse_is_refused_by_name(model):
    s = model.new_session()
    with pytest.raises(ModelError, match="extend before prefill"):
        s.extend([1])
    s.prefill(ids(4, 5))
    with pytest.raises(ModelError, match="rollback to 9 outside 0..4"):
        s.rollback(9)
    with pytest.raises(ModelError, match=r"token ids must be ints in 0..999"):
        s.extend([VOCAB])
    newer = model.new_session()
    with pytest.raises(ModelError, match="a newer session took this model's llama.cpp context"):
        s.extend([1])
    newer.prefill([1, 2])                                   # the newer one starts from an empty cache
    assert model.llm._ctx.cache == [1, 2]


def test_without_the_extra_the_error_says_how_to_install_it(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_llama(name, *a, **kw):
        if name == "llama_cpp" or name.startswith("llama_cpp."):
            raise ImportError(name)
        return real_import(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_llama)
    assert not llamacpp.available()
    from lab.models.select import load_role, prepare
    for call in (lambda: load_role("embedded-gguf", "draft"), lambda: prepare("embedded-gguf")):
        with pytest.raises(ModelError, match=r"SDLAB_EXTRAS=gguf"):
            call()
    with pytest.raises(ModelError, match="llama.cpp runs the GGUF's own kernels"):
        load_role("embedded-gguf", "draft", kernels="int8")


def test_a_build_whose_batch_kernels_differ_from_the_one_token_ones_is_named():
    """llama.cpp's repacked and llamafile GEMMs round a verify's K + 1 tokens otherwise than one step;
    such a build is refused at load by these names (and a build without them passes)."""
    from lab.models.llamacpp import batch_variant_features
    info = "CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
    assert batch_variant_features(info) == ["REPACK", "LLAMAFILE"]
    assert batch_variant_features("CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1 | OPENMP = 1 | ") == []
