"""Synthetic models: deterministic by seed, acceptance at the profile's α (or its trace) through the real
loops, lossless, compute time spent for real and reported."""
from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from lab.core import spec
from lab.core.decoding import autoregressive_generate, speculative_generate
from lab.models import ModelError
from lab.models.synthetic import (Profile, SyntheticModel, known_profiles, load_profile, load_synthetic,
                                  save_profile, spend)


def _pair(**kw) -> tuple[SyntheticModel, SyntheticModel]:
    base = dict(t_draft_ms=0, verify_a_ms=0, verify_b_ms=0, prefill_ms_per_token=0, alpha=0.7, seed=3)
    prof = Profile(**{**base, **kw})
    return SyntheticModel("draft", prof), SyntheticModel("target", prof)


def test_shipped_profiles_load():
    assert {"embedded-cpu", "fast"} <= set(known_profiles())
    for name in known_profiles():
        p = load_profile(name)
        assert p.t_draft_ms > 0 and 0 < p.alpha < 1 and p.verify_ms(4) > p.verify_ms(1)
    emb = load_profile("embedded-cpu")
    assert emb.vocab == 151936
    # The shipped embedded profile is a measurement (python -m lab profile), and its fit a + b·n stays
    # within 10 % of every t_verify(n) it records.
    import yaml
    prov = yaml.safe_load(open(emb.source))["provenance"]
    assert prov["measured_by"] == "python -m lab profile"
    for n, ms in prov["verify_ms_by_n"].items():
        assert emb.verify_ms(int(n)) == pytest.approx(ms, rel=0.10)


def test_profile_roundtrip_with_trace(tmp_path):
    prof = Profile(t_draft_ms=1.5, verify_a_ms=4, verify_b_ms=0.5, prefill_ms_per_token=0.1, alpha=0.6,
                   vocab=50, seed=9, trace=(3, 0, 5))
    path = tmp_path / "p.yaml"
    save_profile(prof, path, provenance={"measured_by": "test"})
    back = load_profile(str(path))
    assert back.trace == (3, 0, 5) and back.t_draft_ms == 1.5 and back.vocab == 50 and back.name == "p"


def test_a_measured_verify_table_is_kept_and_used_between_its_sizes(tmp_path):
    """A CPU's t_verify(n) is not a line (oneDNN: 231, 293, 243 ms at n = 1, 2, 4): the profile keeps
    what was measured, straight between the sizes, the line's slope beyond them; the simulator too."""
    from lab.sim.simulator import ComputeProfile
    prof = Profile(t_draft_ms=30, verify_a_ms=250, verify_b_ms=5, prefill_ms_per_token=9, alpha=0.9, vocab=50,
                   verify_ms_by_n=((1, 231.0), (2, 293.0), (4, 243.0)))
    path = tmp_path / "cpu.yaml"
    save_profile(prof, path)
    back = load_profile(str(path))
    assert back.verify_ms_by_n == prof.verify_ms_by_n
    assert [back.verify_ms(n) for n in (1, 2, 3, 4, 6)] == [231.0, 293.0, 268.0, 243.0, 253.0]
    sim = ComputeProfile.of(back)
    assert [sim.verify_ms(n) for n in (1, 3, 6)] == [231.0, 268.0, 253.0] and sim.step_ms() == 231.0
    plain = Profile(t_draft_ms=30, verify_a_ms=250, verify_b_ms=5, prefill_ms_per_token=9, alpha=0.9, vocab=50)
    assert plain.verify_ms(3) == 265 and ComputeProfile.of(plain).verify_ms(3) == 265


BASE = "t_draft_ms: 1\nverify_a_ms: 1\nverify_b_ms: 1\nprefill_ms_per_token: 1\n"


@pytest.mark.parametrize("body, words", [
    ("alpha: 2\n", "alpha"),
    ("alpha: 0.5\nspeed: 3\n", "unknown key.*speed"),
    ("alpha: 0.5\ntrace: [1, -1]\n", "trace"),
    ("alpha: 0.5\nverify_ms_by_n: [3]\n", "verify_ms_by_n must be a mapping"),
    ("alpha: 0.5\nverify_ms_by_n: {2: fast}\n", "verify_ms_by_n must map token counts to milliseconds"),
    ("alpha: 0.5\ndraft_catch_up_forwards: 3\n", "draft_catch_up_forwards must be 1 or 2, got 3"),
])
def test_bad_profiles_are_named(tmp_path, body, words):
    p = tmp_path / "bad.yaml"
    p.write_text(BASE + body)
    with pytest.raises(ModelError, match=words):
        load_profile(str(p))


def test_a_profiles_two_forward_catch_up_reaches_the_synthetic_draft_and_the_simulator(tmp_path):
    """draft_catch_up_forwards = 2 (`lab profile` of an int8 draft) survives a save and load; the synthetic
    draft's sessions then take a whole block's catch-up one token a forward (their rows interact), the
    target's do not, and the simulator charges the extra forward."""
    from dataclasses import replace

    from lab.sim.simulator import ComputeProfile
    prof = replace(load_profile("fast"), draft_catch_up_forwards=2)
    save_profile(prof, tmp_path / "int8.yaml")
    back = load_profile(str(tmp_path / "int8.yaml"))
    assert back.draft_catch_up_forwards == 2 and ComputeProfile.of(back).catch_up_forwards == 2
    assert SyntheticModel("draft", back).new_session().rows_interact
    assert not SyntheticModel("target", back).new_session().rows_interact
    assert not SyntheticModel("draft", load_profile("fast")).new_session().rows_interact


def test_an_unknown_profile_is_named():
    with pytest.raises(ModelError, match="no synthetic profile"):
        load_profile("nope")


def test_per_position_agreement_matches_alpha():
    d, t = load_synthetic("draft", "fast"), load_synthetic("target", "fast")
    hits = sum(d.token_at(i) == t.token_at(i) for i in range(20000))
    assert hits / 20000 == pytest.approx(d.profile.alpha, abs=0.01)


@pytest.mark.parametrize("alpha,k", [(0.8, 5), (0.5, 3), (0.9, 10)])
def test_measured_acceptance_through_the_loop(alpha, k):
    """Greedy speculative decoding over many cycles: accepted per cycle and tokens per cycle match the
    i.i.d. model (E[n] = α(1 − α^K)/(1 − α), E[τ] = (1 − α^(K+1))/(1 − α))."""
    d, t = _pair(alpha=alpha, seed=int(alpha * 100))
    g = speculative_generate(d, t, [1, 2, 3], 20000, k_fn=lambda: k)
    cycles = len(g.accepted)
    mean_n = sum(g.accepted) / cycles
    want_n = alpha * (1 - alpha ** k) / (1 - alpha)
    print(f"\nα={alpha} K={k}: {cycles} cycles, accepted/cycle {mean_n:.3f} (model {want_n:.3f}), "
          f"tokens/cycle {len(g.tokens) / cycles:.3f} (model {spec.expected_tokens(alpha, k):.3f})")
    assert mean_n == pytest.approx(want_n, rel=0.04)
    assert len(g.tokens) / cycles == pytest.approx(spec.expected_tokens(alpha, k), rel=0.03)


def test_trace_driven_acceptance_is_replayed():
    trace = (4, 0, 2, 7, 1)
    d, t = _pair(trace=trace)
    g = speculative_generate(d, t, [1, 2, 3], 200, k_fn=lambda: 8)          # K ≥ every count: exact replay
    assert g.accepted[:3 * len(trace)] == list(trace) * 3
    g3 = speculative_generate(d, t, [1, 2, 3], 200, k_fn=lambda: 3)         # shorter K: capped
    assert max(g3.accepted) == 3 and 0 in g3.accepted


def test_a_profiled_prompt_replays_its_own_agreement_then_the_trace(tmp_path):
    """prompt_agreement: a session on a profiled prompt follows that prompt's digits from its first
    generated position; past them, and on any other prompt, the trace decides."""
    from lab.models.synthetic import encode_words, prompt_key
    ids = encode_words("write a function", 50)
    prof = Profile(t_draft_ms=0, verify_a_ms=0, verify_b_ms=0, prefill_ms_per_token=0, alpha=0.5, vocab=50,
                   trace=(0,), prompt_agreement=((prompt_key(ids), "1111011"),))
    path = tmp_path / "pp.yaml"
    save_profile(prof, path)
    back = load_profile(str(path))
    assert back == prof.__class__(**{**prof.__dict__, "name": "pp", "source": str(path)})
    d, t = SyntheticModel("draft", back), SyntheticModel("target", back)
    g = speculative_generate(d, t, ids, 12, k_fn=lambda: 6)
    # 1111 0 11 then the trace (0,) = always disagree: cycles accept 4, then 2 (6 drafted, the 3rd
    # past the digits disagrees), then 0 …
    assert g.accepted[:3] == [4, 2, 0]
    other = speculative_generate(d, t, encode_words("something else", 50), 12, k_fn=lambda: 6)
    assert set(other.accepted) == {0}
    p = tmp_path / "bad.yaml"
    p.write_text("t_draft_ms: 1\nverify_a_ms: 1\nverify_b_ms: 1\nprefill_ms_per_token: 1\nalpha: 0.5\n"
                 "prompt_agreement: {abc: '10x'}\n")
    with pytest.raises(ModelError, match=r"prompt_agreement\[abc\]"):
        load_profile(str(p))


def test_lossless_and_deterministic_by_seed():
    d, t = _pair()
    prompt = t.encode_prompt("a b c")
    ref = autoregressive_generate(t, prompt, 300)
    for k in (1, 3, 5, 15):
        assert speculative_generate(d, t, prompt, 300, k_fn=lambda: k).tokens == ref
    g1 = speculative_generate(d, t, prompt, 300, k_fn=lambda: 4)
    g2 = speculative_generate(*_pair(), prompt, 300, k_fn=lambda: 4)          # fresh objects, same seed
    assert g1.accepted == g2.accepted and g1.tokens == g2.tokens
    g3 = speculative_generate(*_pair(seed=4), prompt, 300, k_fn=lambda: 4)
    assert g3.tokens != g1.tokens and g3.accepted != g1.accepted


def test_compute_is_spent_and_reported():
    d, t = _pair(t_draft_ms=2.0, verify_a_ms=3.0, verify_b_ms=0.5, prefill_ms_per_token=0.1)
    s = t.new_session()
    s.prefill([1] * 10)
    assert s.last_compute_ms >= 1.0
    t0 = time.perf_counter()
    s.extend([1, 2, 3, 4])
    wall = (time.perf_counter() - t0) * 1000
    assert t.forward_ms(4) == 3.0 + 0.5 * 4
    assert s.last_compute_ms >= t.forward_ms(4) and wall >= s.last_compute_ms
    assert s.compute_ms == pytest.approx(1.0 + 5.0, abs=2.0)


def test_spend_accuracy():
    """Prints the error of the waits the nodes rely on; asserts only that a wait is never short."""
    for ms in (0.2, 1.0, 5.0, 20.0, 100.0):
        errs = []
        for _ in range(20 if ms < 50 else 5):
            t0 = time.perf_counter()
            spend(ms)
            errs.append((time.perf_counter() - t0) * 1000 - ms)            # measured outside spend()
        print(f"\nspend({ms:g} ms): error mean {statistics.mean(errs) * 1000:.1f} µs, "
              f"max {max(errs) * 1000:.1f} µs", end="")
        assert min(errs) >= 0
    print()


def test_session_errors():
    d, _ = _pair()
    s = d.new_session()
    with pytest.raises(ModelError, match="before prefill"):
        s.extend([1])
    with pytest.raises(ModelError, match="at least one"):
        s.prefill([])
    s.prefill([1, 2])
    assert s.extend([]).shape == (0, d.vocab_size)
    with pytest.raises(ModelError, match="rollback"):
        s.rollback(5)
    with pytest.raises(ModelError, match="role"):
        SyntheticModel("oracle", d.profile)
    assert np.argmax(s.extend([3])[-1]) == d.token_at(3, 2)


def test_a_profiled_confidence_is_what_the_drafts_logits_say(tmp_path):
    """prompt_confidence: the draft's probability of its own token at each measured position comes back
    from its logits (the middle of the recorded percent); past them, the measurements pooled by agreement
    (agreeing positions 0.975 0.505 0.125 → 0.535, the disagreeing one 0.035); the target's rows stay
    PEAK_LOGIT's.  It survives save/load and a bad string is named."""
    from lab.models.synthetic import PEAK_LOGIT, encode_words, prompt_key
    ids = encode_words("write a function", 1000)
    key = prompt_key(ids)
    prof = Profile(t_draft_ms=0, verify_a_ms=0, verify_b_ms=0, prefill_ms_per_token=0, alpha=0.5, vocab=1000,
                   prompt_agreement=((key, "1101"),), prompt_confidence=((key, "97500312"),))
    path = tmp_path / "pc.yaml"
    save_profile(prof, path)
    back = load_profile(str(path))
    assert back.prompt_confidence == prof.prompt_confidence
    d, t = SyntheticModel("draft", back), SyntheticModel("target", back)
    s = d.new_session()
    rows = [s.prefill(ids)] + [s.extend([0])[-1] for _ in range(4)]
    got = [spec.token_confidence(r, int(np.argmax(r))) for r in rows]
    pooled = 0.535 if d.agrees(len(ids) + 4, len(ids), key) else 0.035
    assert got == pytest.approx([0.975, 0.505, 0.035, 0.125, pooled], abs=1e-5)
    assert [int(np.argmax(r)) for r in rows[:4]] == [d.token_at(len(ids) + i, len(ids), key) for i in range(4)]
    ts = t.new_session()
    ts.prefill(ids)
    assert ts.extend([0])[-1].max() == PEAK_LOGIT
    p = tmp_path / "bad.yaml"
    p.write_text("t_draft_ms: 1\nverify_a_ms: 1\nverify_b_ms: 1\nprefill_ms_per_token: 1\nalpha: 0.5\n"
                 "prompt_confidence: {abc: '975'}\n")
    with pytest.raises(ModelError, match=r"prompt_confidence\[abc\]"):
        load_profile(str(p))
