"""Rate limiting with the kernel's token bucket (tbf), shared by both backends.

Sizing (DESIGN.md): a burst too small costs rate at high rates and CPU at
100 Mbit/s; a queue too large builds seconds of delay at 1 Mbit/s.  The
burst is 2 ms of the rate (at least two full frames); the queue holds
`latency` worth of bytes — enough for one RTT plus 5 ms at the rate (the
bottleneck queue TCP needs to keep the link busy), at least 20 ms, and at
least MIN_QUEUE_FRAMES full frames.  The frame floor matters at low rates
and short RTTs: 20 ms of 1 Mbit/s is 1.7 frames, less than the smallest
window TCP keeps in flight (BBR's 4 packets plus its probing burst), so the
sender overflowed the queue all the time (measured: 1 Mbit/s at RTT 0 gave
0.863 Mbit/s of goodput with 183 retransmissions in 4 s; 10 frames: see
linkcheck).  10 frames at 1 Mbit/s are 121 ms of queue — a DSL uplink's
buffer, not the seconds of bufferbloat that an RTT-sized queue at a high
rate would build.
"""
from __future__ import annotations

from netns.link import LinkSpec

FRAME_BYTES = 1514          # largest frame tbf sees on veth (TUN: 1500, no Ethernet header)
MIN_QUEUE_FRAMES = 10


def tbf_options(spec: LinkSpec, rtt_ms: float) -> dict | None:
    """pyroute2 tc() keyword arguments for `spec`'s rate, or None for an unshaped link."""
    if spec.rate_mbit is None:
        return None
    rate_bps = spec.rate_mbit * 1e6
    burst = max(2 * FRAME_BYTES, int(rate_bps / 8 * 0.002))
    frames_ms = MIN_QUEUE_FRAMES * FRAME_BYTES * 8 / rate_bps * 1000
    latency_ms = max(20.0, rtt_ms + 5.0, frames_ms)
    return {"rate": f"{int(rate_bps)}bit", "burst": burst, "latency": f"{int(latency_ms * 1000)}us"}


def read_tbf(ipr, idx: int) -> dict | None:
    """The tbf qdisc on device idx as the kernel reports it, in LinkSpec units."""
    for q in ipr.get_qdiscs(index=idx):
        if q.get_attr("TCA_KIND") != "tbf":
            continue
        opts = q.get_attr("TCA_OPTIONS")
        parms = opts.get_attr("TCA_TBF_PARMS") if opts else None
        if not parms:
            return {"kind": "tbf"}
        return {"kind": "tbf", "rate_mbit": parms["rate"] * 8 / 1e6, "limit_bytes": parms["limit"],
                "buffer_ticks": parms["buffer"]}
    return None
