"""Loss detection and recovery of a Linux TCP sender: RACK, PRR, tail loss probes, RTO.

net/ipv4/tcp_recovery.c (RACK, tcp_recovery = 1), tcp_input.c (PRR,
tcp_process_tlp_ack, tcp_enter_loss) and tcp_output.c/tcp_timer.c
(tcp_schedule_loss_probe, tcp_send_loss_probe, tcp_retransmit_timer):

  * RACK: a segment is lost when one sent after it has been delivered and it
    is older than rack.rtt + reo_wnd (reo_wnd = 0 until reordering has been
    seen once 3 segments are SACKed or in recovery, else min_rtt/4); a timer
    covers the ones not old enough yet.
  * Fast recovery with proportional rate reduction (PRR-SSRB), at least one
    retransmission at once.
  * Tail loss probe (tcp_early_retrans = 3): PTO = 2·srtt + 200 ms with one
    packet out (room for a delayed ACK), 2·srtt + 2 jiffies otherwise, never
    later than the RTO; it sends new data or retransmits the last segment;
    an ACK past the probe without DSACK means a loss was repaired: cwnd
    reduction (CWR).
  * RTO: Loss state, ssthresh from the congestion control, cwnd = in flight
    + 1, every unSACKed segment lost, the head retransmitted, the timer
    backed off ×2 (up to 120 s).
"""
from __future__ import annotations

import math

from lab.sim.tcpcc import CWR, INFINITE_SSTHRESH, LOSS, OPEN, RECOVERY, REO, RTO, TLP
from lab.sim.tcpseg import Segment


class LossRecovery:
    """Mixin for TcpEndpoint (the sender state lives there)."""

    def _schedule_tlp(self, now: float) -> bool:
        """tcp_schedule_loss_probe."""
        if not self.cfg.tlp or not self.packets_out or self.state not in (OPEN, CWR):
            return False
        tick = 1000.0 / self.cfg.hz
        timeout = 2 * self.srtt_ms + (self.cfg.rto_min_ms if self.packets_out == 1 else 2 * tick)
        head = self.segs[self.head]
        timeout = min(timeout, max(self.rto_ms - (now - head.t_xmit), 0.001))
        self._arm(TLP, timeout, now)
        return True

    def _on_tlp(self, now: float) -> None:
        """tcp_send_loss_probe."""
        if not self.packets_out:
            return
        if self.tlp_high_seq:
            self._rearm_rto(now)
            return
        self.stats["tlp"] += 1
        self.timer_kind = TLP           # so _rearm_rto measures from the head's send time
        if self.snd_nxt < self.write_seq:
            self.tlp_retrans = False
            self._push(now, force_one=True)
        else:
            last = None
            for i in range(len(self.segs) - 1, self.head - 1, -1):
                if not self.segs[i].sacked:
                    last = self.segs[i]
                    break
            if last is None:
                return
            self.tlp_retrans = True
            self._retransmit(last, now)
        self.tlp_high_seq = self.snd_nxt
        self.timer_kind = TLP
        self._rearm_rto(now)

    def _on_rto(self, now: float) -> None:
        """tcp_retransmit_timer → tcp_enter_loss."""
        if not self.packets_out:
            return
        self.stats["rto"] += 1
        if self.state != LOSS or self.backoff == 0:
            self._init_undo()
            self.prior_cwnd = self.cwnd
            self.ssthresh = self.cc.ssthresh()
        self.state, self.high_seq = LOSS, self.snd_nxt
        self.tlp_high_seq = 0
        for i in range(self.head, len(self.segs)):
            s = self.segs[i]
            if not s.sacked:
                self._mark_lost(s, requeue=False)
        self.lost_queue = [self.segs[i] for i in range(self.head, len(self.segs))
                           if self.segs[i].lost and not self.segs[i].sacked]
        self.cwnd, self.cwnd_cnt = self.in_flight() + 1, 0
        head = self._next_lost()
        if head is not None:
            self.lost_queue.pop(0)
            self._retransmit(head, now)
        self.backoff += 1
        self._arm(RTO, self._rto_backed_off(), now)

    def _mark_lost(self, s: Segment, requeue: bool = True) -> None:
        if s.retrans:
            s.retrans = False
            self.retrans_out -= 1
        if not s.lost:
            s.lost = True
            self.lost_out += 1
            self.newly_lost += 1
        self.tsorted.pop(s.sid, None)
        if requeue:
            self.lost_queue.append(s)

    def _reo_wnd(self) -> float:
        if not self.reord_seen and (self.state in (RECOVERY, LOSS) or self.sacked_out >= self.cfg.dupthresh):
            return 0.0
        return min(self.min_rtt_ms / 4 * self.reo_wnd_steps, self.srtt_ms)

    def _rack_detect(self, now: float) -> None:
        """tcp_rack_detect_loss: lost = sent before the last delivered segment and older than rtt + reo_wnd."""
        if self.rack_xmit < 0:
            return
        reo = self._reo_wnd()
        wait = None
        lost = []
        for s in self.tsorted.values():                  # oldest transmission first; stop at the newest delivered
            if s.t_xmit > self.rack_xmit or (s.t_xmit == self.rack_xmit and s.end >= self.rack_end):
                break
            left = s.t_xmit + self.rack_rtt + reo - now
            if left <= 0:
                lost.append(s)
            else:
                wait = left if wait is None else min(wait, left)
        for s in lost:
            self._mark_lost(s)
        if wait is not None and self.timer_kind != REO:
            self._arm(REO, wait + 2000.0 / self.cfg.hz, now)

    def _after_loss_marking(self, now: float, prior_in_flight: int | None = None) -> None:
        if self.lost_out and self.state in (OPEN, CWR):
            self.stats["fast_recovery"] += 1
            self._init_undo()
            self.prior_cwnd = self.cwnd
            self.ssthresh = self.cc.ssthresh()
            self.state, self.high_seq = RECOVERY, self.snd_nxt
            self.prr_delivered = self.prr_out = 0
            self.tlp_high_seq = 0
            # PRR sends at least one retransmission at once.
            self.cwnd = self.in_flight() + 1

    def _init_undo(self) -> None:
        """tcp_init_undo: remember what a spurious recovery would have to restore."""
        self.undo_marker, self.undo_retrans, self.retrans_stamp = True, 0, None
        self.prior_ssthresh = self._current_ssthresh()

    def _try_undo(self, tsecr: float) -> bool:
        """tcp_may_undo: every retransmission DSACKed, or the ACK echoes a timestamp older than the
        first retransmission (Eifel: the original arrived).  Then the window reduction is undone."""
        if not self.undo_marker:
            return False
        delayed = self.retrans_stamp is not None and 0 < tsecr < self.retrans_stamp
        if self.undo_retrans > 0 and not delayed:
            return False
        self.undo_marker = False
        self.stats["undo"] += 1
        if self.cong_control:
            self.cc.undo()
        else:
            self.cwnd = max(self.cwnd, self.prior_cwnd)
            self.ssthresh = max(self.ssthresh, self.prior_ssthresh)
        return True

    def _prr(self, newly: int) -> None:
        """tcp_cwnd_reduction (PRR-SSRB)."""
        self.prr_delivered += newly
        in_flight = self.in_flight()
        delta = self.ssthresh - in_flight
        if delta < 0:
            sndcnt = math.ceil(self.ssthresh * self.prr_delivered / max(self.prior_cwnd, 1)) - self.prr_out
        else:
            sndcnt = max(min(delta, max(self.prr_delivered - self.prr_out, newly)), 0)
            sndcnt = min(delta, max(sndcnt, newly))
        sndcnt = max(sndcnt, 0 if self.prr_out else 1)
        self.cwnd = in_flight + sndcnt

    def _tlp_ack(self, ack: int, advanced: bool, delivered: int, dsack: bool) -> None:
        """tcp_process_tlp_ack."""
        if not self.tlp_high_seq or ack < self.tlp_high_seq:
            return
        if not self.tlp_retrans or dsack:
            self.tlp_high_seq = 0
        elif ack > self.tlp_high_seq:                   # the probe repaired a loss: CWR
            self.prior_cwnd = self.cwnd
            self.ssthresh = self.cc.ssthresh()
            if self.ssthresh < INFINITE_SSTHRESH:       # BBR keeps its window
                self.cwnd = max(self.ssthresh, 1)
            self.tlp_high_seq = 0
        elif not advanced and not delivered:
            self.tlp_high_seq = 0

    def _rack_advance(self, s: Segment, now: float) -> None:
        rtt = now - s.t_xmit
        if s.ever_retrans and rtt < self.min_rtt_ms:
            return                                      # the original may have been delivered: ambiguous
        if s.t_xmit > self.rack_xmit or (s.t_xmit == self.rack_xmit and s.end > self.rack_end):
            self.rack_xmit, self.rack_end, self.rack_rtt = s.t_xmit, s.end, rtt

