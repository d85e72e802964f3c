"""The lab's two hosts: namespaces `sdl-edge` and `sdl-cloud` and the path between them.

    sdl-edge  198.18.0.1/30  ──link──  198.18.0.2/30  sdl-cloud

The path depends on the backend: a veth pair `sdl-e0` ↔ `sdl-c0` shaped by
netem + tbf (kernel), or two TUN devices `sdl-t0` joined by the userspace
relay of netns/wire.py, shaped by tbf (wire).  Either way the applications
see the same two addresses.  The veth is created *inside* the namespaces, so
no `sdl-` device ever sits in the root namespace.

Ownership and cleanup: `up()` first takes the lab lock (netns/lock.py: one
lab at a time, a second run refuses touching nothing), then records its owner
in /run/sdlab/<prefix>owner.json.  A run begins by removing `sdl-` leftovers
whose recorded owner is dead (or that have no record: a crashed run that never
wrote one).  Nothing without the `sdl-` prefix is ever touched, nor anything
a live owner holds.  `down()` removes only the namespaces that are still this
topology's own (a name re-created by someone else is left alone), and puts
back what it changed in the root namespace (tcp_allowed_congestion_control).
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
from netns.lock import LAB_LOCK, NETNS_DIR, process_start_ticks, same_process
from netns.names import (CLOUD_ADDR, EDGE_ADDR, LAB_PREFIX, PREFIX_LEN, RUN_DIR, TUN_IFNAME,  # noqa: F401
                         VETH_CLOUD, VETH_EDGE)
from netns.nsexec import in_namespace
from netns.signals import deferred_stop_signals

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


ALLOWED_CC = "net.ipv4.tcp_allowed_congestion_control"


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


def _owner_alive(owner: dict | None) -> bool:
    """A run's owner lives: its process (pid + start time); for a detached `link up` topology, its relay,
    or with netem (no process) its namespaces."""
    if owner is None:
        return False
    if not owner.get("detached"):
        return same_process(owner.get("pid"), owner.get("pid_start"))
    if owner.get("relay_pid"):
        return same_process(owner["relay_pid"], owner.get("relay_start"))
    return owner.get("backend") == "netem" and all((NETNS_DIR / owner.get(k, "")).exists()
                                                   for k in ("edge_ns", "cloud_ns"))


def _withdraw_root_cc(name: str | None) -> None:
    """Take back the congestion control a run added to the root namespace's allowed list."""
    if not name:
        return
    try:
        allowed = _read_sysctl(ALLOWED_CC).split()
        if name in allowed:
            _write_file("/proc/sys/" + ALLOWED_CC.replace(".", "/"), " ".join(a for a in allowed if a != name))
    except OSError as e:
        print(f"topology: cannot take {name} back out of {ALLOWED_CC}: {e.strerror}", file=sys.stderr)


def _remove_instance(prefix: str) -> list[str]:
    removed = []
    owner = _read_owner(prefix)
    _kill_relay(owner)
    _withdraw_root_cc((owner or {}).get("root_cc_added"))
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

    Removes every `sdl-` instance whose recorded owner is dead or that has no
    record.  A live one is left alone, except this prefix's own when `force`
    (`link down`, which takes a `link up` topology over) or when its owner is
    this process.  A live instance of this prefix owned by another process is
    an error: the lab lock should have stopped us before (an older checkout
    running without it)."""
    if not prefix.startswith(LAB_PREFIX):
        raise TopologyError(f"prefix must start with {LAB_PREFIX!r}, got {prefix!r}")
    removed: list[str] = []
    names = netns.listnetns()
    prefixes = {_prefix_of(n) for n in names if n.startswith(LAB_PREFIX) and _prefix_of(n)}
    if RUN_DIR.exists():
        prefixes |= {f.name[: -len("owner.json")] for f in RUN_DIR.glob(f"{LAB_PREFIX}*owner.json")}
    for p in sorted(prefixes):
        owner = _read_owner(p)
        alive = _owner_alive(owner)
        if alive and p == prefix and not force and owner.get("pid") != os.getpid():
            raise TopologyError(f"{p}edge/{p}cloud belong to a live run (pid {owner.get('pid') or owner.get('relay_pid')}) "
                                "that does not hold the lab lock; not touching them")
        if not alive or (p == prefix and (force or owner.get("pid") == os.getpid())):
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
        self._locked = False
        self._created = False                           # up() got as far as creating namespaces
        self._ns_ids: dict[str, tuple[int, int]] = {}    # name -> (st_dev, st_ino) of the namespaces we made
        self.root_cc_added: str | None = None           # what we added to the root's allowed list

    # -------------------------------------------------------------- lifecycle
    def up(self, link: LinkPair, detach: bool = False) -> None:
        """Take the lab lock (LabBusy, nothing touched, if another run has it), clear dead runs'
        leftovers, create the namespaces and the link.  `detach`: the topology outlives this process
        (`lab link up`); the lock's record then names its owner (netns/lock.py)."""
        t0 = time.monotonic()
        LAB_LOCK.acquire()
        self._locked = True
        self._up = True
        try:
            RUN_DIR.mkdir(parents=True, exist_ok=True)
            self.backend_name = choose_backend(self.requested_backend)
            self.detach = detach
            cleanup_stale(self.prefix)
            self._created = True
            for ns in (self.edge_ns, self.cloud_ns):
                netns.create(ns)
                st = os.stat(NETNS_DIR / ns)
                self._ns_ids[ns] = (st.st_dev, st.st_ino)
            self._write_owner(detach)
            self._namespace_settings()
            self.backend = make_backend(self.backend_name, self)
            self.backend.apply(link)
            self.link = link
            self._write_owner(detach)
        except BaseException:
            self.down()
            raise
        if detach:
            LAB_LOCK.mark_detached(self.relay.pid if self.relay else None, [self.edge_ns, self.cloud_ns])
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
        """Stop the relay, remove what is still ours, give back the root's allowed CC and the lock.
        Idempotent; stop signals that arrive meanwhile wait until it is done (netns/signals.py)."""
        t0 = time.monotonic()
        with deferred_stop_signals():
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
            if self._foreign_names():
                self._remove_own_names()
            elif self._created:
                _remove_instance(self.prefix)
            self._created = False
            _withdraw_root_cc(self.root_cc_added)
            self.root_cc_added = None
            self._ns_ids.clear()
            self._up = False
            if self._locked:
                if self.detach:
                    LAB_LOCK.forget_detached()
                LAB_LOCK.release()
                self._locked = False
        self.timings_ms["down"] = (time.monotonic() - t0) * 1e3

    def _foreign_names(self) -> list[str]:
        """Our namespace names that now refer to another namespace (re-created by someone else)."""
        foreign = []
        for ns, ident in self._ns_ids.items():
            try:
                st = os.stat(NETNS_DIR / ns)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) != ident:
                foreign.append(ns)
        return foreign

    def _remove_own_names(self) -> None:
        """Teardown when our names were taken over: remove only what is still ours, keep the owner file."""
        foreign = self._foreign_names()
        print(f"topology: {', '.join(foreign)} now belong to someone else; left alone", file=sys.stderr)
        for ns in self._ns_ids:
            if ns not in foreign and (NETNS_DIR / ns).exists():
                netns.remove(ns)

    def check_intact(self) -> None:
        """Raise TopologyError if the namespaces are no longer ours (removed or re-created under us) or the
        wire relay has died: the link the run measures is gone."""
        for ns, ident in self._ns_ids.items():
            try:
                st = os.stat(NETNS_DIR / ns)
            except FileNotFoundError:
                raise TopologyError(f"namespace {ns} vanished under the run (removed by another process)") from None
            if (st.st_dev, st.st_ino) != ident:
                raise TopologyError(f"namespace {ns} was replaced under the run (re-created by another process)")
        if self.relay is not None and self.relay.poll() is not None:
            raise TopologyError(f"the wire relay (pid {self.relay.pid}) exited under the run with code "
                                f"{self.relay.returncode} (log: {RUN_DIR / (self.prefix + 'wire.log')})")

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
            allowed = _read_sysctl(ALLOWED_CC).split()
            if self.requested_cc not in allowed:
                available = _read_sysctl("net.ipv4.tcp_available_congestion_control").split()
                if self.requested_cc not in available:
                    raise TopologyError(f"TCP congestion control {self.requested_cc!r} is not available in this "
                                        f"kernel (available: {', '.join(available)})")
                # Per-namespace setting needs it in the root namespace's allowed list (EPERM otherwise);
                # recorded in the owner file, so teardown (ours, or the next run's after a crash) takes it back.
                _write_file("/proc/sys/" + ALLOWED_CC.replace(".", "/"), " ".join(allowed + [self.requested_cc]))
                self.root_cc_added = self.requested_cc
                self._write_owner(self.detach)
            for ns in (self.edge_ns, self.cloud_ns):
                try:
                    _write_sysctl_in(ns, "net.ipv4.tcp_congestion_control", self.requested_cc)
                except PermissionError:
                    raise TopologyError(f"kernel refused TCP congestion control {self.requested_cc!r} in {ns} "
                                        "(EPERM)") from None

    def _write_owner(self, detach: bool) -> None:
        relay = self.relay.pid if self.relay else None
        data = {"pid": None if detach else os.getpid(), "pid_start": None if detach else process_start_ticks(os.getpid()),
                "detached": detach, "backend": self.backend_name, "relay_pid": relay,
                "relay_start": process_start_ticks(relay) if relay else None, "root_cc_added": self.root_cc_added,
                "prefix": self.prefix,
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
