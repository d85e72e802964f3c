"""Synthetic models: deterministic, i.i.d. acceptance at the profile's α, lossless through the real loops."""
import time

import pytest

from lab.decoding import autoregressive_generate, speculative_generate
from lab.models import ModelError
from lab.models.synthetic import Profile, load_profile, load_synthetic, save_profile, spend


def test_shipped_profiles_load():
    for name in ("embedded-cpu", "fast"):
        p = load_profile(name)
        assert p.t_draft_ms > 0 and 0 < p.alpha < 1


def test_per_position_acceptance_matches_alpha():
    d, t = load_synthetic("draft", "fast"), load_synthetic("target", "fast")
    hits = sum(d.token_at(i) == t.token_at(i) for i in range(20000))
    assert hits / 20000 == pytest.approx(d.profile.alpha, abs=0.01)


def test_speculative_over_synthetic_is_lossless_and_deterministic(tmp_path):
    prof = Profile(t_draft_ms=0, verify_a_ms=0, verify_b_ms=0, prefill_ms_per_token=0, alpha=0.7, seed=3)
    path = tmp_path / "p.yaml"
    save_profile(prof, path)
    d, t = load_synthetic("draft", str(path)), load_synthetic("target", str(path))
    prompt = t.encode_prompt("a b c")
    ref = autoregressive_generate(t, prompt, 300)
    for k in (1, 3, 5, 15):
        g = speculative_generate(d, t, prompt, 300, k_fn=lambda: k)
        assert g.tokens == ref
    g1 = speculative_generate(d, t, prompt, 300, k_fn=lambda: 4)
    g2 = speculative_generate(d, t, prompt, 300, k_fn=lambda: 4)
    assert g1.accepted == g2.accepted


def test_bad_profile_is_named(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("t_draft_ms: 1\nverify_a_ms: 1\nverify_b_ms: 1\nprefill_ms_per_token: 1\nalpha: 2\n")
    with pytest.raises(ModelError, match="alpha"):
        load_profile(str(p))
    with pytest.raises(ModelError, match="no synthetic profile"):
        load_profile("nope")


def test_spend_takes_the_time():
    t0 = time.perf_counter()
    spend(5.0)
    assert time.perf_counter() - t0 >= 0.005
