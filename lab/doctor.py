"""`python -m lab doctor`: can this machine run the lab, with which backend, and what to do if not."""
from __future__ import annotations

import importlib
import os
import platform

from netns.capabilities import host_tools, netem_in, probe_kernel

PY_DEPS = ("pyroute2", "zmq", "yaml", "numpy", "pandas", "matplotlib", "torch", "transformers", "gguf")

ADVICE = {
    "root": "run the lab as root: sudo make scenario NAME=lossy-5pct",
    "tun": "load the tun module (modprobe tun) — the wire backend needs /dev/net/tun",
    "namespaces": "this kernel or container forbids network namespaces; use the Vagrant VM (see README)",
    "veth": "this kernel has no veth; use the Vagrant VM (see README)",
    "sch_netem": ("this kernel has no sch_netem: the lab uses the userspace `wire` backend "
                  "(same semantics); to check the kernel netem path run `sudo make vm-test`, "
                  "or use the Vagrant VM (see README)"),
    "sch_tbf": "this kernel has no sch_tbf, which both backends need for rate limits; use the Vagrant VM",
    "sch_ingress": "no ingress qdisc: only sender-side netem placement is possible",
    "ifb": "no ifb: only sender-side netem placement is possible",
    "ip": "apt-get install iproute2 (the tests use it as an independent cross-check)",
    "tc": "apt-get install iproute2 (the tests use it as an independent cross-check)",
}


def run_doctor(out=print) -> int:
    out(f"host: {platform.node()}  kernel {platform.release()}  python {platform.python_version()}  "
        f"cpus {os.cpu_count()}")
    caps = probe_kernel() + host_tools()
    width = max(len(c.name) for c in caps)
    problems = 0
    for c in caps:
        mark = "ok " if c.ok else "NO "
        out(f"  {mark} {c.name:<{width}}  {c.detail:<45}  ({c.needed_for})")
        if not c.ok:
            problems += 1
    missing = []
    for mod in PY_DEPS:
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(mod)
    out(f"  {'ok ' if not missing else 'NO '} {'python deps':<{width}}  "
        + ("all importable" if not missing else f"missing: {', '.join(missing)} (run: make setup)"))
    root_ok = all(c.ok for c in caps if c.name in ("root", "namespaces", "veth", "sch_tbf"))
    if not root_ok:
        chosen = "none: the lab cannot run here"
    elif netem_in(caps):
        chosen = "netem (kernel netem + tbf)"
    elif any(c.name == "tun" and c.ok for c in caps):
        chosen = "wire (userspace delay line over TUN, rate in kernel tbf)"
    else:
        chosen = "none: no sch_netem and no /dev/net/tun"
    out(f"backend `auto` picks: {chosen}")
    if "torch" not in missing:
        from lab.models.cpu import dtype_report
        for line in dtype_report():
            out(line)
    for c in caps:
        if not c.ok and c.name in ADVICE:
            out(f"  -> {ADVICE[c.name]}")
    if missing:
        out("  -> run `make setup` (creates .venv with pinned dependencies)")
    return 0 if root_ok and chosen[:4] != "none" and not missing else 1
