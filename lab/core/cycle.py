"""The one speculative cycle, and the per-query loop over a Strategy.

Every path that decodes runs this code: the edge node (draft here, verify across
the link), the co-located path (draft and target in one process: cloud-spec,
bench, the cloud node), and the simulator (compute from a profile, the link
from a model).  They differ only in a small seam:

    seam.now()                   whose clock times the cycle (ms)
    seam.start_cycle(seq)        called before each cycle (the simulator aligns its timer grid)
    seam.draft(k, seq, stop, m)  draft up to K tokens where the draft runs -> their ids (fewer when
                                 the strategy's confidence stop ends the block, from its m-th draft:
                                 decoding.draft_tokens)
    seam.verify(drafts, seq)     carry the proposal to the target and back -> Verdict
    seam.commit(accepted, tok)   roll the draft's cache back to the accepted prefix + tok
    seam.alone()                 one token from the draft alone (K = 0, edge-only, fallback)
    seam.resync()                after tokens made alone, bring the target's cache up to date
    seam.close()                 the query is over (the edge tells the cloud to drop its session)
    seam.cloud_alone(n, seq, decide, room)   optional: the cloud continues alone for n tokens (fallback: cloud)
    seam.rtt_hint_ms             optional: the round trip measured before the first cycle

`speculate_pipelined` is the same cycle with the draft kept busy during the wait (pipelined:K); its
seam also splits verify into send and poll and drafts ahead (PipeSeam, below).

The loop owns the rest: K from the strategy, the target's stopping rule, the
cycle record and what the strategy observes.  A strategy written once runs in
the lab and in the simulator with no other change.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable, Protocol

from lab.core.protocol import ProtocolError
from lab.core.strategies import CLOUD_ALONE, CycleObservation, Strategy, StrategyError

CYCLE_FIELDS = ("k", "accepted", "cycle_ms", "network_ms", "cloud_compute_ms", "edge_compute_ms",
                "bytes_up", "bytes_down", "t_ms")
# The pipelined cycle's record (speculate_pipelined): whether the block drafted ahead during this cycle's
# wait was used (1), thrown away (0) or never drafted (None), and the drafting hidden behind the wait (ms).
CYCLE_FIELDS += ("optimistic", "hidden_ms")
PLACEMENTS = ("cloud", "cloud-spec", "edge", "split")
# What the controller decided, per cycle, for every strategy (None where a strategy has no controller):
# the fallback in force ("cloud" | "edge" | None), why, the network time the controller assumed, and
# the confidence stop of the block where the controller chose it (nasd's block_stop).
CONTROL_FIELDS = ("fallback", "fallback_reason", "estimate_ms", "stop")


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
    def draft(self, k: int, seq: int, stop: float | None = None, stop_min: int = 1) -> list[int]: ...
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


def pooled_tokens_per_s(records, empty: float = math.nan) -> float:
    """The workload's decode throughput: Σ (n_tokens − 1) / Σ (e2e − ttft) over the query records.
    The ratio of sums estimates BACKGROUND's E[τ] / T — the rate a draft-length controller maximises —
    where a percentile of per-query rates picks one query's (with a few queries, whichever prompt sits
    in the middle, so the best K by it jumps between neighbouring K).  `empty` when nothing was decoded
    (0 where candidates are ranked by it)."""
    n = t = 0.0
    for r in records:
        if r.get("n_tokens", 0) >= 2 and r["e2e_ms"] > r["ttft_ms"]:
            n += r["n_tokens"] - 1
            t += r["e2e_ms"] - r["ttft_ms"]
    return n / (t / 1000.0) if t > 0 else empty


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
            bytes_up: int = 0, bytes_down: int = 0, optimistic: int | None = None, hidden_ms: float = 0.0,
            at: float | None = None, network_ms: float | None = None) -> float:
        """Record a finished cycle; returns its network time (cycle time minus all compute on its critical
        path: edge_ms is the drafting the cycle waited for, hidden_ms the drafting overlapped with the wait),
        unless the caller measured it otherwise (network_ms: a cloud stretch's probe).
        `at`: when the cycle ended on the clock, if earlier than now (the pipelined cycle records late)."""
        t = (self.clock() if at is None else at) - self.t_submit
        if new and self.ttft_ms is None:
            self.ttft_ms = t
        self.tokens.extend(new)
        net = max(0.0, cycle_ms - edge_ms - cloud_ms) if self.placement != "edge" else 0.0
        if network_ms is not None:
            net = network_ms
        for key, v in zip(CYCLE_FIELDS, (k, accepted, cycle_ms, net, cloud_ms, edge_ms, bytes_up, bytes_down, t,
                                         optimistic, hidden_ms)):
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
    stop, stop_min = draft_limits(strategy)
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
            # a controller may choose each block's stop with its K (nasd's table: block_stop)
            drafts = seam.draft(k, seq, getattr(strategy, "block_stop", stop), stop_min)
            if not 1 <= len(drafts) <= k:
                raise ProtocolError(f"the draft made {len(drafts)} tokens for a block of at most {k}")
            cap, k = k, len(drafts)          # what was drafted: a confidence stop may end the block early
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
                                              bytes_up=v.bytes_up, bytes_down=v.bytes_down, cap=cap))
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
            depth = getattr(strategy, "pipeline_depth", 0)
            if depth:
                speculate_pipelined(strategy, seam, log, max_new, eos, depth)
            else:
                speculate(strategy, seam, log, max_new, eos)
        finally:
            seam.close()
    else:
        raise StrategyError(f"strategy {strategy.name!r} has placement {placement!r}; "
                            f"known placements: {', '.join(PLACEMENTS)}")


def draft_limits(strategy) -> tuple[float | None, int]:
    """A strategy's confidence stop and the fewest drafts the stop leaves a block with (draft_stop,
    draft_min: lab/core/strategies.py; spec.min_block); (None, 1) for a strategy without a stop."""
    return getattr(strategy, "draft_stop", None), getattr(strategy, "draft_min", 1)


class FixedK:
    """A constant K as a Strategy, for loops that are handed K (the cloud's co-located generate)."""
    placement = "split"

    def __init__(self, k: int | Callable[[], int], stop: float | None = None, stop_min: int = 1):
        self._k = k if callable(k) else (lambda: k)
        self.name = "fixed"
        self.draft_stop, self.draft_min = stop, stop_min

    def start_query(self) -> None:
        pass

    def next_k(self) -> int:
        return max(1, int(self._k()))

    def observe(self, obs: CycleObservation) -> None:
        pass


# ------------------------------------------------------------------ the pipelined cycle

class PipeSeam(Seam, Protocol):
    """What the pipelined cycle needs besides Seam: verify split into send and poll, and drafting ahead.

    send(drafts, seq)              put block `seq` on its way to the target (it is the tail of the chain)
    poll(seq, timeout_ms)          the verdict of block `seq` if it arrives in time (None: not yet;
                                   timeout None: wait as the seam's verify would); verdicts of blocks
                                   the edge superseded are recognised by their seq and discarded
    draft_ahead(k, seq, between)   one more block on the guess that every block of the chain is accepted
                                   whole and the target's bonus is the draft's own most likely token:
                                   the guess, then K drafts; between() runs before every draft forward and
                                   False abandons the block (-> None)
    guess_holds(k, verdict)        whether the oldest block's verdict agrees with the chain (so far)
    settle(k, verdict)             commit the oldest block's verdict; True when the chain held (the blocks
                                   drafted ahead stand), False when it was rolled back to S + accepted + token
    """
    def send(self, drafts: list[int], seq: int) -> None: ...
    def poll(self, seq: int, timeout_ms: float | None) -> Verdict | None: ...
    def draft_ahead(self, k: int, seq: int, between: Callable[[], bool]) -> list[int] | None: ...
    def guess_holds(self, k: int, verdict: Verdict) -> bool: ...
    def settle(self, k: int, verdict: Verdict) -> bool: ...


@dataclass
class _Block:
    seq: int
    k: int
    drafts: list[int]


def speculate_pipelined(strategy: Strategy, seam: PipeSeam, log: QueryLog, max_new: int, eos,
                        depth: int = 1) -> None:
    """Speculative cycles that keep the draft busy while a block is verified (the pipelining of
    ../shared/seeds/001-edge-cloud-sd-design.txt; SpecEdge's proactive drafting).

    After sending block i the edge drafts block i+1 as if all of block i were accepted and the target's
    bonus were the draft's own next choice.  If the verdict agrees, block i+1 is already drafted and goes
    out at once; otherwise it is dropped and the draft cache rolled back to the accepted prefix plus the
    target's token — the sequential cycle's commit.  Verification is untouched, so the output is the
    target's (T = 0: token for token the sequential cycle's; T > 0: the same distribution, since every
    block is drafted from the draft's distribution given its prefix, whatever happened to the guess).
    `depth`: blocks in flight at once; above 1 the blocks drafted ahead are sent before the verdicts
    they rest on, and a block whose base the target no longer holds comes back stale (ignored).

    One cycle = one verdict, from the previous verdict's arrival to this one's: edge_compute_ms is the
    drafting it waited for, hidden_ms the drafting done while its block was on its way, `optimistic`
    whether the blocks drafted past it were used (1), thrown away (0) or there were none (None).
    network_ms is then the cycle minus that waited-for drafting and the verify: it includes up to one
    draft forward of lag when the verdict lands while a forward of the block ahead is running (the
    edge polls between forwards)."""
    if depth < 1:
        raise StrategyError(f"pipeline depth must be at least 1, got {depth}")
    strategy.start_query()
    inflight: deque[_Block] = deque()
    held: _Block | None = None                 # drafted ahead, not yet sent (depth reached)
    seq, done = 0, len(log.tokens) >= max_new
    t_mark, exposed = seam.now(), 0.0

    def room() -> int:
        chain = list(inflight) + ([held] if held else [])
        if any(t in eos for b in chain for t in b.drafts):
            return 0                            # the guess would end the query here
        return max_new - len(log.tokens) - sum(b.k + 1 for b in chain)

    while not done:
        seam.start_cycle(len(log.cycles["k"]))
        if not inflight:                        # query start, or the chain broke: draft from S
            k = min(max(1, int(strategy.next_k())), max_new - len(log.tokens))
            t0 = seam.now()
            drafts = seam.draft(k, seq)
            exposed += seam.now() - t0
            seam.send(drafts, seq)
            inflight.append(_Block(seq, k, drafts))
            seq += 1
        oldest = inflight[0]
        verdict: Verdict | None = None
        t_verdict = None
        hidden, after, ahead = 0.0, 0.0, False

        def between() -> bool:
            nonlocal verdict, t_verdict
            if verdict is None:
                verdict = seam.poll(oldest.seq, 0.0)
                if verdict is not None:
                    t_verdict = seam.now()
            return verdict is None or seam.guess_holds(oldest.k, verdict)

        # Draft ahead while the oldest block's verdict is outstanding.
        while verdict is None and held is None and room() > 0:
            k = min(max(1, int(strategy.next_k())), room())
            t0 = seam.now()
            drafts = seam.draft_ahead(k, seq, between)
            ahead = True
            if t_verdict is None:
                hidden += seam.now() - t0
            else:                                # the verdict came mid-block: the rest was waited for
                hidden += t_verdict - t0
                after += seam.now() - t_verdict
            if drafts is None:
                break
            blk, seq = _Block(seq, k, drafts), seq + 1
            if verdict is None and len(inflight) < depth:
                seam.send(drafts, blk.seq)
                inflight.append(blk)
            else:
                held = blk
        if verdict is None:
            verdict = seam.poll(oldest.seq, None)
            t_verdict = seam.now()
        n = verdict.accepted
        if not 0 <= n <= oldest.k:
            raise ProtocolError(f"verdict accepts {n} of {oldest.k} drafts")
        beyond = ahead or held is not None or len(inflight) > 1     # the chain went past this block
        inflight.popleft()
        used = seam.settle(oldest.k, verdict)
        new, done = stop_rule(oldest.drafts[:n] + [verdict.token], max_new - len(log.tokens), eos)
        cycle = t_verdict - t_mark
        net = log.add(new, oldest.k, n, cycle, exposed, verdict.cloud_ms, verdict.bytes_up, verdict.bytes_down,
                      optimistic=(1 if used else 0) if beyond else None, hidden_ms=hidden, at=t_verdict)
        strategy.observe(CycleObservation(k=oldest.k, accepted=n, cycle_ms=cycle, network_ms=net,
                                          cloud_compute_ms=verdict.cloud_ms, edge_compute_ms=exposed,
                                          bytes_up=verdict.bytes_up, bytes_down=verdict.bytes_down))
        t_mark, exposed = t_verdict, after
        if not used:                            # superseded: their verdicts will be discarded by seq
            inflight.clear()
            held = None
        elif held is not None and not done and len(inflight) < depth:
            seam.send(held.drafts, held.seq)    # drafted during the wait: out at once
            inflight.append(held)
            held = None
