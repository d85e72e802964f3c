"""Our own link probes, run as processes inside the lab's namespaces.

Why not ping/iperf: the lab must measure its link the same way on every host
(no extra tools), per direction, and with the numbers it needs (one-way delay,
per-direction loss, reordering, goodput after warm-up).  Each probe role is a
small program, `python -m netns.fidelity.probe <role> ...`, started inside a namespace
with `Topology.popen`; it prints ONE JSON object on stdout and exits.  Every
socket operation has a timeout and every role is bounded in packets and time.

  udp-reflect  (cloud)  echoes datagrams, stamping its receive and send times
  udp-echo     (edge)   sends N sequenced, timestamped datagrams at a fixed interval
  tcp-sink     (either) counts received payload bytes per 100 ms from the first byte,
                        closes (RST) after --duration-s, so every bin is a full one
  tcp-source   (either) streams until the sink closes or --max-s passes

All stamps are CLOCK_MONOTONIC nanoseconds: network namespaces share the
host's clock, so edge and cloud stamps are directly comparable and give
one-way delays.  The orchestrating functions (`run_udp_echo`, `run_goodput`)
run in the root namespace, start the pair, collect both JSON results and
hand the raw logs to the pure statistics in `netns/fidelity/probe_stats.py`.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import select
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from netns.link import LinkError
from netns.fidelity.probe_stats import EchoStats, Goodput, analyse_echo, delivered_mbit, steady_goodput, warmup_s

EDGE_ADDR_DEFAULT = "198.18.0.1"
CLOUD_ADDR_DEFAULT = "198.18.0.2"
UDP_PORT = 47001
TCP_PORT = 47002

# magic, kind (0 hello, 1 data, 2 bye), seq, t_send, t_reflector_rx, t_reflector_tx
HEADER = struct.Struct("!4sBIQQQ")
MAGIC = b"SDLP"
KIND_HELLO, KIND_DATA, KIND_BYE = 0, 1, 2
# struct tcp_info (linux/tcp.h) up to tcpi_delivered: 8 u8, 24 u32 (…total_retrans), then
# pacing_rate…bytes_received (4 u64), segs_out/in, notsent…data_segs_out (6 u32),
# delivery_rate, busy/rwnd/sndbuf_limited (4 u64), delivered, delivered_ce.
TCP_INFO_FMT = struct.Struct("8B24I4Q6I4Q2I")
# … then bytes_sent, bytes_retrans (2 u64), dsack_dups, reord_seen (Linux 4.19+): dsack_dups counts
# the retransmissions the receiver reported as duplicates (D-SACK), i.e. that repaired no loss.
TCP_INFO_DSACK_FMT = struct.Struct("8B24I4Q6I4Q2I2Q2I")
SAMPLE_EVERY_NS = 50_000_000
BIN_S = 0.1
CHUNK_BYTES = 64 * 1024

# popen(side, argv, **popen_kwargs) -> Popen: Topology.popen, or a test fixture's.
Spawn = Callable[..., subprocess.Popen]


def _now() -> int:
    return time.monotonic_ns()


def _tight_timers() -> None:
    """Timer slack 1 µs (default 50 µs): send intervals and stamps stay precise."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(29, 1000, 0, 0, 0)   # PR_SET_TIMERSLACK
    except (OSError, AttributeError) as e:
        print(f"probe: timer slack not set ({e}); stamps may be 50 µs coarser", file=sys.stderr)


def _sysctl(name: str) -> str | None:
    """A sysctl as this process's namespace sees it (for the record: buffers, congestion control)."""
    try:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


# ------------------------------------------------------------------ roles (run inside a namespace)

def role_udp_reflect(a) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((a.bind, a.port))
    deadline = _now() + int(a.max_s * 1e9)
    received: list[list[int]] = []
    started = False
    try:
        while True:
            left = (deadline - _now()) / 1e9
            if left <= 0:
                break
            sock.settimeout(min(left, a.idle_s) if started else left)
            try:
                data, peer = sock.recvfrom(65536)
            except socket.timeout:
                if started:
                    break          # idle after data: the client is done
                continue
            t_rx = _now()
            if len(data) < HEADER.size or data[:4] != MAGIC:
                continue           # not ours; the lab's link carries only lab traffic, so this is rare
            _, kind, seq, t_send, _, _ = HEADER.unpack_from(data)
            if kind == KIND_BYE:
                break              # the client has waited out its drain: nothing more is in flight up
            t_tx = _now()
            sock.sendto(HEADER.pack(MAGIC, kind, seq, t_send, t_rx, t_tx) + data[HEADER.size:], peer)
            if kind == KIND_DATA:
                started = True
                received.append([seq, t_rx, t_tx])
    finally:
        sock.close()
    return {"role": "udp-reflect", "received": received}


def role_udp_echo(a) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect((a.connect, a.port))
    sock.setblocking(False)
    pad = b"\0" * max(0, a.size_bytes - HEADER.size)
    replies: list[list[int]] = []
    sent: list[list[int]] = []
    errors = 0

    def drain() -> bool:
        """Read every datagram waiting; True if a hello reply was among them."""
        nonlocal errors
        hello = False
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                return hello
            except ConnectionRefusedError:   # ICMP port unreachable: reflector not bound yet
                errors += 1
                continue
            t_rx = _now()
            if len(data) < HEADER.size or data[:4] != MAGIC:
                continue
            _, kind, seq, t_send, t_rrx, t_rtx = HEADER.unpack_from(data)
            if kind == KIND_HELLO:
                hello = True
            else:
                replies.append([seq, t_send, t_rrx, t_rtx, t_rx])

    def send(kind: int, seq: int) -> int | None:
        nonlocal errors
        t = _now()
        try:
            sock.send(HEADER.pack(MAGIC, kind, seq, t, 0, 0) + pad)
        except (BlockingIOError, ConnectionRefusedError):
            errors += 1
            return None
        return t

    # Hello phase: wait for the reflector (and warm the neighbour cache) before counting anything.
    hello_deadline = _now() + int(a.hello_timeout_s * 1e9)
    while True:
        send(KIND_HELLO, 0)
        ready, _, _ = select.select([sock], [], [], 0.2)
        if ready and drain():
            break
        if _now() > hello_deadline:
            raise LinkError(f"udp-echo: no reply from {a.connect}:{a.port} within {a.hello_timeout_s:g} s "
                            f"(is the reflector running in the other namespace, is the link up?)")
    interval_ns = int(a.interval_ms * 1e6)
    t0 = _now()
    seq = 0
    drain_deadline = None
    while True:
        now = _now()
        if seq < a.count:
            due = t0 + seq * interval_ns
            if now >= due:
                t = send(KIND_DATA, seq)
                if t is not None:
                    sent.append([seq, t])
                seq += 1
                if seq == a.count:
                    drain_deadline = _now() + int(a.drain_s * 1e9)
                continue
            wait = (due - now) / 1e9
        else:
            if now >= drain_deadline or len(replies) >= len(sent):
                break
            wait = (drain_deadline - now) / 1e9
        ready, _, _ = select.select([sock], [], [], wait)
        if ready:
            drain()
    drain()
    for _ in range(5):             # several, since the link may lose some; the reflector also stops when idle
        send(KIND_BYE, 0)
    sock.close()
    return {"role": "udp-echo", "sent": sent, "replies": replies, "send_errors": errors}


def _tcp_info(s: socket.socket) -> dict:
    raw = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_DSACK_FMT.size)
    if len(raw) < TCP_INFO_FMT.size:
        raise LinkError(f"tcp_info is {len(raw)} bytes, need {TCP_INFO_FMT.size} (kernel older than 4.18?)")
    u = TCP_INFO_FMT.unpack(raw[:TCP_INFO_FMT.size])[8:]
    dsack = TCP_INFO_DSACK_FMT.unpack(raw)[-2] if len(raw) >= TCP_INFO_DSACK_FMT.size else None
    # delivered: segments the peer has acknowledged or SACKed — what crossed the bottleneck,
    # unlike the receiver's in-order byte count, which a loss holds back until the repair.
    return {"snd_mss": u[2], "rtt_us": u[15], "snd_cwnd": u[18], "total_retrans": u[23], "delivered": u[-2],
            "dsack_dups": dsack}


def _cc(s: socket.socket) -> str:
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).split(b"\0")[0].decode()


def role_tcp_sink(a) -> dict:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((a.bind, a.port))
    lsock.listen(1)
    lsock.settimeout(a.accept_timeout_s)
    try:
        conn, _ = lsock.accept()
    except socket.timeout:
        raise LinkError(f"tcp-sink: nobody connected within {a.accept_timeout_s:g} s") from None
    finally:
        lsock.close()
    n_bins = round(a.duration_s / a.interval_s)
    bins = [0] * n_bins
    interval_ns = int(a.interval_s * 1e9)
    buf = bytearray(1 << 18)
    first = end = None
    eof = False
    mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
    try:
        while True:
            now = _now()
            left = a.stall_s if end is None else (end - now) / 1e9
            if left <= 0:
                break
            conn.settimeout(min(left, a.stall_s))
            try:
                n = conn.recv_into(buf)
            except socket.timeout:
                if end is not None and _now() >= end:
                    break
                raise LinkError(f"tcp-sink: no data for {a.stall_s:g} s (link down or sender stuck)") from None
            t = _now()
            if n == 0:
                eof = True
                break
            if first is None:
                first, end = t, t + n_bins * interval_ns
            if t >= end:
                break
            bins[min((t - first) // interval_ns, n_bins - 1)] += n
        mss = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG)
        rcvbuf = conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    finally:
        # Abortive close: the sender's queued bytes are not drained over a slow link (RST, not FIN).
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    return {"role": "tcp-sink", "interval_s": a.interval_s, "bins_bytes": bins, "eof_early": eof,
            "mss": mss, "rcvbuf": rcvbuf, "tcp_rmem": _sysctl("net.ipv4.tcp_rmem")}


def role_tcp_source(a) -> dict:
    deadline = _now() + int(a.max_s * 1e9)
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if a.cc:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, a.cc.encode())
        s.settimeout(a.connect_timeout_s)
        try:
            s.connect((a.connect, a.port))
            break
        except ConnectionRefusedError:   # sink not listening yet
            s.close()
            if _now() > deadline:
                raise LinkError(f"tcp-source: {a.connect}:{a.port} refused until --max-s") from None
            time.sleep(0.05)
        except socket.timeout:
            s.close()
            raise LinkError(f"tcp-source: connect to {a.connect}:{a.port} timed out "
                            f"after {a.connect_timeout_s:g} s") from None
    payload = memoryview(b"\x5a" * CHUNK_BYTES)
    s.settimeout(a.stall_s)
    sent = 0
    peer_closed = False
    info = _tcp_info(s)
    samples = [[_now(), info["delivered"]]]      # [t, delivered segments]
    try:
        while _now() < deadline:
            try:
                sent += s.send(payload)
            except (ConnectionResetError, BrokenPipeError):
                peer_closed = True
                break
            except socket.timeout:
                raise LinkError(f"tcp-source: could not send for {a.stall_s:g} s") from None
            info = _tcp_info(s)
            t = _now()
            if t - samples[-1][0] >= SAMPLE_EVERY_NS:
                samples.append([t, info["delivered"]])
        cc = _cc(s)
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    return {"role": "tcp-source", "bytes_sent": sent, "peer_closed": peer_closed, "cc": cc,
            "tcp_wmem": _sysctl("net.ipv4.tcp_wmem"), "delivered_samples": samples, **info}


ROLES = {"udp-reflect": role_udp_reflect, "udp-echo": role_udp_echo,
         "tcp-sink": role_tcp_sink, "tcp-source": role_tcp_source}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m netns.fidelity.probe", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    p = sub.add_parser("udp-reflect")
    p.add_argument("--bind", default=CLOUD_ADDR_DEFAULT)
    p.add_argument("--port", type=int, default=UDP_PORT)
    p.add_argument("--max-s", type=float, default=60.0)
    p.add_argument("--idle-s", type=float, default=2.0)
    p = sub.add_parser("udp-echo")
    p.add_argument("--connect", default=CLOUD_ADDR_DEFAULT)
    p.add_argument("--port", type=int, default=UDP_PORT)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--interval-ms", type=float, default=5.0)
    p.add_argument("--size-bytes", type=int, default=64)
    p.add_argument("--drain-s", type=float, default=2.0)
    p.add_argument("--hello-timeout-s", type=float, default=10.0)
    p = sub.add_parser("tcp-sink")
    p.add_argument("--bind", default=CLOUD_ADDR_DEFAULT)
    p.add_argument("--port", type=int, default=TCP_PORT)
    p.add_argument("--duration-s", type=float, default=6.0)
    p.add_argument("--interval-s", type=float, default=BIN_S)
    p.add_argument("--accept-timeout-s", type=float, default=15.0)
    p.add_argument("--stall-s", type=float, default=10.0)
    p = sub.add_parser("tcp-source")
    p.add_argument("--connect", default=CLOUD_ADDR_DEFAULT)
    p.add_argument("--port", type=int, default=TCP_PORT)
    p.add_argument("--max-s", type=float, default=30.0)
    p.add_argument("--connect-timeout-s", type=float, default=10.0)
    p.add_argument("--stall-s", type=float, default=10.0)
    p.add_argument("--cc", default=None, help="TCP_CONGESTION for this socket (default: the namespace's)")
    return ap


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    _tight_timers()
    try:
        result = ROLES[a.role](a)
    except (LinkError, OSError) as e:
        print(f"probe {a.role}: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    return 0


# ------------------------------------------------------------------ orchestration (root namespace)

def _argv(role: str, **opts) -> list[str]:
    argv = [sys.executable, "-m", "netns.fidelity.probe", role]
    for k, v in opts.items():
        if v is not None:
            argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def _stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            print(f"probe: pid {p.pid} did not die within 5 s of SIGKILL", file=sys.stderr)


def _collect(p: subprocess.Popen, role: str, deadline: float) -> dict:
    try:
        out, err = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        _stop(p)
        raise LinkError(f"probe {role} did not finish in time; killed") from None
    if p.returncode != 0:
        raise LinkError(f"probe {role} failed (exit {p.returncode}): {err.strip()[-400:] or 'no message'}")
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise LinkError(f"probe {role} printed no JSON result: {out[-200:]!r} {err[-200:]!r}") from None


def _run_pair(spawn: Spawn, server: tuple[str, list[str]], client: tuple[str, list[str]],
              timeout_s: float) -> tuple[dict, dict]:
    """Start server then client in their namespaces; both results, or LinkError. Kills both on every path."""
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs: list[subprocess.Popen] = []
    deadline = time.monotonic() + timeout_s
    try:
        procs.append(spawn(server[0], server[1], **kw))
        procs.append(spawn(client[0], client[1], **kw))
        c = _collect(procs[1], client[1][3], deadline)
        s = _collect(procs[0], server[1][3], deadline)
        return s, c
    finally:
        for p in procs:
            _stop(p)


def run_udp_echo(spawn: Spawn, *, count: int = 500, interval_ms: float = 5.0, rtt_ms: float = 0.0,
                 spread_ms: float = 0.0, size_bytes: int = 64, edge_addr: str = EDGE_ADDR_DEFAULT,
                 cloud_addr: str = CLOUD_ADDR_DEFAULT, port: int = UDP_PORT) -> EchoStats:
    """UDP echo from edge to a reflector in cloud; per-direction delay, loss, reordering.

    rtt_ms/spread_ms (the configured RTT and the largest jitter swing) only
    size the waits: how long to wait for late replies and when the reflector
    may call the run over."""
    late_s = (rtt_ms + 2 * spread_ms) / 1000
    drain_s = 0.5 + 1.5 * late_s
    idle_s = 1.0 + late_s + 20 * interval_ms / 1000
    hello_s = 5.0 + 3 * late_s
    run_s = count * interval_ms / 1000
    max_s = hello_s + run_s + drain_s + idle_s + 5
    server = ("cloud", _argv("udp-reflect", bind=cloud_addr, port=port, max_s=f"{max_s:.3f}",
                             idle_s=f"{idle_s:.3f}"))
    client = ("edge", _argv("udp-echo", connect=cloud_addr, port=port, count=count, interval_ms=interval_ms,
                            size_bytes=size_bytes, drain_s=f"{drain_s:.3f}", hello_timeout_s=f"{hello_s:.3f}"))
    refl, echo = _run_pair(spawn, server, client, timeout_s=max_s + 10)
    return analyse_echo(echo["sent"], refl["received"], echo["replies"])


@dataclass(frozen=True)
class GoodputRun:
    direction: str        # "uplink" (edge → cloud) or "downlink"
    goodput: Goodput
    delivered_mbit: float | None   # sender's view (acked + SACKed segments) over the same warm-up skip
    mss_bytes: int
    retransmits: int      # segments the sender retransmitted (tcp_info.tcpi_total_retrans)
    cc: str               # congestion control the sender used
    srtt_ms: float        # sender's smoothed RTT at the end (includes queueing in tbf)
    bins_bytes: tuple[int, ...]
    sysctls: dict
    spurious: int | None = None   # retransmits the receiver had already (tcpi_dsack_dups; None: kernel < 4.19)

    def to_dict(self) -> dict:
        g = self.goodput
        return {"direction": self.direction, "goodput_mbit": g.mbit, "delivered_mbit": self.delivered_mbit, "window_s": g.window_s,
                "skipped_s": g.skipped_s, "warmup_mbit": g.first_mbit, "mss_bytes": self.mss_bytes,
                "retransmits": self.retransmits, "spurious": self.spurious, "cc": self.cc, "srtt_ms": self.srtt_ms, **self.sysctls}


def run_goodput(spawn: Spawn, *, direction: str = "uplink", measure_s: float = 4.0, rtt_ms: float = 0.0,
                cc: str | None = None, edge_addr: str = EDGE_ADDR_DEFAULT,
                cloud_addr: str = CLOUD_ADDR_DEFAULT, port: int = TCP_PORT,
                skip_s: float | None = None) -> GoodputRun:
    """Bulk TCP in one direction; goodput over `measure_s` seconds after a warm-up
    (slow start / BBR startup; default max(1 s, 10 RTTs), or `skip_s`), counted at the receiver."""
    if direction not in ("uplink", "downlink"):
        raise LinkError(f"direction must be 'uplink' or 'downlink', got {direction!r}")
    if skip_s is None:
        skip_s = warmup_s(rtt_ms)
    elif skip_s < 0:
        raise LinkError(f"skip_s must be >= 0, got {skip_s}")
    duration_s = math.ceil((skip_s + measure_s) / BIN_S) * BIN_S
    rx_side, tx_side, rx_addr = (("cloud", "edge", cloud_addr) if direction == "uplink"
                                 else ("edge", "cloud", edge_addr))
    stall_s = 10.0 + 3 * rtt_ms / 1000
    max_s = duration_s + 15 + 5 * rtt_ms / 1000
    server = (rx_side, _argv("tcp-sink", bind=rx_addr, port=port, duration_s=f"{duration_s:.1f}",
                             interval_s=BIN_S, stall_s=stall_s))
    client = (tx_side, _argv("tcp-source", connect=rx_addr, port=port, max_s=f"{max_s:.1f}", cc=cc,
                             stall_s=stall_s))
    sink, source = _run_pair(spawn, server, client, timeout_s=max_s + 20)
    if sink["eof_early"]:
        raise LinkError(f"{direction} bulk transfer ended before {duration_s:g} s (sender closed early)")
    g = steady_goodput(sink["bins_bytes"], sink["interval_s"], skip_s)
    dlv = delivered_mbit(source["delivered_samples"], sink["mss"], skip_s)
    return GoodputRun(direction=direction, goodput=g, delivered_mbit=dlv, mss_bytes=sink["mss"], retransmits=source["total_retrans"],
                      spurious=source.get("dsack_dups"), cc=source["cc"], srtt_ms=source["rtt_us"] / 1000, bins_bytes=tuple(sink["bins_bytes"]),
                      sysctls={"tcp_rmem": sink["tcp_rmem"], "tcp_wmem": source["tcp_wmem"]})


if __name__ == "__main__":
    sys.exit(main())
