"""The one speculative cycle, and the per-query loop over a Strategy.

Every path that decodes runs this code: the edge node (draft here, verify across
the link), the co-located path (draft and target in one process: cloud-spec,
bench, the cloud node), and the simulator (compute from a profile, the link
from a model).  They differ only in a small seam:

    seam.now()                   whose clock times the cycle (ms)
    seam.start_cycle(seq)        called before each cycle (the simulator aligns its timer grid)
    seam.draft(k, seq)           draft K tokens where the draft runs -> their ids
    seam.verify(drafts, seq)     carry the proposal to the target and back -> Verdict
    seam.commit(accepted, tok)   roll the draft's cache back to the accepted prefix + tok
    seam.alone()                 one token from the draft alone (K = 0, edge-only, fallback)
    seam.resync()                after tokens made alone, bring the target's cache up to date
    seam.close()                 the query is over (the edge tells the cloud to drop its session)
    seam.cloud_alone(n, seq, decide, room)   optional: the cloud continues alone for n tokens (fallback: cloud)
    seam.rtt_hint_ms             optional: the round trip measured before the first cycle

The loop owns the rest: K from the strategy, the target's stopping rule, the
cycle record and what the strategy observes.  A strategy written once runs in
the lab and in the simulator with no other change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

from lab.core.protocol import ProtocolError
from lab.core.strategies import CLOUD_ALONE, CycleObservation, Strategy, StrategyError

CYCLE_FIELDS = ("k", "accepted", "cycle_ms", "network_ms", "cloud_compute_ms", "edge_compute_ms",
                "bytes_up", "bytes_down", "t_ms")
PLACEMENTS = ("cloud", "cloud-spec", "edge", "split")
# What the controller decided, per cycle, for every strategy (None where a strategy has no controller):
# the fallback in force ("cloud" | "edge" | None), why, and the network time the controller assumed.
CONTROL_FIELDS = ("fallback", "fallback_reason", "estimate_ms")


@dataclass(frozen=True)
class Verdict:
    """The target's answer to one proposal."""
    accepted: int               # n: draft tokens accepted (0..K)
    token: int                  # the correction (n < K) or bonus (n = K) token
    cloud_ms: float             # verify compute time, as the target's side measured it
    bytes_up: int = 0           # payload bytes of the exchange, edge→cloud
    bytes_down: int = 0         # and cloud→edge


class Seam(Protocol):
    def now(self) -> float: ...
    def start_cycle(self, seq: int) -> None: ...
    def draft(self, k: int, seq: int) -> list[int]: ...
    def verify(self, drafts: list[int], seq: int) -> Verdict: ...
    def commit(self, accepted: list[int], token: int) -> None: ...
    def alone(self) -> int: ...
    def resync(self) -> None: ...
    def close(self) -> None: ...


def tokens_per_s(n_tokens: int, ttft_ms: float, e2e_ms: float) -> float:
    """Decode throughput after the first token; NaN when there is nothing after it."""
    if n_tokens < 2 or e2e_ms <= ttft_ms:
        return math.nan
    return (n_tokens - 1) / ((e2e_ms - ttft_ms) / 1000.0)


def stop_rule(tokens: list[int], room: int, eos: tuple[int, ...] | frozenset) -> tuple[list[int], bool]:
    """The target's stopping rule: keep at most `room` tokens, cut after the first EOS; (kept, done)."""
    for i, t in enumerate(tokens[:room]):
        if t in eos:
            return tokens[: i + 1], True
    return tokens[:room], len(tokens) >= room


class QueryLog:
    """One query's output and per-cycle record, timed on the caller's clock (ms)."""

    def __init__(self, clock: Callable[[], float], placement: str):
        self.clock, self.placement = clock, placement
        self.t_submit = clock()
        self.tokens: list[int] = []
        self.ttft_ms: float | None = None
        self.cycles: dict[str, list] = {f: [] for f in CYCLE_FIELDS + CONTROL_FIELDS}

    def add(self, new: list[int], k: int, accepted: int, cycle_ms: float, edge_ms: float, cloud_ms: float,
            bytes_up: int = 0, bytes_down: int = 0, network_ms: float | None = None) -> float:
        """Record a finished cycle; returns its network time (cycle time minus all compute, unless the
        caller measured it otherwise: a cloud stretch's probe)."""
        t = self.clock() - self.t_submit
        if new and self.ttft_ms is None:
            self.ttft_ms = t
        self.tokens.extend(new)
        net = max(0.0, cycle_ms - edge_ms - cloud_ms) if self.placement != "edge" else 0.0
        if network_ms is not None:
            net = network_ms
        for key, v in zip(CYCLE_FIELDS, (k, accepted, cycle_ms, net, cloud_ms, edge_ms, bytes_up, bytes_down, t)):
            self.cycles[key].append(v)
        for key in CONTROL_FIELDS:
            self.cycles[key].append(None)
        return net

    def note_control(self, control: dict, since: int | None = None) -> None:
        """The controller's decision for the cycle just recorded (or every record from index `since`)."""
        n = len(self.cycles["k"])
        for key in CONTROL_FIELDS:
            for i in range(n - 1 if since is None else since, n):
                self.cycles[key][i] = control.get(key)

    def result(self, max_new_tokens: int) -> dict:
        """The query record's timing fields, output cut at max_new_tokens, and the per-cycle lists."""
        e2e = self.clock() - self.t_submit
        n = min(len(self.tokens), max_new_tokens)
        ttft = self.ttft_ms if self.ttft_ms is not None else e2e
        rec = {"ttft_ms": ttft, "e2e_ms": e2e, "n_tokens": n, "tokens_per_s": tokens_per_s(n, ttft, e2e),
               "t_submit_ms": self.t_submit}
        rec.update({f"{k}_per_cycle": v for k, v in self.cycles.items()})
        return rec


def alone_loop(seam: Seam, log: QueryLog, max_new: int, eos) -> None:
    """Tokens from the draft alone until max_new or EOS (edge-only, and the edge's fallback)."""
    done = len(log.tokens) >= max_new
    while not done:
        t0 = seam.now()
        tok = seam.alone()
        new, done = stop_rule([tok], max_new - len(log.tokens), eos)
        ms = seam.now() - t0
        log.add(new, 0, 0, ms, ms, 0.0)


def speculate(strategy: Strategy, seam: Seam, log: QueryLog, max_new: int, eos,
              on_cycle: Callable[[list[int], int, int], None] | None = None) -> None:
    """Speculative cycles until max_new tokens or the target's EOS: draft K, verify, accept, roll back.

    K comes from the strategy every cycle; K = 0 serves the cycle from the draft alone, and the
    target's cache is brought up to date before the next cycle that needs it (a run of edge-alone
    cycles pays one resync, not one per token); CLOUD_ALONE lets the cloud continue alone for a
    stretch (_cloud_stretch).  on_cycle(new_tokens, k, n_accepted) follows each cycle."""
    strategy.start_query()
    hint = getattr(seam, "rtt_hint_ms", None)
    if hint is not None and hasattr(strategy, "link_hint"):
        strategy.link_hint(hint)
    control = getattr(strategy, "control", None)
    seq, done, stale = 0, len(log.tokens) >= max_new, False
    ahead: tuple[int, dict | None] | None = None     # a choice made during a cloud stretch
    while not done:
        if ahead is None:
            k = int(strategy.next_k())
            ctl = control() if control is not None else None
        else:
            (k, ctl), ahead = ahead, None
        if k == CLOUD_ALONE and not hasattr(seam, "cloud_alone"):
            k = int(strategy.split_k())      # this seam cannot stream alone: speculate instead
            ctl = {**(ctl or {}), "fallback": None, "fallback_reason": "cloud fallback unsupported here"}
        if k != CLOUD_ALONE:
            k = min(k, max_new - len(log.tokens))
        seam.start_cycle(seq)
        if stale and k != 0:
            seam.resync()
            stale = False
        t0 = seam.now()
        if k == CLOUD_ALONE:
            first = len(log.cycles["k"])
            new, done, ahead = _cloud_stretch(strategy, seam, log, max_new, eos, seq, t0)
            log.note_control({**(ctl or {}), "fallback": "cloud"}, since=first)
            k = n = 0
            ctl = None                       # noted, with the fallback in force
        elif k <= 0:
            tok = seam.alone()
            new, done = stop_rule([tok], max_new - len(log.tokens), eos)
            ms = seam.now() - t0
            log.add(new, 0, 0, ms, ms, 0.0)
            stale = True
            strategy.observe(CycleObservation(k=0, accepted=0, cycle_ms=ms, network_ms=0.0,
                                              cloud_compute_ms=0.0, edge_compute_ms=ms))
            n = 0
        else:
            drafts = seam.draft(k, seq)
            edge_ms = seam.now() - t0
            v = seam.verify(drafts, seq)
            n = v.accepted
            if not 0 <= n <= k:
                raise ProtocolError(f"verdict accepts {n} of {k} drafts")
            seam.commit(drafts[:n], v.token)
            new, done = stop_rule(drafts[:n] + [v.token], max_new - len(log.tokens), eos)
            cycle = seam.now() - t0
            net = log.add(new, k, n, cycle, edge_ms, v.cloud_ms, v.bytes_up, v.bytes_down)
            strategy.observe(CycleObservation(k=k, accepted=n, cycle_ms=cycle, network_ms=net,
                                              cloud_compute_ms=v.cloud_ms, edge_compute_ms=edge_ms,
                                              bytes_up=v.bytes_up, bytes_down=v.bytes_down))
        if ctl is not None:
            log.note_control(ctl)
        if on_cycle:
            on_cycle(new, k, n)
        seq += 1


CLOUD_STRETCH_TOKENS = 4      # tokens the cloud streams alone between two probes (a strategy's `probe`)


def _cloud_stretch(strategy: Strategy, seam: Seam, log: QueryLog, max_new: int, eos, seq: int,
                   t0: float) -> tuple[list[int], bool, tuple[int, dict | None]]:
    """One stretch of the cloud decoding alone from the accepted prefix (fallback: cloud).

    The stretch's first token is the probe: the edge measures the network time of the request and
    feeds it back at once, so the strategy's next choice is known while the stretch still streams —
    another stretch is then requested ahead (the cloud never idles), or speculation resumes after it.
    Each token message is a record of its own, as cloud-only's are.
    Returns (new tokens, done, (next K, the controller's state when it chose))."""
    n = min(int(getattr(strategy, "probe", CLOUD_STRETCH_TOKENS)), max_new - len(log.tokens))
    control = getattr(strategy, "control", None)
    decided: list = []
    out: list[int] = []
    state = {"done": False, "t": t0}

    def decide(network_ms: float, cloud_ms_per_token: float) -> int:
        strategy.observe(CycleObservation(k=CLOUD_ALONE, accepted=0, cycle_ms=seam.now() - t0, network_ms=network_ms,
                                          cloud_compute_ms=cloud_ms_per_token, edge_compute_ms=0.0))
        k = int(strategy.next_k())
        decided.append((k, control() if control is not None else None))
        return k

    def emit(toks: list[int], network_ms: float | None, cloud_ms: float, up: int, down: int) -> None:
        if state["done"]:
            return
        new, state["done"] = stop_rule(toks, max_new - len(log.tokens), eos)
        now = seam.now()
        log.add(new, 0, 0, now - state["t"], 0.0, cloud_ms, up, down, network_ms=network_ms)
        state["t"] = now
        out.extend(new)

    seam.cloud_alone(n, seq, decide, emit, max_new - len(log.tokens))
    return out, state["done"] or len(log.tokens) >= max_new, decided[0]


class QueryDriver(Protocol):
    """What a node (or the simulator) provides for one query, by placement."""
    def alone_seam(self) -> Seam: ...
    def split_seam(self) -> Seam: ...
    def cloud_generate(self, strategy: Strategy, log: QueryLog) -> None: ...


def run_query(strategy: Strategy, driver: QueryDriver, log: QueryLog, max_new: int, eos) -> None:
    """One query, dispatched on the strategy's placement — the only place that dispatch is written."""
    placement = strategy.placement
    if placement == "edge":
        alone_loop(driver.alone_seam(), log, max_new, eos)
    elif placement in ("cloud", "cloud-spec"):
        driver.cloud_generate(strategy, log)
    elif placement == "split":
        seam = driver.split_seam()
        try:
            speculate(strategy, seam, log, max_new, eos)
        finally:
            seam.close()
    else:
        raise StrategyError(f"strategy {strategy.name!r} has placement {placement!r}; "
                            f"known placements: {', '.join(PLACEMENTS)}")


class FixedK:
    """A constant K as a Strategy, for loops that are handed K (the cloud's co-located generate)."""
    placement = "split"

    def __init__(self, k: int | Callable[[], int]):
        self._k = k if callable(k) else (lambda: k)
        self.name = "fixed"

    def start_query(self) -> None:
        pass

    def next_k(self) -> int:
        return max(1, int(self._k()))

    def observe(self, obs: CycleObservation) -> None:
        pass
