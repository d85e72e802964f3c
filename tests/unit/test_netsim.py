"""The link model against closed forms and Linux's documented TCP behaviour.

Each test states the expectation it checks and where the number comes from:
serialization (bytes·8/rate), slow start (initial window 10, doubling per
RTT), the 200 ms RTO floor and its doubling, tail loss probes, reordering by
independent per-packet jitter, determinism by seed, timeline changes.
"""
from __future__ import annotations

import math
import statistics

import pytest

from lab.sim.netsim import SimError, SleepLinkModel, TcpLinkModel, make_link_model, tbf_burst_bytes
from lab.sim.tcpsim import TcpConfig, timer_fire_ms
from netns.link import LinkPair, LinkSpec

MSS, HDR = 1448, 52


def sym(**kw) -> LinkPair:
    return LinkPair.symmetric(LinkSpec(**kw))


def wire_bytes(n: int) -> int:
    """Payload n bytes → bytes the rate limiter counts (IP packets: payload + 52 per segment)."""
    return n + math.ceil(n / MSS) * HDR


# ------------------------------------------------------------------ closed forms, no loss

def test_one_segment_passes_the_token_bucket_at_once():
    # tbf with a full bucket forwards an isolated packet without waiting: arrival = t + delay.
    m = TcpLinkModel(sym(delay_ms=25, rate_mbit=10))
    assert m.send(100.0, "up", 300) == pytest.approx(125.0, abs=1e-9)
    assert m.send(300.0, "down", 300) == pytest.approx(325.0, abs=1e-9)


def test_one_segment_store_and_forward_pays_size_over_rate():
    # A serial line clocks the whole packet out: t + d + (size + headers)·8/R.
    for rate in (1, 10, 100):
        m = TcpLinkModel(sym(delay_ms=10, rate_mbit=rate), shaper="serial")
        expect = 50.0 + 10.0 + (500 + HDR) * 8 / (rate * 1e3)
        assert m.send(50.0, "up", 500) == pytest.approx(expect, abs=1e-6)


def test_ethernet_bytes_count_when_asked():
    m = TcpLinkModel(sym(delay_ms=0, rate_mbit=1), shaper="serial", l2_bytes=14)
    assert m.send(0.0, "up", 1000) == pytest.approx((1000 + HDR + 14) * 8 / 1e3, abs=1e-6)


def test_megabyte_at_1mbit_is_serialization_bound():
    # 1 MB → 691 segments → 1,035,932 bytes on the wire ≈ 8.29 s at 1 Mbit/s; the first
    # burst (netns/tbf.py: two frames) goes at once; plus the one-way delay.
    n = 1_000_000
    spec = LinkSpec(delay_ms=25, rate_mbit=1)
    m = TcpLinkModel(LinkPair.symmetric(spec))
    t = m.send(0.0, "up", n)
    expect = (wire_bytes(n) - tbf_burst_bytes(spec)) * 8 / 1e3 + 25
    assert t == pytest.approx(expect, rel=0.002)
    assert 8200 < t < 8500
    assert m.stats()["edge_retransmits"] == 0


def test_megabyte_at_100mbit_and_100ms_rtt_takes_slow_start_rounds():
    # Initial window 10, doubling per RTT: 10+20+…+320 = 630 < 691 ≤ 1270 → the last segment
    # leaves in the 7th round: ≈ 6 RTT + one way (serialization is 83 ms, far less).
    m = TcpLinkModel(sym(delay_ms=50, rate_mbit=100))
    t = m.send(0.0, "up", 1_000_000)
    assert 6 * 100 < t < 6 * 100 + 50 + 83 + 20
    # The sleep model would say one way + serialization.
    assert SleepLinkModel(sym(delay_ms=50, rate_mbit=100)).send(0.0, "up", 1_000_000) == pytest.approx(130.0)


def test_cwnd_restarts_after_idle():
    # tcp_slow_start_after_idle = 1: after an RTO of idle the next transfer starts from cwnd 10 again.
    m = TcpLinkModel(sym(delay_ms=50, rate_mbit=100))
    first = m.send(0.0, "up", 1_000_000) - 0.0
    assert m.edge.cwnd > 100
    busy = m.send(first + 1.0, "up", 1_000_000) - (first + 1.0)        # no idle: the window is open
    later = first + 5000.0
    idle = m.send(later, "up", 1_000_000) - later
    assert m.edge.cwnd >= 10
    assert busy < first - 200 and idle == pytest.approx(first, abs=60)


def test_two_messages_queue_behind_each_other():
    # FIFO at the rate: the second message waits for the first to be clocked out.
    m = TcpLinkModel(sym(delay_ms=5, rate_mbit=1), shaper="serial")
    a = m.submit(0.0, "up", 10_000)
    b = m.submit(0.0, "up", 500)
    ta, tb = m.delivered_at(a), m.delivered_at(b)
    assert tb > ta and tb == pytest.approx(5 + (wire_bytes(10_000) + 500 + HDR) * 8 / 1e3, abs=0.5)


def test_sleep_model_is_the_naive_formula():
    m = SleepLinkModel(sym(delay_ms=20, jitter_ms=0, rate_mbit=2))
    assert m.send(10.0, "up", 1000) == pytest.approx(10 + 20 + 1000 * 8 / 2e3)


# ------------------------------------------------------------------ loss: TCP turns it into delay

def _ping(model, n=1500, size=300, gap_ms=20.0):
    """One-segment requests, each answered; returns request delivery latencies."""
    t, lat = 0.0, []
    for _ in range(n):
        a = model.send(t, "up", size)
        lat.append(a - t)
        b = model.send(a + gap_ms, "down", size)
        t = b + gap_ms
    return lat


def test_loss_becomes_retransmission_delay_with_tlp_and_rto_tails():
    # 5 % loss each way, RTT 50 ms: ~95 % arrive after 25 ms; a lost single segment is
    # recovered by the tail loss probe, whose timer (2·srtt + 200 ms with one packet out)
    # is capped by the RTO (srtt + rttvar ≥ srtt + 200 ms) — so ≈ +250 ms — and a lost
    # probe waits for the RTO, doubled (≈ +500 ms and more).
    m = TcpLinkModel(sym(delay_ms=25, loss_pct=5, rate_mbit=10), seed=3)
    lat = _ping(m)
    on_time = sum(1 for x in lat if x < 26) / len(lat)
    assert 0.92 < on_time < 0.975
    late = [x for x in lat if x > 26]
    assert all(x > 25 + 200 for x in late), "a lost segment is never recovered faster than the 200 ms floor"
    first_tail = [x for x in late if x < 400]
    assert len(first_tail) > 0.7 * len(late)
    assert 25 + 240 < statistics.median(first_tail) < 25 + 320
    assert max(lat) > 25 + 500                          # some probes are lost too: backed-off RTO
    s = m.stats()
    assert s["edge_tlp"] > 0 and s["edge_rto"] > 0 and s["edge_retransmits"] >= s["edge_tlp"]
    # The sleep model has no such tail.
    naive = _ping(SleepLinkModel(sym(delay_ms=25, loss_pct=5, rate_mbit=10)), n=300)
    assert max(naive) < 26


def test_rto_floor_and_backoff_under_an_outage():
    # 100 % loss from 20 ms to 2 s.  A one-segment message sent at 30 ms (srtt 10 ms, so RTO =
    # srtt + rttvar(≥ 200 ms) = 212 ms in 4 ms jiffies): tail loss probe at ≈ +212 ms (2·srtt +
    # 200 ms capped by the RTO), then RTOs of 212, 424, 848, 1696 ms (doubling; the timer wheel
    # rounds the longer ones up by ≤ 32 ms).  The copy sent at ≈ 30 + 212·16 ≈ 3.4 s is the first
    # after the outage: it arrives 5 ms later — long after the link came back, which is the tax
    # a sleep model never shows.
    m = TcpLinkModel(sym(delay_ms=5), changes=[(20.0, sym(delay_ms=5, loss_pct=100)), (2000.0, sym(delay_ms=5))])
    assert m.send(0.0, "up", 100) == pytest.approx(5.0)
    t = m.send(30.0, "up", 100)
    assert m.edge.rto_ms == pytest.approx(212.0)
    assert 30 + 212 * 16 < t < 30 + 212 * 16 + 5 + 5 * 36
    s = m.stats()
    assert s["edge_tlp"] == 1 and s["edge_rto"] == 4


def test_fast_recovery_on_a_bulk_transfer():
    # Loss inside a long flight is repaired by SACK/RACK fast recovery, not by timeouts only.
    m = TcpLinkModel(sym(delay_ms=10, loss_pct=1, rate_mbit=100), seed=1)
    t = m.send(0.0, "up", 2_000_000)
    s = m.stats()
    assert s["edge_fast_recovery"] > 0 and s["edge_retransmits"] >= s["up_lost"] * 0.8
    assert t > 2_000_000 * 8 / 1e5                       # at least the serialization time


# ------------------------------------------------------------------ jitter, determinism, timeline

def test_jitter_reorders_packets_and_delivery_stays_in_order():
    m = TcpLinkModel(sym(delay_ms=25, jitter_ms=10, rate_mbit=10), seed=5)
    hs = [m.submit(0.0, "up", 20_000), m.submit(0.0, "up", 300)]
    ta, tb = m.delivered_at(hs[0]), m.delivered_at(hs[1])
    assert m.stats()["up_reordered"] > 0
    assert tb >= ta
    single = [TcpLinkModel(sym(delay_ms=25, jitter_ms=10), seed=s).send(0.0, "up", 100) for s in range(200)]
    assert 15 <= min(single) < 17 and 33 < max(single) <= 35


def test_deterministic_by_seed():
    def run(seed):
        m = TcpLinkModel(sym(delay_ms=25, jitter_ms=5, loss_pct=5, rate_mbit=10), seed=seed)
        return _ping(m, n=200)
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_timeline_changes_take_effect():
    changes = [(1000.0, sym(delay_ms=100, rate_mbit=10))]
    for model in (TcpLinkModel(sym(delay_ms=5, rate_mbit=10), changes=changes),
                  SleepLinkModel(sym(delay_ms=5, rate_mbit=10), changes=changes)):
        before = model.send(0.0, "up", 200)
        after = model.send(2000.0, "up", 200) - 2000.0
        assert before == pytest.approx(5, abs=0.2) and after == pytest.approx(100, abs=0.2)
    m = TcpLinkModel(sym(delay_ms=5))
    m.set_link(50.0, sym(delay_ms=40))
    assert m.send(100.0, "up", 100) == pytest.approx(140.0)


def test_refuses_the_impossible():
    m = TcpLinkModel(sym(delay_ms=5))
    m.send(100.0, "up", 10)
    with pytest.raises(SimError, match="before the simulation clock"):
        m.submit(50.0, "up", 10)
    with pytest.raises(SimError, match="direction"):
        m.submit(200.0, "sideways", 10)
    with pytest.raises(SimError, match="not modelled"):
        TcpLinkModel(sym(), congestion_control="vegas")
    with pytest.raises(SimError, match="link model"):
        make_link_model("pigeon", sym())


def test_reno_and_cubic_both_finish_a_lossy_transfer():
    for cc in ("reno", "cubic"):
        m = TcpLinkModel(sym(delay_ms=20, loss_pct=2, rate_mbit=10), congestion_control=cc, seed=2)
        t = m.send(0.0, "up", 500_000)
        assert 500_000 * 8 / 1e4 < t < 20_000, cc


def test_linux_timer_rounding():
    # HZ=250: a 40 ms delayed-ACK timer fires on the tick after expiry (40–44 ms later);
    # beyond 63 ticks the wheel rounds up to 8 ticks (32 ms).
    assert 40 <= timer_fire_ms(0.0, 40.0, 250) - 0.0 <= 44
    assert 40 <= timer_fire_ms(1.5, 40.0, 250) - 1.5 <= 44
    fire = timer_fire_ms(0.0, 300.0, 250)
    assert 300 <= fire <= 300 + 32 + 4 and fire % 32 == 0
    assert TcpConfig().rto_min_ms == 200 and TcpConfig().init_cwnd_pkts == 10


def test_bbr_keeps_its_window_over_idle_and_loss():
    # BBR (the lab kernel's default) has no restart after idle and does not back off on random loss.
    bbr = TcpLinkModel(sym(delay_ms=50, rate_mbit=100), congestion_control="bbr")
    first = bbr.send(0.0, "up", 1_000_000)
    again = bbr.send(first + 5000.0, "up", 1_000_000) - (first + 5000.0)
    assert again < 0.35 * first and again == pytest.approx(50 + 1_000_000 * 8 / 1e5, rel=0.15)
    lossy = {cc: TcpLinkModel(sym(delay_ms=25, loss_pct=1, rate_mbit=10), congestion_control=cc, seed=1)
             .send(0.0, "up", 1_000_000) for cc in ("bbr", "cubic")}
    assert lossy["bbr"] < 0.5 * lossy["cubic"]
    assert lossy["bbr"] > 1_000_000 * 8 / 1e4             # never faster than the link


def test_delayed_acks_piggyback_in_ping_pong_and_are_quick_otherwise():
    # Replies within ato (40 ms) of a request: ping-pong mode, the request's ACK rides on the reply,
    # so the requester's RTT samples include the reply delay.  Requests an RTO apart with late
    # replies: quickack, the RTT samples are the path's.
    fast = TcpLinkModel(sym(delay_ms=10))
    t = 0.0
    for _ in range(30):
        a = fast.send(t, "up", 200)
        t = fast.send(a + 8.0, "down", 200) + 8.0
    assert fast.edge.srtt_ms == pytest.approx(20 + 8, abs=1.5)
    slow = TcpLinkModel(sym(delay_ms=10))
    t = 0.0
    for _ in range(30):
        a = slow.send(t, "up", 200)
        t = slow.send(a + 300.0, "down", 200) + 300.0
    assert slow.edge.srtt_ms == pytest.approx(20, abs=0.5)


def test_reordering_is_not_mistaken_for_heavy_loss():
    # 60 KB messages over 25 ± 10 ms each way: independent jitter reorders most packets.  RACK's
    # reordering window, DSACK and the undo of spurious recoveries keep the transfer near
    # 1 RTT + pacing/windows (the lab kernel measured P50 89 ms with cubic); RTT samples never
    # drop below the path's minimum (a retransmission's ACK is timed by the echoed timestamp).
    m = TcpLinkModel(sym(delay_ms=25, jitter_ms=10, rate_mbit=100), congestion_control="cubic", seed=0)
    t, lat = 0.0, []
    for _ in range(80):
        a = m.send(t, "up", 60_000)
        b = m.send(a, "down", 20)
        lat.append(b - t)
        t += 300.0
        t = max(t, m.now)
    assert statistics.median(lat[5:]) < 100
    assert m.edge.min_rtt_ms >= 2 * (25 - 10) - 1e-6
    assert m.edge.stats["undo"] > 0


def test_a_duplicate_segment_ends_ping_pong_for_one_quick_ack():
    # tcp_enter_quickack_mode on a duplicate (tcp_data_queue): quick ACKs, ping-pong mode left,
    # ato = TCP_ATO_MIN.  So the next request is ACKed at once (the requester's RTT sample is the
    # path's, 20 ms, not 20 + the 6 ms reply delay) and the reply re-enters ping-pong.  The lab
    # kernel does this after every TLP probe that repeats delivered data: one pure ACK, then
    # piggybacking again.
    m = TcpLinkModel(sym(delay_ms=10))
    t = 0.0
    for _ in range(20):
        a = m.send(t, "up", 200)
        t = m.send(a + 6.0, "down", 200) + 6.0
    samples = []
    sample = m.edge.rtt_sample
    m.edge.rtt_sample = lambda rtt: (samples.append(rtt), sample(rtt))

    def exchange(t):
        a = m.send(t, "up", 200)
        return m.send(a + 6.0, "down", 200) + 6.0, samples[-1]

    t, piggybacked = exchange(t)
    assert piggybacked == pytest.approx(26, abs=0.5)
    m.edge._send_packet(m.edge.snd_una - 200, m.edge.snd_una, m.now)   # an old segment again
    m.run_until(m.now + 30.0)
    assert m.cloud.pingpong_cnt == 0 and m.cloud.ato == m.cfg.ato_min_ms
    t, quick = exchange(max(t, m.now))
    assert quick == pytest.approx(20, abs=0.5)
    t, again = exchange(t)
    assert again == pytest.approx(26, abs=0.5)


def test_loss_without_reordering_never_widens_racks_window():
    """A streamed run over a lossy link that cannot reorder (no jitter): SACK blocks of one ACK arrive
    newest first and TLP probes draw DSACKs, but neither is reordering (tcp_sacktag_write_queue compares
    with prior_fack; tcp_dsack_seen ignores DSACKs before reordering and for TLP probes), so RACK keeps
    reo_wnd at 0 once enough is SACKed — a wider window would add min_rtt/4 to every recovery."""
    spec = LinkSpec(delay_ms=25, loss_pct=5, rate_mbit=10)
    m = TcpLinkModel(LinkPair(spec, spec), congestion_control="bbr", seed=3)
    t = 0.0
    for _ in range(60):                     # cloud-only shape: a request, then 48 tokens 4.5 ms apart
        t = m.send(t, "up", 250)
        hs = [m.submit(t + 4.5 * i, "down", 150) for i in range(48)]
        t = max(m.delivered_at(h) for h in hs) + 1.0
    assert m.stats()["cloud_fast_recovery"] + m.stats()["cloud_tlp"] > 10     # there was loss to recover
    for ep in (m.edge, m.cloud):
        assert not ep.reord_seen and ep.reo_wnd_steps == 1


def test_a_rearmed_timer_queues_one_event_and_fires_once_where_last_armed():
    # The kernel keeps one retransmission timer per socket; re-arming it moves it.  The model queues
    # a wake-up only when none is queued at or before the new time, and fires the last arming only.
    from lab.sim.tcpcc import RTO, TLP
    m = TcpLinkModel(sym(delay_ms=25))
    ep, fired = m.edge, []
    ep.on_timer = lambda now, kind, gen: fired.append((now, kind))
    queued = lambda: sum(1 for e in m._heap if getattr(e[2], "__name__", "") == "_timer_due")
    ep._arm(TLP, 100.0, 0.0)
    ep._arm(RTO, 300.0, 10.0)
    ep._arm(RTO, 500.0, 20.0)
    assert queued() == 1                                   # later re-armings wait behind the first
    m.run_until(2000.0)
    assert fired == [(timer_fire_ms(20.0, 500.0, 250), RTO)]
    fired.clear()
    ep._arm(RTO, 500.0, 2000.0)
    ep._arm(TLP, 40.0, 2000.0)                             # earlier than the queued one: queued too
    assert queued() == 2
    m.run_until(4000.0)
    assert fired == [(timer_fire_ms(2000.0, 40.0, 250), TLP)]   # the stale later wake-up does nothing
    fired.clear()
    ep._arm(RTO, 200.0, 4000.0)
    ep._arm(None, 0, 4000.0)                               # stopped
    m.run_until(6000.0)
    assert fired == []


@pytest.mark.parametrize("cc", ["cubic", "bbr"])
def test_lazy_timer_runs_the_same_events_as_one_event_per_arming(monkeypatch, cc):
    # The retransmission timer queues one wake-up for many re-armings; the events that act must run
    # as they would with an event queued per arming, on a link that loses, reorders and delays.
    import lab.sim.netsim as netsim
    from lab.sim.tcpsim import TcpEndpoint

    class Eager(TcpEndpoint):
        def _arm(self, kind, timeout_ms, now):
            self.timer_gen += 1
            self.timer_kind = kind
            if kind is not None:
                off = self.net.clock_offset_ms
                self.net.schedule(timer_fire_ms(now + off, timeout_ms, self.cfg.hz) - off, self.on_timer, kind,
                                  self.timer_gen)

    def exchange():
        m = TcpLinkModel(sym(delay_ms=20, jitter_ms=8, loss_pct=5, rate_mbit=10), congestion_control=cc, seed=7)
        t, out = 0.0, []
        for i in range(150):
            t = m.send(t, "up", 300 + 2000 * (i % 4 == 0))
            t = m.send(t + 1.0, "down", 120 + 30000 * (i % 25 == 0))
            out.append(round(t, 9))
        return out, m.stats()

    lazy = exchange()
    monkeypatch.setattr(netsim, "TcpEndpoint", Eager)
    eager = exchange()
    assert lazy == eager
    assert lazy[1]["edge_retransmits"] + lazy[1]["cloud_retransmits"] > 0     # timers did fire
