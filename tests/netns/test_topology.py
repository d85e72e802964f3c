"""The link for real: up, read back, measure, change mid-connection, loss → retransmissions, down, cleanup."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from netns.counters import tcp_counters
from netns.link import LinkError
from netns.topology import cleanup_stale
from tests.netns.conftest import (
    BACKEND, PREFIX, check_rtts, expect_rtt, ip_netns_list, median, pingpong, pingpong_baseline, sym,
)

pytestmark = pytest.mark.root


def test_up_read_back_measure_down(topo):
    link = sym(delay_ms=10, rate_mbit=50)
    topo.up(link)
    assert {topo.edge_ns, topo.cloud_ns} <= set(ip_netns_list())
    rb = topo.read_back()
    for d in ("uplink", "downlink"):
        assert rb[d]["delay_ms"] == pytest.approx(10)
        assert rb[d]["rate_mbit"] == pytest.approx(50, rel=0.01)
    assert rb["backend"] == topo.backend_name and rb["congestion_control"]

    def measure():
        base = pingpong_baseline(topo)
        res = pingpong(topo, count=30)
        rtts = [r for _, r in res["samples"]]
        assert res["broke"] is None and len(rtts) == 30
        return [(median(rtts), expect_rtt(20, 2.0, base))]
    check_rtts(measure)
    topo.down()
    assert not [n for n in ip_netns_list() if n.startswith(PREFIX)]


def test_change_mid_connection_keeps_tcp_and_rtt_follows(topo):
    topo.up(sym(delay_ms=5))
    took = []

    def measure():
        topo.change(sym(delay_ms=5))
        base = pingpong_baseline(topo)
        res = pingpong(topo, count=80, interval_ms=25,
                       change=lambda: took.append(topo.change(sym(delay_ms=40))))
        assert res["broke"] is None, res["broke"]
        rtts = [r for _, r in res["samples"]]
        assert len(rtts) == 80
        return [(median(rtts[:20]), expect_rtt(10, 2.0, base)), (median(rtts[-20:]), expect_rtt(80, 3.0, base))]
    check_rtts(measure)
    print(f"change applied in {took[-1]:.2f} ms")


@pytest.mark.parametrize("loss_pct", [0, 5])
def test_loss_becomes_kernel_retransmissions(topo, loss_pct):
    topo.up(sym(delay_ms=5, loss_pct=loss_pct, rate_mbit=20))
    before = {ns: tcp_counters(ns) for ns in (topo.edge_ns, topo.cloud_ns)}
    res = pingpong(topo, count=60, interval_ms=5, size=20000)
    after = {ns: tcp_counters(ns) for ns in (topo.edge_ns, topo.cloud_ns)}
    assert res["broke"] is None
    retrans = sum(after[ns]["RetransSegs"] - before[ns]["RetransSegs"] for ns in after)
    if loss_pct:
        assert retrans > 0
    else:
        assert retrans == 0


def test_asymmetric_link_reads_back_per_direction(topo):
    from netns.link import LinkPair, LinkSpec
    link = LinkPair(uplink=LinkSpec(delay_ms=20, rate_mbit=5), downlink=LinkSpec(delay_ms=10, rate_mbit=50))
    topo.up(link)
    rb = topo.read_back()
    assert rb["uplink"]["delay_ms"] == 20 and rb["downlink"]["delay_ms"] == 10
    assert rb["uplink"]["rate_mbit"] == pytest.approx(5, rel=0.01)
    assert rb["downlink"]["rate_mbit"] == pytest.approx(50, rel=0.01)

    def measure():
        base = pingpong_baseline(topo)
        res = pingpong(topo, count=20)
        return [(median([r for _, r in res["samples"]]), expect_rtt(30, 2.0, base))]
    check_rtts(measure)


CRASHER = """
import sys, time, os, signal
signal.signal(signal.SIGINT, signal.default_int_handler)   # Ctrl-C as in a terminal, even if started ignored
sys.path.insert(0, {root!r})
from netns.topology import Topology
from netns.link import LinkPair, LinkSpec
t = Topology(backend={backend!r}, prefix={prefix!r})
t.up(LinkPair.symmetric(LinkSpec(delay_ms=5)))
print("up", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_is_cleaned_at_next_start(sig):
    prefix = PREFIX + "k"[:1] + "-"
    code = CRASHER.format(root=str(Path(__file__).resolve().parents[2]), backend=BACKEND, prefix=prefix)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
        p.send_signal(sig)
        p.wait(10)
        # The victim's namespaces may still be there (SIGKILL leaves them); the next start cleans them.
        removed = cleanup_stale(PREFIX)
        left = [n for n in ip_netns_list() if n.startswith(prefix)]
        assert not left, f"left after cleanup: {left} (removed {removed})"
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10).stdout
        assert "sdl-" not in links
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        cleanup_stale(prefix, force=True)


def test_netem_request_on_kernel_without_it_is_one_line():
    from netns.backends import choose_backend, netem_available
    if netem_available():
        pytest.skip("this kernel has sch_netem")
    with pytest.raises(LinkError) as e:
        choose_backend("netem")
    assert "\n" not in str(e.value) and "sch_netem" in str(e.value) and "--backend wire" in str(e.value)


def test_congestion_control_per_namespace_is_applied_and_recorded():
    from netns.nsexec import in_namespace
    from netns.topology import Topology

    def read_cc():
        with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
            return f.read().strip()
    t = Topology(backend=BACKEND, congestion_control="reno", prefix=PREFIX)
    try:
        t.up(sym(delay_ms=1))
        assert t.read_back()["congestion_control"] == "reno"
        assert in_namespace(t.edge_ns, read_cc) == "reno" and in_namespace(t.cloud_ns, read_cc) == "reno"
    finally:
        t.down()
    with pytest.raises(LinkError, match="not available"):
        Topology(backend=BACKEND, congestion_control="no-such-cc", prefix=PREFIX).up(sym(delay_ms=1))
    assert not [n for n in ip_netns_list() if n.startswith(PREFIX)]


def _allowed_cc() -> str:
    with open("/proc/sys/net/ipv4/tcp_allowed_congestion_control") as f:
        return f.read().strip()


def _cc_not_allowed_in_root() -> str:
    with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as f:
        available = f.read().split()
    extra = [c for c in available if c not in _allowed_cc().split()]
    if not extra:
        pytest.skip("every available congestion control is already allowed in the root namespace")
    return extra[0]


def test_root_allowed_congestion_control_is_restored_on_teardown():
    from netns.topology import Topology
    before, cc = _allowed_cc(), _cc_not_allowed_in_root()
    t = Topology(backend=BACKEND, congestion_control=cc, prefix=PREFIX)
    try:
        t.up(sym(delay_ms=1))
        assert cc in _allowed_cc().split()       # the per-namespace setting needs it there
    finally:
        t.down()
    assert _allowed_cc() == before


def test_root_allowed_congestion_control_is_restored_after_a_killed_run():
    """SIGKILL: no teardown of its own; the next run's stale cleanup takes the algorithm back."""
    before, cc = _allowed_cc(), _cc_not_allowed_in_root()
    prefix = PREFIX + "c-"
    code = CRASHER.format(root=str(Path(__file__).resolve().parents[2]), backend=BACKEND, prefix=prefix)
    code = code.replace(f"prefix={prefix!r})", f"prefix={prefix!r}, congestion_control={cc!r})")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "up"
        assert cc in _allowed_cc().split()
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        cleanup_stale(PREFIX)
        assert _allowed_cc() == before
        assert not [n for n in ip_netns_list() if n.startswith(prefix)]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
        cleanup_stale(prefix, force=True)


def test_a_vanished_namespace_is_detected_and_teardown_still_completes(topo):
    from netns.topology import TopologyError
    topo.up(sym(delay_ms=1))
    topo.check_intact()
    subprocess.run(["ip", "netns", "delete", topo.cloud_ns], check=True, timeout=10)
    with pytest.raises(TopologyError, match=f"{topo.cloud_ns} vanished under the run"):
        topo.check_intact()
    topo.down()
    assert not [n for n in ip_netns_list() if n.startswith(PREFIX)]


def test_a_recreated_namespace_is_not_ours_and_is_left_alone(topo):
    """Teardown removes only what it made: a name someone re-created belongs to them."""
    from netns.topology import TopologyError
    topo.up(sym(delay_ms=1))
    subprocess.run(["ip", "netns", "delete", topo.cloud_ns], check=True, timeout=10)
    subprocess.run(["ip", "netns", "add", topo.cloud_ns], check=True, timeout=10)
    try:
        with pytest.raises(TopologyError, match="replaced under the run"):
            topo.check_intact()
        topo.down()
        assert topo.cloud_ns in ip_netns_list() and topo.edge_ns not in ip_netns_list()
    finally:
        subprocess.run(["ip", "netns", "delete", topo.cloud_ns], timeout=10)


def test_a_second_run_refuses_and_touches_nothing(topo):
    """Another process (no share in this session's lock) bringing a topology up refuses at once, naming
    this run; ours is untouched."""
    topo.up(sym(delay_ms=1))
    code = CRASHER.format(root=str(Path(__file__).resolve().parents[2]), backend=BACKEND, prefix=PREFIX)
    env = {k: v for k, v in os.environ.items() if k != "SDLAB_LAB_LOCK"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0 and "LabBusy" in r.stderr, r.stderr[-2000:]
    assert f"pid {os.getpid()}" in r.stderr and "pytest tests/netns" in r.stderr
    topo.check_intact()
    assert {topo.edge_ns, topo.cloud_ns} <= set(ip_netns_list())
