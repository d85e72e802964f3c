"""The probe statistics against values worked out by hand and against scipy."""
from __future__ import annotations

import math
import random

import pytest
from scipy import stats

from netns.link import LinkError
from netns.fidelity.probe_stats import (
    analyse_echo, binomial_acceptance, delivered_mbit, count_reorders, deviation_pct, payload_ceiling_mbit,
    percentile, sample_std, steady_goodput, uniform_jitter_std_ms, warmup_s, wilson_interval,
)

MS = 1_000_000


def test_percentile_matches_linear_interpolation():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile(list(range(101)), 95) == 95.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([0.0, 10.0], 25) == 2.5


def test_percentile_rejects_empty_and_bad_q():
    with pytest.raises(LinkError):
        percentile([], 50)
    with pytest.raises(LinkError):
        percentile([1.0], 101)


def test_sample_std_uses_n_minus_one():
    assert sample_std([2, 4, 4, 4, 5, 5, 7, 9]) == pytest.approx(math.sqrt(32 / 7))
    assert sample_std([5.0]) == 0.0


def test_uniform_jitter_std_is_j_over_root3_and_matches_a_sample():
    assert uniform_jitter_std_ms(25.0) == pytest.approx(14.4338, abs=1e-4)
    rng = random.Random(1)
    sample = [50 + rng.uniform(-10, 10) for _ in range(20000)]
    assert sample_std(sample) == pytest.approx(uniform_jitter_std_ms(10.0), rel=0.02)


def test_count_reorders():
    assert count_reorders([0, 1, 2, 3]) == 0
    assert count_reorders([1, 0, 2, 3]) == 1          # 0 overtaken by 1
    assert count_reorders([3, 0, 1, 2]) == 3          # one early packet makes three late ones
    assert count_reorders([]) == 0


def test_binomial_acceptance_hand_values():
    # p = 0: never a loss; p = 1: always.
    assert binomial_acceptance(1000, 0.0) == (0, 0)
    assert binomial_acceptance(1000, 1.0) == (1000, 1000)
    lo, hi = binomial_acceptance(2000, 0.01)
    # mean 20, sd 4.45: the 99 % region is roughly 20 ± 2.58 sd, skewed right.
    assert 8 <= lo <= 10 and 31 <= hi <= 33
    lo, hi = binomial_acceptance(2000, 0.05)
    assert 75 <= lo <= 78 and 122 <= hi <= 126


def test_binomial_acceptance_tails_are_at_most_half_a_percent():
    n, p = 1500, 0.05
    lo, hi = binomial_acceptance(n, p)
    # Exact integer arithmetic (p = 1/20), independent of the lgamma route in the code.
    pmf = [math.comb(n, k) * 19 ** (n - k) / 20 ** n for k in range(n + 1)]
    assert sum(pmf[:lo]) <= 0.005 < sum(pmf[:lo + 1])
    assert sum(pmf[hi + 1:]) <= 0.005 < sum(pmf[hi:])


def test_binomial_acceptance_agrees_with_scipy():
    for n, p in ((2000, 0.01), (3000, 0.05), (500, 0.2)):
        lo, hi = binomial_acceptance(n, p)
        assert stats.binom.cdf(lo - 1, n, p) <= 0.005
        assert stats.binom.sf(hi, n, p) <= 0.005


def test_wilson_interval_known_value():
    # k=20, n=2000, z=2.5758: centre 0.011620, half-width 0.005946 (by hand).
    lo, hi = wilson_interval(20, 2000)
    assert lo == pytest.approx(0.005674, abs=2e-6)
    assert hi == pytest.approx(0.017566, abs=2e-6)
    # Defining property: at each end the score statistic equals ±z.
    z = 2.5758293035489
    for bound, sign in ((lo, 1), (hi, -1)):
        assert (0.01 - bound) / math.sqrt(bound * (1 - bound) / 2000) == pytest.approx(sign * z, rel=1e-9)
    assert wilson_interval(0, 100)[0] == 0.0
    assert wilson_interval(100, 100)[1] == pytest.approx(1.0)


def _echo_logs(up_ms, down_ms, lost_up=(), lost_down=(), swap_down=None):
    """Synthetic three-log echo: packet i sent at i*10 ms, one-way delays given."""
    sent, reflected, replies = [], [], []
    for i, (u, d) in enumerate(zip(up_ms, down_ms)):
        t = i * 10 * MS
        sent.append([i, t])
        if i in lost_up:
            continue
        rrx = t + int(u * MS)
        rtx = rrx + 5_000            # 5 µs turnaround
        reflected.append([i, rrx, rtx])
        if i in lost_down:
            continue
        replies.append([i, t, rrx, rtx, rtx + int(d * MS)])
    if swap_down is not None:
        a, b = swap_down
        replies[a], replies[b] = replies[b], replies[a]
    return sent, reflected, replies


def test_analyse_echo_per_direction_delay_and_loss():
    n = 100
    sent, reflected, replies = _echo_logs([25.0] * n, [40.0] * n, lost_up={3, 50}, lost_down={7})
    st = analyse_echo(sent, reflected, replies)
    assert st.uplink.sent == 100 and st.uplink.lost == 2 and st.uplink.loss_pct == pytest.approx(2.0)
    assert st.downlink.sent == 98 and st.downlink.lost == 1
    assert st.uplink.delay_p50_ms == pytest.approx(25.0)
    assert st.downlink.delay_p50_ms == pytest.approx(40.0)
    assert st.rtt_p50_ms == pytest.approx(65.005)
    assert st.uplink.delay_std_ms == pytest.approx(0.0, abs=1e-9)
    assert st.uplink.reorders == 0 and st.downlink.reorders == 0


def test_analyse_echo_halves_add_up_probe_by_probe():
    # Skewed delays, late in one direction when early in the other (as TCG's late timers make them):
    # the P50s of the two directions do not add up to the RTT's P50, the per-probe sums do.
    up = [0.3, 0.3, 0.3, 2.0, 2.0] * 20
    down = [2.0, 2.0, 0.3, 0.3, 0.3] * 20
    st = analyse_echo(*_echo_logs(up, down))
    assert st.uplink.delay_p50_ms + st.downlink.delay_p50_ms == pytest.approx(0.6)
    assert st.rtt_p50_ms == pytest.approx(2.305)
    assert st.halves_p50_ms == pytest.approx(2.3)          # the RTT less the 5 µs turnaround


def test_analyse_echo_reordering_and_duplicates():
    n = 10
    sent, reflected, replies = _echo_logs([1.0] * n, [1.0] * n, swap_down=(2, 3))
    reflected.insert(5, list(reflected[4]))      # a duplicate is counted once
    st = analyse_echo(sent, reflected, replies)
    assert st.uplink.received == 10 and st.uplink.reorders == 0
    assert st.downlink.reorders == 1


def test_analyse_echo_jitter_std():
    rng = random.Random(7)
    n = 5000
    up = [25 + rng.uniform(-10, 10) for _ in range(n)]
    sent, reflected, replies = _echo_logs(up, [25.0] * n)
    st = analyse_echo(sent, reflected, replies)
    assert st.uplink.delay_std_ms == pytest.approx(10 / math.sqrt(3), rel=0.03)
    assert st.uplink.delay_p50_ms == pytest.approx(25.0, abs=0.5)
    assert st.downlink.delay_std_ms == pytest.approx(0.0, abs=1e-6)


def test_payload_ceiling_counts_headers():
    assert payload_ceiling_mbit(10.0) == pytest.approx(10 * 1448 / 1514)          # veth: Ethernet header
    assert payload_ceiling_mbit(10.0, l2_header_bytes=0) == pytest.approx(10 * 1448 / 1500)   # TUN
    assert payload_ceiling_mbit(100.0) == pytest.approx(95.64, abs=0.01)
    with pytest.raises(LinkError):
        payload_ceiling_mbit(0.0)


def test_warmup_is_one_second_or_ten_rtts():
    assert warmup_s(0) == 1.0
    assert warmup_s(50) == 1.0
    assert warmup_s(200) == pytest.approx(2.0)


def test_steady_goodput_skips_warmup_bins():
    # 10 bins of 100 ms: a slow first second, then 125000 B per bin = 10 Mbit/s.
    bins = [1000] * 10 + [125_000] * 30
    g = steady_goodput(bins, 0.1, 1.0)
    assert g.mbit == pytest.approx(10.0)
    assert g.window_s == pytest.approx(3.0)
    assert g.skipped_s == pytest.approx(1.0)
    assert g.first_mbit == pytest.approx(0.08)
    # A fractional warm-up rounds up to whole bins.
    assert steady_goodput(bins, 0.1, 0.95).skipped_s == pytest.approx(1.0)


def test_steady_goodput_needs_bins_after_warmup():
    with pytest.raises(LinkError, match="longer"):
        steady_goodput([1, 2, 3], 0.1, 1.0)


def test_deviation_pct():
    assert deviation_pct(9.5, 10.0) == pytest.approx(-5.0)
    assert deviation_pct(0.0, 0.0) == 0.0
    assert deviation_pct(1.0, 0.0) == math.inf


def test_delivered_mbit_skips_warmup_and_the_tail_after_the_sink_closed():
    s = 1_000_000_000
    # 1000 segments/s of 1250 bytes = 10 Mbit/s after a slow first second, then flat (sink closed).
    samples = [[0, 0], [s // 2, 10]] + [[s + k * s // 10, 100 + 100 * k] for k in range(31)]
    samples += [[samples[-1][0] + s // 10, samples[-1][1]], [samples[-1][0] + s // 5, samples[-1][1]]]
    assert delivered_mbit(samples, 1250, 1.0) == pytest.approx(10.0)
    assert delivered_mbit(samples[:2], 1250, 1.0) is None
    assert delivered_mbit([], 1448, 1.0) is None
