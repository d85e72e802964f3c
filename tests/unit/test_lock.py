"""One lab at a time (netns/lock.py), in a temporary folder: no root, no namespaces."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from netns import lock as lockmod
from netns.lock import LOCK_ENV, LabBusy, LabLock, owner_alive, process_start_ticks

ROOT = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from netns.lock import LabLock
lk = LabLock({dir!r})
lk.acquire({command!r})
{after}
print("held", flush=True)
time.sleep(60)
"""


def start_holder(tmp_path, command="python -m lab scenario wan-50ms --models synthetic", after="", env=None):
    code = HOLDER.format(root=str(ROOT), dir=str(tmp_path), command=command, after=after)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    p.said = []
    for line in p.stdout:
        if line.strip() == "held":
            return p
        p.said.append(line.strip())
    raise AssertionError(f"the holder never took the lock: {p.said}")


def stop(p):
    if p.poll() is None:
        p.kill()
    p.wait(10)


@pytest.fixture(autouse=True)
def no_inherited_token(monkeypatch):
    monkeypatch.delenv(LOCK_ENV, raising=False)


def test_second_run_refuses_naming_the_live_one(tmp_path):
    holder = start_holder(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(LabBusy) as e:
            LabLock(tmp_path).acquire("second")
        assert time.monotonic() - t0 < 2.0                         # at once, not after a wait
        msg = str(e.value)
        assert f"pid {holder.pid}" in msg and "python -m lab scenario wan-50ms --models synthetic" in msg
        assert "UTC" in msg and "started" in msg and "\n" not in msg
        assert e.value.record["pid"] == holder.pid
    finally:
        stop(holder)


def test_dead_owner_lock_is_recognised_and_taken(tmp_path):
    holder = start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)          # no chance to clean up: its record stays behind
    holder.wait(10)
    assert LabLock(tmp_path).read_record()["pid"] == holder.pid
    lk = LabLock(tmp_path)
    lk.acquire("after the crash")
    try:
        rec = lk.read_record()
        assert rec["pid"] == os.getpid() and rec["command"] == "after the crash"
        assert os.environ[LOCK_ENV] == rec["token"]
    finally:
        lk.release()
    assert lk.read_record() is None and LOCK_ENV not in os.environ


def test_reentrant_in_a_process_and_released_by_the_last_release(tmp_path):
    lk = LabLock(tmp_path)
    lk.acquire("outer")
    lk.acquire("inner (Topology.up)")
    lk.release()
    assert lk.held
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from netns.lock import LabLock; LabLock({str(tmp_path)!r}).acquire()"
    env = {k: v for k, v in os.environ.items() if k != LOCK_ENV}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode != 0 and "LabBusy" in r.stderr and f"pid {os.getpid()}" in r.stderr
    lk.release()
    assert not lk.held
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr


def test_a_child_of_the_owner_nests_inside_its_lock(tmp_path):
    """A node or a test's `python -m lab …` started by the owner inherits the token and shares the lock."""
    lk = LabLock(tmp_path)
    lk.acquire("pytest tests/e2e")
    try:
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from netns.lock import LabLock; "
                f"l = LabLock({str(tmp_path)!r}); l.acquire(); l.acquire(); l.release(); l.release(); print('nested')")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == "nested", r.stderr
        assert lk.read_record()["command"] == "pytest tests/e2e"       # the child left the owner's record alone
        forged = {**os.environ, LOCK_ENV: "0" * 16}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=forged)
        assert r.returncode != 0 and "LabBusy" in r.stderr
    finally:
        lk.release()


def test_a_detached_link_up_topology_is_owned_by_its_relay(tmp_path):
    relay = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lk = LabLock(tmp_path)
        lk.acquire("python -m lab link up wan-50ms")
        lk.mark_detached(relay.pid, ["sdl-edge", "sdl-cloud"])
        lk.release()                              # `link up` exits; its topology stays
        rec = lk.read_record()
        assert rec["detached"] and rec["pid"] == relay.pid
        with pytest.raises(LabBusy) as e:
            LabLock(tmp_path).acquire("python -m lab scenario lan")
        assert f"pid {relay.pid}" in str(e.value) and "link down" in str(e.value)
        assert "python -m lab link up wan-50ms" in str(e.value)
        down = LabLock(tmp_path)
        down.acquire("python -m lab link down", take_over_detached=True)   # the one command that may
        down.release()
        assert down.read_record() is None
    finally:
        stop(relay)


def test_a_dead_relay_leaves_a_record_the_next_run_overwrites(tmp_path):
    relay = subprocess.Popen([sys.executable, "-c", "pass"])
    relay.wait(10)
    lk = LabLock(tmp_path)
    lk.acquire("python -m lab link up lan")
    lk.mark_detached(relay.pid, ["sdl-edge", "sdl-cloud"])
    lk.release()
    nxt = LabLock(tmp_path)
    nxt.acquire("python -m lab scenario lan")
    assert nxt.read_record()["pid"] == os.getpid() and not nxt.read_record()["detached"]
    nxt.release()


def test_a_detached_netem_topology_lives_while_its_namespaces_do(tmp_path, monkeypatch):
    ns_dir = tmp_path / "netns"
    ns_dir.mkdir()
    monkeypatch.setattr(lockmod, "NETNS_DIR", ns_dir)
    for n in ("sdl-edge", "sdl-cloud"):
        (ns_dir / n).touch()
    lk = LabLock(tmp_path)
    lk.acquire("python -m lab link up lan --backend netem")
    lk.mark_detached(None, ["sdl-edge", "sdl-cloud"])
    lk.release()
    with pytest.raises(LabBusy, match="namespaces sdl-edge, sdl-cloud"):
        LabLock(tmp_path).acquire()
    (ns_dir / "sdl-cloud").unlink()
    lk = LabLock(tmp_path)
    lk.acquire()
    lk.release()


def test_a_reused_pid_is_not_the_owner():
    me = os.getpid()
    assert owner_alive({"pid": me, "pid_start": process_start_ticks(me)})
    assert not owner_alive({"pid": me, "pid_start": process_start_ticks(me) + 1})
    assert not owner_alive({"pid": None})


def test_the_lock_file_is_not_inherited_by_children(tmp_path):
    """Nodes, relays and probes started while the lock is held must not keep it after the owner dies."""
    holder = start_holder(tmp_path, after="import subprocess; c = subprocess.Popen(['sleep', '30'], close_fds=False); "
                                          "print(c.pid, flush=True)")
    child = int(holder.said[0])
    try:
        holder.kill()
        holder.wait(10)
        lk = LabLock(tmp_path)
        lk.acquire()
        lk.release()
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("euid", [0, 1000])
def test_profile_and_bench_refuse_to_time_models_beside_a_live_run(tmp_path, monkeypatch, euid):
    """lab profile / bench colocated under a live lab run would time the contention and spoil the run:
    root is refused by the lock, anyone else by the live owner's record; both go ahead once it ends."""
    import lab.cli as cli
    monkeypatch.setattr(cli, "LAB_LOCK", LabLock(tmp_path))
    monkeypatch.setattr(cli.os, "geteuid", lambda: euid)
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(LabBusy, match=f"pid {holder.pid}"):
            with cli.measuring_alone("profile"):
                pass
    finally:
        stop(holder)
    with cli.measuring_alone("profile"):
        assert cli.LAB_LOCK.held == (euid == 0)
    assert not cli.LAB_LOCK.held
