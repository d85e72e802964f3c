"""Losslessness of the decoding loops: greedy token-for-token over real (tiny) transformers, the KV
bookkeeping checked against the committed sequence, the distributed path equal to the co-located one,
and at temperature > 0 the output distribution of the whole loop checked by chi-square."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.stats as scipy_stats
import torch
import transformers

from lab.core import protocol, spec
from lab.core.cycle import QueryLog, Verdict, speculate
from lab.core.decoding import LocalSeam, autoregressive_generate, speculative_generate, verify_rng
from lab.models.hf import HFModel, greedy_generate

VOCAB = 1000


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
    """A tiny random Qwen2 (2 layers, hidden 64, fp32), or a perturbed copy of one (noise 0.002 on weights
    initialised with std 0.02 gives ≈50 % greedy agreement; 0.02 would make it unrelated)."""
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
        return _model(1, noise_of=target, noise=0.002)
    return _model(2)


PROMPTS = [[5, 17, 99, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 200]]


@pytest.mark.parametrize("k", [1, 3, 5, 15])
def test_greedy_speculative_equals_target_greedy(target, draft, k):
    for prompt in PROMPTS:
        reference = greedy_generate(target, prompt, 40)
        gen = speculative_generate(draft, target, prompt, 40, k_fn=lambda: k)
        assert gen.tokens == reference
        assert all(0 <= a <= d for a, d in zip(gen.accepted, gen.drafted))
        if draft is target:
            assert gen.accepted == gen.drafted                 # a perfect draft is always accepted


def test_acceptance_is_partial_for_a_different_draft(target):
    rates = {}
    for name, d in (("perturbed", _model(1, noise_of=target, noise=0.002)), ("unrelated", _model(2))):
        g = speculative_generate(d, target, PROMPTS[1], 60, k_fn=lambda: 5)
        rates[name] = sum(g.accepted) / sum(g.drafted)
    print(f"\ngreedy acceptance vs the tiny target: {rates}")
    assert 0 < rates["perturbed"] < 1                          # partial: both branches of the loop ran
    assert rates["unrelated"] < 1


@pytest.mark.parametrize("payload", ["tokens", "tokens+probs", "topk:8", "full"])
def test_sampling_over_transformers_runs_every_payload(target, payload):
    """T > 0 through HF sessions: with the target as its own draft, `full` and `tokens+probs` accept
    (nearly) everything (q = p up to fp16/fp32 rounding); `tokens` proposes greedily, so it accepts less."""
    g = speculative_generate(target, target, PROMPTS[0], 40, k_fn=lambda: 4, temperature=0.8, seed=1,
                             payload=payload)
    rate = sum(g.accepted) / sum(g.drafted)
    print(f"\n{payload:>12}: same model, T=0.8, acceptance {rate:.3f}")
    assert len(g.tokens) == 40 and all(0 <= t < VOCAB for t in g.tokens)
    if payload in ("full", "tokens+probs"):
        assert rate > 0.95


def test_autoregressive_generate_matches_reference(target):
    assert autoregressive_generate(target, PROMPTS[1], 25) == greedy_generate(target, PROMPTS[1], 25)


class _VaryingK:
    """A strategy whose K changes every cycle, as adaptive strategies' does."""
    placement, name = "split", "varying"

    def __init__(self, ks):
        self.ks, self.i = ks, 0

    def start_query(self):
        self.i = 0

    def next_k(self):
        self.i += 1
        return self.ks[(self.i - 1) % len(self.ks)]

    def observe(self, obs):
        assert 0 <= obs.accepted <= obs.k


def test_distributed_bookkeeping_with_varying_k(target, draft):
    """The one cycle (lab/core/cycle.py) with K changing every cycle: caches stay in step, output is greedy."""
    prompt = PROMPTS[1]
    seam = LocalSeam(draft, target, prompt)
    log = QueryLog(seam.now, "split")

    def check(new, k, n):
        d, t = seam.d, seam.t
        assert t.session.length == len(d.committed) - 1 == t.length         # target cache = S[:-1]
        assert d.session.length == d.cached <= len(d.committed)
        assert 1 <= len(d.pending()) <= 2

    speculate(_VaryingK([1, 4, 2, 7, 3, 1, 5]), seam, log, 40, (), on_cycle=check)
    assert len(log.cycles["k"]) >= 7
    assert log.tokens == greedy_generate(target, prompt, len(log.tokens))


# ------------------------------------------------------------------ a bigram model whose cache is checkable

class _BigramSession:
    """Logits depend on the previous token only; the 'cache' is the token list itself, so a test can
    compare it with the committed sequence after every cycle."""

    def __init__(self, model):
        self.m, self.tokens = model, []

    @property
    def length(self) -> int:
        return len(self.tokens)

    def prefill(self, ids):
        assert not self.tokens and ids
        self.tokens = list(ids)
        return self.m.table[self.tokens[-1]].copy()

    def extend(self, ids):
        assert self.tokens, "extend before prefill"
        self.tokens += list(ids)
        return np.stack([self.m.table[t] for t in ids])

    def rollback(self, length):
        assert 0 <= length <= len(self.tokens)
        del self.tokens[length:]


class _Bigram:
    def __init__(self, seed: int, v: int = 6, concentration: float = 0.8):
        rng = np.random.default_rng(seed)
        self.probs = rng.dirichlet(np.ones(v) * concentration, size=v)         # [V, V]: row = previous token
        self.table = np.log(self.probs)                                         # logits at T = 1
        self.vocab_size, self.eos_token_ids = v, ()
        self.model_id = self.tokenizer_hash = f"bigram-{seed}"

    def new_session(self):
        return _BigramSession(self)


def test_caches_hold_exactly_the_committed_sequence():
    """After every cycle: target cache == S[:-1] token for token, draft cache == S[:cached]."""
    dm, tm = _Bigram(1), _Bigram(2)
    seam = LocalSeam(dm, tm, [0, 3, 1], temperature=1.0, seed=0, payload="full")

    def check(new, k, n):
        d, t = seam.d, seam.t
        assert t.session.tokens == d.committed[:-1] and t.last == d.committed[-1]
        assert d.session.tokens == d.committed[:d.cached]

    speculate(_VaryingK([3, 1, 5, 2, 4, 4, 1, 6]), seam, QueryLog(seam.now, "split"), 80, (), on_cycle=check)


class _WireSeam(LocalSeam):
    """LocalSeam whose proposal crosses the real wire encoding, as the edge's verify request does."""

    def verify(self, drafts, seq):
        frames = protocol.encode(protocol.Message(
            "verify", seq + 1, {"query": "q", "seq": seq, "payload": self.payload, "temperature": self.temperature,
                                "seed": self.seed},
            {"tokens": protocol.ids(drafts), **spec.encode_q(self.payload, drafts, self.q)}))
        msg = protocol.decode(frames)                                           # ── the link ──
        seen = spec.decode_q(msg["payload"], [int(x) for x in msg.arrays["tokens"]], msg.arrays,
                             self.target_model.vocab_size)
        n, tok = self.t.verify(drafts, self.temperature, verify_rng(msg["seed"], msg["seq"]), seen)
        return Verdict(n, tok, 0.0)


@pytest.mark.parametrize("payload", ["tokens", "tokens+probs", "topk:2", "full"])
def test_distributed_path_equals_colocated(payload):
    """The cycle with its proposal through the wire encoding samples exactly what speculative_generate
    samples with the same seed: cloud-spec is a faithful reference for the distributed runs."""
    dm, tm = _Bigram(1), _Bigram(2)
    prompt, seed, temp = [0, 3, 1], 42, 0.9
    ks = [2, 5, 1, 3]
    ref = speculative_generate(dm, tm, prompt, 30, k_fn=iter(ks * 30).__next__, temperature=temp, seed=seed,
                               payload=payload)
    seam = _WireSeam(dm, tm, prompt, temp, seed, payload)
    log = QueryLog(seam.now, "split")
    speculate(_VaryingK(ks), seam, log, 30, ())
    assert log.tokens == ref.tokens


def test_the_cycle_stops_at_the_stopping_tokens_it_is_given():
    """The stopping rule is the target's, passed to the loop: the draft model's own EOS ids (none here)
    play no part, and the output is cut right after the first stopping token."""
    dm, tm = _Bigram(1), _Bigram(2)
    seam = LocalSeam(dm, tm, [0, 3, 1])
    full = QueryLog(seam.now, "split")
    speculate(_VaryingK([3]), seam, full, 30, ())
    stop_at = full.tokens[5]
    seam = LocalSeam(dm, tm, [0, 3, 1])
    log = QueryLog(seam.now, "split")
    speculate(_VaryingK([3]), seam, log, 30, (stop_at,))
    assert log.tokens == full.tokens[: full.tokens.index(stop_at) + 1]


def _pair_counts(payload: str, n_runs: int, k: int = 3):
    """First two generated tokens of the whole loop (prefill, draft, verify, rollback) over many seeds."""
    dm, tm = _Bigram(1), _Bigram(2)
    prompt = [0, 3]
    v = tm.vocab_size
    counts = np.zeros((v, v))
    for s in range(n_runs):
        g = speculative_generate(dm, tm, prompt, 2, k_fn=lambda: k, temperature=1.0, seed=s, payload=payload)
        counts[g.tokens[0], g.tokens[1]] += 1
    exact = tm.probs[prompt[-1]][:, None] * tm.probs                    # P(x1) P(x2 | x1)
    return counts, exact


def _chi2(counts, exact):
    expected = counts.sum() * exact
    keep = expected >= 5
    obs, exp = counts[keep], expected[keep]
    if (~keep).any():                                    # pool the sparse cells into one
        obs, exp = np.append(obs, counts[~keep].sum()), np.append(exp, expected[~keep].sum())
    return scipy_stats.chisquare(obs, exp)[1]


@pytest.mark.parametrize("payload", ["tokens", "topk:2", "full"])
def test_sampling_loop_keeps_the_target_distribution(payload):
    counts, exact = _pair_counts(payload, 6000)
    pvalue = _chi2(counts, exact)
    print(f"\n{payload:>12}: whole loop, first two tokens, chi-square p-value {pvalue:.3f}")
    assert pvalue > 1e-3


def test_sampling_loop_with_tokens_plus_probs_deviates():
    counts, exact = _pair_counts("tokens+probs", 6000)
    pvalue = _chi2(counts, exact)
    print(f"\ntokens+probs: whole loop, chi-square p-value {pvalue:.2e} (approximate residual, by design)")
    assert pvalue < 1e-3


# ------------------------------------------------------------------ the confidence stop

class _SureSession:
    """A draft whose greedy token at step i is i + 1, with probability sure[i] (the rest spread evenly)."""

    def __init__(self, sure: list[float], v: int = 50):
        self.sure, self.v, self.forwards = sure, v, 0

    def row(self, i: int) -> np.ndarray:
        p = np.full(self.v, (1 - self.sure[i]) / (self.v - 1))
        p[i + 1] = self.sure[i]
        return np.log(p)

    def extend(self, ids):
        self.forwards += 1
        return self.row(self.forwards)[None]


@pytest.mark.parametrize("stop, want", [(None, 7), (0.9, 2), (0.6, 3), (0.4, 5), (0.3, 6)])
def test_a_confidence_stop_ends_the_block_at_the_token_that_crosses_it(stop, want):
    """Confidences 0.95 0.9 0.6 0.8 0.9 0.5 0.9: the block's running product 0.95 0.855 0.513 0.410 0.369
    0.185 0.166 ends the block at the first token it takes below the threshold, that token kept, and
    no forward is spent after it; K = 7 caps it."""
    from lab.core.decoding import draft_tokens
    s = _SureSession([0.95, 0.9, 0.6, 0.8, 0.9, 0.5, 0.9, 0.9])
    toks, _ = draft_tokens(s, [], 7, 0.0, np.random.default_rng(0), logits=s.row(0), stop=stop)
    assert toks == list(range(1, want + 1))
    assert s.forwards == want - 1                 # the first token came from the logits it was given


@pytest.mark.parametrize("stop_min, want", [(1, 2), (2, 2), (3, 3), (4, 4), (7, 7)])
def test_a_stop_from_its_min_th_draft_leaves_every_block_that_many(stop_min, want):
    """stop=0.9 crosses at the 2nd token; from the stop_min-th draft on the stop may end the block
    (the product is then below 0.9 at every token, so it ends there), K = 7 still caps it."""
    from lab.core.decoding import draft_tokens
    s = _SureSession([0.95, 0.9, 0.6, 0.8, 0.9, 0.5, 0.9, 0.9])
    toks, _ = draft_tokens(s, [], 7, 0.0, np.random.default_rng(0), logits=s.row(0), stop=0.9, stop_min=stop_min)
    assert toks == list(range(1, want + 1))


def test_a_stop_with_a_minimum_block_keeps_the_targets_greedy_output(target, draft):
    for prompt in PROMPTS:
        gen = speculative_generate(draft, target, prompt, 40, k_fn=lambda: 8, stop=0.9, stop_min=3)
        assert gen.tokens == greedy_generate(target, prompt, 40)
        made = 0
        for d, a in zip(gen.drafted, gen.accepted):
            assert d >= min(3, 40 - made)                  # a block is cut only by the tokens still to go
            made += a + 1


@pytest.mark.parametrize("stop", [0.2, 0.5, 0.9])
def test_a_confidence_stop_keeps_the_targets_greedy_output(target, draft, stop):
    for prompt in PROMPTS:
        gen = speculative_generate(draft, target, prompt, 40, k_fn=lambda: 8, stop=stop)
        assert gen.tokens == greedy_generate(target, prompt, 40)
        assert all(1 <= d <= 8 and 0 <= a <= d for a, d in zip(gen.accepted, gen.drafted))


def test_a_confidence_stop_shortens_the_blocks_of_an_unsure_draft(target):
    unrelated = _model(2)
    full = speculative_generate(unrelated, target, PROMPTS[1], 40, k_fn=lambda: 8)
    stopped = speculative_generate(unrelated, target, PROMPTS[1], 40, k_fn=lambda: 8, stop=0.9)
    assert full.drafted[:5] == [8] * 5 and max(stopped.drafted) < 8      # (K shrinks only at the end)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_caches_hold_the_committed_sequence_when_blocks_stop_early(temperature):
    """A stopped block leaves the draft cache as a full one does, its last draft never fed (the stop
    is read from the logits that made it): the commit rolls both caches back to exactly S."""
    dm, tm = _Bigram(1), _Bigram(2)
    seam = LocalSeam(dm, tm, [0, 3, 1], temperature=temperature, seed=0, payload="full")
    ks = []

    def check(new, k, n):
        d, t = seam.d, seam.t
        assert t.session.tokens == d.committed[:-1] and t.last == d.committed[-1]
        assert d.session.tokens == d.committed[:d.cached]
        ks.append(k)

    from lab.core.cycle import FixedK
    speculate(FixedK(6, stop=0.4), seam, QueryLog(seam.now, "split"), 80, (), on_cycle=check)
    assert min(ks[:-1]) < 6 and all(1 <= k <= 6 for k in ks)       # (the last block may be cut by the 80)


@pytest.mark.parametrize("payload", ["tokens", "tokens+probs", "topk:2", "full"])
def test_at_temperature_the_stop_reads_the_drafts_own_softmax_whatever_the_payload(payload):
    """`tokens` proposes from a one-hot: its proposal is sure of everything, the draft is not.  Every
    payload stops where the draft's own q at T says: here q puts 0.5 on each of two tokens, so whichever
    is drawn the block's product is 0.25 after two drafts, and stop 0.3 ends it there."""
    from lab.core.decoding import draft_tokens

    class Fork(_SureSession):
        def row(self, i):
            p = np.full(self.v, 1e-9)
            p[[1, 2]] = 0.5
            return np.log(p)

    s = Fork([])
    toks, q = draft_tokens(s, [], 8, 1.0, np.random.default_rng(0), payload=payload, logits=s.row(0), stop=0.3)
    assert len(toks) == 2 and q.shape == (2, 50)


class _CountingBigram(_Bigram):
    """A bigram draft whose sessions record the size of every extend, rows interacting or not."""

    def __init__(self, seed: int, rows_interact: bool):
        super().__init__(seed)
        self.rows_interact, self.feeds = rows_interact, []

    def new_session(self):
        s, feeds = _BigramSession(self), self.feeds
        s.rows_interact = self.rows_interact
        extend = s.extend
        s.extend = lambda ids: (feeds.append(len(ids)), extend(ids))[1]
        return s


@pytest.mark.parametrize("rows_interact", [False, True])
def test_a_draft_whose_rows_interact_takes_a_whole_blocks_catch_up_one_token_a_forward(rows_interact):
    """The draft agreeing with the target everywhere, every block is accepted whole and the next starts
    with a two-token catch-up (its last draft and the bonus): one forward of two rows, or, where the
    session's rows interact (an int8 draft), two of one — the same tokens either way."""
    draft, target = _CountingBigram(2, rows_interact), _Bigram(2)
    g = speculative_generate(draft, target, [0, 3, 1], 24, k_fn=lambda: 3)
    assert g.accepted[:-1] == g.drafted[:-1] == [3] * (len(g.drafted) - 1)
    assert g.tokens == greedy_generate(target, [0, 3, 1], 24)
    assert (max(draft.feeds) == 1) == rows_interact and draft.feeds.count(2) == (0 if rows_interact else len(g.drafted) - 1)
