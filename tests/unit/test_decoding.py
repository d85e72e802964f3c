"""Losslessness: speculative decoding reproduces the target exactly (greedy), and its distribution (sampling)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
scipy_stats = pytest.importorskip("scipy.stats")

from lab import spec  # noqa: E402
from lab.decoding import DraftState, TargetState, autoregressive_generate, speculative_generate  # noqa: E402
from lab.models.hf import HFModel, greedy_generate  # noqa: E402

VOCAB = 512


class _Tok:
    """Just enough tokenizer for HFModel: a fixed vocabulary, no chat template."""
    chat_template = None
    eos_token_id = None

    def get_vocab(self):
        return {f"t{i}": i for i in range(VOCAB)}

    def __len__(self):
        return VOCAB

    def encode(self, text):
        return [ord(c) % VOCAB for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def _model(seed: int, noise_of: HFModel | None = None, noise: float = 0.0) -> HFModel:
    torch.manual_seed(seed)
    cfg = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    m = transformers.Qwen2ForCausalLM(cfg).float().eval()
    if noise_of is not None:
        m = copy.deepcopy(noise_of.model)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(noise * torch.randn_like(p))
    return HFModel.from_objects(m, _Tok(), f"tiny-{seed}-{noise}")


@pytest.fixture(scope="module")
def target():
    return _model(0)


@pytest.fixture(scope="module", params=["same", "perturbed", "unrelated"])
def draft(request, target):
    if request.param == "same":
        return target
    if request.param == "perturbed":
        return _model(1, noise_of=target, noise=0.02)
    return _model(2)


PROMPTS = [[5, 17, 99, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 200]]


@pytest.mark.parametrize("k", [1, 3, 5, 15])
def test_greedy_speculative_equals_target_greedy(target, draft, k):
    for prompt in PROMPTS:
        reference = greedy_generate(target, prompt, 40)
        gen = speculative_generate(draft, target, prompt, 40, k_fn=lambda: k)
        assert gen.tokens == reference
        assert all(0 <= a <= d for a, d in zip(gen.accepted, gen.drafted))


def test_acceptance_reflects_draft_quality(target):
    same = speculative_generate(target, target, PROMPTS[0], 30, k_fn=lambda: 5)
    assert sum(same.accepted) == sum(same.drafted)          # a perfect draft is always accepted
    other = speculative_generate(_model(2), target, PROMPTS[0], 30, k_fn=lambda: 5)
    assert sum(other.accepted) < sum(other.drafted)


def test_autoregressive_generate_matches_reference(target):
    assert autoregressive_generate(target, PROMPTS[1], 25) == greedy_generate(target, PROMPTS[1], 25)


def test_distributed_bookkeeping_with_varying_k(target, draft):
    """The per-cycle primitives the nodes use, with K changing every cycle (as adaptive strategies do)."""
    rng = np.random.default_rng(0)
    prompt = PROMPTS[1]
    d, first = DraftState.start(draft, prompt)
    t = TargetState.start(target, prompt)
    out = []
    ks = [1, 4, 2, 7, 3, 1, 5]
    for i in range(len(ks) * 3):
        drafts, _ = d.draft(ks[i % len(ks)], 0.0, rng, first_logits=first if i == 0 else None)
        n, tok = t.verify(drafts, 0.0, rng)
        d.commit(drafts[:n], tok)
        out += drafts[:n] + [tok]
        assert t.session.length == len(prompt) + len(out) - 1       # target cache = S[:-1]
        assert d.session.length <= len(prompt) + len(out)
    assert out[:40] == greedy_generate(target, prompt, len(out))[:40]


# ------------------------------------------------------------------ sampling: distribution preserved

def _dists(v: int, seed: int):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(v) * 0.7)
    q = rng.dirichlet(np.ones(v) * 0.7)
    return p, q


@pytest.mark.parametrize("mode", ["full", "topk:8"])
def test_rejection_sampling_preserves_target_distribution(mode):
    """First emitted token over many draws, chi-square against p (V=8, K=1)."""
    v, n_draws = 8, 20000
    p, q = _dists(v, 3)
    rng = np.random.default_rng(11)
    counts = np.zeros(v)
    for _ in range(n_draws):
        d = int(rng.choice(v, p=q))
        qv = spec.decode_q(mode, [d], spec.encode_q(mode, [d], q[None, :]), v)
        n, tok = spec.rejection_accept([d], qv, np.stack([p, p]), rng)
        counts[d if n == 1 else tok] += 1
    stat, pvalue = scipy_stats.chisquare(counts, n_draws * p)
    assert pvalue > 1e-3, (counts / n_draws, p)


def test_approximate_payload_distorts_the_distribution():
    """With only q(d) known, the residual is wrong: the chi-square test must see it."""
    v, n_draws = 8, 20000
    p, q = _dists(v, 3)
    rng = np.random.default_rng(12)
    counts = np.zeros(v)
    for _ in range(n_draws):
        d = int(rng.choice(v, p=q))
        qv = spec.decode_q("tokens+probs", [d], spec.encode_q("tokens+probs", [d], q[None, :]), v)
        n, tok = spec.rejection_accept([d], qv, np.stack([p, p]), rng)
        counts[d if n == 1 else tok] += 1
    _, pvalue = scipy_stats.chisquare(counts, n_draws * p)
    assert pvalue < 1e-6


def test_expected_tokens_formula():
    assert spec.expected_tokens(0.0, 5) == 1.0
    assert spec.expected_tokens(1.0, 5) == 6.0
    assert spec.expected_tokens(0.8, 3) == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    k, _ = spec.best_k(0.8, 100, lambda k: 250 + 3 * k, rtt_ms=0)
    k_far, _ = spec.best_k(0.8, 100, lambda k: 250 + 3 * k, rtt_ms=500)
    assert k_far >= k            # the best K grows with RTT


def test_greedy_accept_picks_correction():
    logits = np.full((3, 6), -5.0)
    logits[0, 2] = logits[1, 4] = logits[2, 1] = 5.0
    assert spec.greedy_accept([2, 3], logits) == (1, 4)
    assert spec.greedy_accept([2, 4], logits) == (2, 1)
