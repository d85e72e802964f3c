"""pipelined:K — the edge drafts the next block while the target verifies (lab/core/cycle.py
speculate_pipelined).  Checks: at T = 0 the output is token for token the sequential cycle's (and the
target's greedy), with verdicts arriving at once or late, one or several blocks in flight; blocks drafted
on a refuted guess are answered stale by the target and discarded by the edge, caches intact; at T > 0 the
output distribution is the target's (chi-square, as tests/unit/test_decoding.py); the cloud node refuses
to verify a block whose base it does not hold; the simulator hides the drafting behind the round trip."""
from __future__ import annotations

import numpy as np
import pytest

from lab.core import protocol
from lab.core.cycle import CYCLE_FIELDS, QueryLog, speculate, speculate_pipelined
from lab.core.decoding import LocalSeam, autoregressive_generate
from lab.core.protocol import Message, ProtocolError
from lab.core.strategies import StrategyError, make_strategy
from lab.models.hf import greedy_generate
from lab.scenario import parse_scenario
from lab.sim.simulator import ComputeProfile, simulate
from tests.unit.test_decoding import PROMPTS, _Bigram, _chi2, _model, _VaryingK


class _LateSeam(LocalSeam):
    """A LocalSeam whose verdicts arrive only after `lag` non-blocking polls, as across a slow link: the
    edge drafts whole blocks ahead, and at depth > 1 sends them before the verdicts they rest on."""

    def __init__(self, *a, lag: int = 3, **kw):
        super().__init__(*a, **kw)
        self.lag, self.polls = lag, {}

    def poll(self, seq, timeout_ms):
        if timeout_ms is not None:
            self.polls[seq] = self.polls.get(seq, 0) + 1
            if self.polls[seq] <= self.lag:
                return None
        return super().poll(seq, timeout_ms)


def _run(seam, k, depth, max_new, eos=()):
    log = QueryLog(seam.now, "split")
    speculate_pipelined(make_strategy(f"pipelined:{k}"), seam, log, max_new, eos, depth)
    return log


def _caches_in_step(seam):
    d, t = seam.d, seam.t
    assert t.session.length == t.length == len(d.committed) - 1 and t.last == d.committed[-1]
    assert d.session.length <= len(d.committed) + len(d.ahead)


@pytest.fixture(scope="module")
def pair():
    target = _model(0)
    return target, _model(1, noise_of=target, noise=0.002)      # ≈50 % greedy agreement


@pytest.mark.parametrize("lag", [0, 3])
@pytest.mark.parametrize("depth", [1, 2])
def test_greedy_pipelined_equals_sequential(pair, depth, lag):
    target, draft = pair
    seen = set()
    for k in (1, 3, 5):
        for prompt in PROMPTS:
            ref = QueryLog(lambda: 0.0, "split")
            speculate(_VaryingK([k]), LocalSeam(draft, target, prompt), ref, 40, ())
            seam = _LateSeam(draft, target, prompt, lag=lag)
            log = _run(seam, k, depth, 40)
            assert log.tokens == ref.tokens == greedy_generate(target, prompt, 40)
            _caches_in_step(seam)
            seen.update(log.cycles["optimistic"])
            assert all(len(v) == len(log.cycles["k"]) for v in log.cycles.values())
            assert all(h >= 0 for h in log.cycles["hidden_ms"])
    assert {0, 1} <= seen                        # blocks ahead were both used and thrown away


def test_superseded_blocks_are_answered_stale_and_discarded():
    """Two blocks in flight, a draft that rarely guesses right: the second block rests on a refuted guess,
    the target answers it stale without touching its cache, the edge waits only for the block it sent
    after the rollback — and the output is still the target's greedy output."""
    dm, tm = _Bigram(1), _Bigram(2)
    seam = _LateSeam(dm, tm, [0, 3, 1], lag=5)
    log = _run(seam, 2, 2, 40)
    assert log.tokens == autoregressive_generate(tm, [0, 3, 1], 40)
    assert seam.stale > 0 and 0 in log.cycles["optimistic"]
    _caches_in_step(seam)


def test_a_perfect_draft_uses_every_block_ahead():
    tm = _Bigram(2, concentration=0.3)
    log = _run(_LateSeam(tm, tm, [0, 3, 1], lag=2), 3, 1, 40)
    assert log.tokens == autoregressive_generate(tm, [0, 3, 1], 40)
    assert set(log.cycles["optimistic"][:-1]) == {1}           # the last cycle drafts nothing ahead
    assert all(h > 0 for h in log.cycles["hidden_ms"][:-1])


def test_pipelined_stops_at_the_stopping_tokens():
    dm, tm = _Bigram(2), _Bigram(2)
    full = _run(LocalSeam(dm, tm, [0, 3, 1]), 3, 1, 30)
    stop_at = full.tokens[6]
    log = _run(_LateSeam(dm, tm, [0, 3, 1], lag=2), 3, 2, 30, eos=(stop_at,))
    assert log.tokens == full.tokens[: full.tokens.index(stop_at) + 1]


def _triple_counts(n_runs: int, depth: int, lag: int):
    """First three tokens of the pipelined loop at K = 1 over many seeds: block 1 gives one draft and the
    bonus, so the third token comes from a block drafted ahead whenever the guess held."""
    dm, tm = _Bigram(1), _Bigram(2)
    prompt, v = [0, 3], tm.vocab_size
    counts, used = np.zeros((v, v, v)), 0
    for s in range(n_runs):
        seam = _LateSeam(dm, tm, prompt, temperature=1.0, seed=s, payload="full", lag=lag)
        log = _run(seam, 1, depth, 3)
        counts[tuple(log.tokens[:3])] += 1
        used += log.cycles["optimistic"][0] == 1
    p = tm.probs
    exact = p[prompt[-1]][:, None, None] * p[:, :, None] * p[None, :, :]     # P(x1) P(x2|x1) P(x3|x2)
    return counts.reshape(-1), exact.reshape(-1), used / n_runs


@pytest.mark.parametrize("depth,lag", [(1, 0), (2, 4)])
def test_sampling_pipelined_keeps_the_target_distribution(depth, lag):
    counts, exact, used = _triple_counts(6000, depth, lag)
    pvalue = _chi2(counts, exact)
    print(f"\npipelined depth {depth}: first three tokens, block ahead used in {used:.0%}, chi-square p {pvalue:.3f}")
    assert used > 0.1                            # the optimistic path is really exercised
    assert pvalue > 1e-3


def test_cloud_answers_a_block_on_a_refuted_guess_stale():
    from cloud_node.__main__ import CloudServer
    tm = _Bigram(2)
    server = CloudServer(tm, None, protocol.MAX_MESSAGE_BYTES)
    replies = []
    server.handle(Message("prefill", 1, {"query": "q"}, {"prompt_ids": protocol.ids([0, 3, 1])}), replies.append)
    st = server.sessions["q"]
    before = (st.length, st.last, list(st.session.tokens))

    def verify(mid, pos, last):
        server.handle(Message("verify", mid, {"query": "q", "seq": mid, "payload": "tokens", "temperature": 0,
                                              "seed": 0, "pos": pos, "last": last},
                              {"tokens": protocol.ids([2, 2])}), replies.append)
        return replies[-1]

    for pos, last in ((5, 1), (3, 4)):          # a longer chain than the session holds; another last token
        r = verify(2, pos, last)
        assert r.type == "verdict" and r["stale"] is True
        assert (st.length, st.last, list(st.session.tokens)) == before
    r = verify(3, 3, 1)                          # what the session holds: verified as usual
    assert r.get("stale") is None and st.length == 3 + r["n_accepted"]


def test_protocol_carries_the_base_of_a_pipelined_block():
    fields = {"query": "q", "seq": 4, "payload": "tokens", "temperature": 0, "seed": 1}
    arrays = {"tokens": protocol.ids([1, 2])}
    msg = protocol.decode(protocol.encode(Message("verify", 9, {**fields, "pos": 7, "last": 3}, arrays)))
    assert (msg["pos"], msg["last"]) == (7, 3)
    with pytest.raises(ProtocolError, match="pos and last"):
        protocol.encode(Message("verify", 9, {**fields, "pos": 7}, arrays))
    with pytest.raises(ProtocolError, match="stale must be true or false"):
        protocol.encode(Message("verdict", 9, {"query": "q", "seq": 1, "n_accepted": 0, "token": 0,
                                               "cloud_compute_ms": 0.1, "stale": 1}))


def test_strategy_names():
    s = make_strategy("pipelined:5")
    assert (s.name, s.k, s.pipeline_depth, s.placement) == ("pipelined:5", 5, 1, "split")
    assert make_strategy("pipelined:3:2").pipeline_depth == 2
    for bad in ("pipelined", "pipelined:0", "pipelined:5:0", "pipelined:5:x"):
        with pytest.raises(StrategyError, match="pipelined"):
            make_strategy(bad)
    assert "optimistic" in CYCLE_FIELDS and "hidden_ms" in CYCLE_FIELDS


# ------------------------------------------------------------------ the simulator

PROF = ComputeProfile(t_draft_ms=2.0, verify_a_ms=4.0, verify_b_ms=0.5, prefill_ms_per_token=0.05, alpha=1.0,
                      vocab=1000)


@pytest.mark.parametrize("delay_ms", [1, 25])
def test_simulated_pipeline_hides_the_drafting_behind_the_round_trip(delay_ms):
    """Every block accepted (α = 1): after the first, a cycle lasts max(RTT + verify, (K + 1) drafts) —
    drafting is hidden behind the wait, or the wait behind drafting — where the sequential one lasts
    K drafts + RTT + verify."""
    k = 5
    sc = parse_scenario({"name": "t", "link": {"delay_ms": delay_ms, "rate_mbit": 100}})
    recs = {q["strategy"]: q for q, _ in simulate(sc, [f"fixed-k:{k}", f"pipelined:{k}"], PROF, queries=1,
                                                 warmup_queries=0, link_model="sleep", max_new_tokens=60)}
    wait = 2 * delay_ms + PROF.verify_ms(k + 1)
    seq, pipe = recs[f"fixed-k:{k}"], recs[f"pipelined:{k}"]
    assert seq["cycle_ms_per_cycle"][2] == pytest.approx(k * PROF.t_draft_ms + wait, abs=0.2)
    steady = pipe["cycle_ms_per_cycle"][2:-1]
    assert steady and all(c == pytest.approx(max(wait, (k + 1) * PROF.t_draft_ms), abs=2.2) for c in steady)
    assert set(pipe["optimistic_per_cycle"][:-1]) == {1}
    assert pipe["tokens_per_s"] > seq["tokens_per_s"]


def test_simulated_share_of_blocks_used_is_alpha_to_the_k_plus_1():
    prof = ComputeProfile(t_draft_ms=2.0, verify_a_ms=4.0, verify_b_ms=0.5, prefill_ms_per_token=0.05, alpha=0.8,
                          vocab=1000)
    sc = parse_scenario({"name": "t", "link": {"delay_ms": 10, "rate_mbit": 100}})
    flags = [o for q, _ in simulate(sc, ["pipelined:3"], prof, queries=40, link_model="sleep", max_new_tokens=64)
             for o in q["optimistic_per_cycle"] if o is not None]
    assert len(flags) > 300
    assert np.mean(flags) == pytest.approx(0.8 ** 4, abs=0.06)
