"""Pure statistics behind the link probes: no sockets, no clocks, no processes.

The probes in `netns/fidelity/probe.py` record raw timestamps and byte counts; every
judgement about them (percentiles, per-direction one-way delay, loss and its
binomial interval, reordering, steady-state goodput, the payload ceiling of a
rate) lives here so that it can be checked by unit tests against values worked
out by hand.  Times are in nanoseconds of the host's CLOCK_MONOTONIC (network
namespaces share it, so a stamp taken in `sdl-edge` and one taken in
`sdl-cloud` are comparable); results are in milliseconds and Mbit/s.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from netns.link import LinkError

NS_PER_MS = 1_000_000

# A full-size TCP segment (payload_ceiling_mbit's default MSS), not counting any L2 header:
# 20 IPv4 + 20 TCP + 12 timestamp option + 1448 payload = 1500 (the MTU).
# What tbf counts per packet besides the IP packet (qdisc_pkt_len = skb->len
# at the device): 14 bytes on an Ethernet-type device such as veth (the MAC
# header is pushed before the qdisc), 0 on a TUN device (IFF_TUN carries bare
# IP packets; the packet-info header is not part of the skb).
L2_HEADER_BYTES = {"veth": 14, "tun": 0}


def percentile(values: list[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between order statistics
    (numpy's default), so small samples give the values people expect."""
    if not values:
        raise LinkError("percentile of an empty sample")
    if not 0 <= q <= 100:
        raise LinkError(f"percentile q must be in [0, 100], got {q}")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def sample_std(values: list[float]) -> float:
    """Sample standard deviation (n-1 in the denominator); 0 for fewer than 2 values."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def uniform_jitter_std_ms(jitter_ms: float) -> float:
    """Standard deviation of a delay drawn uniformly from [d - J, d + J]: J/√3.

    This is what a netem-semantics link with `jitter_ms = J` must produce per
    direction (before any additive noise of the emulator itself)."""
    return jitter_ms / math.sqrt(3)


def uniform_jitter_iqr_ms(jitter_ms: float) -> float:
    """Interquartile range of a delay drawn uniformly from [d - J, d + J]: J (half the width)."""
    return float(jitter_ms)


def count_reorders(order: list[float]) -> int:
    """Arrivals that came after a later-sent packet: items smaller than the running maximum.

    `order` is the send sequence (or send stamp) of each packet in arrival
    order.  A packet overtaken by k others counts once, as in netem's own
    notion of a reordered packet."""
    count, highest = 0, -math.inf
    for v in order:
        if v < highest:
            count += 1
        else:
            highest = v
    return count


# ------------------------------------------------------------------ loss

def _log_binom_pmf(k: int, n: int, p: float) -> float:
    if p == 0:
        return 0.0 if k == 0 else -math.inf
    if p == 1:
        return 0.0 if k == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
            + k * math.log(p) + (n - k) * math.log1p(-p))


def binomial_acceptance(n: int, p: float, confidence: float = 0.99) -> tuple[int, int]:
    """Exact two-sided acceptance region [lo, hi] for the count of losses among n
    packets lost independently with probability p: P(X < lo) <= a/2 and
    P(X > hi) <= a/2 with a = 1 - confidence.

    This is the test linkcheck applies: a link configured for p% loss passes
    when the measured lost count falls inside, so a correct emulator fails
    only 1 - confidence of the time and a 2x wrong one fails almost always
    (given enough packets)."""
    if n < 0 or not 0 <= p <= 1:
        raise LinkError(f"binomial_acceptance needs n >= 0 and 0 <= p <= 1, got n={n} p={p}")
    tail = (1 - confidence) / 2
    pmf = [math.exp(_log_binom_pmf(k, n, p)) for k in range(n + 1)]
    lo, acc = 0, 0.0
    while lo < n and acc + pmf[lo] <= tail:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while hi > 0 and acc + pmf[hi] <= tail:
        acc += pmf[hi]
        hi -= 1
    return lo, hi


def wilson_interval(k: int, n: int, confidence: float = 0.99) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (fractions, not percent):
    what the measurement says the true loss rate is, for the report."""
    if n <= 0:
        raise LinkError("wilson_interval needs n > 0")
    if not 0 <= k <= n:
        raise LinkError(f"wilson_interval needs 0 <= k <= n, got k={k} n={n}")
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# ------------------------------------------------------------------ UDP echo

@dataclass(frozen=True)
class DirectionStats:
    """One direction of the UDP echo: what left, what arrived, how late."""
    sent: int
    received: int
    delay_p50_ms: float | None
    delay_p95_ms: float | None
    delay_std_ms: float | None
    reorders: int
    # P75 - P25 of the one-way delay: a spread that a few late outliers barely move
    # (uniform jitter ±J gives J), judged instead of the std inside a TCG guest
    delay_iqr_ms: float | None = None
    # the fast end of the delays, what a TCG guest's delay rows judge (netns/fidelity/tcg.py)
    delay_p10_ms: float | None = None
    delay_p25_ms: float | None = None

    @property
    def lost(self) -> int:
        return self.sent - self.received

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0


@dataclass(frozen=True)
class EchoStats:
    uplink: DirectionStats     # edge → cloud (client → reflector)
    downlink: DirectionStats   # cloud → edge (reflector → client)
    rtt_p50_ms: float | None
    rtt_p95_ms: float | None
    rtt_p99_ms: float | None
    # P50 over the echoed probes of (one-way up + one-way down): the RTT less the
    # reflector's turnaround, per probe.  The sum of the two directions' P50s is not
    # this when the delays are skewed (a software-emulated guest's late timers).
    halves_p50_ms: float | None = None
    rtt_iqr_ms: float | None = None     # P75 - P25 of the RTT: its spread, barely moved by a few late replies
    rtt_p10_ms: float | None = None     # the fast end of the RTTs, what a TCG guest's rows judge (tcg.py)
    rtt_p25_ms: float | None = None

    def to_dict(self) -> dict:
        d = {"rtt_p50_ms": self.rtt_p50_ms, "rtt_p95_ms": self.rtt_p95_ms, "rtt_p99_ms": self.rtt_p99_ms,
             "halves_p50_ms": self.halves_p50_ms, "rtt_iqr_ms": self.rtt_iqr_ms,
             "rtt_p10_ms": self.rtt_p10_ms, "rtt_p25_ms": self.rtt_p25_ms}
        for name, s in (("uplink", self.uplink), ("downlink", self.downlink)):
            d[name] = {"sent": s.sent, "received": s.received, "lost": s.lost, "loss_pct": s.loss_pct,
                       "delay_p50_ms": s.delay_p50_ms, "delay_p95_ms": s.delay_p95_ms,
                       "delay_std_ms": s.delay_std_ms, "delay_iqr_ms": s.delay_iqr_ms,
                       "delay_p10_ms": s.delay_p10_ms, "delay_p25_ms": s.delay_p25_ms, "reorders": s.reorders}
        return d


def _direction(sent: int, delays_ns: list[int], arrival_order: list[float]) -> DirectionStats:
    ms = [d / NS_PER_MS for d in delays_ns]
    return DirectionStats(
        sent=sent, received=len(ms),
        delay_p50_ms=percentile(ms, 50) if ms else None,
        delay_p95_ms=percentile(ms, 95) if ms else None,
        delay_std_ms=sample_std(ms) if ms else None,
        reorders=count_reorders(arrival_order),
        delay_iqr_ms=percentile(ms, 75) - percentile(ms, 25) if ms else None,
        delay_p10_ms=percentile(ms, 10) if ms else None,
        delay_p25_ms=percentile(ms, 25) if ms else None)


def analyse_echo(sent: list[list[int]], reflected: list[list[int]], replies: list[list[int]]) -> EchoStats:
    """Combine the three logs of one UDP echo run into per-direction statistics.

    sent:      [seq, t_send]                         client, in send order
    reflected: [seq, t_refl_rx, t_refl_tx]           reflector, in its arrival order
    replies:   [seq, t_send, t_refl_rx, t_refl_tx, t_rx]  client, in its arrival order

    Uplink loss is what the client sent and the reflector never saw; downlink
    loss is what the reflector sent back and the client never saw, so each
    direction is judged on its own packets.  Duplicates (not in LinkSpec) are
    counted once.  The RTT is the client's own view (t_rx - t_send), which is
    what ping reports; the reflector's turnaround is in it but is microseconds."""
    send_time = {seq: t for seq, t in sent}
    seen_up: dict[int, list[int]] = {}
    for row in reflected:
        if row[0] in send_time:
            seen_up.setdefault(row[0], row)
    up_rows = list(seen_up.values())
    up = _direction(len(send_time), [r[1] - send_time[r[0]] for r in up_rows], [r[0] for r in up_rows])
    seen_down: dict[int, list[int]] = {}
    for row in replies:
        if row[0] in seen_up:
            seen_down.setdefault(row[0], row)
    down_rows = list(seen_down.values())
    down = _direction(len(seen_up), [r[4] - r[3] for r in down_rows],
                      [r[3] for r in down_rows])
    rtts = [(r[4] - r[1]) / NS_PER_MS for r in down_rows]
    halves = [(r[2] - r[1] + r[4] - r[3]) / NS_PER_MS for r in down_rows]     # each reply's own four stamps
    return EchoStats(
        uplink=up, downlink=down,
        rtt_p50_ms=percentile(rtts, 50) if rtts else None,
        rtt_p95_ms=percentile(rtts, 95) if rtts else None,
        rtt_p99_ms=percentile(rtts, 99) if rtts else None,
        halves_p50_ms=percentile(halves, 50) if halves else None,
        rtt_iqr_ms=percentile(rtts, 75) - percentile(rtts, 25) if rtts else None,
        rtt_p10_ms=percentile(rtts, 10) if rtts else None,
        rtt_p25_ms=percentile(rtts, 25) if rtts else None)


# ------------------------------------------------------------------ TCP goodput

def payload_ceiling_mbit(rate_mbit: float, mss_bytes: int = 1448, mtu_bytes: int = 1500,
                         l2_header_bytes: int = 14) -> float:
    """Most TCP payload a token bucket of rate_mbit can pass: each full segment
    carries mss_bytes of payload in an MTU-sized IP packet, and tbf also counts
    the L2 header when the device has one (see L2_HEADER_BYTES).  E.g. 10 Mbit/s
    on veth: 10 * 1448 / 1514 = 9.564 Mbit/s; on TUN: 10 * 1448 / 1500 = 9.653."""
    if rate_mbit <= 0 or mss_bytes <= 0 or mtu_bytes < mss_bytes:
        raise LinkError(f"payload_ceiling_mbit: bad rate/mss/mtu {rate_mbit}/{mss_bytes}/{mtu_bytes}")
    return rate_mbit * mss_bytes / (mtu_bytes + l2_header_bytes)


def warmup_s(rtt_ms: float) -> float:
    """How much of a bulk transfer to discard as slow start / BBR startup: max(1 s, 10 RTTs)."""
    return max(1.0, 10 * rtt_ms / 1000)


@dataclass(frozen=True)
class Goodput:
    mbit: float          # payload goodput over the steady window
    window_s: float      # length of that window
    skipped_s: float     # warm-up discarded before it
    bytes: int           # payload bytes in the window
    first_mbit: float    # goodput over the warm-up part, to show what slow start costs


def steady_goodput(bins_bytes: list[int], interval_s: float, skip_s: float) -> Goodput:
    """Goodput after warm-up from per-interval byte counts taken at the receiver.

    Bins are counted from the first payload byte; the first `skip_s` seconds
    (rounded up to whole bins) are discarded, the rest must be full bins (the
    sink closes the connection at the end of its last bin)."""
    if interval_s <= 0:
        raise LinkError(f"interval_s must be > 0, got {interval_s}")
    skip = math.ceil(skip_s / interval_s - 1e-9)
    window = bins_bytes[skip:]
    if not window:
        raise LinkError(f"no bins left after discarding {skip_s:g} s of warm-up "
                              f"({len(bins_bytes)} bins of {interval_s:g} s): run the transfer longer")
    head = bins_bytes[:skip]
    n = sum(window)
    return Goodput(mbit=n * 8 / (len(window) * interval_s) / 1e6, window_s=len(window) * interval_s,
                   skipped_s=skip * interval_s, bytes=n,
                   first_mbit=(sum(head) * 8 / (len(head) * interval_s) / 1e6) if head else 0.0)


def delivered_mbit(samples: list[list[int]], mss_bytes: int, skip_s: float) -> float | None:
    """Payload rate through the bottleneck from the sender's [t_ns, tcpi_delivered] samples,
    after `skip_s` of warm-up; None if too few samples.

    tcpi_delivered counts segments acknowledged *or SACKed*, so a loss does not
    hold the count back until its repair the way it holds back the receiver's
    in-order bytes: a cross-check of the receiver's goodput that is not
    disturbed by head-of-line stalls at the window edges.  The window ends at the
    last sample where the count still grew (after the sink closes nothing more
    is delivered, but the sender keeps sampling until the reset reaches it)."""
    if not samples:
        return None
    t_from = samples[0][0] + int(skip_s * 1e9)
    window = [s for s in samples if s[0] >= t_from]
    while len(window) >= 2 and window[-1][1] == window[-2][1]:
        window.pop()
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return None
    return (window[-1][1] - window[0][1]) * mss_bytes * 8 / ((window[-1][0] - window[0][0]) / 1e9) / 1e6


def deviation_pct(measured: float, configured: float) -> float:
    """Signed relative deviation in percent ((m - c) / c); 0 when both are 0."""
    if configured == 0:
        return 0.0 if measured == 0 else math.inf
    return 100.0 * (measured - configured) / configured
