"""The lab's two hosts: namespaces `sdl-edge` and `sdl-cloud` and the path between them.

    sdl-edge  198.18.0.1/30  ──link──  198.18.0.2/30  sdl-cloud

The path depends on the backend: a veth pair `sdl-e0` ↔ `sdl-c0` shaped by
netem + tbf (kernel), or two TUN devices `sdl-t0` joined by the userspace
relay of netns/wire.py, shaped by tbf (wire).  Either way the applications
see the same two addresses.  The veth is created *inside* the namespaces, so
no `sdl-` device ever sits in the root namespace.

Ownership and cleanup: `up()` records its owner in /run/sdlab/<prefix>owner.json.
A run begins by removing its own prefix's leftovers, and any other `sdl-`
namespace whose recorded owner is dead (or has no record: a crashed run
that never wrote one).  Nothing without the `sdl-` prefix is ever touched.
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pyroute2 import NetNS, netns

from netns.backends import choose_backend, make_backend
from netns.link import LinkError, LinkPair, LinkSpec
from netns.names import (CLOUD_ADDR, EDGE_ADDR, LAB_PREFIX, PREFIX_LEN, RUN_DIR, TUN_IFNAME,  # noqa: F401
                         VETH_CLOUD, VETH_EDGE)
from netns.nsexec import in_namespace

RELAY_READY_TIMEOUT_S = 10.0
PR_SET_PDEATHSIG = 1
# Socket buffers big enough for the largest BDP in the grid (500 ms × 100 Mbit/s ≈ 6 MB, ×2 for cwnd growth).
TCP_MEM = "4096 131072 33554432"


class TopologyError(LinkError):
    """The namespaces or devices could not be created or removed."""


def _write_file(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _write_sysctl_in(ns: str, name: str, value: str) -> None:
    """Write a sysctl as seen from inside `ns`."""
    try:
        in_namespace(ns, _write_file, "/proc/sys/" + name.replace(".", "/"), value)
    except PermissionError:
        raise
    except OSError as e:
        raise TopologyError(f"cannot set {name}={value} in {ns}: {e.strerror}") from None


def _read_sysctl(name: str) -> str:
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        return f.read().strip()


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_file(prefix: str) -> Path:
    return RUN_DIR / f"{prefix}owner.json"


def _read_owner(prefix: str) -> dict | None:
    try:
        return json.loads(_owner_file(prefix).read_text())
    except (OSError, ValueError):
        return None


def _kill_relay(owner: dict | None) -> None:
    pid = (owner or {}).get("relay_pid")
    if not _pid_alive(pid):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"netns.wire" not in cmdline:      # the pid was reused by something else: leave it alone
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not _pid_alive(pid):
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)


def _remove_instance(prefix: str) -> list[str]:
    removed = []
    owner = _read_owner(prefix)
    _kill_relay(owner)
    present = set(netns.listnetns())
    for side in ("edge", "cloud"):
        name = f"{prefix}{side}"
        if name in present:
            netns.remove(name)
            removed.append(name)
    for p in (_owner_file(prefix), RUN_DIR / f"{prefix}wire.sock"):
        if p.exists():
            p.unlink()
    return removed


def _prefix_of(ns_name: str) -> str | None:
    for side in ("edge", "cloud"):
        if ns_name.endswith(side):
            return ns_name[: -len(side)]
    return None


def cleanup_stale(prefix: str = LAB_PREFIX, force: bool = False) -> list[str]:
    """Remove leftovers of crashed runs; returns the namespaces removed.

    Always removes this prefix's own instance (a new run, or `link down`,
    takes its names over; `force` is accepted for readability at call sites).
    Removes any other `sdl-` instance whose recorded owner is dead or that
    has no record.  A live instance of another prefix is left alone."""
    if not prefix.startswith(LAB_PREFIX):
        raise TopologyError(f"prefix must start with {LAB_PREFIX!r}, got {prefix!r}")
    removed: list[str] = []
    names = netns.listnetns()
    prefixes = {_prefix_of(n) for n in names if n.startswith(LAB_PREFIX) and _prefix_of(n)}
    if RUN_DIR.exists():
        prefixes |= {f.name[: -len("owner.json")] for f in RUN_DIR.glob(f"{LAB_PREFIX}*owner.json")}
    for p in sorted(prefixes):
        owner = _read_owner(p)
        alive = owner is not None and (
            _pid_alive(owner.get("pid"))
            or (owner.get("detached") and (_pid_alive(owner.get("relay_pid")) or owner.get("backend") == "netem")))
        # Our own prefix: a new run takes its names over.  Others: only when their owner is gone.
        if p == prefix or not alive:
            removed += _remove_instance(p)
    # Scratch probe namespaces (capabilities.py) carry their creator's pid in the name.
    for n in names:
        if n.startswith(f"{LAB_PREFIX}probe-"):
            pid = n.rsplit("-", 1)[-1]
            if not (pid.isdigit() and _pid_alive(int(pid))):
                netns.remove(n)
                removed.append(n)
    return removed


class Topology:
    """Namespaces + the path + the backend that shapes it.  Use as a context manager."""

    def __init__(self, backend: str = "auto", congestion_control: str | None = None, prefix: str = LAB_PREFIX):
        if not prefix.startswith(LAB_PREFIX):
            raise TopologyError(f"prefix must start with {LAB_PREFIX!r}, got {prefix!r}")
        self.prefix = prefix
        self.requested_backend = backend
        self.requested_cc = congestion_control
        self.edge_ns, self.cloud_ns = f"{prefix}edge", f"{prefix}cloud"
        self.backend_name: str | None = None
        self.backend = None
        self.congestion_control: str | None = None
        self.relay: subprocess.Popen | None = None
        self.paired_seed: int | None = None     # wire backend: pair its loss and jitter draws with the simulator's (netns/paired.py)
        self.link: LinkPair | None = None
        self.timings_ms: dict[str, float] = {}
        self._up = False
        self.detach = False
        self._handles: dict[str, NetNS] = {}

    # -------------------------------------------------------------- lifecycle
    def up(self, link: LinkPair, detach: bool = False) -> None:

        t0 = time.monotonic()
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self.backend_name = choose_backend(self.requested_backend)
        self.detach = detach
        cleanup_stale(self.prefix)
        self._up = True
        try:
            for ns in (self.edge_ns, self.cloud_ns):
                netns.create(ns)
            self._write_owner(detach)
            self._namespace_settings()
            self.backend = make_backend(self.backend_name, self)
            self.backend.apply(link)
            self.link = link
            self._write_owner(detach)
        except BaseException:
            self.down()
            raise
        self.timings_ms["up"] = (time.monotonic() - t0) * 1e3

    def change(self, link: LinkPair) -> float:
        """Reprogram the link at run time; returns the milliseconds it took."""
        if not self._up or self.backend is None:
            raise TopologyError("change() before up()")
        t0 = time.monotonic()
        self.backend.change(link)
        self.link = link
        ms = (time.monotonic() - t0) * 1e3
        owner = _read_owner(self.prefix)
        if owner is not None:
            owner["link"] = link.to_dict()
            _owner_file(self.prefix).write_text(json.dumps(owner))
        return ms

    def ipr(self, ns: str) -> NetNS:
        """A netlink handle inside `ns`, opened once and kept until down() (each costs milliseconds)."""
        h = self._handles.get(ns)
        if h is None:
            h = self._handles[ns] = NetNS(ns, flags=0)
        return h

    def down(self) -> None:
        t0 = time.monotonic()
        if self.backend is not None:
            try:
                self.backend.close()
            except LinkError as e:
                print(f"topology: backend close: {e}", file=sys.stderr)
        if self.relay is not None and self.relay.poll() is None:
            self.relay.terminate()
            try:
                self.relay.wait(5)
            except subprocess.TimeoutExpired:
                self.relay.kill()
                self.relay.wait(5)
        for h in self._handles.values():
            h.close()
        self._handles.clear()
        _remove_instance(self.prefix)
        self._up = False
        self.timings_ms["down"] = (time.monotonic() - t0) * 1e3

    def __enter__(self) -> "Topology":
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # -------------------------------------------------------------- settings
    def _namespace_settings(self) -> None:
        for ns in (self.edge_ns, self.cloud_ns):
            ipr = self.ipr(ns)
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            for name in ("net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"):
                _write_sysctl_in(ns, name, TCP_MEM)
        self.congestion_control = self.requested_cc or _read_sysctl("net.ipv4.tcp_congestion_control")
        if self.requested_cc:
            allowed = _read_sysctl("net.ipv4.tcp_allowed_congestion_control").split()
            if self.requested_cc not in allowed:
                available = _read_sysctl("net.ipv4.tcp_available_congestion_control").split()
                if self.requested_cc not in available:
                    raise TopologyError(f"TCP congestion control {self.requested_cc!r} is not available in this "
                                        f"kernel (available: {', '.join(available)})")
                # Per-namespace setting needs it in the root namespace's allowed list (EPERM otherwise).
                with open("/proc/sys/net/ipv4/tcp_allowed_congestion_control", "w") as f:
                    f.write(" ".join(allowed + [self.requested_cc]))
            for ns in (self.edge_ns, self.cloud_ns):
                try:
                    _write_sysctl_in(ns, "net.ipv4.tcp_congestion_control", self.requested_cc)
                except PermissionError:
                    raise TopologyError(f"kernel refused TCP congestion control {self.requested_cc!r} in {ns} "
                                        "(EPERM)") from None

    def _write_owner(self, detach: bool) -> None:
        data = {"pid": None if detach else os.getpid(), "detached": detach, "backend": self.backend_name,
                "relay_pid": self.relay.pid if self.relay else None, "prefix": self.prefix,
                "edge_ns": self.edge_ns, "cloud_ns": self.cloud_ns, "cc": self.congestion_control,
                "link": self.link.to_dict() if self.link else None, "since": time.time()}
        _owner_file(self.prefix).write_text(json.dumps(data))

    # -------------------------------------------------------------- devices used by backends
    def add_veth(self) -> None:
        """veth pair created inside edge with its peer moved straight into cloud; addressed, offloads off."""
        self.ipr(self.edge_ns).link("add", ifname=VETH_EDGE, kind="veth",
                                    peer={"ifname": VETH_CLOUD, "net_ns_fd": self.cloud_ns})
        self._address(self.edge_ns, VETH_EDGE, EDGE_ADDR, CLOUD_ADDR)
        self._address(self.cloud_ns, VETH_CLOUD, CLOUD_ADDR, EDGE_ADDR)
        for ns, dev in ((self.edge_ns, VETH_EDGE), (self.cloud_ns, VETH_CLOUD)):
            offloads_off(ns, dev)

    def start_relay(self, link: LinkPair, detach: bool, seed: int | None = None) -> None:
        """The wire relay process: creates the TUN devices and runs the delay line."""

        argv = [sys.executable, "-m", "netns.wire", "--edge-ns", self.edge_ns, "--cloud-ns", self.cloud_ns,
                "--control", str(self.control_path), "--link", json.dumps(link.to_dict())]
        if seed is not None:
            argv += ["--seed", str(seed)]
        if not detach:
            argv.append("--die-with-parent")
        log = open(RUN_DIR / f"{self.prefix}wire.log", "ab")
        self.relay = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                      start_new_session=detach, cwd=str(Path(__file__).resolve().parent.parent))
        log.close()
        import select
        r, _, _ = select.select([self.relay.stdout], [], [], RELAY_READY_TIMEOUT_S)
        line = self.relay.stdout.readline().decode() if r else ""
        self.relay.stdout.close()
        try:
            ev = json.loads(line) if line else {}
        except ValueError:
            ev = {}
        if ev.get("event") != "ready":
            self.relay.kill()
            raise TopologyError(f"wire relay did not start: {ev.get('message') or line or 'no answer in time'}"
                                f" (log: {RUN_DIR / (self.prefix + 'wire.log')})")
        self._address(self.edge_ns, TUN_IFNAME, EDGE_ADDR, CLOUD_ADDR, txqueuelen=10000)
        self._address(self.cloud_ns, TUN_IFNAME, CLOUD_ADDR, EDGE_ADDR, txqueuelen=10000)

    @property
    def control_path(self) -> Path:
        return RUN_DIR / f"{self.prefix}wire.sock"

    def _address(self, ns: str, dev: str, addr: str, peer: str, txqueuelen: int | None = None) -> None:
        ipr = self.ipr(ns)
        idx = ipr.link_lookup(ifname=dev)[0]
        if txqueuelen:
            ipr.link("set", index=idx, txqlen=txqueuelen)
        ipr.addr("add", index=idx, address=addr, prefixlen=PREFIX_LEN)
        ipr.link("set", index=idx, state="up")

    # -------------------------------------------------------------- processes and state
    def popen(self, side: str, argv: list[str], **popen_kwargs) -> subprocess.Popen:
        """Start a process inside the edge or cloud namespace (it enters before exec)."""
        if side not in ("edge", "cloud"):
            raise TopologyError(f"side must be 'edge' or 'cloud', got {side!r}")
        ns = self.edge_ns if side == "edge" else self.cloud_ns
        user_pre = popen_kwargs.pop("preexec_fn", None)

        def enter():
            netns.setns(ns, flags=0)
            # Lab processes never outlive whoever started them (a SIGKILLed runner included).
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if user_pre:
                user_pre()
        popen_kwargs.setdefault("cwd", str(Path(__file__).resolve().parent.parent))
        return subprocess.Popen(argv, preexec_fn=enter, **popen_kwargs)

    def current_link(self) -> LinkPair:
        if self.link is None:
            raise TopologyError("no link is applied")
        return self.link

    def read_back(self) -> dict:
        data = self.backend.read_back() if self.backend else {}
        data.update({"backend": self.backend_name, "congestion_control": self.congestion_control,
                     "edge_ns": self.edge_ns, "cloud_ns": self.cloud_ns, "edge_addr": EDGE_ADDR,
                     "cloud_addr": CLOUD_ADDR, "configured": self.link.to_dict() if self.link else None})
        return data


OFFLOAD_FEATURES = ("tx-tcp-segmentation", "tx-tcp6-segmentation", "tx-generic-segmentation", "rx-gro",
                    "generic-segmentation-offload", "generic-receive-offload", "tcp-segmentation-offload")


def _offloads_off_here(dev: str) -> list[str]:
    from pyroute2.ethtool import Ethtool

    et = Ethtool()
    try:
        feats = et.get_features(dev)
        off = [n for n in OFFLOAD_FEATURES if n in feats.features]
        for name in off:
            feats.features[name].enable = False
        et.set_features(dev, feats)
        return off
    finally:
        et.close()


def offloads_off(ns: str, dev: str) -> list[str]:
    """GSO/TSO/GRO off: with them on, veth hands tbf 64 KB super-packets and rates go wrong."""
    try:
        return in_namespace(ns, _offloads_off_here, dev)
    except (OSError, LinkError) as e:
        raise TopologyError(f"cannot switch offloads off on {dev} in {ns}: {e}") from None


def attach(prefix: str = LAB_PREFIX) -> Topology | None:
    """Re-attach to a link left up by `lab link up` (another process); None if none is up."""
    owner = _read_owner(prefix)
    if owner is None or f"{prefix}edge" not in netns.listnetns():
        return None

    t = Topology(backend=owner["backend"], congestion_control=owner.get("cc"), prefix=prefix)
    t.backend_name, t.congestion_control = owner["backend"], owner.get("cc")
    d = owner.get("link")
    t.link = LinkPair(uplink=LinkSpec(**d["uplink"]), downlink=LinkSpec(**d["downlink"])) if d else None
    t.backend = make_backend(owner["backend"], t, attached=True)
    t._up = True
    return t
