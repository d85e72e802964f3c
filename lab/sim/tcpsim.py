"""One TCP endpoint as Linux runs it, for the discrete-event link model (lab/sim/netsim.py).

An endpoint is a sender (its byte stream to the peer) and a receiver (the
peer's stream) sharing packets: every data segment carries the current ACK,
as in the kernel.  Times are milliseconds of simulated time; nothing sleeps.
The parts, each with its sources in its docstring:

  here          sending: segments of mss_bytes without Nagle (libzmq sets
                TCP_NODELAY), initial cwnd 10, growth only when cwnd-limited
                (tcp_is_cwnd_limited), restart after an RTO of idle
                (tcp_slow_start_after_idle = 1), TCP small queues (a few
                packets of the socket in the qdisc, the rest wait in the
                socket), pacing when the congestion control asks (BBR);
                RTT/RTO as tcp_rtt_estimator (srtt 7/8, mdev 3/4, rttvar ≥
                200 ms, RTO = srtt + rttvar, backoff ×2 to 120 s); ACK
                processing with SACK; delivery-rate samples (tcp_rate.c).
  tcploss.py    RACK, PRR, tail loss probes, RTO recovery.
  tcprecv.py    the receiver: out-of-order queue, SACK/DSACK, delayed ACKs.
  tcpcc.py      constants (TcpConfig), jiffies timers, reno/cubic/bbr.

Not modelled (documented simplifications): F-RTO and DSACK undo, HyStart,
SACK compression, receive-window limits (the lab raises tcp_rmem), GSO.
"""
from __future__ import annotations

import math
from collections import OrderedDict

from lab.sim.tcpcc import CONGESTION_CONTROLS, CWR, LOSS, OPEN, RECOVERY, REO, RTO, TLP, TcpConfig, timer_fire_ms
from lab.sim.tcploss import LossRecovery
from lab.sim.tcpseg import Packet, Segment
from lab.sim.tcprecv import TcpReceiver


# ------------------------------------------------------------------ the endpoint

class TcpEndpoint(TcpReceiver, LossRecovery):
    """Sender + receiver of one side.  `net` is the connection (lab/sim/netsim.py): it schedules
    events, carries packets (net.output) and is told when bytes arrive in order (net.delivered)."""

    def __init__(self, name: str, net, cfg: TcpConfig, cc: str, first_rtt_ms: float):
        self.name, self.net, self.cfg = name, net, cfg
        # ---- sender
        self.write_seq = self.snd_una = self.snd_nxt = 0
        self.segs: list[Segment] = []                  # outstanding, in sequence order, from index `head`
        self.head = 0
        self.tsorted: OrderedDict[int, Segment] = OrderedDict()   # in flight, not SACKed/lost, by xmit time
        self.lost_queue: list[Segment] = []
        self.next_sid = 0
        self.packets_out = self.sacked_out = self.lost_out = self.retrans_out = 0
        self.cwnd, self.cwnd_cnt, self.ssthresh = cfg.init_cwnd_pkts, 0, 1 << 30
        self.state, self.high_seq = OPEN, 0
        self.prior_cwnd = self.prr_delivered = self.prr_out = 0
        self.tlp_high_seq, self.tlp_retrans = 0, False
        self.rack_xmit, self.rack_end, self.rack_rtt = -1.0, 0, 0.0
        self.reord_seen, self.reo_wnd_steps = False, 1
        self.undo_marker, self.undo_retrans, self.retrans_stamp, self.prior_ssthresh = False, 0, None, 0
        self.fack = 0                                   # highest SACKed end
        self.max_packets_out, self.max_packets_seq, self.is_cwnd_limited = 0, 0, False
        self.lsndtime = 0.0
        self.backoff = 0
        self.timer_kind, self.timer_gen = None, 0
        self.timer_armed: tuple | None = None           # (place, kind, gen) of the armed timer (_arm)
        self.timer_waits: list[tuple[float, int]] = []  # places of its queued wake-ups, latest first
        self.tsq_armed = False
        self.cc = CONGESTION_CONTROLS[cc](self)
        self.cong_control = getattr(self.cc, "cong_control", False)     # BBR sets cwnd and pacing itself
        # Delivery-rate sampling (net/ipv4/tcp_rate.c) and pacing (tcp_wstamp_ns).
        self.delivered, self.delivered_t, self.first_tx_t, self.app_limited_until = 0, 0.0, 0.0, 0
        self.newly_lost = 0
        self.wstamp, self.data_segs_out, self.pace_armed = 0.0, 0, False
        # RTT state as tcp_rtt_estimator keeps it (ms; mdev ×4); the handshake gives the first sample.
        self.srtt_ms, self.mdev, self.mdev_max, self.rttvar, self.rtt_seq = 0.0, 0.0, 0.0, 0.0, 0
        self.min_rtt_ms = math.inf
        self.rto_ms = cfg.rto_init_ms
        self.rtt_sample(first_rtt_ms)
        self._init_receiver()
        self.stats = {k: 0 for k in ("segments", "retransmits", "tlp", "rto", "fast_recovery", "undo", "acks",
                                     "dupacks")}

    # ============================================================== RTT and timers
    def rtt_sample(self, m: float) -> None:
        """tcp_rtt_estimator + tcp_set_rto (ms instead of scaled µs)."""
        m = max(m, 0.001)
        self.min_rtt_ms = min(self.min_rtt_ms, m)
        rto_min = self.cfg.rto_min_ms
        if self.srtt_ms:
            err = m - self.srtt_ms
            self.srtt_ms += err / 8                     # srtt = 7/8 srtt + 1/8 m
            # mdev is kept ×4, as mdev_us: mdev += |err| − mdev/4, with a falling RTT damped 8×.
            if err < 0:
                err = -err - self.mdev / 4
                if err > 0:
                    err /= 8
            else:
                err -= self.mdev / 4
            self.mdev += err
            if self.mdev > self.mdev_max:
                self.mdev_max = self.mdev
                self.rttvar = max(self.rttvar, self.mdev_max)
            if self.snd_una > self.rtt_seq:
                if self.mdev_max < self.rttvar:
                    self.rttvar -= (self.rttvar - self.mdev_max) / 4
                self.rtt_seq = self.snd_nxt
                self.mdev_max = rto_min
        else:
            self.srtt_ms = m
            self.mdev = 2 * m
            self.rttvar = max(self.mdev, rto_min)
            self.mdev_max = self.rttvar
            self.rtt_seq = self.snd_nxt
        tick = 1000.0 / self.cfg.hz
        rto = math.ceil((self.srtt_ms + self.rttvar) / tick - 1e-9) * tick
        self.rto_ms = min(rto, self.cfg.rto_max_ms)
        self.backoff = 0

    def _arm(self, kind: str | None, timeout_ms: float, now: float) -> None:
        """(Re)arm the retransmission timer (kind RTO, TLP or REO; None stops it), as the kernel's one
        timer per socket.  It is re-armed two or three times per message, mostly later than before, and
        an event queued per arming was half of all the simulation's events, nearly all of them stale.
        So an arming queues an event only when no earlier one of this timer is queued; that one, when
        it comes, queues the armed timer at the place its arming reserved (TcpLinkModel.reserve): the
        events that do something run in the same order as with one event per arming."""
        self.timer_gen += 1
        self.timer_kind = kind
        if kind is None:
            self.timer_armed = None
            return
        off = self.net.clock_offset_ms
        place = self.net.reserve(timer_fire_ms(now + off, timeout_ms, self.cfg.hz) - off)
        self.timer_armed = (place, kind, self.timer_gen)
        self._timer_wait(place)

    def _timer_wait(self, place: tuple[float, int]) -> None:
        """Queue a wake-up at `place` unless one at or before it is queued already."""
        waits = self.timer_waits
        if not waits or waits[-1] > place:
            waits.append(place)                      # every new wait is the earliest: a stack
            self.net.schedule_reserved(place, self._timer_due)

    def _timer_due(self, now: float) -> None:
        place = self.timer_waits.pop()
        if self.timer_armed is None:
            return                                   # stopped since
        armed, kind, gen = self.timer_armed
        if armed == place:
            self.timer_armed = None
            self.on_timer(now, kind, gen)
        else:                                        # re-armed for later: wait for that
            self._timer_wait(armed)

    def _rto_backed_off(self) -> float:
        return min(self.rto_ms * (1 << min(self.backoff, 20)), self.cfg.rto_max_ms)

    def _rearm_rto(self, now: float) -> None:
        """tcp_rearm_rto: a pending probe/reordering timer leaves the RTO relative to the head's send time."""
        if not self.packets_out:
            self._arm(None, 0, now)
            return
        rto = self._rto_backed_off()
        if self.timer_kind in (TLP, REO):
            head = self.segs[self.head]
            rto = max(self.rto_ms - (now - head.t_xmit), 0.001)
        self._arm(RTO, rto, now)

    def on_timer(self, now: float, kind: str, gen: int) -> None:
        if gen != self.timer_gen:
            return
        self.timer_kind = None
        if kind == RTO:
            self._on_rto(now)
        elif kind == TLP:
            self._on_tlp(now)
        elif kind == REO:
            self._rack_detect(now)
            self._after_loss_marking(now)
            self._push(now)
            if self.timer_kind is None:
                self._rearm_rto(now)

    # ============================================================== application side
    def app_write(self, now: float, nbytes: int) -> int:
        """Queue nbytes for sending; returns the stream offset just past them."""
        if (self.write_seq - self.snd_nxt < self.cfg.mss_bytes and self.in_flight() < self.cwnd
                and not self.lost_out):                 # tcp_rate_check_app_limited
            self.app_limited_until = (self.delivered + self.in_flight()) or 1
        if (self.cfg.slow_start_after_idle and not self.cong_control and not self.packets_out
                and self.write_seq == self.snd_nxt):
            idle = now - self.lsndtime
            if idle > self.rto_ms and self.lsndtime > 0:
                self.ssthresh = self._current_ssthresh()
                restart = min(self.cfg.init_cwnd_pkts, self.cwnd)
                cwnd, delta = self.cwnd, idle - self.rto_ms
                while delta > 0 and cwnd > restart:
                    cwnd >>= 1
                    delta -= self.rto_ms
                self.cwnd = max(cwnd, restart)
        self.write_seq += nbytes
        self._push(now)
        return self.write_seq

    def _current_ssthresh(self) -> int:
        if self.state in (CWR, RECOVERY):
            return self.ssthresh
        return max(self.ssthresh, (self.cwnd >> 1) + (self.cwnd >> 2))

    # ============================================================== sending
    def in_flight(self) -> int:
        return self.packets_out - self.sacked_out - self.lost_out + self.retrans_out

    def _pacing_rate_Bpms(self) -> float:
        if self.cong_control and self.cc.pacing_Bpms:
            return self.cc.pacing_Bpms
        ratio = 2.0 if self.cwnd < self.ssthresh / 2 else 1.2
        return ratio * self.cwnd * self.cfg.mss_bytes / max(self.srtt_ms, 0.05)

    def _tsq_blocked(self, now: float) -> bool:
        limit = max(self.cfg.tsq_min_pkts * (self.cfg.mss_bytes + self.cfg.header_bytes),
                    self._pacing_rate_Bpms() * self.cfg.tsq_ms)
        wake = self.net.tsq_wake(self, now, limit)
        if wake is None:
            return False
        if not self.tsq_armed:
            self.tsq_armed = True
            self.net.schedule(wake, self._tsq_wake)
        return True

    def _tsq_wake(self, now: float) -> None:
        self.tsq_armed = False
        self._push(now)

    def _push(self, now: float, force_one: bool = False) -> None:
        """tcp_xmit_retransmit_queue, then tcp_write_xmit; TLP/RTO armed afterwards."""
        sent_new, probe, cwnd_limited, rearm = False, force_one, False, False
        prior_packets = self.packets_out
        while True:
            lost = self._next_lost()
            has_new = self.snd_nxt < self.write_seq
            if lost is None and not has_new:
                break
            if self.in_flight() >= self.cwnd and not force_one:
                cwnd_limited = has_new
                break
            if self._tsq_blocked(now) and not force_one:
                break
            if self.cong_control and now < self.wstamp - 1e-9 and not force_one:
                if not self.pace_armed:                 # tcp_pacing_check: wait for the pacing slot
                    self.pace_armed = True
                    self.net.schedule(self.wstamp, self._pace_wake)
                break
            force_one = False
            if lost is not None:
                self.lost_queue.pop(0)
                rearm |= lost is self.segs[self.head] and self.timer_kind != REO
                self._retransmit(lost, now)
                if self.state == RECOVERY:
                    self.prr_out += 1
                continue
            n = min(self.cfg.mss_bytes, self.write_seq - self.snd_nxt)
            seg = Segment(self.snd_nxt, self.snd_nxt + n, now, self.next_sid)
            self.next_sid += 1
            if self.in_flight() == 0:
                self.cc.tx_start(now - self.lsndtime, now)
            self.segs.append(seg)
            self.tsorted[seg.sid] = seg
            if not self.packets_out:
                self.first_tx_t = self.delivered_t = now
            self.packets_out += 1
            self.snd_nxt += n
            self.lsndtime = now
            self._transmit(seg, now)
            if self.state == RECOVERY:
                self.prr_out += 1
            sent_new = True
            # A data segment sent within ato of the last data received: a ping-pong exchange.
            if self.lrcvtime and now - self.lrcvtime < max(self.ato, self.cfg.ato_min_ms):
                self.pingpong_cnt += 1
        if sent_new or cwnd_limited:                    # tcp_cwnd_validate, once per window
            if (self.snd_una >= self.max_packets_seq or self.packets_out > self.max_packets_out
                    or cwnd_limited):
                self.max_packets_out, self.max_packets_seq = self.packets_out, self.snd_nxt
                self.is_cwnd_limited = cwnd_limited
        if rearm and not sent_new:                      # the head was retransmitted: RTO from now
            self._rearm_rto(now)
        if sent_new:
            # tcp_event_new_data_sent, then tcp_schedule_loss_probe (not for the probe itself)
            if not prior_packets or self.timer_kind in (TLP, None):
                self._rearm_rto(now)
            if not probe:
                self._schedule_tlp(now)

    def _next_lost(self) -> Segment | None:
        while self.lost_queue:
            s = self.lost_queue[0]
            if s.lost and not s.retrans and not s.sacked and s.end > self.snd_una:
                return s
            self.lost_queue.pop(0)
        return None

    def _retransmit(self, seg: Segment, now: float) -> None:
        if not seg.retrans:
            seg.retrans = True
            self.retrans_out += 1
        seg.ever_retrans = True
        seg.t_xmit = now
        self.tsorted.pop(seg.sid, None)
        self.tsorted[seg.sid] = seg
        self.stats["retransmits"] += 1
        if self.undo_marker:
            self.undo_retrans += 1
            if self.retrans_stamp is None:
                self.retrans_stamp = now
        self._transmit(seg, now)

    def _pace_wake(self, now: float) -> None:
        self.pace_armed = False
        self._push(now)

    def _transmit(self, seg: Segment, now: float) -> None:
        self.stats["segments"] += 1
        seg.rs_delivered, seg.rs_time, seg.rs_first_tx = self.delivered, self.delivered_t, self.first_tx_t
        seg.rs_app_limited = bool(self.app_limited_until)
        self.data_segs_out += 1
        if self.cong_control and self.cc.pacing_Bpms and self.data_segs_out > 10:
            prior = self.wstamp                         # tcp_update_skb_after_send
            w = max(prior, now)
            length = (seg.end - seg.seq + self.cfg.header_bytes) / self.cc.pacing_Bpms
            self.wstamp = w + length - min(length / 2, w - prior)
        self._send_packet(seg.seq, seg.end, now)

    def _send_packet(self, seq: int, end: int, now: float) -> None:
        sacks = self._sack_blocks()
        pkt = Packet(self.name, seq, end, self.rcv_nxt, sacks, self.dsack_pending,
                     (end - seq) + self.cfg.header_bytes + 8 * min(len(sacks) + self.dsack_pending, 3)
                     + (4 if sacks or self.dsack_pending else 0), now, self.ts_recent)
        self._ack_sent()
        self.net.output(self, pkt, now, is_data=end > seq)

    # ============================================================== ACK processing (sender side)
    def on_packet(self, now: float, pkt: Packet) -> None:
        if pkt.end > pkt.seq:
            self._on_data(now, pkt)
        self._on_ack(now, pkt)

    def _on_ack(self, now: float, pkt: Packet) -> None:
        """tcp_ack(): cumulative ACK, SACK scoreboard, RTT and rate samples, then loss detection and
        congestion control, in the kernel's order.  One function on purpose: the steps share the
        prior_* snapshots and their order is what makes recovery match Linux; split, it reads worse."""
        ack = min(pkt.ack, self.snd_nxt)
        if ack < self.snd_una:
            return                                      # old ACK, reordered behind a newer one
        prior_una, prior_fack, prior_in_flight = self.snd_una, self.fack, self.in_flight()
        delivered = 0
        first_ackt, last_retrans_t = None, None
        rs = None                                       # the newest delivered segment: the rate sample
        self.newly_lost = 0
        segs = self.segs
        while self.head < len(segs) and segs[self.head].end <= ack:
            s = segs[self.head]
            self.head += 1
            self.packets_out -= 1
            if s.sacked:
                self.sacked_out -= 1
            else:
                delivered += 1
                self._rack_advance(s, now)
                if rs is None or s.rs_delivered >= rs.rs_delivered:
                    rs = s
                if s.ever_retrans:
                    last_retrans_t = s.t_xmit if last_retrans_t is None else max(last_retrans_t, s.t_xmit)
                elif first_ackt is None:
                    first_ackt = s.t_xmit
                if s.end <= prior_fack and not s.ever_retrans:
                    self.reord_seen = True
            if s.lost:
                self.lost_out -= 1
            if s.retrans:
                self.retrans_out -= 1
            self.tsorted.pop(s.sid, None)
        if self.head > 4096 and self.head > len(segs) // 2:
            del segs[: self.head]
            self.head = 0
        self.snd_una = ack
        sack_rtt = None
        for start, end in pkt.sacks:
            for s in self._sack_range(start, end):
                s.sacked = True
                self.sacked_out += 1
                delivered += 1
                if s.lost:
                    s.lost = False
                    self.lost_out -= 1
                if s.retrans:
                    s.retrans = False
                    self.retrans_out -= 1
                self.tsorted.pop(s.sid, None)
                self._rack_advance(s, now)
                if rs is None or s.rs_delivered >= rs.rs_delivered:
                    rs = s
                if not s.ever_retrans:
                    # Reordering: a never-retransmitted segment below what was SACKed *before this ACK*
                    # (tcp_sacktag_write_queue sorts an ACK's blocks and compares with prior_fack, so two
                    # blocks of one ACK — the receiver lists the newest first — are not reordering).
                    if s.seq < prior_fack:
                        self.reord_seen = True
                    if sack_rtt is None:
                        sack_rtt = now - s.t_xmit
                self.fack = max(self.fack, s.end)
        self.stats["acks"] += 1
        if pkt.dsack:                                   # a retransmission was spurious (tcp_dsack_seen)
            # RACK widens its reordering window only for DSACKs that reordering may have caused: not before
            # any reordering was seen, not for a TLP probe's (timer-driven).  A DSACK is not reordering.
            if self.reord_seen and not (self.tlp_high_seq and self.tlp_retrans):
                self.reo_wnd_steps = min(self.reo_wnd_steps + 1, 255)
            self.undo_retrans = max(self.undo_retrans - 1, 0)
        advanced = ack > prior_una
        if not advanced and not delivered:
            self.stats["dupacks"] += 1
        # RTT: oldest newly acked never-retransmitted segment; else SACK; else the timestamp echo.
        if first_ackt is not None:
            self.rtt_sample(now - first_ackt)
        elif sack_rtt is not None:
            self.rtt_sample(sack_rtt)
        elif last_retrans_t is not None and pkt.tsecr > 0:
            self.rtt_sample(now - pkt.tsecr)            # only retransmitted data acked: the echoed timestamp
        self._tlp_ack(ack, advanced, delivered, pkt.dsack)
        if self.state in (RECOVERY, LOSS, CWR) and self.snd_una >= self.high_seq:
            if self.state in (RECOVERY, CWR) and not self.cong_control:
                self.cwnd = max(min(self.cwnd, self.ssthresh), 1) if self.state == CWR else self.ssthresh
            if self.state in (RECOVERY, LOSS):          # tcp_try_undo_recovery / tcp_try_undo_loss
                self._try_undo(pkt.tsecr)
            self.state = OPEN
        elif self.state == OPEN and pkt.dsack:          # tcp_try_undo_dsack
            self._try_undo(0.0)
        if self.packets_out:
            self._rack_detect(now)
        self._after_loss_marking(now, prior_in_flight)
        if self.cong_control:
            self._bbr_ack(now, delivered, rs)
        elif delivered:
            if self.state == RECOVERY:
                self._prr(delivered)
            elif self._cwnd_limited():
                self.cc.cong_avoid(delivered, now)
        self._push(now)
        if advanced:                                    # FLAG_SET_XMIT_TIMER: TLP or RTO from now
            if not self.packets_out:
                self._arm(None, 0, now)
            elif self.timer_kind != REO and not self._schedule_tlp(now):
                self._rearm_rto(now)

    def _bbr_ack(self, now: float, delivered: int, rs: Segment | None) -> None:
        """tcp_rate_gen + bbr_main: a delivery-rate sample from the newest delivered segment."""
        if rs is None:
            self.cc.main(now, 0, self.newly_lost, 0, -1.0, False, 0, None)
            return
        self.delivered += delivered
        self.delivered_t, self.first_tx_t = now, rs.t_xmit
        if self.app_limited_until and self.delivered > self.app_limited_until:
            self.app_limited_until = 0
        interval = max(rs.t_xmit - rs.rs_first_tx, now - rs.rs_time)
        if interval < self.min_rtt_ms:
            interval = -1.0                             # tcp_rate_gen: shorter than min_rtt is not a sample
        rtt = None if rs.ever_retrans else now - rs.t_xmit
        # FLAG_ACK_MAYBE_DELAYED: one lone runt segment acknowledged (its RTT may hold a delayed ACK).
        delayed = delivered == 1 and rs.end - rs.seq < self.cfg.mss_bytes and not self.sacked_out
        self.cc.main(now, delivered, self.newly_lost, self.delivered - rs.rs_delivered, interval,
                     rs.rs_app_limited, rs.rs_delivered, rtt, delayed)

    def _cwnd_limited(self) -> bool:
        if self.is_cwnd_limited:
            return True
        return self.cwnd < self.ssthresh and self.cwnd < 2 * self.max_packets_out

    def slow_start(self, acked: int) -> int:
        cwnd = min(self.cwnd + acked, self.ssthresh)
        acked -= cwnd - self.cwnd
        self.cwnd = cwnd
        return acked

    def cong_avoid_ai(self, w: int, acked: int) -> None:
        if self.cwnd_cnt >= w:
            self.cwnd_cnt = 0
            self.cwnd += 1
        self.cwnd_cnt += acked
        if self.cwnd_cnt >= w:
            d = self.cwnd_cnt // w
            self.cwnd_cnt -= d * w
            self.cwnd += d

    def _sack_range(self, start: int, end: int):
        """Newly SACKed segments inside [start, end): scanned inward from both edges (the SACK
        cache of tcp_sacktag_write_queue; a block only grows at its edges between ACKs)."""
        segs, lo, hi = self.segs, self.head, len(self.segs)
        if lo >= hi or end <= segs[lo].seq:
            return []
        a, b = lo, hi                                   # first index with seq >= start
        while a < b:
            mid = (a + b) // 2
            if segs[mid].seq < start:
                a = mid + 1
            else:
                b = mid
        out, i = [], a
        while i < hi and segs[i].end <= end and not segs[i].sacked:
            out.append(segs[i])
            i += 1
        j = a
        a2, b2 = a, hi                                  # last index with end <= end
        while a2 < b2:
            mid = (a2 + b2) // 2
            if segs[mid].end <= end:
                a2 = mid + 1
            else:
                b2 = mid
        j = a2 - 1
        while j >= i and segs[j].seq >= start and not segs[j].sacked:
            out.append(segs[j])
            j -= 1
        return out

