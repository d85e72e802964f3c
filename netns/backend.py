"""The link-backend protocol: one `LinkPair` in, the same packet semantics out.

Two implementations: `netem` (kernel netem + tbf via pyroute2; netns/netem.py)
and `wire` (userspace delay line over TUN devices, rate in kernel tbf;
netns/wire.py).  `choose_backend("auto")` probes once for sch_netem.
"""
from __future__ import annotations

from typing import Protocol

from netns.link import LinkPair


class Backend(Protocol):
    name: str   # "netem" | "wire"

    def apply(self, link: LinkPair) -> None:
        """Program both directions the first time (after the topology is up)."""

    def change(self, link: LinkPair) -> None:
        """Reprogram at run time: < 10 ms, no connection reset, unspecified fields not reset."""

    def read_back(self) -> dict:
        """What is actually applied, read from the kernel (and relay), in LinkSpec units:
        {"uplink": {"delay_ms":…, "jitter_ms":…, "loss_pct":…, "rate_mbit":…, "limit_pkts":…},
         "downlink": {…}, "qdiscs": [raw per-device description for the record]}"""

    def close(self) -> None:
        """Remove everything this backend created (idempotent)."""
