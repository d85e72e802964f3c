"""The netem backend's plan (pure data) and its kernel-unit conversions; no root, no sch_netem needed."""
import pytest

from netns.link import LinkError, LinkPair, LinkSpec
from netns.netem import (IFB_CLOUD, IFB_EDGE, INGRESS_HANDLE, NETEM_HANDLE, TBF_HANDLE, TBF_PARENT, U32_FULL,
                         NetemBackend, QdiscOp, netem_options, netem_to_spec_fields, ns_per_tick, plan)
from netns.topology import VETH_CLOUD, VETH_EDGE

E, C = "sdl-x-edge", "sdl-x-cloud"


def sym(**kw) -> LinkPair:
    return LinkPair.symmetric(LinkSpec(**kw))


def by(ops, **match):
    return [o for o in ops if all(getattr(o, k) == v for k, v in match.items())]


def test_netem_options_are_kernel_facing_and_complete():
    spec = LinkSpec(delay_ms=25.5, jitter_ms=2.25, loss_pct=5, rate_mbit=10)
    o = netem_options(spec)
    # Every option named (a replace resets what it omits), µs for times, percent, packets.
    assert o == {"delay": 25500, "jitter": 2250, "loss": 5.0, "limit": spec.effective_limit_pkts()}


def test_limit_comes_from_the_bdp_not_netems_default():
    spec = LinkSpec(delay_ms=250, rate_mbit=100)
    # 100 Mbit/s × 250 ms = 3.125 MB; twice that in 1500-byte packets is 4167 > netem's default 1000.
    assert netem_options(spec)["limit"] == 4167 == spec.effective_limit_pkts()
    assert netem_options(LinkSpec(delay_ms=1, limit_pkts=77))["limit"] == 77


def test_egress_plan_first_apply():
    ops = plan(sym(delay_ms=10, rate_mbit=50), E, C, placement="egress")
    assert [(o.verb, o.ns, o.dev, o.kind) for o in ops] == [
        ("add", E, VETH_EDGE, "netem"), ("add", E, VETH_EDGE, "tbf"),
        ("add", C, VETH_CLOUD, "netem"), ("add", C, VETH_CLOUD, "tbf")]
    netem, tbf = ops[0], ops[1]
    assert netem.handle == NETEM_HANDLE and netem.parent is None
    assert tbf.parent == TBF_PARENT and tbf.handle == TBF_HANDLE
    assert tbf.options["rate"] == "50000000bit"
    assert tbf.options["burst"] == 12500      # 2 ms at 50 Mbit/s
    assert tbf.options["latency"] == "25000us"  # RTT 20 ms + 5 ms


def test_ifb_plan_redirects_each_receivers_ingress_and_shapes_there():
    ops = plan(LinkPair(uplink=LinkSpec(delay_ms=30), downlink=LinkSpec(delay_ms=5, rate_mbit=2)), E, C,
               placement="ifb")
    # uplink (edge → cloud) is shaped where it arrives: the cloud's IFB; downlink on the edge's IFB.
    assert by(ops, verb="link-add", ns=C, dev=IFB_CLOUD, kind="ifb")
    assert by(ops, verb="link-add", ns=E, dev=IFB_EDGE, kind="ifb")
    for ns, veth, ifb in ((C, VETH_CLOUD, IFB_CLOUD), (E, VETH_EDGE, IFB_EDGE)):
        assert by(ops, verb="add", ns=ns, dev=veth, kind="ingress", handle=INGRESS_HANDLE)
        (f,) = by(ops, verb="add-filter", ns=ns, dev=veth)
        assert f.kind == "u32" and f.parent == INGRESS_HANDLE and f.redirect_to == ifb
    (up,) = by(ops, kind="netem", dev=IFB_CLOUD)
    (down,) = by(ops, kind="netem", dev=IFB_EDGE)
    assert up.ns == C and up.options["delay"] == 30000
    assert down.ns == E and down.options["delay"] == 5000
    assert by(ops, kind="tbf", dev=IFB_EDGE) and not by(ops, kind="tbf", dev=IFB_CLOUD)
    # Devices and redirects come before the qdiscs that use them.
    first_netem = min(i for i, o in enumerate(ops) if o.kind == "netem")
    assert all(o.kind in ("ifb", "ingress", "u32") for o in ops[:first_netem])


@pytest.mark.parametrize("placement", ["ifb", "egress"])
def test_change_replaces_with_the_full_spec_and_never_rebuilds_devices(placement):
    old = sym(delay_ms=10, rate_mbit=50, loss_pct=1)
    new = sym(delay_ms=40, jitter_ms=3, rate_mbit=20)
    ops = plan(new, E, C, placement=placement, current=old)
    assert not by(ops, verb="link-add") and not by(ops, verb="add-filter") and not by(ops, kind="ingress")
    netems = by(ops, kind="netem")
    assert len(netems) == 2 and all(o.verb == "replace" for o in netems)
    assert all(o.options == {"delay": 40000, "jitter": 3000, "loss": 0.0, "limit": 1000} for o in netems)
    tbfs = by(ops, kind="tbf")
    assert len(tbfs) == 2 and all(o.verb == "replace" and o.options["rate"] == "20000000bit" for o in tbfs)


def test_change_adds_and_removes_the_rate_stage():
    ops = plan(sym(delay_ms=5), E, C, placement="egress", current=sym(delay_ms=5, rate_mbit=10))
    dels = by(ops, kind="tbf")
    assert [o.verb for o in dels] == ["del", "del"] and all(o.handle == TBF_HANDLE for o in dels)
    ops = plan(sym(delay_ms=5, rate_mbit=10), E, C, placement="egress", current=sym(delay_ms=5))
    assert [o.verb for o in by(ops, kind="tbf")] == ["add", "add"]
    ops = plan(sym(delay_ms=5), E, C, placement="egress", current=sym(delay_ms=1))
    assert not by(ops, kind="tbf")


def test_ops_print_like_tc_commands():
    ops = plan(sym(delay_ms=25, loss_pct=5, rate_mbit=10), E, C, placement="ifb")
    text = "\n".join(map(str, ops))
    assert f"[{C}] tc filter add dev {VETH_CLOUD} parent ffff: prio 1 protocol all u32 match u32 0 0 " \
           f"action mirred " \
           f"egress redirect dev {IFB_CLOUD}" in text
    assert f"[{C}] tc qdisc add dev {IFB_CLOUD} root handle 1: netem delay 25000 jitter 0 loss 5.0 limit 1000" in text
    assert f"tc qdisc add dev {IFB_EDGE} parent 1:1 handle 10: tbf rate 10000000bit burst 3028 latency 55000us" in text
    assert str(QdiscOp("link-add", E, IFB_EDGE, "ifb")).startswith(f"[{E}] ip link add name {IFB_EDGE} type ifb")


def test_kernel_units_convert_back_to_linkspec_units():
    # What the kernel reports for delay 25 ms, jitter 2.5 ms, loss 5 %, limit 1250 (64 ns ticks, 2³² fraction).
    raw = {"delay": 390625, "jitter": 39062, "loss": int(U32_FULL * 5 / 100), "limit": 1250}
    got = netem_to_spec_fields(raw)
    assert got["delay_ms"] == pytest.approx(25.0)
    assert got["jitter_ms"] == pytest.approx(2.5, abs=1e-4)
    assert got["loss_pct"] == pytest.approx(5.0, abs=1e-6)
    assert got["limit_pkts"] == 1250


def test_ns_per_tick_from_psched():
    assert ns_per_tick("000003e8 00000040 000f4240 3b9aca00\n") == 64.0
    assert ns_per_tick("000003e8 000003e8 000f4240 3b9aca00\n") == 1000.0


def test_unknown_placement_is_a_link_error():
    with pytest.raises(LinkError, match="placement"):
        plan(sym(delay_ms=1), E, C, placement="middle")

    class FakeTopo:
        edge_ns, cloud_ns, link = E, C, None
    with pytest.raises(LinkError, match="placement"):
        NetemBackend(FakeTopo(), placement="middle")
