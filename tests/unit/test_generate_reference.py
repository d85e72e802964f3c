"""The project's decoding loops against an independent reference: transformers' own
`model.generate(do_sample=False)` on tiny random Qwen2 models (fp32, no download).

test_decoding.py holds the loops to the project's `greedy_generate`; here the reference is code the
project did not write, so a defect shared by both of ours (a cache off by one, a wrong EOS) shows.
Only the public signatures of `autoregressive_generate` and `speculative_generate` are used.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers

from lab.core.decoding import autoregressive_generate, speculative_generate
from lab.models.hf import HFModel

VOCAB = 1000
N_NEW = 32


class _Tok:
    """An identity vocabulary, no chat template; `eos` is what HFModel reads as the model's EOS."""
    chat_template = None

    def __init__(self, eos: int | None = None):
        self.eos_token_id = eos

    def get_vocab(self) -> dict[str, int]:
        return {f"t{i}": i for i in range(VOCAB)}

    def __len__(self) -> int:
        return VOCAB


def tiny_qwen2(seed: int):
    """The tiny random Qwen2 of test_hf_session.py's fixture, initialised from `seed`."""
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, tie_word_embeddings=False,
                                   eos_token_id=None, bos_token_id=None, pad_token_id=None)
    return transformers.Qwen2ForCausalLM(cfg).to(torch.float32).eval()


def perturbed(model, seed: int, noise: float = 0.002):
    """A copy of `model` with Gaussian noise drawn from `seed` (≈50 % greedy agreement with it, so
    the speculative loop takes both the accept and the reject branch)."""
    gen = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    return m


def hf_generate(model, prompt: list[int], max_new: int, eos: int | None = None) -> list[int]:
    """transformers' greedy decoding: the new tokens, ending with the EOS when one is produced."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new, eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices gain nothing from a second thread, and on a busy 2-core host its spin-waits cost
    several times the compute; restored afterwards (a process-wide torch setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def target():
    return tiny_qwen2(0)


@pytest.fixture(scope="module", params=["seed-1", "seed-2-perturbed"])
def draft(request, target):
    """Two drafts from seeds other than the target's: an unrelated model and a noisy copy."""
    return tiny_qwen2(1) if request.param == "seed-1" else perturbed(target, seed=2)


PROMPTS = [np.random.default_rng(s).integers(0, VOCAB, n).tolist() for s, n in ((3, 5), (4, 12), (5, 30))]


@pytest.mark.parametrize("prompt", PROMPTS, ids=["5tok", "12tok", "30tok"])
def test_autoregressive_generate_equals_transformers_generate(target, prompt):
    ours = autoregressive_generate(HFModel.from_objects(target, _Tok(), "tiny-0"), prompt, N_NEW)
    assert ours == hf_generate(target, prompt, N_NEW)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_speculative_generate_equals_transformers_generate(target, draft, k):
    t, d = HFModel.from_objects(target, _Tok(), "tiny-0"), HFModel.from_objects(draft, _Tok(), "tiny-draft")
    drafted = accepted = 0
    for prompt in PROMPTS:
        gen = speculative_generate(d, t, prompt, N_NEW, k_fn=lambda: k)
        assert gen.tokens == hf_generate(target, prompt, N_NEW), f"k={k}, prompt of {len(prompt)} tokens"
        drafted, accepted = drafted + sum(gen.drafted), accepted + sum(gen.accepted)
    assert accepted < drafted                       # rejections happened: the correction path ran


def test_perturbed_draft_is_partly_accepted(target):
    """The noisy copy exercises the accept branch too (an unrelated tiny draft is rarely accepted)."""
    t, d = HFModel.from_objects(target, _Tok(), "tiny-0"), HFModel.from_objects(perturbed(target, 2), _Tok(), "d")
    gen = speculative_generate(d, t, PROMPTS[1], N_NEW, k_fn=lambda: 4)
    assert 0 < sum(gen.accepted) < sum(gen.drafted)


def test_both_loops_stop_at_the_targets_eos_not_the_drafts(target, draft):
    """EOS: a token the target emits mid-output ends both loops exactly where generate ends.  The draft
    declares a different EOS, one the target emits earlier: cutting there would be a defect (the draft
    never decides where the output ends)."""
    prompt = PROMPTS[1]
    free = hf_generate(target, prompt, N_NEW)
    pos = next(i for i in range(6, N_NEW) if free[i] not in free[:i])        # first occurrence at i ≥ 6
    eos, draft_eos = free[pos], free[2]
    ref = hf_generate(target, prompt, N_NEW, eos=eos)
    assert ref == free[:pos + 1]                     # generate keeps the EOS and stops
    t = HFModel.from_objects(target, _Tok(eos), "tiny-0")
    d = HFModel.from_objects(draft, _Tok(draft_eos), "tiny-draft")
    assert t.eos_token_ids == (eos,) and d.eos_token_ids == (draft_eos,)
    assert autoregressive_generate(t, prompt, N_NEW) == ref
    for k in (1, 3, 5):
        assert speculative_generate(d, t, prompt, N_NEW, k_fn=lambda: k).tokens == ref, f"k={k}"
