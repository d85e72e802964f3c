"""What a link does to packets in one direction, as frozen data.

A `LinkSpec` is the contract every backend implements with the same
semantics (netem's): a fixed one-way delay plus uniform jitter drawn
independently per packet, Bernoulli loss per packet, a token-bucket rate,
and a queue of at most `limit_pkts` packets in the delay line (packets beyond
it are dropped).  `LinkPair` holds both directions: uplink is edge→cloud,
downlink is cloud→edge, so RTT = uplink.delay_ms + downlink.delay_ms.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

MTU_BYTES = 1500
# Used only to size the delay-line queue of an unshaped link.
UNSHAPED_SIZING_RATE_MBIT = 1000.0
MIN_LIMIT_PKTS = 1000


class LinkError(Exception):
    """A link cannot be built, programmed or read back; the message says why and what to do.

    An invalid LinkSpec field is carried as data (`field`, `reason`) so a caller can name its own
    source of the value (a command-line flag, a key of a scenario file) without parsing the text."""

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.field = field
        self.reason = message if reason is None else reason


@dataclass(frozen=True)
class LinkSpec:
    delay_ms: float = 0.0
    jitter_ms: float = 0.0          # uniform ±jitter_ms around delay_ms
    loss_pct: float = 0.0           # Bernoulli, per packet
    rate_mbit: float | None = None  # None: unshaped
    limit_pkts: int | None = None   # None: derived from the bandwidth-delay product

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem:
            field_name, reason = problem
            raise LinkError(f"{field_name}: {reason}", field=field_name, reason=reason)

    def problem(self) -> tuple[str, str] | None:
        """The first invalid field and why, or None."""
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None and f.name in ("rate_mbit", "limit_pkts"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                return f.name, f"must be a number, got {type(v).__name__} {v!r}"
            if not math.isfinite(v):
                return f.name, f"must be finite, got {v!r}"
        if self.delay_ms < 0:
            return "delay_ms", f"must be >= 0, got {self.delay_ms}"
        if self.delay_ms > 10_000:
            return "delay_ms", f"must be <= 10000 ms, got {self.delay_ms}"
        if self.jitter_ms < 0:
            return "jitter_ms", f"must be >= 0, got {self.jitter_ms}"
        if self.jitter_ms > self.delay_ms:
            return "jitter_ms", (f"must be <= delay_ms ({self.delay_ms}) so no packet gets a "
                                 f"negative delay, got {self.jitter_ms}")
        if not 0 <= self.loss_pct <= 100:
            return "loss_pct", f"must be between 0 and 100, got {self.loss_pct}"
        if self.rate_mbit is not None and not 0 < self.rate_mbit <= 100_000:
            return "rate_mbit", f"must be > 0 and <= 100000 (or omitted for unshaped), got {self.rate_mbit}"
        if self.limit_pkts is not None and (int(self.limit_pkts) != self.limit_pkts or self.limit_pkts < 1):
            return "limit_pkts", f"must be a whole number >= 1, got {self.limit_pkts}"
        return None

    @property
    def rate_bps(self) -> float | None:
        return None if self.rate_mbit is None else self.rate_mbit * 1e6

    def effective_limit_pkts(self) -> int:
        """Queue limit of the delay line: configured, or twice the BDP in MTU packets (>= 1000)."""
        if self.limit_pkts is not None:
            return int(self.limit_pkts)
        rate_mbit = self.rate_mbit or UNSHAPED_SIZING_RATE_MBIT
        bdp_bytes = rate_mbit * 1e6 / 8 * (self.delay_ms + self.jitter_ms) / 1000
        return max(MIN_LIMIT_PKTS, math.ceil(2 * bdp_bytes / MTU_BYTES))

    def with_changes(self, **changes) -> "LinkSpec":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        parts = [f"{self.delay_ms:g} ms"]
        if self.jitter_ms:
            parts.append(f"±{self.jitter_ms:g} ms")
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g} % loss")
        parts.append("unshaped" if self.rate_mbit is None else f"{self.rate_mbit:g} Mbit/s")
        return ", ".join(parts)


LINKSPEC_KEYS = tuple(f.name for f in fields(LinkSpec))


@dataclass(frozen=True)
class LinkPair:
    """Both directions of the edge↔cloud link."""
    uplink: LinkSpec = field(default_factory=LinkSpec)    # edge → cloud
    downlink: LinkSpec = field(default_factory=LinkSpec)  # cloud → edge

    @classmethod
    def symmetric(cls, spec: LinkSpec) -> "LinkPair":
        return cls(uplink=spec, downlink=spec)

    @property
    def rtt_ms(self) -> float:
        return self.uplink.delay_ms + self.downlink.delay_ms

    def to_dict(self) -> dict:
        return {"uplink": self.uplink.to_dict(), "downlink": self.downlink.to_dict()}

    def describe(self) -> str:
        if self.uplink == self.downlink:
            return f"{self.uplink.describe()} each way"
        return f"up {self.uplink.describe()} / down {self.downlink.describe()}"
