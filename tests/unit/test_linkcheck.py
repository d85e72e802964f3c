"""linkcheck's plan and judging, on synthetic measurements (no root, no network)."""
from __future__ import annotations

import math

import pytest

from netns.link import LinkPair, LinkSpec
from netns.fidelity.linkcheck import (
    Point, _goodput_row, _jitter_rows, _loss_rows, _oneway_rows, _rtt_rows, format_table, plan,
)
from netns.fidelity.tcg import TcgBaseline, Unimpaired
from netns.fidelity.probe import GoodputRun
from netns.fidelity.probe_stats import DirectionStats, EchoStats, Goodput, warmup_s


def _echo(rtt=50.0, up=25.0, down=25.0, std_up=0.0, std_down=0.0, sent=1000, lost_up=0, lost_down=0):
    """Hand-made stats whose every quantile (P10 judged in a TCG guest, P50 on hardware) is the value."""
    u = DirectionStats(sent, sent - lost_up, up, up, std_up, 0, delay_p10_ms=up, delay_p25_ms=up)
    d = DirectionStats(sent - lost_up, sent - lost_up - lost_down, down, down, std_down, 0,
                       delay_p10_ms=down, delay_p25_ms=down)
    return EchoStats(u, d, rtt, rtt, rtt, rtt_p10_ms=rtt, rtt_p25_ms=rtt)


def test_plan_covers_the_brief_and_fits_the_time_budget():
    full, quick = plan(False), plan(True)
    assert sorted({p.link.rtt_ms for p in full if p.check == "rtt"}) == [0, 10, 50, 200, 500]
    assert {(p.link.uplink.rate_mbit, p.link.rtt_ms) for p in full if p.check == "goodput"} == {
        (r, t) for r in (1, 10, 100) for t in (0, 100)}
    assert {p.link.uplink.loss_pct for p in full if p.check == "loss"} == {1.0, 5.0}
    asym = [p for p in full if p.check == "asym"][0]
    assert asym.link.uplink != asym.link.downlink and asym.goodput_dirs == ("uplink", "downlink")

    def budget_s(points):   # probe time only; topology changes and process starts add ~0.5 s a point
        t = 0.0
        for p in points:
            t += p.echo_count * p.echo_interval_ms / 1000 + 2 * p.link.rtt_ms / 1000
            t += len(p.goodput_dirs) * (warmup_s(p.link.rtt_ms) + p.measure_s)
        return t + 0.5 * len(points)
    assert budget_s(quick) < 50
    assert budget_s(full) < 180


def test_a_tcg_plan_caps_goodput_rates_the_emulated_guest_cannot_fill():
    from netns.fidelity.linkcheck import TCG_MAX_RATE_MBIT
    tcg_goodput = [p for p in plan(True, tcg=True) if p.check == "goodput"]
    assert {(p.link.uplink.rate_mbit, p.link.rtt_ms) for p in tcg_goodput} == {(10, 0), (TCG_MAX_RATE_MBIT, 100)}
    assert all(p.measure_s > q.measure_s for p, q in zip(tcg_goodput, [p for p in plan(True) if p.check == "goodput"]))
    full = [(p.link.uplink.rate_mbit, p.link.rtt_ms) for p in plan(False, tcg=True) if p.check == "goodput"]
    assert len(full) == len(set(full)) and max(r for r, _ in full) == TCG_MAX_RATE_MBIT
    assert [p.check for p in plan(True, tcg=True)] == [p.check for p in plan(True)]   # same points otherwise


def test_a_tcg_plan_caps_the_asymmetric_rates_too_and_waits_longer_for_slow_start():
    from netns.fidelity.linkcheck import TCG_MAX_RATE_MBIT, TCG_WINDOW_FACTOR
    host, tcg = ([p for p in plan(True, tcg=t) if p.goodput_dirs] for t in (False, True))
    h_asym, t_asym = host[-1], tcg[-1]
    assert h_asym.link.downlink.rate_mbit > TCG_MAX_RATE_MBIT                     # the host point is faster
    assert t_asym.link.downlink.rate_mbit == TCG_MAX_RATE_MBIT and t_asym.link.uplink.rate_mbit == 5
    assert (t_asym.link.uplink.delay_ms, t_asym.link.downlink.delay_ms) == (10, 40)   # delays untouched
    for h, t in zip(host, tcg):
        assert h.skip_s is None                                                   # the probe's default warm-up
        assert t.skip_s == pytest.approx(TCG_WINDOW_FACTOR * warmup_s(t.link.rtt_ms))
        assert t.measure_s == pytest.approx(TCG_WINDOW_FACTOR * h.measure_s)


def test_rtt_tolerance_depends_on_backend():
    p = Point("rtt", LinkPair.symmetric(LinkSpec(delay_ms=25)))
    assert _rtt_rows(p, "wire", _echo(rtt=51.2))[0].ok
    assert not _rtt_rows(p, "netem", _echo(rtt=51.2))[0].ok
    row = _rtt_rows(p, "netem", _echo(rtt=50.25))[0]
    assert row.ok and math.isclose(row.severity, 0.5)


# The slower host of the issue: RTT 0 read 2.54 ms in the guest, a correct netem at RTT 50 read 54.20
# (a fixed ±3.5 ms failed it); spreads and timer as this host's guest measures them.
SLOW = TcgBaseline(rtt=Unimpaired(2.54, 0.6), uplink=Unimpaired(1.3, 0.3), downlink=Unimpaired(1.2, 0.3),
                   timer_ms=0.85, echoes=300)


def test_tcg_rows_are_judged_against_the_guests_own_baseline():
    p = Point("rtt", LinkPair.symmetric(LinkSpec(delay_ms=25)))
    row = _rtt_rows(p, "netem+tcg", _echo(rtt=54.20), SLOW)[0]
    assert row.ok and row.backend == "netem+tcg" and row.tolerance == "+1.44…+5.34 ms"
    assert row.measured == "P10 54.20 ms"                           # the fast end, which is what is judged
    # a delay 10 % off still fails: 55 or 45 ms where 50 was configured, read with the same excess
    assert not _rtt_rows(p, "netem+tcg", _echo(rtt=55 + 4.20), SLOW)[0].ok
    assert not _rtt_rows(p, "netem+tcg", _echo(rtt=45 + 4.20), SLOW)[0].ok
    # at delay 0 no timer is crossed: the window is the baseline's ± tolerance
    p0 = Point("rtt", LinkPair.symmetric(LinkSpec()))
    assert _rtt_rows(p0, "netem+tcg", _echo(rtt=2.9), SLOW)[0].ok
    assert not _rtt_rows(p0, "netem+tcg", _echo(rtt=4.0), SLOW)[0].ok
    assert not _rtt_rows(p, "netem", _echo(rtt=50.6))[0].ok       # real hardware keeps ±0.5 ms
    assert _rtt_rows(p, "netem", _echo(rtt=50.4))[0].tolerance == "±0.5 ms"


def test_tcg_one_way_rows_use_each_directions_baseline():
    p = Point("asym", LinkPair(uplink=LinkSpec(delay_ms=10), downlink=LinkSpec(delay_ms=40)))
    up, down = _oneway_rows(p, "netem+tcg", _echo(up=10 + 1.9, down=40 + 1.6), SLOW)
    assert up.ok and down.ok
    up, down = _oneway_rows(p, "netem+tcg", _echo(up=10 + 1.9, down=44 + 1.6), SLOW)   # downlink 10 % long
    assert up.ok and not down.ok


def test_jitter_judged_per_direction_against_j_over_root3():
    p = Point("jitter", LinkPair.symmetric(LinkSpec(delay_ms=25, jitter_ms=10)))
    want = 10 / math.sqrt(3)
    up, down = _jitter_rows(p, "wire", _echo(std_up=want * 1.05, std_down=want * 1.2))
    assert up.ok and not down.ok
    assert up.check == "jitter up" and down.check == "jitter down"


def test_tcg_jitter_is_judged_by_the_iqr_which_late_outliers_barely_move():
    import random
    from netns.fidelity.probe_stats import analyse_echo
    p = Point("jitter", LinkPair.symmetric(LinkSpec(delay_ms=25, jitter_ms=10)))
    rng = random.Random(3)
    n, ms = 1500, 1_000_000
    # uniform ±10 ms each way; 5 % of the uplink packets another 15 ms late (a busy TCG host)
    up = [25 + rng.uniform(-10, 10) + (15 if rng.random() < 0.05 else 0) for _ in range(n)]
    down = [25 + rng.uniform(-10, 10) for _ in range(n)]
    sent = [[i, i * 2 * ms] for i in range(n)]
    refl = [[i, t + int(u * ms), t + int(u * ms)] for (i, t), u in zip(sent, up)]
    replies = [[i, t, r, r, r + int(d * ms)] for (i, t), (_, r, _), d in zip(sent, refl, down)]
    st = analyse_echo(sent, refl, replies)
    host_up, host_down = _jitter_rows(p, "netem", st)
    tcg_up, tcg_down = _jitter_rows(p, "netem+tcg", st)
    assert not host_up.ok and host_down.ok        # the std reads the outliers: real hardware has none
    assert tcg_up.ok and tcg_down.ok               # the IQR does not
    assert tcg_up.configured == "±10 ms: IQR 10.00" and "std" in tcg_up.measured
    # … and still catches a wrong jitter: ±5 ms where ±10 was configured
    half = [[i, t, r, r, r + int((25 + rng.uniform(-5, 5)) * ms)] for (i, t), (_, r, _) in zip(sent, refl)]
    assert not _jitter_rows(p, "netem+tcg", analyse_echo(sent, refl, half))[1].ok


def test_loss_inside_and_outside_the_binomial_region():
    p = Point("loss", LinkPair.symmetric(LinkSpec(loss_pct=5)))
    up, down = _loss_rows(p, "wire", _echo(sent=3000, lost_up=150, lost_down=60))
    assert up.ok and up.severity == 0.0
    assert not down.ok        # 60 of 2850 is 2.1 %: far below 5 %
    none = Point("loss", LinkPair.symmetric(LinkSpec()))
    assert not _loss_rows(none, "wire", _echo(lost_up=1))[0].ok    # a lossless link loses nothing


def _run(mbit, direction="uplink"):
    return GoodputRun(direction, Goodput(mbit, 4.0, 1.0, int(mbit * 5e5), mbit), mbit, 1448, 0, "bbr", 1.0, (), {})


def test_goodput_ceiling_depends_on_the_device_tbf_sits_on():
    spec = LinkSpec(rate_mbit=10)
    # wire shapes a TUN device (no L2 header): ceiling 9.653; netem a veth: 9.564.
    assert _goodput_row("goodput", "wire", spec, _run(9.60)).ok
    assert "9.653" in _goodput_row("goodput", "wire", spec, _run(9.60)).configured
    assert "9.564" in _goodput_row("goodput", "netem", spec, _run(9.60)).configured
    assert not _goodput_row("goodput", "netem", spec, _run(9.0)).ok


def test_table_has_every_column_and_a_row_per_result():
    p = Point("rtt", LinkPair.symmetric(LinkSpec(delay_ms=5)))
    rows = _rtt_rows(p, "wire", _echo(rtt=10.3)) + _rtt_rows(p, "wire", _echo(rtt=20.0))
    lines = format_table(rows)
    assert lines[0].split(" | ")[0].strip() == "check"
    assert [c.strip() for c in lines[0].split("|")] == [
        "check", "backend", "configured", "measured", "deviation", "tolerance", "ok"]
    assert lines[2].endswith("ok") and lines[3].endswith("FAIL")
    assert len(lines) == 4


class _FakeTopology:
    """What check_backend asks of a Topology, recording the links it is set to."""
    backend_name, edge_ns, cloud_ns = "netem", "sdl-e", "sdl-c"

    def __init__(self, **kw):
        self.links: list = []

    def up(self, link):
        self.links.append(link)

    def change(self, link):
        self.links.append(link)
        return 1.0

    def popen(self, *a, **kw):
        raise AssertionError("the probes are faked")

    def down(self):
        self.links.append("down")


def _check_with(monkeypatch, readings: list[float], tcg: bool):
    """check_backend over one RTT 50 point whose successive echoes read `readings` (ms)."""
    import netns.fidelity.linkcheck as lc
    import netns.topology
    topo = _FakeTopology()
    monkeypatch.setattr(netns.topology, "Topology", lambda **kw: topo)
    monkeypatch.setattr(lc, "measure_tcg_baseline", lambda spawn, addrs: SLOW)
    monkeypatch.setattr(lc, "side_drops", lambda t: {"edge": 0, "cloud": 0})
    left = list(readings)
    monkeypatch.setattr(lc, "run_udp_echo", lambda spawn, **kw: _echo(rtt=left.pop(0)))
    p = Point("rtt", LinkPair.symmetric(LinkSpec(delay_ms=25)), echo_count=10)
    lines: list[str] = []
    rows = lc.check_backend("netem", [p], lines.append, tcg=tcg)
    return rows, lines, topo.links, left


def test_tcg_delay_outside_its_window_is_measured_once_more_and_the_second_decides(monkeypatch):
    rows, lines, links, left = _check_with(monkeypatch, [50 + 7.0, 50 + 3.0], tcg=True)
    assert [r.ok for r in rows] == [True] and rows[0].measured == "P10 53.00 ms" and left == []
    assert any("outside +1.44…+5.34 ms — measuring the baseline and the point again" in x for x in lines)
    sym0, d25 = LinkPair.symmetric(LinkSpec()), LinkPair.symmetric(LinkSpec(delay_ms=25))
    assert links == [sym0, d25, sym0, d25, "down"]          # the baseline at delay 0, then the point again


def test_a_wrong_delay_fails_both_measurements(monkeypatch):
    rows, lines, _, left = _check_with(monkeypatch, [55 + 3.0, 55 + 3.0], tcg=True)     # 10 % long
    assert [r.ok for r in rows] == [False] and left == []


def test_on_hardware_a_delay_is_measured_once(monkeypatch):
    rows, lines, _, left = _check_with(monkeypatch, [50.7, 50.0], tcg=False)
    assert [r.ok for r in rows] == [False] and left == [50.0]
    assert not any("again" in x for x in lines)
