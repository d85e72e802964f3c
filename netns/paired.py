"""Paired draws: the same per-packet loss and jitter in the lab's relay and in the simulator.

Validation compares the simulator with the kernel lab.  Under 5 % loss a
query's end-to-end time is dominated by how many of its packets are lost
(each loss costs a recovery, ≈ an RTO), so two independent loss draws give
medians that differ by a whole recovery from sampling alone — with the fast
profile, hundreds to thousands of queries per strategy before a 3 %
comparison says anything about the model.  Jitter does the same on a smaller
scale (a streamed answer ends when its last packet, ± jitter, arrives).  The
standard cure in simulation studies is common random numbers: give both
systems the same random input and compare what each makes of it.

Here a packet's draws come from a keyed hash instead of the next output of
a generator: u = H(seed, direction, key) in [0, 1), lost iff u·100 <
loss_pct; its jitter is uniform from H(seed, direction, key + ("jitter",)).
The key names the packet by what it carries, not by when it is sent:

  ("d", m, b, r)   a TCP segment with data whose first byte is in message m
                   (ZMTP messages on that direction of the connection, counted
                   from 0), b = that byte's offset in the message // KEY_BUCKET,
                   r = how many earlier transmissions had the same (m, b): a
                   retransmission is a new packet with new draws
  ("a", m, r)      a pure ACK: m = how many of the reverse direction's
                   messages it acknowledges completely, r = the ordinal among
                   pure ACKs with the same m
  ("p", off, r)    data before the first message (ZMTP greeting, READY)
  ("s", b, r)      data of a stream that is not ZMTP, by offset bucket
  ("n", i)         anything else (SYN, FIN, RST, ICMP: the i-th such packet of
                   the direction)

Every packet of a run gets a distinct key, and the hash makes the draws
independent and uniform, so loss is still Bernoulli(loss_pct) per packet and
jitter still uniform per packet — what netem does, what the scenario says.
Because the key names the message, the relay (which parses the ZMTP stream
it forwards) and the simulator (which knows its messages) draw the same
numbers for "the first transmission of the verify request of cycle 7" even
when their timing or their ACK pattern differ; a disagreement (say, one
extra retransmission in one of them) changes that packet's draws only, and
the next message is in step again.  `python -m lab validate` reports how
many of the lab's lost first transmissions the simulator lost too.

Pure, no dependencies beyond the standard library: the relay imports it.
"""
from __future__ import annotations

import hashlib
import struct
from bisect import bisect_right

KEY_BUCKET = 1448                  # bytes of a message per key bucket (one MSS with timestamps)
ZMTP_GREETING = 64                 # ZMTP 3.x greeting length
ZMTP_MORE, ZMTP_LONG, ZMTP_COMMAND = 0x01, 0x02, 0x04
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
PRUNE_AT = 4096                    # ordinal entries kept per stream before the oldest are dropped


def packet_draw(seed: int, direction: str, key: tuple, what: str) -> float:
    """A packet's uniform number for `what`: "loss" (keyed_uniform of its key) or "jitter"."""
    return keyed_uniform(seed, direction, key if what == "loss" else key + (what,))


def keyed_uniform(seed: int, direction: str, key: tuple) -> float:
    """A uniform number in [0, 1) that depends only on (seed, direction, key)."""
    text = f"{int(seed)}|{direction}|{'|'.join(map(str, key))}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big") / 2.0 ** 64


class MessageStream:
    """One direction of a connection's byte stream, parsed as ZMTP as it is first sent.

    `feed(data)` takes new bytes in stream order (a sender transmits new data in order, so the
    relay, which sees every transmission before any loss, never has a gap); `locate(offset)` says
    which message a stream offset belongs to.  A stream that does not start with the ZMTP signature
    is not parsed (`zmtp` False): its data packets are keyed by stream offset instead."""

    def __init__(self):
        self.fed = 0                    # stream bytes seen so far
        self.zmtp: bool | None = None   # unknown until the first byte
        self.starts: list[int] = []     # stream offset where each message starts
        self.ends: list[int] = []       # ... and where it ends (after its last frame)
        self._skip = ZMTP_GREETING      # bytes of the greeting or of the current frame body still to pass
        self._head = b""                # a frame header read so far
        self._in_message = False        # a message has started and its last frame not yet been read
        self._frame_ends_message = False

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self.zmtp is None:
            self.zmtp = data[0] == 0xFF
        if not self.zmtp:
            self.fed += len(data)
            return
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                if not self._skip:
                    self._frame_done(self.fed + i)
                continue
            self._head += data[i:i + 1]
            i += 1
            flags = self._head[0]
            need = 9 if flags & ZMTP_LONG else 2
            if len(self._head) < need:
                continue
            size = struct.unpack(">Q", self._head[1:9])[0] if flags & ZMTP_LONG else self._head[1]
            self._head = b""
            if not flags & ZMTP_COMMAND:
                if not self._in_message:
                    self.starts.append(self.fed + i - need)
                    self._in_message = True
                self._frame_ends_message = not flags & ZMTP_MORE
            else:
                self._frame_ends_message = False
            self._skip = size
            if not size:
                self._frame_done(self.fed + i)
        self.fed += n

    def _frame_done(self, offset: int) -> None:
        if self._frame_ends_message:
            self.ends.append(offset)
            self._in_message = self._frame_ends_message = False

    def add_message(self, start: int, end: int) -> None:
        """A message the caller knows the extent of (the simulator, which has no bytes to parse)."""
        self.zmtp = True
        self.starts.append(start)
        self.ends.append(end)
        self.fed = end

    def locate(self, offset: int) -> tuple[int, int] | None:
        """(message index, offset inside it) of a stream offset, or None before the first message."""
        k = bisect_right(self.starts, offset) - 1
        return None if k < 0 else (k, offset - self.starts[k])

    def complete_before(self, offset: int) -> int:
        """How many messages end at or before `offset` (what an ACK of `offset` covers completely)."""
        return bisect_right(self.ends, offset)


class Ordinals:
    """How many times each key was seen (bounded: old keys are forgotten)."""

    def __init__(self):
        self.seen: dict[tuple, int] = {}

    def next(self, key: tuple) -> int:
        r = self.seen.get(key, 0)
        self.seen[key] = r + 1
        if len(self.seen) > PRUNE_AT:
            for k in list(self.seen)[:PRUNE_AT // 2]:
                del self.seen[k]
        return r


def data_key(stream: MessageStream, ordinals: Ordinals, offset: int) -> tuple:
    """Key of a data segment starting at stream `offset` (see the module docstring)."""
    if not stream.zmtp:
        base = ("s", offset // KEY_BUCKET)
        return base + (ordinals.next(base),)
    where = stream.locate(offset)
    if where is None:
        base = ("p", offset)
    else:
        base = ("d", where[0], where[1] // KEY_BUCKET)
    return base + (ordinals.next(base),)


def first_transmission(key: tuple) -> tuple[int, int] | None:
    """(message, bucket) if `key` names the first transmission of a message's data, else None: what
    the relay records of its losses and validate compares with the simulator's."""
    return (key[1], key[2]) if key[0] == "d" and key[3] == 0 else None


def ack_key(reverse: MessageStream, ordinals: Ordinals, ack_offset: int) -> tuple:
    base = ("a", reverse.complete_before(ack_offset))
    return base + (ordinals.next(base),)


class _Flow:
    """One TCP connection as the relay sees it: per direction, the ISN, the stream and the ordinals."""

    def __init__(self):
        self.isn: dict[str, int] = {}
        self.stream = {"up": MessageStream(), "down": MessageStream()}
        self.data_ord = {"up": Ordinals(), "down": Ordinals()}
        self.ack_ord = {"up": Ordinals(), "down": Ordinals()}


REVERSE = {"up": "down", "down": "up"}


class PacketKeyer:
    """The relay's side: IPv4 packets in, keys out (one instance for both directions)."""

    def __init__(self):
        self.flows: dict[tuple, _Flow] = {}
        self.other = {"up": 0, "down": 0}

    def _other(self, direction: str) -> tuple:
        self.other[direction] += 1
        return ("n", self.other[direction] - 1)

    def key(self, direction: str, pkt: bytes) -> tuple:
        if len(pkt) < 20 or pkt[0] >> 4 != 4 or pkt[9] != 6:
            return self._other(direction)
        ihl = (pkt[0] & 0x0F) * 4
        total = struct.unpack_from(">H", pkt, 2)[0]
        if len(pkt) < ihl + 20:
            return self._other(direction)
        src, dst = pkt[12:16], pkt[16:20]
        sport, dport, seq, ack = struct.unpack_from(">HHII", pkt, ihl)
        off = (pkt[ihl + 12] >> 4) * 4
        flags = pkt[ihl + 13]
        payload = pkt[ihl + off:min(total, len(pkt))]
        # one record per connection, whichever direction is seen first
        fid = (src, sport, dst, dport) if direction == "up" else (dst, dport, src, sport)
        if flags & TCP_SYN:
            flow = self.flows.get(fid)
            if flow is None or (not flags & TCP_ACK and flow.isn.get(direction) != seq):
                flow = self.flows[fid] = _Flow()       # a new connection (a retransmitted SYN keeps it)
            flow.isn[direction] = seq
            return self._other(direction)
        flow = self.flows.get(fid)
        if flow is None or direction not in flow.isn or flags & (TCP_FIN | TCP_RST):
            return self._other(direction)
        rel = (seq - flow.isn[direction] - 1) & 0xFFFFFFFF
        stream = flow.stream[direction]
        if payload:
            end = rel + len(payload)
            if end > stream.fed and rel <= stream.fed:
                stream.feed(payload[stream.fed - rel:])
            return data_key(stream, flow.data_ord[direction], rel)
        rev = REVERSE[direction]
        if rev not in flow.isn:
            return self._other(direction)
        rel_ack = (ack - flow.isn[rev] - 1) & 0xFFFFFFFF
        return ack_key(flow.stream[rev], flow.ack_ord[direction], rel_ack)
