"""Which link backend to use, and building it.

`auto` probes the kernel once per process (a netem qdisc in a scratch
namespace, netns/capabilities.py) and picks netem when it exists, wire
otherwise.  Asking for netem on a kernel without it is a one-line error.
"""
from __future__ import annotations

from functools import lru_cache

from netns.capabilities import netem_in, probe_kernel
from netns.link import LinkError
from netns.netem import NetemBackend
from netns.wire import WireBackend

BACKEND_NAMES = ("netem", "wire")


@lru_cache(maxsize=1)
def netem_available() -> bool:
    return netem_in(probe_kernel())


def choose_backend(requested: str) -> str:
    if requested == "auto":
        return "netem" if netem_available() else "wire"
    if requested not in BACKEND_NAMES:
        raise LinkError(f"unknown backend {requested!r} (choose auto, netem or wire)")
    if requested == "netem" and not netem_available():
        raise LinkError("this kernel has no sch_netem (adding a netem qdisc fails); use --backend wire, "
                        "or run the netem path in the VM: sudo make vm-test (or the Vagrantfile, see README)")
    return requested


def make_backend(name: str, topology, attached: bool = False):
    if name == "wire":
        return WireBackend(topology, attached=attached)
    if name == "netem":
        return NetemBackend(topology)
    raise LinkError(f"unknown backend {name!r}")
