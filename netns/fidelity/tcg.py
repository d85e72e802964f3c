"""The TCG allowance: what a software-emulated guest adds to every delay, measured in that guest.

Inside qemu's TCG (`make vm-test`) every packet takes longer than on
hardware, by an amount that depends on how fast and how busy the host is: a
fixed slack passes a correct netem on one host and fails it on a slower one.
So the guest's timings are judged against what the same guest measures
unimpaired, in the same boot, just before.

What is judged is the fast end of the readings, their P10 (LEVEL),
not the P50 judged on hardware.  A guest's RTTs are a mixture of fast
replies and ones that waited for an emulated CPU to wake, and the mixture's
weights change from one second to the next: at delay 0 the P50 of 200
echoes ranged 0.65-1.97 ms over 36 bursts of one boot, its P10 0.49-0.76.  A
wrong delay moves every quantile alike, so the P10 sees it as well
(docs/MEASUREMENTS.md, "TCG allowance: the fast end").

  base     the UDP echo's P10 over the lab link at delay 0 (RTT, or one direction's
           delay): the guest's cost of a packet through veth, ifb and netem, and of
           waking the processes that stamp it
  spread   how far that P10 may move: SPREAD_FACTOR x (P25 - P10) of the same readings,
           the width of the fast mode it sits in
  timer    how late a TIMER_MS timer fires in the guest (P75 of TIMER_SAMPLES
           sleeps): a delayed packet waits on one netem timer per direction

A reading is accepted when its deviation from the configured delay lies in

      [base - tol,  base + hops x timer + tol],   tol = native + spread

where hops is the number of delayed directions the packet crossed (0 at
delay 0) and native the tolerance the check has on hardware.  The window is
one-sided in TCG's direction (emulation only ever adds time) and does not
grow with the delay, because the guest's excess does not (measured up to
RTT 200 ms: docs/MEASUREMENTS.md).  A delay that is wrong by more than the
window's width, 2 x tol + hops x timer, fails wherever in the window the
correct reading would have been: 1.4-3.6 ms for an RTT on the CI host (10 %
off at RTT 50 ms fails); `TcgBaseline.describe` prints it with the derivation.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import asdict, dataclass

from netns.link import LinkError
from netns.fidelity.probe_stats import DirectionStats, EchoStats, percentile

LEVEL = "P10"      # what rtt_reading and delay_reading take in a guest, named in the rows
# Every burst of one boot (24 at delay 0, 12 at 25 ms each way) fell inside the window built on each
# round's first burst at factors 1.0-2.0; 1.5 leaves room for a host busier than that one
# (docs/MEASUREMENTS.md, "TCG allowance: the fast end").
SPREAD_FACTOR = 1.5
# The TCP ping-pong of tests/netns is judged by its P50 (40 round trips have no fast end to speak of):
# that moved up to 0.8 ms between two runs of one boot where half its IQR was 0.1-0.3 ms.
MIDDLE_SPREAD_FACTOR = 3.0
# Late firing grows with the time the guest has idled and levels off from ~10 ms (docs/MEASUREMENTS.md);
# the P75 bounds what one netem timer adds per delayed hop.
TIMER_MS = 10.0
TIMER_SAMPLES = 60
TIMER_QUANTILE = 75
BASELINE_ECHOES = 300
PR_SET_TIMERSLACK, PR_GET_TIMERSLACK = 29, 30


@dataclass(frozen=True)
class Unimpaired:
    """What one kind of probe reads at delay 0: the level its readings are judged by, and how far
    that level may move between two runs on this guest (ms)."""
    level_ms: float
    spread_ms: float

    @classmethod
    def fast_end(cls, p10_ms: float, p25_ms: float) -> "Unimpaired":
        """The UDP echo's: its P10, moving by SPREAD_FACTOR x the distance up to its P25."""
        return cls(p10_ms, SPREAD_FACTOR * (p25_ms - p10_ms))

    @classmethod
    def middle(cls, p25_ms: float, p50_ms: float, p75_ms: float) -> "Unimpaired":
        """A TCP ping-pong's: its P50, moving by MIDDLE_SPREAD_FACTOR x half its interquartile range."""
        return cls(p50_ms, MIDDLE_SPREAD_FACTOR * (p75_ms - p25_ms) / 2)


def stat_name(tcg: bool) -> str:
    """The statistic a delay reading is judged by: the P50 on hardware, the fast end in a TCG guest."""
    return LEVEL if tcg else "P50"


def rtt_reading(st: EchoStats, tcg: bool) -> float | None:
    """The RTT a delay row judges (stat_name: the module docstring says why the guest's differs)."""
    return st.rtt_p10_ms if tcg else st.rtt_p50_ms


def delay_reading(ds: DirectionStats, tcg: bool) -> float | None:
    """One direction's delay a delay row judges."""
    return ds.delay_p10_ms if tcg else ds.delay_p50_ms


@dataclass(frozen=True)
class Window:
    """The accepted deviation of a reading from its configured delay (ms), and why."""
    lo_ms: float
    hi_ms: float
    how: str

    def accepts(self, deviation_ms: float) -> bool:
        return self.lo_ms <= deviation_ms <= self.hi_ms

    def severity(self, deviation_ms: float) -> float:
        """Distance from the window's middle over its half-width: 1.0 at an edge."""
        half = (self.hi_ms - self.lo_ms) / 2
        return abs(deviation_ms - (self.lo_ms + self.hi_ms) / 2) / half if half > 0 else 9.99

    def label(self) -> str:
        return f"{self.lo_ms:+.2f}…{self.hi_ms:+.2f} ms"


def window(base: Unimpaired, timer_ms: float, hops: int, native_tol_ms: float) -> Window:
    """The derivation in the module docstring, for one reading."""
    tol = native_tol_ms + base.spread_ms
    how = (f"base {base.level_ms:.2f} ± ({native_tol_ms:g} + spread {base.spread_ms:.2f})"
           + (f" + {hops} x timer {timer_ms:.2f}" if hops else ""))
    return Window(base.level_ms - tol, base.level_ms + hops * timer_ms + tol, how)


@dataclass(frozen=True)
class TcgBaseline:
    """The guest's unimpaired UDP echo (RTT and each direction, their fast ends) and its timer
    lateness, one boot."""
    rtt: Unimpaired
    uplink: Unimpaired
    downlink: Unimpaired
    timer_ms: float
    echoes: int

    @classmethod
    def from_echo(cls, st: EchoStats, timer_ms: float) -> "TcgBaseline":
        if st.rtt_p10_ms is None or st.uplink.delay_p10_ms is None or st.downlink.delay_p10_ms is None:
            raise LinkError("TCG baseline: no UDP echo came back over the unshaped link")
        return cls(rtt=Unimpaired.fast_end(st.rtt_p10_ms, st.rtt_p25_ms),
                   uplink=Unimpaired.fast_end(st.uplink.delay_p10_ms, st.uplink.delay_p25_ms),
                   downlink=Unimpaired.fast_end(st.downlink.delay_p10_ms, st.downlink.delay_p25_ms),
                   timer_ms=timer_ms, echoes=st.downlink.received)

    def rtt_window(self, hops: int, native_tol_ms: float) -> Window:
        return window(self.rtt, self.timer_ms, hops, native_tol_ms)

    def oneway_window(self, direction: str, delayed: bool, native_tol_ms: float) -> Window:
        return window(self.uplink if direction == "up" else self.downlink, self.timer_ms, int(delayed),
                      native_tol_ms)

    def describe(self, native_tol_ms: float) -> str:
        """How the allowance was derived, in one line, for the record."""
        r, at0, at50 = self.rtt, self.rtt_window(0, native_tol_ms), self.rtt_window(2, native_tol_ms)
        q = LEVEL
        return (f"TCG baseline (this boot, {self.echoes} UDP echoes at delay 0, judged by their {q}): "
                f"RTT {q} {r.level_ms:.2f} ms, spread {SPREAD_FACTOR:g} x (P25 - {q}) {r.spread_ms:.2f} ms; "
                f"up {self.uplink.level_ms:.2f}, down "
                f"{self.downlink.level_ms:.2f} ms; a {TIMER_MS:g} ms timer fires {self.timer_ms:.2f} ms late "
                f"(P{TIMER_QUANTILE}). Accepted RTT deviation: {at0.label()} at delay 0, {at50.label()} "
                f"delayed both ways ({at50.how}); a delay wrong by more than the window's "
                f"{self.resolution_ms(native_tol_ms):.1f} ms fails (10 % of RTT "
                f"{10 * self.resolution_ms(native_tol_ms):.0f} ms)")

    def resolution_ms(self, native_tol_ms: float) -> float:
        """The width of the delayed RTT window: an RTT off by more than this fails wherever in the
        window the guest would have put the correct reading."""
        w = self.rtt_window(2, native_tol_ms)
        return w.hi_ms - w.lo_ms

    def to_dict(self) -> dict:
        return asdict(self)


def timer_late_ms(overshoots_ms: list[float]) -> float:
    return percentile(overshoots_ms, TIMER_QUANTILE)


def measure_timer_ms(samples: int = TIMER_SAMPLES, timer_ms: float = TIMER_MS) -> float:
    """How late a timer_ms sleep returns here, with timer slack 1 µs as the probes run (netem's
    own timer has none); the calling thread's slack is restored afterwards."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    old = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
    prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
    try:
        late = []
        for _ in range(samples):
            t0 = time.monotonic_ns()
            time.sleep(timer_ms / 1000)
            late.append((time.monotonic_ns() - t0) / 1e6 - timer_ms)
    finally:
        if old > 0:
            prctl(PR_SET_TIMERSLACK, old, 0, 0, 0)
    return timer_late_ms(late)


def measure(spawn, addrs: dict | None = None, echoes: int = BASELINE_ECHOES) -> TcgBaseline:
    """The baseline over a link already at delay 0 (no jitter, loss or rate); spawn as Topology.popen."""
    from netns.fidelity.probe import run_udp_echo
    st = run_udp_echo(spawn, count=echoes, interval_ms=5.0, **(addrs or {}))
    return TcgBaseline.from_echo(st, measure_timer_ms())
