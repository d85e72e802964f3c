"""The TCG allowance's derivation (netns/fidelity/tcg.py) on hand-made baselines: no VM, no network."""
from __future__ import annotations

import random

import pytest

from netns.fidelity.probe_stats import analyse_echo
from netns.fidelity.tcg import SPREAD_FACTOR, TcgBaseline, Unimpaired, timer_late_ms, window
from netns.link import LinkError


def test_window_is_base_minus_tol_to_base_plus_timers_plus_tol():
    w = window(Unimpaired(2.0, 0.25), timer_ms=0.8, hops=2, native_tol_ms=0.5)
    tol = 0.5 + 0.25
    assert (w.lo_ms, w.hi_ms) == pytest.approx((2.0 - tol, 2.0 + 1.6 + tol))
    assert w.accepts(2.0) and w.accepts(2.0 + 1.6) and not w.accepts(2.0 - tol - 0.01)
    assert w.severity(w.hi_ms) == pytest.approx(1.0) and w.severity((w.lo_ms + w.hi_ms) / 2) == 0.0
    assert "2 x timer 0.80" in w.how and w.label() == f"{w.lo_ms:+.2f}…{w.hi_ms:+.2f} ms"
    w0 = window(Unimpaired(2.0, 0.25), timer_ms=0.8, hops=0, native_tol_ms=0.5)
    assert w0.hi_ms - 2.0 == pytest.approx(2.0 - w0.lo_ms) and "timer" not in w0.how


@pytest.mark.parametrize("base_ms,spread_ms,timer_ms", [(0.4, 0.05, 0.1), (1.7, 0.15, 0.8), (2.54, 0.3, 1.0)])
def test_any_host_passes_a_correct_rtt_and_fails_one_10pct_off(base_ms, spread_ms, timer_ms):
    """A fast, a typical and a slow guest: a correct RTT 50 ms reads 50 + base + (0…2 timers)."""
    w = window(Unimpaired(base_ms, spread_ms), timer_ms, hops=2, native_tol_ms=0.5)
    for late in (0.0, timer_ms, 2 * timer_ms):                       # however late its two timers fire
        assert w.accepts(base_ms + late)
    for wrong in (55.0, 45.0):                                        # 10 % off, same guest
        for late in (0.0, 2 * timer_ms):
            assert not w.accepts(wrong + base_ms + late - 50.0)


def test_the_issues_ping_pong_reading_passes_against_a_ping_pong_baseline():
    """tests/netns/test_topology.py:108 read 38.8 ms for RTT 30 on the slow host: the TCP ping-pong's
    own delay-0 baseline (≈3.5 ms there) makes that a correct reading.  The ping-pong's window is wider
    than the UDP echo's (its host tolerance is 2 ms, its spread larger): it checks that the delay is
    applied, and linkcheck's echo checks how precisely."""
    w = window(Unimpaired.middle(2.9, 3.5, 4.1), timer_ms=0.85, hops=2, native_tol_ms=2.0)
    assert w.accepts(38.8 - 30)
    assert not w.accepts(38.8 + 3.0 - 30)          # the same reading 10 % long
    assert not w.accepts(27.0 - 30)                # 10 % short with no TCG excess at all


def _echo_stats(n=300, up=1.0, down=0.7, wobble=0.4, seed=5, late_ms=0.0, late_share=0.0):
    """A hand-made echo run: uniform delays, and late_share of the probes late_ms longer on the way up
    (a guest's vCPU that had to wake)."""
    rng = random.Random(seed)
    ms = 1_000_000
    sent = [[i, i * 5 * ms] for i in range(n)]
    ups = [up + rng.uniform(0, wobble) + (late_ms if rng.random() < late_share else 0.0) for _ in range(n)]
    downs = [down + rng.uniform(0, wobble) for _ in range(n)]
    refl = [[i, t + int(u * ms), t + int(u * ms)] for (i, t), u in zip(sent, ups)]
    replies = [[i, t, r, r, r + int(d * ms)] for (i, t), (_, r, _), d in zip(sent, refl, downs)]
    return analyse_echo(sent, refl, replies)


def test_baseline_from_an_echo_takes_the_fast_end_p10_and_its_distance_to_p25():
    st = _echo_stats()
    b = TcgBaseline.from_echo(st, timer_ms=0.8)
    assert b.rtt.level_ms == pytest.approx(st.rtt_p10_ms)
    assert b.rtt.spread_ms == pytest.approx(SPREAD_FACTOR * (st.rtt_p25_ms - st.rtt_p10_ms))
    # uniform over [up, up + 0.4]: P10 at up + 0.04, P25 at up + 0.1
    assert b.uplink.level_ms == pytest.approx(1.04, abs=0.02) and b.downlink.level_ms == pytest.approx(0.74, abs=0.02)
    assert b.uplink.spread_ms == pytest.approx(SPREAD_FACTOR * 0.06, abs=0.02)
    assert b.echoes == 300 and b.timer_ms == 0.8
    assert b.oneway_window("up", True, 0.5).how.startswith("base 1.0")
    text = b.describe(0.5)
    assert "RTT P10" in text and "timer fires 0.80 ms late" in text and "delayed both ways" in text
    w = b.rtt_window(2, 0.5)
    assert b.resolution_ms(0.5) == pytest.approx(w.hi_ms - w.lo_ms) and f"{w.hi_ms - w.lo_ms:.1f} ms fails" in text
    assert TcgBaseline(**{k: (Unimpaired(**v) if isinstance(v, dict) else v)
                          for k, v in b.to_dict().items()}) == b           # the record round-trips


def test_baseline_without_replies_is_a_clear_error():
    st = analyse_echo([[0, 0]], [], [])
    with pytest.raises(LinkError, match="baseline"):
        TcgBaseline.from_echo(st, timer_ms=0.8)


def test_a_slow_mode_that_comes_and_goes_moves_the_p50_not_the_fast_end():
    """The failure that moved the judging to P10: a baseline burst with every reply fast, a later
    one with half of them waiting 1.5 ms for a vCPU to wake.  The P50 leaves a window built on it;
    the P10 stays inside the one built on the fast end."""
    quiet = _echo_stats(up=0.3, down=0.3, wobble=0.1, seed=1)
    mixed = _echo_stats(up=0.3, down=0.3, wobble=0.1, seed=2, late_ms=1.5, late_share=0.6)
    b = TcgBaseline.from_echo(quiet, timer_ms=0.2)
    assert b.rtt_window(0, 0.5).accepts(mixed.rtt_p10_ms)
    old = window(Unimpaired(quiet.rtt_p50_ms, 3 * quiet.rtt_iqr_ms / 2), 0.2, 0, 0.5)   # the P50 rule
    assert not old.accepts(mixed.rtt_p50_ms)


def test_timer_lateness_is_the_upper_quartile_of_the_overshoots():
    assert timer_late_ms([0.1, 0.2, 0.3, 0.4, 5.0]) == pytest.approx(0.4)   # one very late wake-up barely counts
