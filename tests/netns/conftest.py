"""Root-only fixtures: the lab lock for the whole session, a lab topology with a test prefix, removed on
every path."""
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from netns.link import LinkPair, LinkSpec

PREFIX = os.environ.get("SDLAB_TEST_PREFIX", "sdl-t-")
BACKEND = os.environ.get("SDLAB_BACKEND", "auto")
# In the software-emulated guest of `make vm-test` (SDLAB_TCG=1) timers fire late and a Python TCP
# round trip costs more, and more so on longer delays: measured +0.4 to +2.2 ms (November runs), and on a
# quiet host +4.3 ms at RTT 30 ms and +7.6 ms at RTT 80 ms (2026-11-25).  These tests check that the
# netem backend does what it is told (a change takes effect mid-connection, asymmetric delays); its
# precision is linkcheck's job (kernel ping, labelled allowance).  On the host the slack is 0.
TCG = os.environ.get("SDLAB_TCG") == "1"


def tcg_slack_ms(rtt_ms: float) -> float:
    """Extra RTT tolerance inside the TCG guest: linkcheck's allowance plus 10 % of the RTT."""
    if not TCG:
        return 0.0
    from netns.fidelity.linkcheck import TCG_RTT_ALLOWANCE_MS
    return TCG_RTT_ALLOWANCE_MS + 0.1 * rtt_ms


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (network namespaces); run: sudo make test")
        for item in items:
            if Path(__file__).parent in Path(item.fspath).parents:
                item.add_marker(skip)


def hold_lab_lock(suite: str):
    """The lab lock (netns/lock.py) for a root suite's whole session: a suite that finds a lab run live
    stops at once, naming it, instead of failing test after test (or destroying the run).  Processes
    the tests start (`python -m lab …`, crashers, nodes) nest inside it."""
    if os.geteuid() != 0:
        yield None
        return
    from netns.lock import LAB_LOCK, LabBusy
    try:
        LAB_LOCK.acquire(f"pytest {suite}")
    except LabBusy as e:
        pytest.exit(f"{suite}: {e}", returncode=75)
    try:
        yield LAB_LOCK
    finally:
        LAB_LOCK.release()


@contextmanager
def lab_lock_suspended(lock):
    """The session's lock let go entirely (every level, and the token children inherit) while a test
    plays independent runs, as two users' would be; taken again afterwards."""
    depth = 0
    while lock.held:
        lock.release()
        depth += 1
    try:
        yield
    finally:
        for _ in range(depth):
            lock.acquire("pytest (root suites)")


@pytest.fixture(scope="session", autouse=True)
def lab_lock():
    yield from hold_lab_lock("tests/netns")


def ip_netns_list() -> list[str]:
    """Independent cross-check with iproute2 (the product itself never shells out)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture
def topo():
    from netns.topology import Topology
    t = Topology(backend=BACKEND, prefix=PREFIX)
    try:
        yield t
    finally:
        t.down()
        left = [n for n in ip_netns_list() if n.startswith(PREFIX)]
        assert not left, f"namespaces left behind: {left}"


def sym(**kw) -> LinkPair:
    return LinkPair.symmetric(LinkSpec(**kw))
