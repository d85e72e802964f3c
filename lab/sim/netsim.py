"""The link as a discrete-event model: one long-lived TCP connection over two `LinkSpec`s.

The lab's nodes talk over one pyzmq (TCP) connection that lives for the
whole run, so its congestion window, RTT estimate and RTO carry over from
cycle to cycle.  `TcpLinkModel` simulates exactly that path, packet by
packet, in simulated milliseconds (nothing sleeps):

    sender TCP ──▶ rate limiter (tbf on the sender's device) ──▶ delay line ──▶ receiver TCP
                   token bucket at rate_mbit, burst as          Bernoulli loss, then
                   netns/tbf.py sizes it; FIFO; the socket      delay + U(−jitter, +jitter)
                   waits (TCP small queues) instead of          per packet (reorders),
                   the qdisc dropping                           `limit_pkts` in flight

which was the wire backend's path when its tbf sat on the sender's TUN.  Both
backends now shape at the receiver, after the delay line (netns/wire.py,
netns/netem.py): the same delivery times for a constant delay, but there the
sender never waits and a full bottleneck queue drops instead — not modelled
here yet (docs/MEASUREMENTS.md, "wire: where the rate is shaped").  Both directions exist at once: data one
way, ACKs (or piggybacked ACKs on the other side's data) the other.  The
TCP endpoints themselves are lab/sim/tcpsim.py.

`SleepLinkModel` is the deliberately naive peer model (Ianvs-style):
arrival = t + delay + U(−J, J) + size/rate — no loss, no queueing, no TCP.
The lab exists to show where that is wrong.

Both implement `LinkModel`:

    h = model.submit(t_ms, "up", nbytes)      # the application writes a message at t_ms
    t = model.delivered_at(h)                 # runs the simulation until it is read, in order
    t = model.send(t_ms, "down", nbytes)      # both at once

A submission may not lie before the simulation's clock (it would rewrite
history); callers run request → reply chains in time order.
"""
from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections import deque
from typing import Callable, Iterable, Protocol

from lab.sim.tcpcc import CONGESTION_CONTROLS, TcpConfig
from lab.sim.tcpseg import Packet
from lab.sim.tcpsim import TcpEndpoint
from netns import paired
from netns.link import LinkPair, LinkSpec
from netns.tbf import FRAME_BYTES as TBF_FRAME_BYTES

DIRECTIONS = ("up", "down")                       # up: edge → cloud, down: cloud → edge
SHAPERS = ("tbf", "serial")


class SimError(Exception):
    """The simulation was asked something impossible (a send in the past, an unknown direction, model,
    congestion control, strategy placement or profile); the message names it."""


class LinkModel(Protocol):
    def submit(self, t_ms: float, direction: str, nbytes: int) -> int: ...

    def delivered_at(self, handle: int) -> float: ...

    def send(self, t_ms: float, direction: str, nbytes: int) -> float: ...

    def set_link(self, t_ms: float, link: LinkPair) -> None: ...

    def restart_timeline(self, t_ms: float, link: LinkPair,
                         changes: Iterable[tuple[float, LinkPair]] = ()) -> None: ...

    def stats(self) -> dict: ...


def tbf_burst_bytes(spec: LinkSpec) -> float:
    """The burst netns/tbf.py gives the kernel's tbf: 2 ms of the rate, at least two full frames."""
    return max(2 * TBF_FRAME_BYTES, spec.rate_mbit * 1e6 / 8 * 0.002) if spec.rate_mbit else 0.0


# ------------------------------------------------------------------ one direction of the path

class Path:
    """Rate limiter then delay line, for the packets one endpoint sends."""

    def __init__(self, spec: LinkSpec, rng: random.Random, shaper: str, l2_bytes: int):
        self.rng, self.shaper, self.l2_bytes = rng, shaper, l2_bytes
        self.t_free = 0.0                 # tbf: last departure; serial: when the wire is free
        self.tokens = 0.0
        self.rate_Bpms = None
        self.data_departures: deque[tuple[float, int]] = deque()   # (departure, bytes) of queued data
        self.data_queued = 0              # their bytes
        self.in_line: list[float] = []    # due times of packets in the delay line (a heap)
        self.counts = {"packets": 0, "bytes": 0, "lost": 0, "limit_dropped": 0, "reordered": 0}
        self.last_due = 0.0
        self.burst = 0.0
        self.set_spec(spec, 0.0)

    def set_spec(self, spec: LinkSpec, now: float) -> None:
        """A new spec from `now` on: the bucket keeps the tokens it has earned so far."""
        old_rate = getattr(self, "rate_Bpms", None)
        if old_rate and self.shaper == "tbf" and now > self.t_free:
            self.tokens = min(self.burst, self.tokens + (now - self.t_free) * old_rate)
            self.t_free = now
        self.spec = spec
        self.rate_Bpms = spec.rate_mbit * 1e6 / 8 / 1000 if spec.rate_mbit else None
        self.burst = tbf_burst_bytes(spec)
        self.tokens = self.burst if old_rate is None else min(self.tokens, self.burst)
        self.limit = spec.effective_limit_pkts()

    def depart(self, now: float, nbytes: int) -> float:
        """When a packet handed to the qdisc at `now` leaves it (FIFO behind earlier packets)."""
        if not self.rate_Bpms:
            return now
        size = nbytes + self.l2_bytes
        if self.shaper == "serial":       # store-and-forward: the whole packet is clocked out
            self.t_free = max(now, self.t_free) + size / self.rate_Bpms
            return self.t_free
        t = max(now, self.t_free)
        tokens = min(max(self.burst, size), self.tokens + (t - self.t_free) * self.rate_Bpms)
        if tokens < size:
            t += (size - tokens) / self.rate_Bpms
            tokens = size
        self.tokens, self.t_free = tokens - size, t
        return t

    def carry(self, t_depart: float, draw: Callable[[str], float] | None = None) -> float | None:
        """Delay line: Bernoulli loss, the `limit` of packets in flight, then delay ± jitter.
        `draw`: the packet's own uniform numbers, draw("loss") and draw("jitter") (paired draws,
        netns/paired.py); else the path's generator."""
        spec, in_line = self.spec, self.in_line
        self.counts["packets"] += 1
        if spec.loss_pct and (draw("loss") if draw else self.rng.random()) * 100.0 < spec.loss_pct:
            self.counts["lost"] += 1
            return None
        while in_line and in_line[0] <= t_depart:
            heapq.heappop(in_line)
        if len(in_line) >= self.limit:
            self.counts["limit_dropped"] += 1
            return None
        delay = spec.delay_ms
        if spec.jitter_ms:
            u = draw("jitter") if draw else self.rng.random()
            delay += spec.jitter_ms * (2.0 * u - 1.0)
        due = t_depart + max(0.0, delay)
        heapq.heappush(in_line, due)
        if due < self.last_due:
            self.counts["reordered"] += 1
        self.last_due = max(self.last_due, due)
        return due

    def queue_data(self, t_depart: float, nbytes: int) -> None:
        self.data_departures.append((t_depart, nbytes))
        self.data_queued += nbytes

    def tsq_wake(self, now: float, limit_bytes: float) -> float | None:
        """None if the sender may hand the qdisc more data now, else when enough of its data has left
        (TCP small queues: the socket's bytes in the qdisc stay under a limit)."""
        dq = self.data_departures
        while dq and dq[0][0] <= now:
            self.data_queued -= dq.popleft()[1]
        if self.data_queued < limit_bytes:
            return None
        left = self.data_queued
        for t, b in dq:
            left -= b
            if left < limit_bytes:
                return t
        return dq[-1][0]


# ------------------------------------------------------------------ the connection

class TcpLinkModel:
    """One TCP connection between edge and cloud over `link`, packet by packet.

    congestion_control: "cubic" (Linux's built-in default), "reno" or "bbr" (BBR v1, see lab/sim/tcpcc.py).
    shaper: "tbf" (the lab's rate limiter: a token bucket with netns/tbf.py's burst —
    an isolated packet passes at once) or "serial" (store-and-forward at the rate:
    every packet takes size/rate, as a real serial line or netem's `rate`).
    """

    def __init__(self, link: LinkPair, congestion_control: str = "cubic", seed: int = 0,
                 header_bytes: int = 52, l2_bytes: int = 0, config: TcpConfig | None = None,
                 shaper: str = "tbf", changes: Iterable[tuple[float, LinkPair]] = (),
                 paired_seed: int | None = None):
        cc = congestion_control or "cubic"
        if cc not in CONGESTION_CONTROLS:
            raise SimError(f"congestion control {cc!r} is not modelled (modelled: "
                              f"{', '.join(sorted(CONGESTION_CONTROLS))}); set tcp.congestion_control "
                              f"in the scenario to one of them")
        if shaper not in SHAPERS:
            raise SimError(f"shaper must be one of {', '.join(SHAPERS)}, got {shaper!r}")
        self.cfg = config or TcpConfig(header_bytes=header_bytes, l2_bytes=l2_bytes)
        self.congestion_control = cc
        self.now = 0.0
        self._heap: list = []
        self._n = 0
        rng = random.Random(seed)
        self.link = link
        self.paths = {"up": Path(link.uplink, random.Random(rng.random()), shaper, self.cfg.l2_bytes),
                      "down": Path(link.downlink, random.Random(rng.random()), shaper, self.cfg.l2_bytes)}
        # The three-way handshake's RTT is the first sample on both sides (no jitter, no queue).
        rtt0 = link.uplink.delay_ms + link.downlink.delay_ms
        self.edge = TcpEndpoint("edge", self, self.cfg, cc, rtt0)
        self.cloud = TcpEndpoint("cloud", self, self.cfg, cc, rtt0)
        self._dir_of = {"edge": "up", "cloud": "down"}
        self._messages: dict[int, list] = {}           # handle → [direction, end offset, delivered time]
        self._pending = {"up": deque(), "down": deque()}
        self._next_handle = 0
        self._changes = iter(changes)                  # (t_ms, LinkPair) in time order; may be endless
        self._timeline_gen = 0                         # bumped by restart_timeline: older changes are void
        self.link_log: list[tuple[float, LinkPair]] = []   # (t_ms, link) of every change applied
        self._schedule_next_change()
        # Paired draws (netns/paired.py): each packet's loss and jitter keyed by the message it carries,
        # as the lab's wire relay keys it for the same seed.
        self.paired_seed = paired_seed
        # What the kernel's jiffies read when the simulation clock reads 0 (ms): timers fire on the jiffy and
        # timer-wheel grids of that clock.  validate sets it per query from the lab run (clock_phase).
        self.clock_offset_ms = 0.0
        self._streams = {d: paired.MessageStream() for d in DIRECTIONS}
        self._data_ord = {d: paired.Ordinals() for d in DIRECTIONS}
        self._ack_ord = {d: paired.Ordinals() for d in DIRECTIONS}
        self.lost_keys: dict[str, list[tuple]] = {d: [] for d in DIRECTIONS}

    # -------------------------------------------------------------- event engine
    # The engine's two methods run a few hundred thousand times per sweep point: written for speed.
    def schedule(self, t: float, fn: Callable, *args) -> None:
        heapq.heappush(self._heap, (*self.reserve(t), fn, args))

    def reserve(self, t: float) -> tuple[float, int]:
        """The place in the event order (time, sequence) that schedule(t, …) would give an event now,
        without queueing it: a timer re-armed many times between firings queues one event, which takes
        the place its latest arming reserved, so events run in exactly the order eager arming gives."""
        self._n += 1
        now = self.now
        return (t if t > now else now, self._n)

    def schedule_reserved(self, place: tuple[float, int], fn: Callable, *args) -> None:
        heapq.heappush(self._heap, (place[0], place[1], fn, args))

    def _step(self) -> bool:
        if not self._heap:
            return False
        t, _, fn, args = heapq.heappop(self._heap)
        self.now = t
        fn(t, *args)
        return True

    def run_until(self, t_ms: float) -> None:
        while self._heap and self._heap[0][0] <= t_ms:
            self._step()
        self.now = max(self.now, t_ms)

    # -------------------------------------------------------------- timeline
    def _schedule_next_change(self) -> None:
        nxt = next(self._changes, None)
        if nxt is not None:
            self.schedule(nxt[0], self._apply_change, nxt[1], self._timeline_gen)

    def _apply_link(self, now: float, link: LinkPair) -> None:
        self.link = link
        self.paths["up"].set_spec(link.uplink, now)
        self.paths["down"].set_spec(link.downlink, now)
        self.link_log.append((now, link))

    def _apply_change(self, now: float, link: LinkPair, gen: int) -> None:
        if gen != self._timeline_gen:
            return                                     # a change of a schedule restart_timeline replaced
        self._apply_link(now, link)
        self._schedule_next_change()

    def restart_timeline(self, t_ms: float, link: LinkPair,
                         changes: Iterable[tuple[float, LinkPair]] = ()) -> None:
        """From t_ms (or the clock, if later) the link is `link`, then follows `changes` ((t_ms, LinkPair)
        in time order, none before t_ms); what the old schedule still held is dropped.  The link is
        reprogrammed only if it differs, as the lab's runner does."""
        self._timeline_gen += 1
        self._changes = iter(changes)
        self.schedule(t_ms, self._restart, link, self._timeline_gen)

    def _restart(self, now: float, link: LinkPair, gen: int) -> None:
        if gen != self._timeline_gen:
            return
        if link != self.link:
            self._apply_link(now, link)
        self._schedule_next_change()

    def set_link(self, t_ms: float, link: LinkPair) -> None:
        """Change both directions at t_ms (packets entering the path after it see the new spec)."""
        if t_ms < self.now:
            raise SimError(f"set_link at {t_ms:.3f} ms is before the simulation clock {self.now:.3f} ms")
        self.schedule(t_ms, self._apply_link, link)

    # -------------------------------------------------------------- called by the endpoints
    def output(self, ep: TcpEndpoint, pkt: Packet, now: float, is_data: bool) -> None:
        path = self.paths[self._dir_of[ep.name]]
        t_dep = path.depart(now, pkt.wire_bytes)
        path.counts["bytes"] += pkt.wire_bytes
        if is_data:
            path.queue_data(t_dep, pkt.wire_bytes)
        draw = None
        if self.paired_seed is not None:
            d = self._dir_of[ep.name]
            key = (paired.data_key(self._streams[d], self._data_ord[d], pkt.seq) if pkt.end > pkt.seq else
                   paired.ack_key(self._streams[paired.REVERSE[d]], self._ack_ord[d], pkt.ack))
            draw = functools.partial(paired.packet_draw, self.paired_seed, d, key)
            lost_before = path.counts["lost"]
        due = path.carry(t_dep, draw)
        if draw is not None and path.counts["lost"] > lost_before:
            self.lost_keys[d].append(key)
        if due is not None:
            peer = self.cloud if ep is self.edge else self.edge
            self.schedule(due, peer.on_packet, pkt)

    def tsq_wake(self, ep: TcpEndpoint, now: float, limit_bytes: float) -> float | None:
        return self.paths[self._dir_of[ep.name]].tsq_wake(now, limit_bytes)

    def delivered(self, receiver: TcpEndpoint, rcv_nxt: int, now: float) -> None:
        direction = "down" if receiver is self.edge else "up"
        q = self._pending[direction]
        while q and self._messages[q[0]][1] <= rcv_nxt:
            self._messages[q.popleft()][2] = now

    # -------------------------------------------------------------- the LinkModel API
    def submit(self, t_ms: float, direction: str, nbytes: int) -> int:
        if direction not in DIRECTIONS:
            raise SimError(f"direction must be 'up' or 'down', got {direction!r}")
        if t_ms < self.now - 1e-9:
            raise SimError(f"message submitted at {t_ms:.3f} ms, before the simulation clock {self.now:.3f} ms")
        if nbytes <= 0:
            raise SimError(f"a message needs at least one byte, got {nbytes}")
        h = self._next_handle
        self._next_handle += 1
        sender = self.edge if direction == "up" else self.cloud
        self._messages[h] = [direction, None, None]
        self.schedule(t_ms, self._write, h, sender, nbytes)
        return h

    def _write(self, now: float, h: int, sender: TcpEndpoint, nbytes: int) -> None:
        msg = self._messages[h]
        self._streams[msg[0]].add_message(sender.write_seq, sender.write_seq + nbytes)   # before any segment leaves
        msg[1] = sender.app_write(now, nbytes)
        self._pending[msg[0]].append(h)

    def delivered_at(self, handle: int) -> float:
        msg = self._messages.get(handle)
        if msg is None:
            raise SimError(f"unknown message handle {handle}")
        heap, pop = self._heap, heapq.heappop
        while msg[2] is None:                   # _step, inlined: the simulation's innermost loop
            if not heap:
                raise SimError(f"message {handle} can never arrive (no events left); this is a model bug")
            t, _, fn, args = pop(heap)
            self.now = t
            fn(t, *args)
        return msg[2]

    def send(self, t_ms: float, direction: str, nbytes: int) -> float:
        return self.delivered_at(self.submit(t_ms, direction, nbytes))

    def forget(self, handle: int) -> None:
        """Drop the record of a delivered message (long runs)."""
        if self._messages.get(handle, [None, None, None])[2] is not None:
            del self._messages[handle]

    def stats(self) -> dict:
        out = {f"{d}_{k}": v for d in DIRECTIONS for k, v in self.paths[d].counts.items()}
        for name, ep in (("edge", self.edge), ("cloud", self.cloud)):
            out.update({f"{name}_{k}": v for k, v in ep.stats.items()})
            out[f"{name}_cwnd"] = ep.cwnd
            out[f"{name}_srtt_ms"] = ep.srtt_ms
            out[f"{name}_rto_ms"] = ep.rto_ms
        return out


# ------------------------------------------------------------------ the naive model

class SleepLinkModel:
    """arrival = t + delay + U(−jitter, +jitter) + nbytes·8/rate: what a `time.sleep` model assumes."""

    def __init__(self, link: LinkPair, seed: int = 0, changes: Iterable[tuple[float, LinkPair]] = ()):
        self.link = link
        self.rng = random.Random(seed)
        self._changes = iter(changes)                  # (t_ms, LinkPair) in time order; may be endless
        self._upcoming = next(self._changes, None)
        self._arrivals: list[float] = []
        self.now = 0.0
        self.congestion_control = None

    def set_link(self, t_ms: float, link: LinkPair) -> None:
        self._changes = iter([(t_ms, link)])
        self._upcoming = next(self._changes)

    def restart_timeline(self, t_ms: float, link: LinkPair,
                         changes: Iterable[tuple[float, LinkPair]] = ()) -> None:
        """TcpLinkModel.restart_timeline's contract."""
        self._changes = itertools.chain([(t_ms, link)], changes)
        self._upcoming = next(self._changes)

    def _link_at(self, t_ms: float) -> LinkPair:
        while self._upcoming is not None and self._upcoming[0] <= t_ms:
            self.link = self._upcoming[1]
            self._upcoming = next(self._changes, None)
        return self.link

    def submit(self, t_ms: float, direction: str, nbytes: int) -> int:
        if direction not in DIRECTIONS:
            raise SimError(f"direction must be 'up' or 'down', got {direction!r}")
        link = self._link_at(t_ms)
        spec = link.uplink if direction == "up" else link.downlink
        t = t_ms + spec.delay_ms
        if spec.jitter_ms:
            t += self.rng.uniform(-spec.jitter_ms, spec.jitter_ms)
        if spec.rate_mbit:
            t += nbytes * 8 / (spec.rate_mbit * 1e3)
        self._arrivals.append(t)
        return len(self._arrivals) - 1

    def delivered_at(self, handle: int) -> float:
        return self._arrivals[handle]

    def send(self, t_ms: float, direction: str, nbytes: int) -> float:
        return self.delivered_at(self.submit(t_ms, direction, nbytes))

    def stats(self) -> dict:
        return {}


def make_link_model(kind: str, link: LinkPair, *, congestion_control: str | None = None, seed: int = 0,
                    changes: Iterable[tuple[float, LinkPair]] = (), paired_seed: int | None = None,
                    **tcp_options) -> LinkModel:
    """"tcp" (the mechanistic model) or "sleep" (the naive one, which loses nothing).
    `paired_seed`: key each packet's loss and jitter draws (netns/paired.py) as the wire relay does for that seed."""
    if kind == "tcp":
        return TcpLinkModel(link, congestion_control=congestion_control or "cubic", seed=seed, changes=changes,
                            paired_seed=paired_seed, **tcp_options)
    if kind == "sleep":
        return SleepLinkModel(link, seed=seed, changes=changes)
    raise SimError(f"link model must be 'tcp' or 'sleep', got {kind!r}")
