"""How long the edge waits for each reply: the cloud's measured compute, a safety factor, and room
for TCP's retransmission backoff on the link.

A fixed timeout is wrong on every machine but one: a slow CPU's prefill outlasts it and the query
silently runs edge-only; a fast one waits far too long for a dead cloud.  The cloud node measures
its own prefill and verify times at start-up (`measure_compute`, lab/models) and the runner turns
them into a `ReplyBudget` for the edge:

    wait(prefill of n tokens) = SAFETY · (n · prefill_ms_per_token + verify(1))          + room
    wait(verify of K drafts)  = SAFETY · verify(K + 1)                                     + room
    wait(first generate msg)  = SAFETY · (n · prefill_ms_per_token · (1 + draft share)
                                          + K · t_draft + verify(K + 1))                  + room
    room = RTO_BACKOFFS consecutive retransmission timeouts: (RTO_MIN + RTT) · (2^B − 1)

with verify(n) = verify_a_ms + verify_b_ms · n.  `fixed_s` (from --reply-timeout-s) overrides all.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

SAFETY = 3.0               # compute times on a shared host vary by up to ~2x at P99 (docs/MEASUREMENTS.md)
RTO_MIN_MS = 200.0         # Linux TCP_RTO_MIN
RTO_BACKOFFS = 4           # four losses of the same segment in a row: P = loss^4, 6e-6 at 5 % loss
DEFAULT_FIXED_S = 20.0     # a cloud that reports no compute times (an older node)
FLOOR_S = 2.0              # below this a scheduler hiccup alone could trip the wait


def rto_room_s(rtt_ms: float, backoffs: int = RTO_BACKOFFS) -> float:
    """Time TCP spends retransmitting one segment lost `backoffs` times in a row (RTO doubles each time)."""
    return (RTO_MIN_MS + rtt_ms) * (2 ** backoffs - 1) / 1e3


@dataclass(frozen=True)
class ReplyBudget:
    prefill_ms_per_token: float = 0.0
    verify_a_ms: float = 0.0
    verify_b_ms: float = 0.0
    draft_ms: float = 0.0                 # the cloud's draft (cloud-spec), per token
    draft_prefill_share: float = 0.0      # the cloud draft's prefill / the target's
    room_s: float = 0.0
    fixed_s: float | None = None          # --reply-timeout-s: one wait for everything

    def _wait(self, compute_ms: float) -> float:
        if self.fixed_s is not None:
            return self.fixed_s
        return max(FLOOR_S, SAFETY * compute_ms / 1e3 + self.room_s)

    def verify_ms(self, n: int) -> float:
        return self.verify_a_ms + self.verify_b_ms * n

    def prefill_s(self, n_tokens: int) -> float:
        return self._wait(n_tokens * self.prefill_ms_per_token + self.verify_ms(1))

    def verify_s(self, k: int) -> float:
        return self._wait(self.verify_ms(k + 1))

    def generate_first_s(self, n_tokens: int, k: int) -> float:
        """The first message of a generate: prefill, then one step (cloud-only) or one cycle (cloud-spec)."""
        prefill = n_tokens * self.prefill_ms_per_token * (1 + (self.draft_prefill_share if k else 0.0))
        return self._wait(prefill + k * self.draft_ms + self.verify_ms(k + 1))

    def step_s(self, k: int) -> float:
        """Each later message of a generate: one target step, or one co-located cycle of K drafts."""
        return self._wait(k * self.draft_ms + self.verify_ms(k + 1))

    def hello_s(self) -> float:
        """A hello after a lost cloud: the cloud may still be finishing the longest request we gave up on."""
        if self.fixed_s is not None:
            return self.fixed_s
        return max(FLOOR_S, 10.0 + SAFETY * self.verify_ms(9) / 1e3 + self.room_s)

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ReplyBudget":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"reply budget: unknown field(s) {sorted(unknown)}")
        return cls(**d)


def budget_from_compute(compute: dict, rtt_ms: float, fixed_s: float | None = None) -> ReplyBudget:
    """The budget from a cloud's `measure_compute` record (lab/models) and the link's worst RTT."""
    return ReplyBudget(prefill_ms_per_token=float(compute["prefill_ms_per_token"]),
                       verify_a_ms=float(compute["verify_a_ms"]), verify_b_ms=float(compute["verify_b_ms"]),
                       draft_ms=float(compute.get("draft_ms", 0.0)),
                       draft_prefill_share=float(compute.get("draft_prefill_share", 0.0)),
                       room_s=rto_room_s(rtt_ms), fixed_s=fixed_s)
