"""Kernel counters per namespace: TCP recovery work and qdisc statistics, as before/after deltas.

The TCP counters are the kernel's own (`/proc/net/snmp` Tcp, `/proc/net/netstat`
TcpExt) as seen from inside a namespace: the same numbers `nstat` prints.
They show that loss on the link became real retransmissions (RetransSegs,
TCPLossProbes, TCPTimeouts …), which is the communication tax.
"""
from __future__ import annotations

from netns.link import LinkError
from netns.nsexec import in_namespace

TCP_KEYS = ("RetransSegs", "InSegs", "OutSegs", "ActiveOpens", "PassiveOpens", "EstabResets", "InErrs",
            "TCPLossProbes", "TCPLossProbeRecovery", "TCPTimeouts", "TCPFastRetrans", "TCPSlowStartRetrans",
            "TCPSackRecovery", "TCPRenoRecovery", "TCPDSACKRecv", "TCPSpuriousRTOs", "TCPOFOQueue",
            "DelayedACKs", "TCPRcvQDrop", "TCPBacklogDrop")


def _parse_pairs(text: str, section: str) -> dict[str, int]:
    """/proc/net/snmp and netstat: a header line and a value line per section."""
    lines = [ln.split() for ln in text.splitlines() if ln.startswith(section + ":")]
    out: dict[str, int] = {}
    for head, vals in zip(lines[0::2], lines[1::2]):
        for k, v in zip(head[1:], vals[1:]):
            try:
                out[k] = int(v)
            except ValueError:
                continue
    return out


def parse_tcp_counters(snmp: str, netstat: str) -> dict[str, int]:
    both = {**_parse_pairs(snmp, "Tcp"), **_parse_pairs(netstat, "TcpExt")}
    return {k: both.get(k, 0) for k in TCP_KEYS}


def _read_proc_net() -> list[str]:
    with open("/proc/self/net/snmp") as f, open("/proc/self/net/netstat") as g:
        return [f.read(), g.read()]


def tcp_counters(ns: str) -> dict[str, int]:
    """The namespace's TCP counters, as a process inside it sees them."""
    try:
        snmp, netstat = in_namespace(ns, _read_proc_net)
    except OSError as e:
        raise LinkError(f"cannot read TCP counters in namespace {ns} (does it exist?): {e}") from None
    return parse_tcp_counters(snmp, netstat)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


TIMER_LIST = "/proc/timer_list"
JIFFY_GRID = 512        # jiffies: the period of the timer wheel's first three levels' boundaries (8, 64, 512)


def jiffy_grid_ms(hz: int, path: str = TIMER_LIST) -> float | None:
    """A CLOCK_MONOTONIC time (ms) at which jiffies was a multiple of JIFFY_GRID, or None if unreadable.

    The kernel's timer wheel fires a timer of ≥ 63 jiffies on a boundary of 8 jiffies (32 ms at HZ=250),
    of ≥ 504 jiffies on one of 64, counted in absolute jiffies; jiffies tick at CLOCK_MONOTONIC multiples
    of the tick (tick_init_jiffy_update).  /proc/timer_list prints `now at <ns>` and `jiffies: <n>`;
    read twice, and kept only if both reads agree (jiffies can lag on an idle machine)."""
    tick_ns = 1_000_000_000 // hz
    period = JIFFY_GRID * tick_ns
    grid = []
    for _ in range(2):
        try:
            with open(path) as f:
                text = f.read()
        except OSError:
            return None
        now = jiffies = None
        for line in text.splitlines():
            if now is None and line.startswith("now at "):
                now = int(line.split()[2])
            elif jiffies is None and line.startswith("jiffies:"):
                jiffies = int(line.split()[1])
            if now is not None and jiffies is not None:
                break
        if now is None or jiffies is None:
            return None
        grid.append(((now // tick_ns) * tick_ns - (jiffies % JIFFY_GRID) * tick_ns) % period)
    if abs(grid[0] - grid[1]) > tick_ns // 2:
        return None
    return grid[1] / 1e6
