"""What this kernel and host can do for the lab, found by trying it.

Every probe acts in a scratch namespace `sdl-probe-<pid>` that is removed
before the function returns, so probing never disturbs a running lab.
`lab doctor` prints the result; `backends.choose_backend("auto")` uses the
netem answer.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from pyroute2 import NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

PROBE_PREFIX = "sdl-probe-"


@dataclass(frozen=True)
class Capability:
    name: str
    ok: bool
    detail: str
    needed_for: str


def _qdisc_probe(ns: NetNS, idx: int, kind: str, **options) -> tuple[bool, str]:
    try:
        ns.tc("add", kind, idx, **options)
    except NetlinkError as e:
        return False, f"kernel refused ({os.strerror(e.code)})"
    # Left in place: the scratch namespace and its devices are removed right after.
    return True, "available"


def probe_kernel() -> list[Capability]:
    """Try each kernel feature the lab relies on; needs root."""
    caps: list[Capability] = []
    if os.geteuid() != 0:
        return [Capability("root", False, "not running as root", "everything that touches the network")]
    caps.append(Capability("root", True, "running as root", "namespaces, qdiscs"))
    tun = os.path.exists("/dev/net/tun")
    caps.append(Capability("tun", tun, "/dev/net/tun present" if tun else "/dev/net/tun missing (modprobe tun)",
                           "the wire backend"))
    name = f"{PROBE_PREFIX}{os.getpid()}"
    try:
        netns.create(name)
    except OSError as e:
        caps.append(Capability("namespaces", False, f"cannot create a network namespace ({e})", "everything"))
        return caps
    try:
        caps.append(Capability("namespaces", True, "network namespaces work", "everything"))
        ns = NetNS(name)
        try:
            try:
                ns.link("add", ifname="sdl-v0", kind="veth", peer="sdl-v1")
            except NetlinkError as e:
                caps.append(Capability("veth", False, f"cannot create veth ({os.strerror(e.code)})", "the link"))
                return caps
            caps.append(Capability("veth", True, "veth pairs work", "the netem backend's link"))
            idx = ns.link_lookup(ifname="sdl-v0")[0]
            ns.link("set", index=idx, state="up")
            # netem first and on its own: if it is refused, the root slot is still free for tbf.
            for kind, opts, why in (
                ("netem", {"delay": 1000}, "the netem backend (delay, jitter, loss)"),
                ("tbf", {"rate": "10mbit", "burst": 15000, "latency": "50ms"}, "rate limiting (both backends)"),
                ("ingress", {}, "receiver-side shaping (both backends)"),
            ):
                ok, detail = _qdisc_probe(ns, idx, kind, **opts)
                caps.append(Capability(f"sch_{kind}", ok, detail, why))
            try:
                ns.link("add", ifname="sdl-i0", kind="ifb")
                caps.append(Capability("ifb", True, "ifb devices work", "receiver-side shaping (both backends)"))
            except NetlinkError as e:
                caps.append(Capability("ifb", False, f"cannot create ifb ({os.strerror(e.code)})",
                                       "receiver-side shaping (both backends)"))
        finally:
            ns.close()
    finally:
        netns.remove(name)
    return caps


def host_tools() -> list[Capability]:
    """Userland the tests use as an independent cross-check (the product itself does not shell out)."""
    out = []
    for tool, why in (("ip", "tests cross-check links with `ip`"), ("tc", "tests cross-check qdiscs with `tc`")):
        path = shutil.which(tool)
        out.append(Capability(tool, bool(path), path or "not found (apt-get install iproute2)", why))
    return out


def netem_in(caps: list[Capability]) -> bool:
    return any(c.name == "sch_netem" and c.ok for c in caps)
