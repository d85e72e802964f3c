"""Root-only fixtures: the lab lock for the whole session, a lab topology with a test prefix, removed on
every path."""
import json
import os
import select
import subprocess
from contextlib import contextmanager
import sys
import time
from pathlib import Path

import pytest

from netns.fidelity.probe_stats import percentile
from netns.link import LinkPair, LinkSpec
from netns.topology import CLOUD_ADDR, EDGE_ADDR

PREFIX = os.environ.get("SDLAB_TEST_PREFIX", "sdl-t-")
BACKEND = os.environ.get("SDLAB_BACKEND", "auto")
# In the software-emulated guest of `make vm-test` (SDLAB_TCG=1) every delay reads long, by an amount
# that depends on the host.  Timing assertions there are judged against what this guest measures at
# delay 0 at the start of the session, with the probe the test uses (netns/fidelity/tcg.py); on the
# host they keep their own tolerances.
TCG = os.environ.get("SDLAB_TCG") == "1"
PINGPONG = str(Path(__file__).with_name("tcp_pingpong.py"))
_BASELINE: dict = {}     # TCG only, once per session: "udp" -> TcgBaseline, "tcp" -> Unimpaired


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def pingpong(topo, *, count, interval_ms=20, size=64, change=None, port=47100):
    """Run the TCP request/response pair; optionally call change() half-way. Returns the client's JSON.

    Half-way is when the client says half its samples are in, not a wall-clock wait: in the TCG guest
    the client's interpreter took long enough to start that a timed change landed before sample 20."""
    srv = topo.popen("cloud", [sys.executable, PINGPONG, "server", "--addr", CLOUD_ADDR, "--port", str(port)],
                     stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5 if TCG else 0.3)    # the server's interpreter starts slowly in the TCG guest
        cli = topo.popen("edge", [sys.executable, PINGPONG, "client", "--addr", CLOUD_ADDR, "--port", str(port),
                                  "--count", str(count), "--interval-ms", str(interval_ms), "--size", str(size)]
                         + (["--say-half"] if change is not None else []),
                         stdout=subprocess.PIPE, text=True)
        if change is not None:
            ready, _, _ = select.select([cli.stdout], [], [], 60)
            line = cli.stdout.readline() if ready else ""
            if line.strip() != "half":
                cli.kill()
                cli.wait(5)
                pytest.fail(f"the ping-pong client never got half-way through its {count} samples ({line!r})")
            change()
        out, _ = cli.communicate(timeout=60)
        return json.loads(out)
    finally:
        srv.kill()
        srv.wait(5)


def _measure_baseline() -> dict:
    """The guest's unimpaired UDP echo, TCP ping-pong and timer, on a lab topology at delay 0."""
    from netns.fidelity import tcg
    from netns.topology import Topology
    t = Topology(backend=BACKEND, prefix=PREFIX)
    try:
        t.up(sym())
        udp = tcg.measure(t.popen, {"edge_addr": EDGE_ADDR, "cloud_addr": CLOUD_ADDR})
        tcp = _pingpong_baseline(t, count=40)
    finally:
        t.down()
    return {"udp": udp, "tcp": tcp}


@pytest.fixture(scope="session", autouse=True)
def tcg_baseline():
    """Measured first, before any test loads the guest, and printed in the session summary."""
    if TCG and os.geteuid() == 0 and not _BASELINE:
        _BASELINE.update(_measure_baseline())
    yield _BASELINE


def pytest_terminal_summary(terminalreporter):
    if _BASELINE:
        from netns.fidelity.tcg import MIDDLE_SPREAD_FACTOR
        udp, tcp = _BASELINE["udp"], _BASELINE["tcp"]
        terminalreporter.write_line(udp.describe(0.5))
        terminalreporter.write_line(f"TCG baseline, TCP ping-pong at delay 0: P50 {tcp.level_ms:.2f} ms, "
                                    f"spread ({MIDDLE_SPREAD_FACTOR:g} x IQR/2) {tcp.spread_ms:.2f} ms")


class Expect:
    """The accepted range of a delay reading, for `assert measured in expect_rtt(...)`; its repr says why."""

    def __init__(self, configured_ms: float, w):
        self.configured_ms, self.w = configured_ms, w

    def __contains__(self, measured_ms: float) -> bool:
        return self.w.accepts(measured_ms - self.configured_ms)

    def __repr__(self) -> str:
        return f"<RTT {self.configured_ms:g} ms {self.w.label()}: {self.w.how}>"


def _need_baseline() -> None:
    if not _BASELINE:
        pytest.fail("SDLAB_TCG=1 but no TCG baseline was measured (needs root)")


def _pingpong_baseline(topo, count: int):
    from netns.fidelity.tcg import Unimpaired
    res = pingpong(topo, count=count, port=47101)
    if res["broke"] is not None:
        pytest.fail(f"TCG baseline: the ping-pong at delay 0 broke: {res['broke']}")
    rtts = [r for _, r in res["samples"]]
    return Unimpaired.middle(*(percentile(rtts, q) for q in (25, 50, 75)))


def pingpong_baseline(topo):
    """TCG only (None on hardware): the TCP ping-pong at delay 0 on this topology, now, its link
    restored afterwards.  Other work on the host moves the guest's excess within a session
    (docs/MEASUREMENTS.md, TCG allowance), so a test judges its ping-pong against one measured next
    to it."""
    if not TCG:
        return None
    link = topo.current_link()
    topo.change(sym())
    try:
        return _pingpong_baseline(topo, count=30)
    finally:
        topo.change(link)


def expect_rtt(rtt_ms: float, tol_ms: float, base=None) -> Expect:
    """A TCP ping-pong RTT: rtt_ms within ±tol_ms on hardware; in the TCG guest, inside the window
    derived from `base` (pingpong_baseline(topo); default the session's), delayed both ways."""
    from netns.fidelity.tcg import Window, window
    if not TCG:
        return Expect(rtt_ms, Window(-tol_ms, tol_ms, f"±{tol_ms:g} ms"))
    _need_baseline()
    return Expect(rtt_ms, window(base or _BASELINE["tcp"], _BASELINE["udp"].timer_ms, 2 if rtt_ms else 0, tol_ms))


def check_rtts(measure) -> None:
    """Assert every (reading, Expect) that measure() returns.  In the TCG guest a reading outside its
    window is measured once more, baseline and reading anew, and the second must pass: the guest's
    excess jumps by milliseconds for seconds when the host is busy (docs/MEASUREMENTS.md, TCG
    allowance: a ping-pong P50 at delay 0 moved 0.8 ms between two runs of one boot), and the
    windows stay as they are — a netem that is wrong fails both.  On hardware: once."""
    got = measure()
    missed = [(v, e) for v, e in got if v not in e]
    if missed and TCG:
        print("TCG: " + "; ".join(f"{v:.2f} ms outside {e!r}" for v, e in missed) + " — measuring again")
        got = measure()
    for v, e in got:
        assert v in e, f"{v:.2f} ms outside {e!r}"


def judged_ms(st, what: str = "rtt") -> float:
    """The statistic of a UDP echo ("rtt", "up", "down") the bounds are for: its P50 on hardware, its
    fast end in the TCG guest, as linkcheck judges it there (netns/fidelity/tcg.py)."""
    from netns.fidelity.tcg import delay_reading, rtt_reading
    if what == "rtt":
        return rtt_reading(st, TCG)
    return delay_reading(st.uplink if what == "up" else st.downlink, TCG)


def tcg_excess_ms(what: str = "rtt") -> float:
    """How far above its hardware bound an unimpaired UDP reading ("rtt", "up", "down") may lie: 0 on
    hardware; in the TCG guest, the top of this session's baseline window for it (no native part)."""
    if not TCG:
        return 0.0
    _need_baseline()
    udp = _BASELINE["udp"]
    w = udp.rtt_window(0, 0.0) if what == "rtt" else udp.oneway_window(what, False, 0.0)
    return w.hi_ms


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
