"""The `netem` backend: kernel netem + tbf on the veth pair, programmed with pyroute2.

Plan, then apply.  `plan()` turns a LinkPair (and what is applied now) into
a list of `QdiscOp`s — pure data in the units pyroute2 hands the kernel
(µs, percent, packets, bit/s) — so the tc layout is unit-tested on hosts
without sch_netem and printable for the record.  `apply_ops()` is the only
code that talks netlink.

Layout per direction, on one device (the "shaping device"):

    root 1:  netem  delay/jitter (uniform) / loss (Bernoulli) / limit = LinkSpec.effective_limit_pkts()
      └ 1:1 → 10:  tbf  rate (netns/tbf.py sizing), only when rate_mbit is set

netem first, then tbf: the delay line holds at most `limit` packets (the
LinkSpec's `limit_pkts`, sized from the BDP so netem's default 1000 does
not drop at high delay×rate), and the bottleneck queue is tbf's, sized
exactly as the wire backend sizes its tbf.

Placement — where the shaping device sits (`PLACEMENTS`):
* "ifb" (default): the receiver's ingress.  The receiving veth end gets an
  ingress qdisc whose match-all filter redirects every packet to an IFB
  device in the same namespace (`ingress_redirect_ops`, which the wire
  backend uses too); netem + tbf shape the IFB's egress.  The
  sender's TCP stack never sees the netem queue, so TCP small queues (TSQ)
  cannot throttle the sender against packets that are merely "in flight"
  in the emulated path.
* "egress": the sender's own veth egress.  Simpler, but TSQ counts packets
  sitting in netem's delay line against the socket's budget, which distorts
  bulk throughput at high bandwidth-delay products (DESIGN.md pitfalls).
Chosen by measurement in the VM (vm/run.py): the comment at DEFAULT_PLACEMENT
has the figures.  `SDLAB_NETEM_PLACEMENT=egress` selects the other one.

Run-time changes replace netem with the full spec (a replace that names
every option, so nothing silently resets), replace/add/delete tbf as the
rate appears or disappears, and never touch the device or the filters, so
connections survive.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from netns.link import LinkError, LinkPair, LinkSpec
from netns.names import IFB_CLOUD, IFB_EDGE, VETH_CLOUD, VETH_EDGE
from netns.tbf import tbf_options

PLACEMENTS = ("ifb", "egress")
# Chosen by measurement: the linkcheck quick points plus bulk TCP at 100 Mbit/s with 200 and 500 ms
# RTT, both placements in one VM boot (Debian 6.1 under qemu TCG, 2 vCPUs, idle host, one-MSS skbs;
# payload ceiling 95.64 Mbit/s):
#                       RTT 0 / 50 ms     100 Mbit/s goodput at RTT 50 / 200 / 500 ms (receiver)
#   egress (sender)     0.31 / 50.88 ms   95.2 / 90.5 / 85.1 Mbit/s, 0–1 retransmissions
#   ifb (receiver)      0.40 / 50.60 ms   95.3* / 95.0* / 94.3* Mbit/s (*sender's delivered rate;
#                                          1123 retransmissions at 500 ms: slow-start overshoot
#                                          dropped at the bottleneck, as on a real path)
# RTT is the same within TCG's noise; at high bandwidth-delay products the sender-egress layout loses
# 5–11 % of the rate with no loss at all — TCP small queues throttling the sender against packets that
# sit in its own netem queue, the pitfall DESIGN.md names.  Receiver ingress passes every point.
DEFAULT_PLACEMENT = "ifb"
NETEM_HANDLE, TBF_PARENT, TBF_HANDLE = 0x10000, 0x10001, 0x100000     # 1:, 1:1, 10:
INGRESS_HANDLE, INGRESS_PARENT = 0xFFFF0000, 0xFFFFFFF1             # ffff:, TC_H_INGRESS
ETH_P_ALL = 0x0003
FILTER_PRIO = 1
# u32 with one key of mask 0 matches every packet; cls_matchall would say it more plainly, but kernels
# built without it exist (the wire backend's development hosts), and u32 is everywhere tc is.
FILTER_KIND, MATCH_ALL_KEY = "u32", "0x0/0x0+0"
PLACEMENT_ENV = "SDLAB_NETEM_PLACEMENT"   # for measuring the placements against each other (linkcheck in the VM)
U32_FULL = 2 ** 32 - 1
DEFAULT_NS_PER_TICK = 64.0           # PSCHED_SHIFT 6; read from /proc/net/psched when available


def _hex_handle(h: int | None) -> str:
    if h is None:
        return ""
    if h == INGRESS_PARENT:
        return "ingress"
    major, minor = h >> 16, h & 0xFFFF
    return f"{major:x}:{minor:x}" if minor else f"{major:x}:"


@dataclass(frozen=True)
class QdiscOp:
    """One netlink request: a device, qdisc or filter to add/replace/delete (pure data).

    `options` are pyroute2 tc() keyword arguments in kernel-facing units:
    netem delay/jitter in µs, loss in percent, limit in packets; tbf rate in
    bit/s, burst in bytes, latency in µs.  Device names stand in for ifindexes
    (resolved at apply time)."""
    verb: str                 # "link-add" | "add" | "replace" | "del" | "add-filter"
    ns: str
    dev: str
    kind: str                 # "ifb" | "ingress" | "u32" | "netem" | "tbf"
    parent: int | None = None
    handle: int | None = None
    options: dict = field(default_factory=dict)
    redirect_to: str | None = None   # match-all filter → mirred egress redirect to this device

    def __str__(self) -> str:
        if self.verb == "link-add":
            return f"[{self.ns}] ip link add name {self.dev} type {self.kind} && ip link set dev {self.dev} up"
        where = "root" if self.parent is None else f"parent {_hex_handle(self.parent)}"
        opts = " ".join(f"{k} {v}" for k, v in self.options.items())
        if self.verb == "add-filter":
            return (f"[{self.ns}] tc filter add dev {self.dev} {where} prio {FILTER_PRIO} protocol all "
                    f"{self.kind} match u32 0 0 action mirred egress redirect dev {self.redirect_to}")
        handle = f" handle {_hex_handle(self.handle)}" if self.handle is not None else ""
        return f"[{self.ns}] tc qdisc {self.verb} dev {self.dev} {where}{handle} {self.kind} {opts}".rstrip()


def netem_options(spec: LinkSpec) -> dict:
    """pyroute2 netem keywords for `spec` — every option named, so a replace resets nothing by omission."""
    return {"delay": int(round(spec.delay_ms * 1000)), "jitter": int(round(spec.jitter_ms * 1000)),
            "loss": float(spec.loss_pct), "limit": spec.effective_limit_pkts()}


def _latency_us(tbf: dict) -> int:
    return int(str(tbf["latency"]).removesuffix("us"))


def tbf_op_options(spec: LinkSpec, rtt_ms: float) -> dict | None:
    """tbf keywords (netns/tbf.py sizing) with the rate as an integer bit/s and latency in µs."""
    opts = tbf_options(spec, rtt_ms)
    if opts is None:
        return None
    return {"rate": opts["rate"], "burst": int(opts["burst"]), "latency": f"{_latency_us(opts)}us"}


def shaping_devices(topo_ns: tuple[str, str], placement: str) -> dict[str, tuple[str, str]]:
    """direction → (namespace, device) carrying that direction's netem + tbf."""

    edge_ns, cloud_ns = topo_ns
    if placement == "egress":
        return {"uplink": (edge_ns, VETH_EDGE), "downlink": (cloud_ns, VETH_CLOUD)}
    if placement == "ifb":
        return {"uplink": (cloud_ns, IFB_CLOUD), "downlink": (edge_ns, IFB_EDGE)}
    raise LinkError(f"unknown netem placement {placement!r} (choose {' or '.join(PLACEMENTS)})")


def ingress_redirect_ops(ns: str, dev: str, ifb: str) -> list[QdiscOp]:
    """An IFB device `ifb` in `ns` fed with every packet `dev` receives (ingress qdisc, match-all filter,
    mirred redirect), so qdiscs on the IFB's egress shape what arrives at `dev` — at the receiver,
    where the sender's TCP stack cannot see them."""
    return [QdiscOp("link-add", ns, ifb, "ifb"),
            QdiscOp("add", ns, dev, "ingress", parent=INGRESS_PARENT, handle=INGRESS_HANDLE),
            QdiscOp("add-filter", ns, dev, FILTER_KIND, parent=INGRESS_HANDLE, redirect_to=ifb)]


def plan(link: LinkPair, edge_ns: str, cloud_ns: str, placement: str = DEFAULT_PLACEMENT,
         current: LinkPair | None = None) -> list[QdiscOp]:
    """The requests that take the kernel from `current` (None: fresh veth, nothing shaped) to `link`."""

    devices = shaping_devices((edge_ns, cloud_ns), placement)
    ops: list[QdiscOp] = []
    if current is None and placement == "ifb":
        # uplink packets arrive on the cloud's veth end, downlink packets on the edge's.
        for ns, veth, ifb in ((cloud_ns, VETH_CLOUD, IFB_CLOUD), (edge_ns, VETH_EDGE, IFB_EDGE)):
            ops += ingress_redirect_ops(ns, veth, ifb)
    for direction in ("uplink", "downlink"):
        ns, dev = devices[direction]
        spec: LinkSpec = getattr(link, direction)
        ops.append(QdiscOp("add" if current is None else "replace", ns, dev, "netem", handle=NETEM_HANDLE,
                           options=netem_options(spec)))
        new_tbf = tbf_op_options(spec, link.rtt_ms)
        had_tbf = current is not None and getattr(current, direction).rate_mbit is not None
        if new_tbf is not None:
            ops.append(QdiscOp("replace" if had_tbf else "add", ns, dev, "tbf", parent=TBF_PARENT,
                               handle=TBF_HANDLE, options=new_tbf))
        elif had_tbf:
            ops.append(QdiscOp("del", ns, dev, "tbf", parent=TBF_PARENT, handle=TBF_HANDLE))
    return ops


def apply_ops(ipr_for, ops: list[QdiscOp]) -> None:
    """Send the planned requests; `ipr_for(ns)` gives a pyroute2 handle inside that namespace."""
    from pyroute2.netlink.exceptions import NetlinkError

    def index(ipr, dev: str) -> int:
        found = ipr.link_lookup(ifname=dev)
        if not found:
            raise LinkError(f"netem: device {dev} not found")
        return found[0]

    for op in ops:
        ipr = ipr_for(op.ns)
        try:
            if op.verb == "link-add":
                ipr.link("add", ifname=op.dev, kind=op.kind)
                ipr.link("set", index=index(ipr, op.dev), state="up")
            elif op.verb == "add-filter":
                ipr.tc("add-filter", op.kind, index(ipr, op.dev), parent=op.parent, prio=FILTER_PRIO,
                       protocol=ETH_P_ALL, keys=[MATCH_ALL_KEY], target=0,
                       action={"kind": "mirred", "direction": "egress", "action": "redirect",
                               "ifindex": index(ipr, op.redirect_to)})
            elif op.verb == "del":
                # pyroute2 would re-encode the kind's options on a delete; by handle is all the kernel needs.
                ipr.tc("del", index=index(ipr, op.dev), handle=op.handle, parent=op.parent)
            else:
                kw = dict(op.options)
                if op.handle is not None:
                    kw["handle"] = op.handle
                if op.parent is not None:
                    kw["parent"] = op.parent
                ipr.tc(op.verb, op.kind, index(ipr, op.dev), **kw)
        except NetlinkError as e:
            hint = ""
            if op.kind == "netem" and e.code == 2:
                hint = " (this kernel has no sch_netem: use --backend wire, or sudo make vm-test)"
            raise LinkError(f"netem: {op} failed: {e.args[-1] if e.args else e}{hint}") from None


# ------------------------------------------------------------------ read-back (kernel units → LinkSpec)

def ns_per_tick(psched_text: str | None = None) -> float:
    """Nanoseconds per psched tick, from /proc/net/psched (t2us us2t …): 1000·us2t/t2us, 64 on Linux."""
    if psched_text is None:
        try:
            with open("/proc/net/psched") as f:
                psched_text = f.read()
        except OSError:
            return DEFAULT_NS_PER_TICK
    t2us, us2t = (int(x, 16) for x in psched_text.split()[:2])
    return 1000.0 * us2t / t2us


def netem_to_spec_fields(opts: dict, tick_ns: float = DEFAULT_NS_PER_TICK) -> dict:
    """netem TCA_OPTIONS (delay/jitter in ticks, loss as a fraction of 2³²) → LinkSpec units."""
    return {"delay_ms": round(opts["delay"] * tick_ns / 1e6, 6),
            "jitter_ms": round(opts["jitter"] * tick_ns / 1e6, 6),
            "loss_pct": round(opts["loss"] * 100.0 / U32_FULL, 6),
            "limit_pkts": int(opts["limit"])}


def _netem_fields(q) -> dict:
    o = q.get_attr("TCA_OPTIONS")
    return {k: o[k] for k in ("delay", "jitter", "loss", "limit")}


def one_segment_per_skb(topo) -> None:
    """gso_max_segs 1 on both veth ends, so TCP builds one-MSS packets.

    Since Linux 4.19 TCP always builds GSO super-packets and segments them
    only *after* the qdisc when the device lacks GSO, so `ethtool -K … gso
    off` does not keep them away from netem and tbf.  Measured in the VM
    (6.1): 47 packets averaging 10.9 kB sat in tbf after a 100 Mbit/s bulk
    run.  That breaks the LinkSpec semantics three ways: netem drops,
    delays and reorders whole aggregates (loss comes in bursts of ~7
    segments), `limit` counts aggregates, and after a change to a lower rate
    a queued aggregate larger than the new tbf burst can never be sent —
    the link stalled for good (the linkcheck asym point after the 100 Mbit/s
    point).  sk_setup_caps() caps a socket's segments per skb at the
    device's gso_max_segs, so 1 makes every skb one segment before any qdisc.
    """

    for ns, dev in ((topo.edge_ns, VETH_EDGE), (topo.cloud_ns, VETH_CLOUD)):
        ipr = topo.ipr(ns)
        idx = ipr.link_lookup(ifname=dev)[0]
        ipr.link("set", index=idx, gso_max_segs=1)


class NetemBackend:
    """Backend protocol on the veth pair: netem + tbf per direction, at `placement` (see module doc)."""
    name = "netem"

    def __init__(self, topology, attached: bool = False, placement: str | None = None):
        self.topo = topology
        self.placement = placement or os.environ.get(PLACEMENT_ENV) or DEFAULT_PLACEMENT
        shaping_devices(("", ""), self.placement)   # validates the name early
        self.applied: LinkPair | None = topology.link if attached else None
        self.last_plan: list[QdiscOp] = []

    def _run(self, link: LinkPair, current: LinkPair | None) -> None:
        ops = plan(link, self.topo.edge_ns, self.topo.cloud_ns, self.placement, current)
        apply_ops(self.topo.ipr, ops)
        self.last_plan = ops
        self.applied = link

    def apply(self, link: LinkPair) -> None:
        self.topo.add_veth()
        one_segment_per_skb(self.topo)
        self._run(link, None)

    def change(self, link: LinkPair) -> None:
        current = self.applied if self.applied is not None else self._kernel_link()
        self._run(link, current)

    def _kernel_link(self) -> LinkPair:
        rb = self.read_back()
        return LinkPair(**{d: LinkSpec(**rb[d]) for d in ("uplink", "downlink")})

    def read_back(self) -> dict:
        from netns.tbf import read_tbf

        tick_ns = ns_per_tick()
        out: dict = {"qdiscs": [], "placement": self.placement}
        for direction, (ns, dev) in shaping_devices((self.topo.edge_ns, self.topo.cloud_ns),
                                                    self.placement).items():
            ipr = self.topo.ipr(ns)
            found = ipr.link_lookup(ifname=dev)
            if not found:
                raise LinkError(f"netem: shaping device {dev} is missing in {ns} (link not up?)")
            idx = found[0]
            qdiscs = ipr.get_qdiscs(index=idx)
            netem = [q for q in qdiscs if q.get_attr("TCA_KIND") == "netem"]
            if not netem:
                raise LinkError(f"netem: no netem qdisc on {dev} in {ns}")
            raw = _netem_fields(netem[0])
            spec = netem_to_spec_fields(raw, tick_ns)
            tbf = read_tbf(ipr, idx)
            spec["rate_mbit"] = round(tbf["rate_mbit"], 6) if tbf and "rate_mbit" in tbf else None
            out[direction] = {k: spec[k] for k in ("delay_ms", "jitter_ms", "loss_pct", "rate_mbit", "limit_pkts")}
            for q in qdiscs:
                entry = {"ns": ns, "dev": dev, "kind": q.get_attr("TCA_KIND"), "handle": _hex_handle(q["handle"]),
                         "parent": _hex_handle(q["parent"])}
                if entry["kind"] == "netem":
                    entry["kernel"] = raw
                elif entry["kind"] == "tbf" and tbf:
                    entry["kernel"] = {k: v for k, v in tbf.items() if k != "kind"}
                out["qdiscs"].append(entry)
        return out

    def close(self) -> None:
        """Everything lives inside the lab namespaces (veth, IFBs, qdiscs): removing them removes it all."""
        self.applied = None
