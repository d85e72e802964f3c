"""The receiving half of a Linux TCP endpoint: in-order delivery, SACK, and when to ACK.

Delayed ACKs as net/ipv4/tcp_input.c decides them (__tcp_ack_snd_check,
tcp_event_data_recv, tcp_cleanup_rbuf) and tcp_timer.c fires them:
quickack mode (16 ACKs) at the start and after the receiver was idle longer
than an RTO, and — leaving ping-pong mode — on a duplicate segment; an
immediate ACK for more than one rcv_mss unacknowledged, for out-of-order
data (a SACK "dupack"), for a filled hole, and for a small pushed segment
once the application has read it (outside ping-pong mode);
otherwise the delayed-ACK timer (ato: TCP_ATO_MIN = 40 ms, adapted to the
inter-arrival gap) — unless data leaves first and carries the ACK.  An
endpoint that answers within ato of receiving is in ping-pong (interactive)
mode; a delayed-ACK timer that fires there ends it.
"""
from __future__ import annotations


from lab.sim.tcpcc import timer_fire_ms

from lab.sim.tcpseg import Packet


class TcpReceiver:
    """Mixin for TcpEndpoint: needs self.cfg, self.net, self.snd_nxt, self.srtt_ms, self.rto_ms,
    self._send_packet(seq, end, now)."""

    def _init_receiver(self) -> None:
        self.rcv_nxt = self.rcv_wup = 0
        self.ooo: list[list[int]] = []
        self.last_sack: list[int] | None = None
        self.dsack_pending = False
        self.ack_pending, self.dack_gen = False, 0
        self.quick, self.pingpong_cnt, self.ato, self.lrcvtime = 0, 0, 0.0, 0.0
        self.rcv_mss, self.last_seg_size, self.pushed = self.cfg.initial_rcv_mss, 0, 0
        self.ts_recent = 0.0                            # the peer's timestamp we echo (RFC 7323 TS.Recent)

    def _on_data(self, now: float, pkt: Packet) -> None:
        s, e = pkt.seq, pkt.end
        if s <= self.rcv_wup:                           # tcp_replace_ts_recent: SEG.SEQ <= Last.ACK.sent
            self.ts_recent = pkt.tsval
        if e <= self.rcv_nxt:                           # a duplicate: DSACK, ACK now
            self.dsack_pending = True
            self._enter_quickack_mode()
            self._send_ack(now)
            return
        n = e - s
        if n >= self.rcv_mss:
            self.rcv_mss = min(n, self.cfg.mss_bytes)
        elif n >= self.cfg.initial_rcv_mss and n == self.last_seg_size:
            self.rcv_mss = n
        else:
            self.pushed += 1
        self.last_seg_size = n
        if s > self.rcv_nxt:                            # out of order: queue, SACK at once
            self._ooo_insert(s, e)
            self._send_ack(now)
            return
        had_hole = bool(self.ooo)
        self.rcv_nxt = e
        while self.ooo and self.ooo[0][0] <= self.rcv_nxt:
            self.rcv_nxt = max(self.rcv_nxt, self.ooo.pop(0)[1])
        self._data_recv_event(now)
        self.net.delivered(self, self.rcv_nxt, now)
        pingpong = self.pingpong_cnt >= self.cfg.pingpong_thresh
        if (had_hole or self.rcv_nxt - self.rcv_wup > self.rcv_mss
                or (self.quick and not pingpong)
                or (self.pushed and not pingpong) or (self.pushed >= 2 and pingpong)):
            self._send_ack(now)
        elif not self.ack_pending:
            self.ack_pending = True
            self.dack_gen += 1
            ato = self.ato
            if ato > self.cfg.ato_min_ms:
                ato = min(ato, self.cfg.delack_max_ms if pingpong else 500.0, max(self.srtt_ms, self.cfg.ato_min_ms))
            off = self.net.clock_offset_ms
            self.net.schedule(timer_fire_ms(now + off, ato, self.cfg.hz) - off, self._delack_timer, self.dack_gen)

    def _enter_quickack_mode(self) -> None:
        """tcp_enter_quickack_mode (a duplicate segment: our ACK was probably lost): quick ACKs,
        out of ping-pong mode, ato back to TCP_ATO_MIN.  The next data segment from the peer is
        therefore ACKed at once even when a reply follows within ato; the reply that follows
        re-enters ping-pong (tcp_event_data_sent)."""
        self.quick = max(self.quick, self.cfg.max_quickacks)
        self.pingpong_cnt = 0                           # inet_csk_exit_pingpong_mode
        self.ato = self.cfg.ato_min_ms

    def _data_recv_event(self, now: float) -> None:
        """tcp_event_data_recv: quickack at start and after a long gap; ato follows inter-arrivals."""
        cfg = self.cfg
        if not self.ato:
            self.quick = max(self.quick, cfg.max_quickacks)
            self.ato = cfg.ato_min_ms
        else:
            m = now - self.lrcvtime
            if m <= cfg.ato_min_ms / 2:
                self.ato = self.ato / 2 + cfg.ato_min_ms / 2
            elif m < self.ato:
                self.ato = min(self.ato / 2 + m, self.rto_ms)
            elif m > self.rto_ms:
                self.quick = max(self.quick, cfg.max_quickacks)
        self.lrcvtime = now

    def _delack_timer(self, now: float, gen: int) -> None:
        if gen != self.dack_gen or not self.ack_pending:
            return
        if self.pingpong_cnt >= self.cfg.pingpong_thresh:
            self.pingpong_cnt = 0                       # missed: leave ping-pong mode
            self.ato = self.cfg.ato_min_ms
        else:
            self.ato = min(self.ato * 2, self.rto_ms)
        self._send_ack(now)

    def _ooo_insert(self, s: int, e: int) -> None:
        blocks = self.ooo
        blocks.append([s, e])
        blocks.sort()
        merged: list[list[int]] = []
        for b in blocks:
            if merged and b[0] <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b[1])
            else:
                merged.append(b)
        self.ooo = merged
        self.last_sack = next(b for b in merged if b[0] <= s < b[1])

    def _sack_blocks(self) -> tuple:
        if not self.ooo:
            return ()
        first = self.last_sack if self.last_sack in self.ooo else self.ooo[-1]
        rest = [tuple(b) for b in reversed(self.ooo) if b is not first]
        return (tuple(first), *rest[:2])

    def _send_ack(self, now: float) -> None:
        self._send_packet(self.snd_nxt, self.snd_nxt, now)

    def _ack_sent(self) -> None:
        """tcp_event_ack_sent: any segment carries the ACK; the delayed ACK is no longer due."""
        if self.ack_pending or self.rcv_wup != self.rcv_nxt:
            if self.quick:
                self.quick -= 1
        self.ack_pending = False
        self.dack_gen += 1
        self.rcv_wup = self.rcv_nxt
        self.pushed = 0
        self.dsack_pending = False
