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


def qdisc_stats(ipr) -> list[dict]:
    """Per device and qdisc: kind, bytes/packets sent, drops, overlimits, backlog (a pyroute2 handle)."""
    names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
    out = []
    for q in ipr.get_qdiscs():
        st = q.get_attr("TCA_STATS") or {}
        out.append({"dev": names.get(q["index"], q["index"]), "kind": q.get_attr("TCA_KIND"),
                    "handle": q["handle"], "bytes": st.get("bytes", 0), "packets": st.get("packets", 0),
                    "drops": st.get("drop", 0), "overlimits": st.get("overlimits", 0),
                    "backlog": st.get("backlog", 0), "qlen": st.get("qlen", 0)})
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


TIMER_LIST = "/proc/timer_list"
JIFFY_GRID = 512        # jiffies: the period of the timer wheel's first three levels' boundaries (8, 64, 512)
CONFIG_PATHS = ("/proc/config.gz", "/boot/config-{release}")
HZ_CHOICES = (100, 250, 300, 1000)    # the values Kconfig offers (kernel/Kconfig.hz)
HZ_SAMPLE_S = 0.2                     # jiffies counted over this long when no kernel config is readable


def hz_from_config(text: str) -> int | None:
    """CONFIG_HZ from a kernel config's text, or None if it has none."""
    for line in text.splitlines():
        if line.startswith("CONFIG_HZ="):
            return int(line.split("=", 1)[1])
    return None


def _timer_list_sample(text: str) -> tuple[int, int] | None:
    """(`now at` ns, `jiffies`) from /proc/timer_list's text, or None."""
    now = jiffies = None
    for line in text.splitlines():
        if now is None and line.startswith("now at "):
            now = int(line.split()[2])
        elif jiffies is None and line.startswith("jiffies:"):
            jiffies = int(line.split()[1])
        if now is not None and jiffies is not None:
            return now, jiffies
    return None


def hz_from_timer_lists(first: str, second: str) -> int | None:
    """HZ from two /proc/timer_list readings: jiffies elapsed over the monotonic time elapsed, snapped
    to the nearest Kconfig choice (jiffies may lag a tick or two on an idle tickless CPU)."""
    a, b = _timer_list_sample(first), _timer_list_sample(second)
    if a is None or b is None or b[0] <= a[0] or b[1] <= a[1]:
        return None
    rate = (b[1] - a[1]) / ((b[0] - a[0]) / 1e9)
    best = min(HZ_CHOICES, key=lambda hz: abs(rate - hz))
    return best if abs(rate - best) <= 0.1 * best else None


def kernel_hz(config_paths: tuple[str, ...] = CONFIG_PATHS, timer_list: str = TIMER_LIST,
              sample_s: float = HZ_SAMPLE_S) -> tuple[int | None, str]:
    """The running kernel's HZ (the jiffy rate the TCP timers tick at) and where it was read:
    CONFIG_HZ from the kernel's config, else jiffies counted in /proc/timer_list over `sample_s`;
    (None, reason) if neither is readable."""
    import gzip
    import platform
    import time

    for pattern in config_paths:
        path = pattern.format(release=platform.release())
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                hz = hz_from_config(f.read())
        except OSError:
            continue
        if hz:
            return hz, path
    texts = []
    for i in range(2):
        if i:
            time.sleep(sample_s)
        try:
            with open(timer_list) as f:
                texts.append(f.read())
        except OSError as e:
            return None, f"no kernel config and {timer_list} unreadable ({e.strerror})"
    hz = hz_from_timer_lists(*texts)
    return (hz, f"{timer_list} (jiffies over {sample_s:g} s)") if hz else (None, f"{timer_list} gave no HZ")


def jiffy_grid_ms(hz: int, path: str = TIMER_LIST) -> float | None:
    """A CLOCK_MONOTONIC time (ms) at which jiffies was a multiple of JIFFY_GRID, or None if unreadable.

    `hz`: the kernel's (kernel_hz).  The kernel's timer wheel fires a timer of ≥ 63 jiffies on a
    boundary of 8 jiffies (32 ms at HZ=250), of ≥ 504 jiffies on one of 64, counted in absolute jiffies; jiffies tick at CLOCK_MONOTONIC multiples
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
        sample = _timer_list_sample(text)
        if sample is None:
            return None
        now, jiffies = sample
        grid.append(((now // tick_ns) * tick_ns - (jiffies % JIFFY_GRID) * tick_ns) % period)
    if abs(grid[0] - grid[1]) > tick_ns // 2:
        return None
    return grid[1] / 1e6
