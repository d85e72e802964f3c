"""The simulated TCP's data: a segment in the sender's queue and a packet on the link."""
from __future__ import annotations


class Segment:
    __slots__ = ("seq", "end", "t_xmit", "sacked", "lost", "retrans", "ever_retrans", "sid",
                 "rs_delivered", "rs_time", "rs_first_tx", "rs_app_limited")     # tcp_rate.c state

    def __init__(self, seq: int, end: int, t: float, sid: int):
        self.seq, self.end, self.t_xmit, self.sid = seq, end, t, sid
        self.sacked = self.lost = self.retrans = self.ever_retrans = False


class Packet:
    """What crosses the link: a data segment (seq < end) and/or an ACK with SACK blocks."""
    __slots__ = ("seq", "end", "ack", "sacks", "dsack", "wire_bytes", "src", "tsval", "tsecr")

    def __init__(self, src, seq, end, ack, sacks, dsack, wire_bytes, tsval=0.0, tsecr=0.0):
        self.src, self.seq, self.end, self.ack = src, seq, end, ack
        self.sacks, self.dsack, self.wire_bytes = sacks, dsack, wire_bytes
        self.tsval, self.tsecr = tsval, tsecr          # TCP timestamps (RFC 7323), in ms
