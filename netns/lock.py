"""One lab at a time: an exclusive lock on the `sdl-` names, and a record naming its owner.

Two runs share the names `sdl-edge`, `sdl-cloud`, … so a second run's
stale-object cleanup would destroy the first's live topology.  Every command
that creates `sdl-` objects (scenario, link up, linkcheck, validate, probe,
the root test suites) and `Topology.up()` itself take this lock first; a
second one refuses at once, touching nothing, with a message that names
the live run.

* The lock is `fcntl.flock` on RUN_DIR/lab.lock.  The kernel releases it when
  its owner exits however it exits (SIGKILL included), so a dead owner's lock
  is never mistaken for a live one, and there is nothing to break by hand.
* RUN_DIR/lab.json (replaced atomically) names the owner for the message:
  pid, the process's start time in clock ticks (so a reused pid does not
  pass for the owner), command line, start time.
* Reentrant within a process: a command takes it, then each `Topology.up()`
  inside it.  A process the owner starts (a node, a test's subprocess) shares
  it: the owner exports a random token in $SDLAB_LAB_LOCK, and a process that
  finds the lock taken with that token, by a live owner, nests inside it.
* `python -m lab link up` leaves its topology up after the command exits.  Its
  record stays, marked `detached`, and names the topology's owner: the wire
  relay's pid (it holds the TUN devices), or for netem, which has no process,
  the namespaces themselves.  While that owner lives every other command
  refuses as it would for a run; `python -m lab link down` takes it over and
  removes it.  A relay that has died, or netem namespaces that are gone, leave
  a record that the next command overwrites.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from netns.link import LinkError
from netns.names import RUN_DIR

LOCK_ENV = "SDLAB_LAB_LOCK"
NETNS_DIR = Path("/var/run/netns")      # where `ip netns` and pyroute2 mount named namespaces
RECORD_WAIT_S = 1.0                      # an owner writes its record right after taking the lock


class LabBusy(LinkError):
    """Another lab run (or a `link up` topology) owns the `sdl-` names; the message names it."""

    def __init__(self, record: dict | None, lock_path: Path):
        self.record = record
        super().__init__(describe_owner(record, lock_path))


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return int(stat.rpartition(")")[2].split()[19])


def same_process(pid: int | None, start_ticks: int | None) -> bool:
    """Is `pid` alive and, when `start_ticks` is known, still the process that had it?"""
    if not pid:
        return False
    now = process_start_ticks(pid)
    return now is not None and (start_ticks is None or now == start_ticks)


def command_line(pid: int | str = "self") -> str:
    """A process's command line as a person typed it (`python -m lab scenario …`)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    argv = [a for a in argv if a]
    if argv:
        argv[0] = os.path.basename(argv[0])
    return " ".join(argv)


def owner_alive(record: dict) -> bool:
    """Does the owner a record names still live?  A detached netem topology lives while its namespaces do."""
    if record.get("detached") and not record.get("pid"):
        names = record.get("namespaces") or []
        return bool(names) and all((NETNS_DIR / n).exists() for n in names)
    return same_process(record.get("pid"), record.get("pid_start"))


def describe_owner(record: dict | None, lock_path: Path) -> str:
    if not record:
        pid = flock_holder(lock_path)
        who = f"pid {pid} ({command_line(pid)})" if pid else "a process that left no record"
        return (f"another lab run holds {lock_path}: {who}; one lab runs at a time (the `sdl-` names are "
                "shared) — wait for it to finish or stop it; nothing was touched")
    since = record.get("since", 0.0)
    when = (f"started {datetime.fromtimestamp(since, timezone.utc):%Y-%m-%d %H:%M:%S} UTC "
            f"({_ago(time.time() - since)} ago)")
    if record.get("detached"):
        holder = (f"its wire relay, pid {record['pid']}," if record.get("pid")
                  else f"its namespaces {', '.join(record.get('namespaces') or [])}")
        return (f"a lab link is up: `{record.get('command', '?')}` {when}; {holder} still live. One lab runs "
                "at a time (the `sdl-` names are shared): `python -m lab link down` removes it; nothing was touched")
    return (f"another lab run is live: pid {record.get('pid')}, `{record.get('command', '?')}`, {when}. One lab "
            f"runs at a time (the `sdl-` names are shared): wait for it or stop it (kill {record.get('pid')}); "
            "nothing was touched")


def _ago(s: float) -> str:
    s = max(0, int(s))
    return f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h"


def flock_holder(lock_path: Path) -> int | None:
    """The pid holding a flock on lock_path, from /proc/locks (the record's fallback)."""
    try:
        st = os.stat(lock_path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if "->" in f:                  # a waiter, not the holder
            continue
        if len(f) >= 6 and f[1] == "FLOCK":
            dev_ino = f[5].split(":")
            if len(dev_ino) == 3 and int(dev_ino[2]) == st.st_ino:
                return int(f[4])
    return None


class LabLock:
    """The lab's lock in `run_dir` (RUN_DIR in the lab; a temporary folder in unit tests)."""

    def __init__(self, run_dir: Path = RUN_DIR):
        self.dir = Path(run_dir)
        self.path = self.dir / "lab.lock"
        self.record_path = self.dir / "lab.json"
        self.record: dict | None = None      # ours, while we hold the lock
        self._fd: int | None = None
        self._depth = 0
        self._nested = False                 # inside the lock of the process that started us
        self._detached = False               # our record now names a detached topology: keep it on release

    @property
    def held(self) -> bool:
        return self._depth > 0

    def read_record(self) -> dict | None:
        try:
            rec = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) else None

    def acquire(self, command: str | None = None, take_over_detached: bool = False) -> None:
        """Take the lock or raise LabBusy naming its owner.  `take_over_detached`: a live `link up`
        topology does not refuse us (`link down`, which removes it)."""
        if self._depth:
            self._depth += 1
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LinkError(f"cannot lock {self.path}: {e.strerror}") from None
            rec = self._record_of_holder()
            token = os.environ.get(LOCK_ENV)
            if rec and token and rec.get("token") == token and not rec.get("detached") and owner_alive(rec):
                self._nested, self._depth = True, 1
                return
            raise LabBusy(rec, self.path) from None
        rec = self.read_record()
        if rec and rec.get("detached") and owner_alive(rec) and not take_over_detached:
            os.close(fd)                     # closing the only descriptor releases the flock
            raise LabBusy(rec, self.path)
        self._fd, self._depth, self._detached = fd, 1, False
        pid = os.getpid()
        self.record = {"pid": pid, "pid_start": process_start_ticks(pid), "command": command or command_line(),
                       "since": time.time(), "token": secrets.token_hex(8), "detached": False}
        self._write_record(self.record)
        os.environ[LOCK_ENV] = self.record["token"]

    def release(self) -> None:
        """Undo one acquire(); the last one unlocks (and removes the record unless it names a detached topology)."""
        if not self._depth:
            return
        self._depth -= 1
        if self._depth:
            return
        if self._nested:
            self._nested = False
            return
        token = self.record["token"] if self.record else None
        if not self._detached:
            # Removed before unlocking: once unlocked, the record may be the next owner's.
            if (self.read_record() or {}).get("token") == token:
                self.record_path.unlink(missing_ok=True)
        if os.environ.get(LOCK_ENV) == token:
            del os.environ[LOCK_ENV]
        os.close(self._fd)                   # releases the flock
        self._fd, self.record, self._detached = None, None, False

    @contextmanager
    def holding(self, command: str | None = None, take_over_detached: bool = False):
        self.acquire(command, take_over_detached)
        try:
            yield self
        finally:
            self.release()

    def mark_detached(self, pid: int | None, namespaces: list[str]) -> None:
        """The topology just brought up outlives this process: its owner is now `pid` (the wire relay),
        or its namespaces when there is no process (netem).  No-op when nested in another's lock."""
        if not self._depth or self._nested or self.record is None:
            return
        self.record.update(detached=True, pid=pid, pid_start=process_start_ticks(pid) if pid else None,
                           namespaces=list(namespaces), since=time.time())
        self._write_record(self.record)
        self._detached = True

    def forget_detached(self) -> None:
        """The detached topology is down again (taken down by the process that brought it up)."""
        if not self._detached or self.record is None:
            return
        pid = os.getpid()
        self.record.update(detached=False, pid=pid, pid_start=process_start_ticks(pid), namespaces=None)
        self._write_record(self.record)
        self._detached = False

    def _write_record(self, record: dict) -> None:
        tmp = self.record_path.with_name(f".{self.record_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, self.record_path)

    def _record_of_holder(self) -> dict | None:
        """The live holder's record; it may be a moment behind its flock, so wait briefly for it."""
        deadline = time.monotonic() + RECORD_WAIT_S
        while True:
            rec = self.read_record()
            if rec and owner_alive(rec):
                return rec
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


LAB_LOCK = LabLock()
