"""The `wire` backend: a userspace delay line between two TUN devices.

For kernels built without `sch_netem`.  One relay process owns two TUN
devices, one created inside each lab namespace (`sdl-t0` in edge and in
cloud).  Every IP packet the edge sends leaves through its TUN device, is
read here, gets netem's semantics — Bernoulli loss, then a delay drawn
uniformly from [delay − jitter, delay + jitter] independently per packet
(so jitter reorders, as netem does), dropped if `limit_pkts` packets are
already in the delay line — and is written into the cloud's TUN device at
its due time.  Downlink is symmetric.  Rate stays in the kernel: a tbf at
the receiver (WireBackend), after the delay line as in the netem backend's
netem → tbf, so queueing and drops at the bottleneck are the kernel's own.

The relay is its own process (`python -m netns.wire …`) because the TUN
devices vanish when their file descriptors close: the relay owns their
lifecycle, and `lab link up` can leave a link up after the CLI exits.  A
unix datagram socket carries control messages (set a new LinkPair, read
stats, stop), each answered, each with a timeout on the client side.
"""
from __future__ import annotations

import argparse
import ctypes
import fcntl
import functools
import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

from netns.link import LinkError, LinkPair, LinkSpec
from netns.names import IFB_CLOUD, IFB_EDGE, TUN_IFNAME
from netns.paired import PacketKeyer, first_transmission, packet_draw

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
READ_BATCH = 512               # packets read per device per loop turn (fairness between directions)
MAX_PACKET = 65536
IDLE_WAKE_S = 0.2
CONTROL_TIMEOUT_S = 3.0
MAX_LOST_KEYS = 4000           # first transmissions of lost message segments remembered per direction
PR_SET_TIMERSLACK, PR_SET_PDEATHSIG = 29, 1


# ------------------------------------------------------------------ the delay line (pure)

@dataclass
class DirectionStats:
    received: int = 0          # packets read from the sender's TUN
    delivered: int = 0         # packets written to the receiver's TUN
    lost: int = 0              # Bernoulli loss
    limit_dropped: int = 0     # delay line full (netem `limit`)
    tx_dropped: int = 0        # receiver's TUN would block
    reordered: int = 0         # delivered after a packet that arrived later

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class DelayLine:
    """One direction: decides for each arriving packet whether and when it leaves.

    Pure and deterministic given the seed, so its statistics are unit-tested
    without a kernel.  Times are integer nanoseconds.
    """
    spec: LinkSpec
    rng: random.Random = field(default_factory=random.Random)
    in_flight: int = 0
    stats: DirectionStats = field(default_factory=DirectionStats)
    _last_seq_out: int = -1
    _seq: int = 0

    def admit(self, now_ns: int, draw=None) -> tuple[int, int] | None:
        """(due_ns, seq) for an arriving packet, or None if it is dropped.  `draw`: this packet's own
        uniform numbers, draw("loss") and draw("jitter") (paired draws, netns/paired.py); default
        the line's generator."""
        self.stats.received += 1
        spec = self.spec
        if spec.loss_pct and (draw("loss") if draw else self.rng.random()) * 100.0 < spec.loss_pct:
            self.stats.lost += 1
            return None
        if self.in_flight >= spec.effective_limit_pkts():
            self.stats.limit_dropped += 1
            return None
        delay_ms = spec.delay_ms
        if spec.jitter_ms:
            u = draw("jitter") if draw else self.rng.random()
            delay_ms += spec.jitter_ms * (2.0 * u - 1.0)
        self.in_flight += 1
        self._seq += 1
        return now_ns + int(max(0.0, delay_ms) * 1e6), self._seq

    def released(self, seq: int, written: bool) -> None:
        self.in_flight -= 1
        if not written:
            self.stats.tx_dropped += 1
            return
        self.stats.delivered += 1
        if seq < self._last_seq_out:
            self.stats.reordered += 1
        else:
            self._last_seq_out = seq


# ------------------------------------------------------------------ the relay process

def _libc():
    return ctypes.CDLL(None, use_errno=True)


CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/var/run/netns"


def _setns(fd: int) -> None:
    """setns(2) into the network namespace open at fd.  The syscall directly (what pyroute2's
    netns.setns calls too): importing pyroute2 costs the relay ~65 ms of start-up, most of `link up`."""
    if _libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_tun_in_namespace(ns: str, ifname: str = TUN_IFNAME) -> int:
    """Create a TUN device inside namespace `ns`; returns its non-blocking fd.

    TUNSETIFF creates the device in the caller's current namespace, so the
    process enters `ns` for the call and returns to where it was."""
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(os.path.join(NETNS_RUN_DIR, ns), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise LinkError(f"no network namespace {ns} ({e.strerror})") from None
        try:
            _setns(target)
        finally:
            os.close(target)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), IFF_TUN | IFF_NO_PI))
        except OSError as e:
            os.close(fd)
            raise LinkError(f"cannot create TUN device {ifname} in {ns}: {e.strerror}") from None
        return fd
    finally:
        _setns(home)
        os.close(home)


class Relay:
    """The loop: read both TUNs, schedule, write at due time, answer control messages."""

    def __init__(self, edge_fd: int, cloud_fd: int, link: LinkPair, control_path: str, seed: int | None):
        """With a seed, loss is paired (netns/paired.py): each packet's draw is keyed by the message
        it carries, so the simulator with the same seed loses the same messages' packets."""
        rng = random.Random(seed)
        self.paired_seed = seed
        self.keyer = PacketKeyer() if seed is not None else None
        self.lost_keys: dict[str, list] = {"up": [], "down": []}
        self.fds = {"up": (edge_fd, cloud_fd), "down": (cloud_fd, edge_fd)}
        self.lines = {"up": DelayLine(link.uplink, random.Random(rng.random())),
                      "down": DelayLine(link.downlink, random.Random(rng.random()))}
        self.link = link
        self.heap: list[tuple[int, int, str, bytes]] = []
        self.control_path = control_path
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if os.path.exists(control_path):
            os.unlink(control_path)
        self.ctl.bind(control_path)
        self.ctl.setblocking(False)
        self.running = True
        self.started = time.monotonic()

    def _read(self, direction: str, now_ns: int) -> None:
        src, _ = self.fds[direction]
        line = self.lines[direction]
        for _ in range(READ_BATCH):
            try:
                pkt = os.read(src, MAX_PACKET)
            except BlockingIOError:
                return
            draw = None
            if self.keyer is not None:
                key = self.keyer.key(direction, pkt)
                draw = functools.partial(packet_draw, self.paired_seed, direction, key)
                lost = line.stats.lost
            verdict = line.admit(now_ns, draw)
            if draw is not None and line.stats.lost > lost and len(self.lost_keys[direction]) < MAX_LOST_KEYS:
                first = first_transmission(key)
                if first is not None:
                    self.lost_keys[direction].append(first)
            if verdict is not None:
                due, seq = verdict
                heapq.heappush(self.heap, (due, seq, direction, pkt))

    def _release(self, now_ns: int) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now_ns:
            _, seq, direction, pkt = heapq.heappop(heap)
            try:
                os.write(self.fds[direction][1], pkt)
                ok = True
            except (BlockingIOError, OSError):
                ok = False
            self.lines[direction].released(seq, ok)

    def _control(self) -> None:
        while True:
            try:
                data, addr = self.ctl.recvfrom(65536)
            except BlockingIOError:
                return
            try:
                reply = self._handle(json.loads(data))
            except (ValueError, KeyError, TypeError, LinkError) as e:
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            if addr:
                try:
                    self.ctl.sendto(json.dumps(reply).encode(), addr)
                except OSError as e:
                    print(f"wire: cannot answer {addr}: {e}", file=sys.stderr)

    def _handle(self, msg: dict) -> dict:
        cmd = msg["cmd"]
        if cmd == "set":
            up, down = LinkSpec(**msg["uplink"]), LinkSpec(**msg["downlink"])
            self.lines["up"].spec, self.lines["down"].spec = up, down
            self.link = LinkPair(uplink=up, downlink=down)
            return {"ok": True}
        if cmd == "stats":
            return {"ok": True, "pid": os.getpid(), "link": self.link.to_dict(),
                    "in_flight": {d: l.in_flight for d, l in self.lines.items()},
                    "uplink": self.lines["up"].stats.to_dict(), "downlink": self.lines["down"].stats.to_dict(),
                    "uptime_s": round(time.monotonic() - self.started, 3),
                    **({"paired_loss": self._paired()} if self.keyer is not None else {})}
        if cmd == "stop":
            self.running = False
            return {"ok": True}
        raise KeyError(f"unknown command {cmd!r}")

    def _paired(self) -> dict:
        """Paired-loss bookkeeping: the ZMTP messages seen per direction (of the busiest connection) and
        the (message, bucket) of every first transmission lost."""
        flows = self.keyer.flows.values()
        busiest = max(flows, key=lambda f: len(f.stream["up"].starts) + len(f.stream["down"].starts), default=None)
        return {"seed": self.paired_seed,
                "messages": {d: len(busiest.stream[d].starts) if busiest else 0 for d in ("up", "down")},
                "lost_first_tx": self.lost_keys}

    def run(self) -> None:
        edge_fd, cloud_fd = self.fds["up"]
        rlist = [edge_fd, cloud_fd, self.ctl]
        while self.running:
            now = time.monotonic_ns()
            self._release(now)
            timeout = IDLE_WAKE_S if not self.heap else max(0.0, (self.heap[0][0] - now) / 1e9)
            try:
                ready, _, _ = select.select(rlist, [], [], min(timeout, IDLE_WAKE_S))
            except InterruptedError:
                continue
            now = time.monotonic_ns()
            if edge_fd in ready:
                self._read("up", now)
            if cloud_fd in ready:
                self._read("down", now)
            if self.ctl in ready:
                self._control()
        self.ctl.close()
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)


# ------------------------------------------------------------------ control client (root namespace)

def control(path: str, msg: dict, timeout_s: float = CONTROL_TIMEOUT_S) -> dict:
    """Send one control message to the relay at `path` and wait for its answer."""
    me = f"{path}.client-{os.getpid()}-{time.monotonic_ns()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.bind(me)
        s.settimeout(timeout_s)
        s.sendto(json.dumps(msg).encode(), path)
        reply = json.loads(s.recv(1 << 20))
    except FileNotFoundError:
        raise LinkError(f"the wire relay is not running (no control socket at {path})") from None
    except (socket.timeout, ConnectionRefusedError):
        raise LinkError(f"the wire relay did not answer within {timeout_s:g} s ({path})") from None
    finally:
        s.close()
        if os.path.exists(me):
            os.unlink(me)
    if not reply.get("ok"):
        raise LinkError(f"wire relay refused {msg.get('cmd')}: {reply.get('error')}")
    return reply


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netns.wire", description="userspace delay line between two TUNs")
    ap.add_argument("--edge-ns", required=True)
    ap.add_argument("--cloud-ns", required=True)
    ap.add_argument("--control", required=True, help="path of the control socket")
    ap.add_argument("--link", required=True, help="JSON of LinkPair.to_dict()")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--die-with-parent", action="store_true")
    a = ap.parse_args(argv)
    libc = _libc()
    libc.prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)   # 1 µs: due times are kept to the microsecond
    if a.die_with_parent:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    d = json.loads(a.link)
    link = LinkPair(uplink=LinkSpec(**d["uplink"]), downlink=LinkSpec(**d["downlink"]))
    try:
        edge_fd = open_tun_in_namespace(a.edge_ns)
        cloud_fd = open_tun_in_namespace(a.cloud_ns)
    except (LinkError, OSError) as e:
        print(json.dumps({"event": "error", "message": str(e)}), flush=True)
        return 1
    relay = Relay(edge_fd, cloud_fd, link, a.control, a.seed)

    def stop(signum, frame):
        relay.running = False
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"event": "ready", "pid": os.getpid(), "ifname": TUN_IFNAME}), flush=True)
    relay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------------ the backend (root namespace side)

PLACEMENT_ENV = "SDLAB_WIRE_PLACEMENT"   # for measuring the placements against each other
DEFAULT_PLACEMENT = "ifb"


def shaping_devices(topo_ns: tuple[str, str], placement: str) -> dict[str, tuple[str, str]]:
    """direction → (namespace, device) whose egress tbf shapes that direction's rate."""
    edge_ns, cloud_ns = topo_ns
    if placement == "egress":
        return {"uplink": (edge_ns, TUN_IFNAME), "downlink": (cloud_ns, TUN_IFNAME)}
    if placement == "ifb":
        return {"uplink": (cloud_ns, IFB_CLOUD), "downlink": (edge_ns, IFB_EDGE)}
    raise LinkError(f"unknown wire placement {placement!r} (choose ifb or egress)")


class WireBackend:
    """Backend protocol for the relay: delay/jitter/loss/limit in the relay, rate in tbf (netns/tbf.py).

    Where the tbf sits (`placement`, as in netns/netem.py):
    * "ifb" (default): at the receiver, after the delay line.  Each TUN's ingress is redirected to an
      IFB device in the same namespace (netem.ingress_redirect_ops) and the tbf shapes the IFB's
      egress: uplink in the cloud, downlink in the edge.  The bottleneck queue and its drops are the
      emulated link's, which the sender learns of only through ACKs, as on a real path.
    * "egress": the sender's own TUN.  The tbf is then a qdisc of the sending host: when it overflows,
      the sender's TCP sees the drop locally at once (a local congestion signal and an immediate
      retransmission), which no real link produces.
    Chosen by measurement: docs/MEASUREMENTS.md ("wire: where the rate is shaped").
    `SDLAB_WIRE_PLACEMENT=egress` selects the other one."""
    name = "wire"

    def __init__(self, topology, attached: bool = False, placement: str | None = None):
        self.topo = topology
        self.attached = attached
        self.placement = placement or os.environ.get(PLACEMENT_ENV) or DEFAULT_PLACEMENT
        shaping_devices(("", ""), self.placement)   # validates the name early

    def _devices(self) -> dict[str, tuple[str, str]]:
        return shaping_devices((self.topo.edge_ns, self.topo.cloud_ns), self.placement)

    def _shape(self, link: LinkPair) -> None:
        from netns.tbf import tbf_options

        for direction, (ns, dev) in self._devices().items():
            spec = getattr(link, direction)
            opts = tbf_options(spec, link.rtt_ms)
            ipr = self.topo.ipr(ns)
            idx = ipr.link_lookup(ifname=dev)[0]
            tbf = [q for q in ipr.get_qdiscs(index=idx) if q.get_attr("TCA_KIND") == "tbf"]
            if opts is None:
                for q in tbf:
                    ipr.tc("del", index=idx, handle=q["handle"], parent=q["parent"])
                continue
            ipr.tc("replace" if tbf else "add", "tbf", idx, **opts)

    def apply(self, link: LinkPair) -> None:
        from netns.netem import apply_ops, ingress_redirect_ops

        self.topo.start_relay(link, detach=getattr(self.topo, "detach", False),
                              seed=getattr(self.topo, "paired_seed", None))
        if self.placement == "ifb":
            # every packet the relay writes into a namespace's TUN goes on to that namespace's IFB
            apply_ops(self.topo.ipr, [op for ns, ifb in ((self.topo.cloud_ns, IFB_CLOUD), (self.topo.edge_ns, IFB_EDGE))
                                      for op in ingress_redirect_ops(ns, TUN_IFNAME, ifb)])
        self._shape(link)

    def change(self, link: LinkPair) -> None:
        control(str(self.topo.control_path), {"cmd": "set", **link.to_dict()})
        self._shape(link)

    def stats(self) -> dict:
        return control(str(self.topo.control_path), {"cmd": "stats"})

    def read_back(self) -> dict:
        from netns.tbf import read_tbf

        relay = self.stats()
        out: dict = {"qdiscs": [], "relay": relay, "placement": self.placement}
        for direction, (ns, dev) in self._devices().items():
            ipr = self.topo.ipr(ns)
            found = ipr.link_lookup(ifname=dev)
            if not found:
                raise LinkError(f"wire: shaping device {dev} is missing in {ns} (link not up?)")
            idx = found[0]
            tbf = read_tbf(ipr, idx)
            qd = [{"ns": ns, "dev": dev, "kind": q.get_attr("TCA_KIND"), "handle": q["handle"]}
                  for q in ipr.get_qdiscs(index=idx)]
            out["qdiscs"] += qd
            spec = dict(relay["link"][direction])
            spec["rate_mbit"] = round(tbf["rate_mbit"], 6) if tbf and "rate_mbit" in tbf else None
            spec["limit_pkts"] = LinkSpec(**relay["link"][direction]).effective_limit_pkts()
            out[direction] = spec
        return out

    def close(self) -> None:
        try:
            control(str(self.topo.control_path), {"cmd": "stop"}, timeout_s=1.0)
        except LinkError:
            pass   # already gone: the topology kills the process and removes the namespaces anyway
