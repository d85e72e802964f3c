"""Spec math: acceptance rules, payload modes (exact vs approximate, measured), the throughput model."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as scipy_stats

from lab.core import spec

V = 8
EXACT_MODES = ["tokens", "topk:3", "full"]          # topk with N < V on purpose


def _dists(seed: int, v: int = V):
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.ones(v) * 0.7), rng.dirichlet(np.ones(v) * 0.7)    # p, q


def _one_cycle(mode: str, p: np.ndarray, q: np.ndarray, rng, k: int = 1, honest: bool = True) -> list[int]:
    """One cycle over position-independent p, q: draft K from the mode's proposal (or from q itself when
    not honest), send through encode/decode, accept.  Returns the emitted tokens."""
    drafts = [spec.sample(spec.proposal(mode, q) if honest else q, rng) for _ in range(k)]
    qs = np.tile(q, (k, 1))
    seen = spec.decode_q(mode, drafts, spec.encode_q(mode, drafts, qs), q.shape[0])
    n, tok = spec.rejection_accept(drafts, seen, np.tile(p, (k + 1, 1)), rng)
    return drafts[:n] + [tok]


def _first_token_counts(mode: str, honest: bool = True, n_draws: int = 20000, seed: int = 11):
    p, q = _dists(3)
    rng = np.random.default_rng(seed)
    counts = np.zeros(V)
    for _ in range(n_draws):
        counts[_one_cycle(mode, p, q, rng, honest=honest)[0]] += 1
    return p, counts


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum())


# ------------------------------------------------------------------ greedy

def test_greedy_accept_prefix_and_correction():
    logits = np.full((4, 6), -5.0)
    logits[0, 2] = logits[1, 4] = logits[2, 1] = logits[3, 5] = 5.0       # target argmax: 2 4 1 | bonus 5
    assert spec.greedy_accept([2, 3, 1], logits) == (1, 4)                 # reject at 1 → correction 4
    assert spec.greedy_accept([0, 4, 1], logits) == (0, 2)                 # reject at 0
    assert spec.greedy_accept([2, 4, 1], logits) == (3, 5)                 # all accepted → bonus
    assert spec.greedy_accept([2, 4], logits[:3]) == (2, 1)


# ------------------------------------------------------------------ sampling: exact modes

@pytest.mark.parametrize("mode", EXACT_MODES)
def test_exact_modes_analytically(mode):
    """The emitted-token distribution computed in closed form equals p (to float rounding)."""
    for seed in range(20):
        p, q = _dists(seed)
        prop = spec.proposal(mode, q)
        # The cloud's view for any draft d: for exact modes it does not depend on d.
        seen = spec.decode_q(mode, [int(np.argmax(prop))], spec.encode_q(mode, [int(np.argmax(prop))], q[None]), V)[0]
        if mode != "tokens":
            assert np.array_equal(seen, prop)          # bit-identical views of q on both sides
        np.testing.assert_allclose(spec.emitted_distribution(p, prop, seen), p, atol=1e-12)


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_rejection_sampling_preserves_target_distribution(mode):
    """First emitted token over 20,000 draws, chi-square against p."""
    p, counts = _first_token_counts(mode)
    _, pvalue = scipy_stats.chisquare(counts, counts.sum() * p)
    print(f"\n{mode:>12}: chi-square p-value {pvalue:.3f}, TV distance to p {_tv(counts, p):.4f}")
    assert pvalue > 1e-3, (counts / counts.sum(), p)


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_multi_token_cycles_keep_the_joint_distribution(mode):
    """K = 3 cycles (bonus path included), position-independent p: the first two emitted tokens must be
    i.i.d. p — a chi-square over the 64 pairs."""
    p, q = _dists(5)
    rng = np.random.default_rng(21)
    counts = np.zeros((V, V))
    n_draws = 30000
    for _ in range(n_draws):
        out: list[int] = []
        while len(out) < 2:
            out += _one_cycle(mode, p, q, rng, k=3)
        counts[out[0], out[1]] += 1
    expected = n_draws * np.outer(p, p)
    keep = expected >= 5                                 # chi-square validity; the rest pooled
    obs, exp = counts[keep], expected[keep]
    if (~keep).any():                                    # pool the sparse cells into one
        obs, exp = np.append(obs, counts[~keep].sum()), np.append(exp, expected[~keep].sum())
    _, pvalue = scipy_stats.chisquare(obs, exp)
    print(f"\n{mode:>12} K=3 pairs: chi-square p-value {pvalue:.3f}")
    assert pvalue > 1e-3


# ------------------------------------------------------------------ sampling: where it is NOT exact

def test_tokens_plus_probs_is_approximate_and_the_test_sees_it():
    """Only q(d) crosses the link: the acceptance test is exact, the residual is not."""
    p, counts = _first_token_counts("tokens+probs")
    _, pvalue = scipy_stats.chisquare(counts, counts.sum() * p)
    # Closed form of the same scheme: the residual is p with d removed (the cloud's q is 0 elsewhere).
    _, q = _dists(3)
    exact = q * np.minimum(1.0, p / q)
    for d in range(V):
        reject = q[d] * (1 - min(1.0, p[d] / q[d]))
        seen = np.zeros(V)
        seen[d] = q[d]
        exact = exact + reject * spec.residual(p, seen)
    print(f"\ntokens+probs: chi-square p-value {pvalue:.2e}, TV to p: measured {_tv(counts, p):.4f}, "
          f"closed form {_tv(exact, p):.4f}; measured vs closed form {_tv(counts, exact):.4f}")
    assert pvalue < 1e-6
    assert _tv(exact, p) > 0.02 and _tv(counts, exact) < 0.015


def test_topk_with_a_draft_sampling_outside_the_top_n_is_approximate():
    """The misuse the proposal() rule prevents: the draft samples from its full q but sends only top-N."""
    p, counts = _first_token_counts("topk:3", honest=False)
    _, pvalue = scipy_stats.chisquare(counts, counts.sum() * p)
    print(f"\ntopk:3, draft sampling from full q: chi-square p-value {pvalue:.2e}, TV {_tv(counts, p):.4f}")
    assert pvalue < 1e-6


def test_temperature_zero_needs_no_q_and_tokens_mode_proposes_greedily():
    _, q = _dists(1)
    assert spec.encode_q("full", [0], None) == {}
    prop = spec.proposal("tokens", q)
    assert prop[np.argmax(q)] == 1.0 and prop.sum() == 1.0


# ------------------------------------------------------------------ payload encoding

@pytest.mark.parametrize("mode", ["tokens", "tokens+probs", "topk:16", "full"])
def test_payload_roundtrip_and_byte_count(mode):
    rng = np.random.default_rng(0)
    vocab, k = 5000, 4
    q = spec.softmax(rng.normal(size=(k, vocab)) * 3, 1.0)
    drafts = [spec.sample(spec.proposal(mode, q[i]), rng) for i in range(k)]
    arrays = spec.encode_q(mode, drafts, q)
    assert 4 * k + sum(a.nbytes for a in arrays.values()) == spec.payload_bytes(mode, k, vocab)
    seen = spec.decode_q(mode, drafts, arrays, vocab)
    assert seen.shape == (k, vocab)
    for i, d in enumerate(drafts):
        assert seen[i, d] > 0                              # the cloud never sees a draft as impossible
        if mode in ("topk:16", "full"):
            assert np.array_equal(seen[i], spec.proposal(mode, q[i]))   # K-row decode == per-row proposal


def test_decode_q_pads_or_truncates_to_the_target_vocab():
    q = spec.softmax(np.arange(10.0)[None, :], 1.0)
    assert spec.decode_q("full", [9], spec.encode_q("full", [9], q), 12).shape == (1, 12)
    assert spec.decode_q("full", [3], spec.encode_q("full", [3], q), 8).sum() == pytest.approx(1.0)


def test_bad_payloads_are_refused():
    for bad in ("topk", "topk:0", "topk:x", "fulll", "tokens:3", ""):
        with pytest.raises(ValueError, match="payload mode"):
            spec.parse_payload(bad)
    with pytest.raises(ValueError, match="rows"):
        spec.decode_q("tokens+probs", [1, 2], {"q_draft": np.ones(3, np.float32)}, 10)
    with pytest.raises(ValueError, match="ids in"):
        spec.decode_q("topk:2", [1], {"q_idx": np.array([[1, 99]], np.int32),
                                      "q_val": np.ones((1, 2), np.float32)}, 10)
    with pytest.raises(KeyError):
        spec.decode_q("full", [1], {}, 10)


def test_softmax_and_sample():
    with pytest.raises(ValueError, match="temperature"):
        spec.softmax(np.zeros(3), 0.0)
    p = spec.softmax(np.array([0.0, 1.0, 2.0]), 0.01)
    assert p[2] == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    probs = np.array([0.1, 0.0, 0.6, 0.3])
    counts = np.bincount([spec.sample(probs, rng) for _ in range(20000)], minlength=4)
    assert counts[1] == 0
    np.testing.assert_allclose(counts / 20000, probs, atol=0.015)


# ------------------------------------------------------------------ throughput model

def test_expected_tokens_formula_and_monte_carlo():
    assert spec.expected_tokens(0.0, 5) == 1.0
    assert spec.expected_tokens(1.0, 5) == 6.0
    assert spec.expected_tokens(0.8, 3) == pytest.approx(1 + 0.8 + 0.64 + 0.512)
    rng = np.random.default_rng(0)
    alpha, k = 0.7, 5
    hits = rng.random((100000, k)) < alpha
    n = np.where(hits.all(axis=1), k, hits.argmin(axis=1))          # accepted prefix length
    assert (n + 1).mean() == pytest.approx(spec.expected_tokens(alpha, k), rel=0.01)


def test_best_k_grows_with_rtt_and_edge_only_wins_far_away():
    verify = lambda k: 290 + 5 * (k + 1)        # noqa: E731
    ks = [spec.best_k(0.8, 109, verify, rtt_ms=rtt)[0] for rtt in (0, 50, 200, 1000)]
    print(f"\nbest K at RTT 0/50/200/1000 ms (α 0.8, draft 109 ms, verify 290+5n ms): {ks}")
    assert ks == sorted(ks) and ks[-1] > ks[0]
    k, tps = spec.best_k(0.8, 109, verify, rtt_ms=0)
    assert tps == pytest.approx(spec.throughput(0.8, k, 109, verify(k), 0))
    # A fast draft and a very slow link: drafting alone beats any K.
    assert spec.best_k(0.5, 20, verify, rtt_ms=2000, edge_only=True)[0] == 0


def test_transmit_and_cycle_time():
    assert spec.transmit_ms(125_000, 1.0) == pytest.approx(1000.0)          # 1 Mbit at 1 Mbit/s
    assert spec.transmit_ms(10**9, 0) == 0.0
    b = spec.payload_bytes("full", 15, 151936)
    assert b == 15 * 4 + 2 * 15 * 151936                                    # ≈4.6 MB per cycle
    assert spec.cycle_ms(3, 100, 300, 50, 7) == 3 * 100 + 300 + 50 + 7


def test_fast_fp16_encoding_is_bit_identical_to_numpy():
    """encode_q("full") uses its own fp16 conversion (numpy's subnormal path is slow): same bits."""
    rng = np.random.default_rng(2)
    q = spec.softmax(rng.normal(size=(3, 151936)) * 4, 0.7)            # mostly fp16 subnormals
    edge = np.array([0.0, 2.0 ** -25, 1.5 * 2.0 ** -24, 2.0 ** -14 - 2.0 ** -26, 2.0 ** -14, 0.5, 1.0])
    for x in (q, edge[None, :]):
        got = spec.encode_q("full", [0] * x.shape[0], x)["q_full"]
        assert got.dtype == np.float16
        assert np.array_equal(got.view(np.uint16), x.astype(np.float16).view(np.uint16))


def test_verify_time_is_the_measured_where_measured_and_the_lines_slope_beyond():
    from lab.core.spec import verify_ms_at
    table = ((2, 293.0), (4, 243.0), (6, 228.0))
    assert verify_ms_at(3, 250, 5) == 265                       # no table: the line
    assert verify_ms_at(4, 250, 5, table) == 243.0
    assert verify_ms_at(5, 250, 5, table) == 235.5              # between two measured sizes
    assert verify_ms_at(1, 250, 5, table) == 288.0              # before the first, the line's slope
    assert verify_ms_at(9, 250, 5, table) == 243.0              # past the last, the line's slope


def test_the_minimum_block_is_where_no_shorter_block_verifies_cheaper():
    """A Zen 4 EPYC's fp32 target (lab profile): a verify of 2 tokens 286 ms, of 4 tokens 186: a block
    the stop ends at 1 or 2 drafts is better drafted on to 3 (29 ms a draft); not to 4, whose verify
    costs no less than 3 drafts' plus 236."""
    from lab.core.spec import BlockStop, min_block, verify_ms_at
    table = ((1, 228.5), (2, 285.9), (4, 186.2), (6, 189.4), (8, 251.3))
    assert min_block(lambda n: verify_ms_at(n, 213, 6.2, table), 29.2, 20) == 3
    assert min_block(lambda n: 20 + 2.0 * n, 5.0, 20) == 1              # a GPU's: verify grows with n
    assert min_block(lambda n: verify_ms_at(n, 213, 6.2, table), 29.2, 2) == 2      # the cap bounds it
    stop = BlockStop(0.9, at_least=3)
    assert [stop.ends(c) for c in (0.5, 0.5, 0.99, 0.99)] == [False, False, True, True]
