"""Linux TCP's constants, its timers' granularity, and congestion control (reno, cubic, bbr).

TcpConfig holds the defaults of include/net/tcp.h and the sysctls of a fresh
network namespace (Documentation/networking/ip-sysctl.rst); the values were
read on the lab kernel (6.18, CONFIG_HZ=250).  timer_fire_ms reproduces
when a jiffies timer really fires (kernel/time/timer.c).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

OPEN, CWR, RECOVERY, LOSS = "open", "cwr", "recovery", "loss"
RTO, TLP, REO, DACK = "rto", "tlp", "reo", "dack"
INFINITE_SSTHRESH = 1 << 30


@dataclass(frozen=True)
class TcpConfig:
    """Linux defaults (include/net/tcp.h, Documentation/networking/ip-sysctl.rst)."""
    mss_bytes: int = 1448             # 1500 MTU − 20 IP − 20 TCP − 12 timestamp option
    header_bytes: int = 52            # IP + TCP + timestamps, per packet on the wire
    l2_bytes: int = 0                 # bytes the rate limiter counts beyond IP (TUN: 0; veth tbf: 14)
    init_cwnd_pkts: int = 10          # TCP_INIT_CWND
    rto_min_ms: float = 200.0         # TCP_RTO_MIN / tcp_rto_min_us
    rto_max_ms: float = 120_000.0     # TCP_RTO_MAX
    rto_init_ms: float = 1000.0       # TCP_TIMEOUT_INIT
    ato_min_ms: float = 40.0          # TCP_ATO_MIN = TCP_DELACK_MIN = HZ/25
    delack_max_ms: float = 200.0      # TCP_DELACK_MAX
    max_quickacks: int = 16           # TCP_MAX_QUICKACKS
    initial_rcv_mss: int = 536        # TCP_MSS_DEFAULT (tcp_initialize_rcv_mss)
    pingpong_thresh: int = 1          # net.ipv4.tcp_pingpong_thresh
    dupthresh: int = 3                # net.ipv4.tcp_reordering
    hz: int = 250                     # CONFIG_HZ of the lab kernel (jiffy = 4 ms)
    tlp: bool = True                  # net.ipv4.tcp_early_retrans = 3
    slow_start_after_idle: bool = True
    tsq_min_pkts: int = 4             # TCP small queues: two 2-segment GSO skbs
    tsq_ms: float = 2.0               # … or this much of the pacing rate


def timer_fire_ms(now_ms: float, timeout_ms: float, hz: int) -> float:
    """When a Linux timer_list armed now for timeout_ms really fires (jiffies + wheel rounding)."""
    tick = 1000.0 / hz
    now_j = math.floor(now_ms / tick + 1e-9)
    delta = max(1, math.ceil(timeout_ms / tick - 1e-9))        # usecs_to_jiffies rounds up
    expires = now_j + delta
    lvl, start = 0, 63                                         # LVL_START(1) = 63 ticks
    while delta >= start and lvl < 8:
        lvl += 1
        start = 63 << (3 * lvl)
    gran = 8 ** lvl
    return ((expires // gran) + 1) * gran * tick


# ------------------------------------------------------------------ congestion control

class Reno:
    name = "reno"

    def __init__(self, ep):          # the lab.sim.tcpsim.TcpEndpoint whose cwnd this sets
        self.ep = ep

    def ssthresh(self) -> int:
        return max(self.ep.cwnd // 2, 2)

    def cong_avoid(self, acked: int, now: float) -> None:
        ep = self.ep
        if ep.cwnd < ep.ssthresh:
            acked = ep.slow_start(acked)
            if not acked:
                return
        ep.cong_avoid_ai(ep.cwnd, acked)

    def tx_start(self, idle_ms: float, now: float) -> None:
        pass

    def undo(self) -> None:
        pass


class Cubic(Reno):
    """net/ipv4/tcp_cubic.c without HyStart."""
    name = "cubic"
    BETA = 717 / 1024
    C = 0.4                    # bic_scale 41 · 10 / 1024
    BETA_SCALE = 15            # 8·(1024 + 717) / 3 / (1024 − 717)

    def __init__(self, ep):
        super().__init__(ep)
        self.last_max_cwnd = 0.0
        self.epoch_start = None
        self.origin = self.k_s = 0.0
        self.ack_cnt = 0
        self.tcp_cwnd = 0.0
        self.cnt = 1.0

    def ssthresh(self) -> int:
        cwnd = self.ep.cwnd
        self.epoch_start = None
        if cwnd < self.last_max_cwnd:       # fast convergence
            self.last_max_cwnd = cwnd * (1 + self.BETA) / 2
        else:
            self.last_max_cwnd = cwnd
        return max(int(cwnd * self.BETA), 2)

    def tx_start(self, idle_ms: float, now: float) -> None:
        if self.epoch_start is not None and idle_ms > 0:
            self.epoch_start = min(now, self.epoch_start + idle_ms)

    def cong_avoid(self, acked: int, now: float) -> None:
        ep = self.ep
        if ep.cwnd < ep.ssthresh:
            acked = ep.slow_start(acked)
            if not acked:
                return
        self._update(ep.cwnd, acked, now)
        ep.cong_avoid_ai(max(2, int(self.cnt)), acked)

    def _update(self, cwnd: int, acked: int, now: float) -> None:
        self.ack_cnt += acked
        if self.epoch_start is None:
            self.epoch_start, self.ack_cnt, self.tcp_cwnd = now, acked, cwnd
            if self.last_max_cwnd <= cwnd:
                self.k_s, self.origin = 0.0, cwnd
            else:
                self.k_s = ((self.last_max_cwnd - cwnd) / self.C) ** (1 / 3)
                self.origin = self.last_max_cwnd
        t = (now - self.epoch_start + self.ep.min_rtt_ms) / 1000.0
        target = self.origin + self.C * (t - self.k_s) ** 3
        cnt = cwnd / (target - cwnd) if target > cwnd else 100.0 * cwnd
        if self.last_max_cwnd == 0 and cnt > 20:
            cnt = 20.0
        delta = (cwnd * self.BETA_SCALE) / 8             # TCP-friendly region
        while self.ack_cnt > delta:
            self.ack_cnt -= delta
            self.tcp_cwnd += 1
        if self.tcp_cwnd > cwnd:
            cnt = min(cnt, cwnd / (self.tcp_cwnd - cwnd))
        self.cnt = max(cnt, 2.0)


CONGESTION_CONTROLS = {"reno": Reno, "cubic": Cubic}




class Bbr:
    """net/ipv4/tcp_bbr.c (BBR v1, what mainline Linux ships): model-based, paced, no ssthresh.

    Kept: delivery-rate samples and the 10-round max-bw filter (app-limited
    samples only when they raise it), the 10 s min_rtt filter, STARTUP (gain
    2/ln 2) until bw grows < 25 % for 3 rounds, DRAIN, PROBE_BW's 8-phase
    gain cycle, PROBE_RTT (cwnd 4 for 200 ms when min_rtt is 10 s old),
    cwnd = gain·BDP + 3 send quanta, packet conservation in the first round
    of recovery and the saved cwnd restored after it, pacing at gain·bw·99 %
    (not for the first 10 segments), no restart after idle but pacing at
    1.0·bw.  Left out: the long-term (policer) bw sampler and the ACK
    aggregation allowance.
    """
    name = "bbr"
    cong_control = True
    HIGH_GAIN = 2885 / 1000
    DRAIN_GAIN = 1000 / 2885
    CYCLE = (1.25, 0.75, 1, 1, 1, 1, 1, 1)
    STARTUP, DRAIN, PROBE_BW, PROBE_RTT = "startup", "drain", "probe_bw", "probe_rtt"
    CA_ORDER = {OPEN: 0, CWR: 2, RECOVERY: 3, LOSS: 4}

    def __init__(self, ep):
        import random
        self.ep = ep
        self.rng = random.Random(0)
        self.mode = self.STARTUP
        self.pacing_gain = self.cwnd_gain = self.HIGH_GAIN
        self.bw_samples: list[tuple[int, float]] = []        # (round, bw pkts/ms)
        self.round, self.next_rtt_delivered, self.round_start = 0, 0, False
        self.full_bw, self.full_bw_cnt, self.full_bw_reached = 0.0, 0, False
        self.min_rtt, self.min_rtt_stamp = math.inf, 0.0
        self.cycle_idx, self.cycle_stamp = 0, 0.0
        self.probe_rtt_done, self.probe_rtt_round_done = None, False
        self.prior_cwnd, self.prev_state, self.conservation = 0, OPEN, False
        self.idle_restart = False
        self.pacing_Bpms = None                              # set once the first RTT is known

    def bw(self) -> float:
        return max((b for _, b in self.bw_samples), default=0.0)

    def ssthresh(self) -> int:
        self.prior_cwnd = self.ep.cwnd if self.ep.state not in (RECOVERY, LOSS) or self.mode == self.PROBE_RTT \
            else max(self.prior_cwnd, self.ep.cwnd)
        return INFINITE_SSTHRESH

    def tx_start(self, idle_ms: float, now: float) -> None:
        if self.ep.app_limited_until:
            self.idle_restart = True
            if self.mode == self.PROBE_BW:
                self._set_pacing(1.0)
            elif self.mode == self.PROBE_RTT:
                self._probe_rtt_done(now)

    def _probe_rtt_done(self, now: float) -> None:
        """bbr_check_probe_rtt_done: after 200 ms at cwnd 4, back to the saved window."""
        if self.probe_rtt_done is None or now <= self.probe_rtt_done:
            return
        self.min_rtt_stamp = now
        self.ep.cwnd = max(self.ep.cwnd, self.prior_cwnd)
        if self.full_bw_reached:
            self._enter_probe_bw(now)
        else:
            self.mode, self.pacing_gain, self.cwnd_gain = self.STARTUP, self.HIGH_GAIN, self.HIGH_GAIN

    def cong_avoid(self, acked: int, now: float) -> None:      # not used: main() sets the window
        pass

    def undo(self) -> None:
        """bbr_undo_cwnd: a spurious slow-down — forget the full-pipe evidence, keep the window."""
        self.full_bw, self.full_bw_cnt = 0.0, 0

    def _bdp(self, gain: float) -> int:
        if not math.isfinite(self.min_rtt):
            return self.ep.cfg.init_cwnd_pkts
        return math.ceil(self.bw() * self.min_rtt * gain)

    def _set_pacing(self, gain: float) -> None:
        ep = self.ep
        if self.pacing_Bpms is None:                         # bbr_init_pacing_rate_from_rtt
            self.pacing_Bpms = self.HIGH_GAIN * ep.cfg.init_cwnd_pkts * ep.cfg.mss_bytes / max(ep.srtt_ms, 1.0)
        rate = gain * self.bw() * ep.cfg.mss_bytes * 0.99
        if rate > 0 and (self.full_bw_reached or rate > self.pacing_Bpms):
            self.pacing_Bpms = rate

    def main(self, now: float, acked: int, losses: int, rs_delivered: int, rs_interval: float,
             rs_app_limited: bool, rs_prior_delivered: int, rtt: float | None, ack_delayed: bool = False) -> None:
        """bbr_main for one ACK: update the model, then pacing rate and cwnd."""
        ep = self.ep
        self.round_start = False
        if rs_delivered > 0 and rs_prior_delivered >= self.next_rtt_delivered:
            self.next_rtt_delivered = ep.delivered
            self.round += 1
            self.round_start = True
            self.conservation = False
        if rs_delivered > 0 and rs_interval > 0:
            bw = rs_delivered / rs_interval
            if not rs_app_limited or bw >= self.bw():
                self.bw_samples = [s for s in self.bw_samples if s[0] > self.round - 10] + [(self.round, bw)]
        if self.round_start and not rs_app_limited and not self.full_bw_reached:
            if self.bw() >= self.full_bw * 1.25:
                self.full_bw, self.full_bw_cnt = self.bw(), 0
            else:
                self.full_bw_cnt += 1
                self.full_bw_reached = self.full_bw_cnt >= 3
        if self.mode == self.STARTUP and self.full_bw_reached:
            self.mode, self.pacing_gain, self.cwnd_gain = self.DRAIN, self.DRAIN_GAIN, self.HIGH_GAIN
        if self.mode == self.DRAIN and ep.in_flight() <= self._bdp(1.0):
            self._enter_probe_bw(now)
        if self.mode == self.PROBE_BW:
            self._advance_cycle(now, losses)
        self._update_min_rtt(now, rtt, rs_delivered, ack_delayed)
        self._set_pacing(self.pacing_gain)
        self._set_cwnd(acked, losses)

    def _enter_probe_bw(self, now: float) -> None:
        self.mode, self.pacing_gain, self.cwnd_gain = self.PROBE_BW, 1.0, 2.0
        self.cycle_idx = len(self.CYCLE) - 1 - self.rng.randrange(7)
        self._next_phase(now)

    def _next_phase(self, now: float) -> None:
        self.cycle_idx = (self.cycle_idx + 1) % len(self.CYCLE)
        self.cycle_stamp = now
        self.pacing_gain = self.CYCLE[self.cycle_idx]

    def _advance_cycle(self, now: float, losses: int) -> None:
        full = now - self.cycle_stamp > self.min_rtt
        g, inflight = self.pacing_gain, self.ep.in_flight()
        if (g == 1 and full) or (g > 1 and full and (losses or inflight >= self._bdp(g))) \
                or (g < 1 and (full or inflight <= self._bdp(1.0))):
            self._next_phase(now)

    def _update_min_rtt(self, now: float, rtt: float | None, delivered: int, ack_delayed: bool) -> None:
        """bbr_update_min_rtt + bbr_update_probe_rtt (a delayed ACK's RTT does not refresh an expired filter)."""
        expired = now > self.min_rtt_stamp + 10_000.0
        if rtt is not None and (rtt < self.min_rtt or (expired and not ack_delayed)):
            self.min_rtt, self.min_rtt_stamp = rtt, now
        if expired and not self.idle_restart and self.mode != self.PROBE_RTT:
            self.mode, self.pacing_gain, self.cwnd_gain = self.PROBE_RTT, 1.0, 1.0
            self.prior_cwnd = max(self.prior_cwnd, self.ep.cwnd) if self.ep.state in (RECOVERY, LOSS) \
                else self.ep.cwnd
            self.probe_rtt_done = None
        if self.mode == self.PROBE_RTT:
            if self.probe_rtt_done is None and self.ep.in_flight() <= 4:
                self.probe_rtt_done, self.probe_rtt_round_done = now + 200.0, False
                self.next_rtt_delivered = self.ep.delivered
            elif self.probe_rtt_done is not None:
                self.probe_rtt_round_done |= self.round_start
                if self.probe_rtt_round_done:
                    self._probe_rtt_done(now)
        if delivered > 0:
            self.idle_restart = False

    def _set_cwnd(self, acked: int, losses: int) -> None:
        ep = self.ep
        if not acked:
            return
        cwnd, state = ep.cwnd, ep.state
        if losses:
            cwnd = max(cwnd - losses, 1)
        order, prev = self.CA_ORDER[state], self.CA_ORDER[self.prev_state]
        if state == RECOVERY and self.prev_state != RECOVERY:
            self.conservation = True
            self.next_rtt_delivered = ep.delivered
            cwnd = ep.in_flight() + acked
        elif prev >= 3 and order < 3:
            cwnd = max(cwnd, self.prior_cwnd)
            self.conservation = False
        self.prev_state = state
        if self.conservation:
            ep.cwnd = max(cwnd, ep.in_flight() + acked)
            return
        quanta = 1 if (self.pacing_Bpms or 0) * 8 < 1200.0 else max(2, min(int((self.pacing_Bpms or 0) / ep.cfg.mss_bytes), 127))
        target = self._bdp(self.cwnd_gain) + 3 * quanta
        target += target & 1
        if self.mode == self.PROBE_BW and self.cycle_idx == 0:
            target += 2
        if self.full_bw_reached:
            cwnd = min(cwnd + acked, target)
        elif cwnd < target or ep.delivered < ep.cfg.init_cwnd_pkts:
            cwnd += acked
        cwnd = max(cwnd, 4)
        if self.mode == self.PROBE_RTT:
            cwnd = min(cwnd, 4)
        ep.cwnd = cwnd


CONGESTION_CONTROLS["bbr"] = Bbr
