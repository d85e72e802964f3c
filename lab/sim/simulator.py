"""A whole scenario run, simulated: the same strategies, the same link, compute from a profile.

The simulator replays what the edge and cloud nodes do (edge_node/__main__.py,
cloud_node/__main__.py) message for message — hello, prefill, verify/verdict,
generate/tokens, end — with compute times from a model profile instead of
models, and the network from a link model (lab/sim/netsim.py) instead of the
kernel.  Nothing sleeps; a run of minutes simulates in milliseconds.

    for query, cycles in simulate(load_scenario("lossy-5pct"), ["cloud-only", "fixed-k:5"],
                                  load_profile("fast"), queries=10, seed=0, link_model="tcp"):
        ...

Records have the edge node's fields (queries.jsonl / cycles.jsonl) with
`backend: "sim"`; `write_run` writes a results folder like a lab run.

Timing mirrors the nodes' code (synthetic models spend the same times):
prefill of n tokens = n·prefill_ms_per_token (the edge prefills the prompt,
the cloud all of it but the last token), one draft forward = t_draft_ms
(the first cycle of a query reuses the prefill's logits: K−1 forwards), a
target pass over n tokens = verify_a_ms + verify_b_ms·n (verification scores
K+1 tokens; cloud-only decodes one token per pass), and the cloud serves
one message at a time.  Acceptance: "iid" draws K Bernoulli(α) trials per
cycle from a seeded RNG and accepts the leading successes (E[τ] =
(1 − α^(K+1))/(1 − α)); "synthetic" asks lab.models.synthetic's own
per-position rule, so a simulated run accepts exactly what a lab run with
the synthetic pair accepts (the fair comparison for validation).
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from lab.core import spec
from lab.core.cycle import FixedK, QueryLog, Verdict, draft_limits, run_query, speculate
from lab.core.strategies import CLOUD_ALONE, StrategyError, make_strategy
from lab.sim.netsim import SimError, make_link_model
from lab.prompts import load_prompts
from lab.scenario import TIMELINE_ALIGNMENT, Scenario
from lab.sim.simwire import SIM_QID_SUFFIX, WireSizes


FAKE_TOKEN = 1                 # the simulator counts tokens; their ids do not matter, but for:
EOS_TOKEN = 2                  # the last of a profiled answer (prompt_answer): the query stops there
SYNTHETIC_EOS: tuple[int, ...] = (EOS_TOKEN,)


@dataclass(frozen=True)
class ComputeProfile:
    """Compute times of the pair, as lab/models/synthetic.py spends them."""
    t_draft_ms: float
    verify_a_ms: float
    verify_b_ms: float
    prefill_ms_per_token: float
    alpha: float
    vocab: int = 151_936
    seed: int = 0
    name: str = "custom"
    target_token_ms: float | None = None      # one autoregressive target step; default verify_ms(1)
    source: str = ""                          # the profile's YAML, when it came from one
    # Measured t_verify(n) at some n, used there and between them instead of the line (a real pair's
    # profile or run, whose verify times need not lie on one: spec.verify_ms_at); ((n, ms), … by n)
    verify_by_n: tuple[tuple[int, float], ...] = ()
    # Forwards a fully accepted block's catch-up costs the draft (2: one a token, an int8 draft's way;
    # lab/models/synthetic.py Profile); t_draft each, on top of the next block's drafts.
    catch_up_forwards: int = 1

    def verify_ms(self, n: int) -> float:
        return spec.verify_ms_at(n, self.verify_a_ms, self.verify_b_ms, self.verify_by_n)

    def step_ms(self) -> float:
        return self.verify_ms(1) if self.target_token_ms is None else self.target_token_ms

    @classmethod
    def of(cls, profile) -> "ComputeProfile":
        """From a ComputeProfile, lab.models.synthetic.Profile (or any object with its fields), or a profile name."""
        if isinstance(profile, cls):
            return profile
        if isinstance(profile, str):
            from lab.models.synthetic import load_profile
            profile = load_profile(profile)
        try:
            return cls(t_draft_ms=float(profile.t_draft_ms), verify_a_ms=float(profile.verify_a_ms),
                       verify_b_ms=float(profile.verify_b_ms),
                       prefill_ms_per_token=float(profile.prefill_ms_per_token), alpha=float(profile.alpha),
                       vocab=int(getattr(profile, "vocab", 151_936)), seed=int(getattr(profile, "seed", 0)),
                       name=str(getattr(profile, "name", "custom")), source=str(getattr(profile, "source", "")),
                       verify_by_n=tuple(sorted(getattr(profile, "verify_ms_by_n", None) or ())),
                       catch_up_forwards=int(getattr(profile, "draft_catch_up_forwards", 1)))
        except AttributeError as e:
            raise SimError(f"profile {profile!r} lacks a field the simulator needs ({e})") from None


def drafting_ms(p: ComputeProfile, k: int, first: bool, whole: bool) -> float:
    """The draft's time for a block of k: k forwards, one fewer for the first block (it drafts from the
    prefill's logits), and catch_up_forwards − 1 more after a block accepted whole, whose last draft and
    bonus the first forward takes in (one forward, or one a token: lab/core/decoding.py feed_logits)."""
    extra = p.catch_up_forwards - 1 if whole and not first else 0
    return p.t_draft_ms * ((k - 1 if first else k) + extra)


# ------------------------------------------------------------------ acceptance

class IidAcceptance:
    def __init__(self, alpha: float, rng: random.Random):
        self.alpha, self.rng = alpha, rng

    def accepted(self, k: int, position: int) -> int:
        n = 0
        while n < k and self.rng.random() < self.alpha:
            n += 1
        return n

    def token(self, pos: int, drafted: bool = False) -> int:
        return FAKE_TOKEN                    # no answer ends early: max_new_tokens does

    def confidence(self, pos: int) -> float:
        return self.alpha                    # a draft calibrated on average: its belief is the rate

    def bonus(self, position: int) -> bool:
        """Whether the draft's own next token is the target's bonus (pipelined: the block ahead is used)."""
        return self.rng.random() < self.alpha


class SyntheticAcceptance:
    """lab.models.synthetic's own rule (SyntheticModel.agrees): whether the draft proposes the
    target's token at a sequence position; the draft session's origin is the prompt length."""

    def __init__(self, profile, prompt: str):
        from lab.models.synthetic import SyntheticModel, encode_words, prompt_key
        ids = encode_words(prompt, profile.vocab)      # what a synthetic edge would prefill
        self.draft, self.origin, self.key = SyntheticModel("draft", profile), len(ids), prompt_key(ids)
        self.cache: dict[int, bool] = {}

    def token(self, pos: int, drafted: bool = False) -> int:
        """The target's token at pos (drafted: the draft's): the answer's EOS where the profile ends it
        (SyntheticModel.ends_at; the draft proposes it where it agrees there), another token elsewhere."""
        ends = self.draft.ends_at(pos, self.origin, self.key) and (not drafted or self.hit(pos))
        return EOS_TOKEN if ends else FAKE_TOKEN

    def confidence(self, pos: int) -> float:
        return self.draft.confidence(pos, self.origin, self.key)

    def hit(self, pos: int) -> bool:
        h = self.cache.get(pos)
        if h is None:
            h = self.cache[pos] = bool(self.draft.agrees(pos, self.origin, self.key))
        return h

    def accepted(self, k: int, position: int) -> int:
        n = 0
        while n < k and self.hit(position + n):
            n += 1
        return n

    def bonus(self, position: int) -> bool:
        return self.hit(position)


def drafted(acc, position: int, k: int, stop: float | None, stop_min: int = 1) -> int:
    """How many tokens a block drafted at `position` holds: K, or fewer where a confidence stop
    (spec.BlockStop, from its stop_min-th draft) ends it on the draft's confidences (the acceptance model's)."""
    if stop is None:
        return k
    block = spec.BlockStop(stop, stop_min)
    return next((i + 1 for i in range(k) if block.ends(acc.confidence(position + i))), k)


# ------------------------------------------------------------------ one run

class _Run:
    """The edge's clock and the cloud's, one link model, one strategy after another."""

    timeline_start_ms: float | None = None    # where the running strategy's timeline began (simulate sets it)

    def __init__(self, sc: Scenario, prof: ComputeProfile, workload: dict, link_model: str, seed: int,
                 acceptance: str, synthetic_profile, tcp_options: dict, congestion_control: str | None,
                 host_overhead_ms: float, paired_seed: int | None = None):
        self.sc, self.p, self.w = sc, prof, workload
        self.link = make_link_model(link_model, sc.timeline.link_at(0.0, sc.link),
                                    congestion_control=congestion_control or sc.congestion_control, seed=seed,
                                    paired_seed=paired_seed, **tcp_options)
        self.link_model = link_model
        self.overhead = host_overhead_ms          # ms, or a function of the direction's one-way delay
        self._overhead_of: dict[int, float] = {}   # link handle → host overhead its arrival gets
        self.sizes = WireSizes(prof.vocab)
        self.t = 0.0                   # edge clock, ms since the run began
        self.cloud_free = 0.0
        self.next_id = 1
        self.pending_end: tuple[int, str, int] | None = None
        self.acceptance_mode, self.synthetic_profile, self.seed = acceptance, synthetic_profile, seed
        self.clock_phase = None        # cycle (None: the query) → the lab's jiffy-grid phase at its start
        self._hello()

    def _align_clock(self, cycle: int | None) -> None:
        """Put the link's timer grid where the lab's stood when this query (cycle None) or cycle began."""
        phase = self.clock_phase(cycle) if self.clock_phase else None
        if phase is not None:
            self.link.clock_offset_ms = phase - self.t

    def _submit(self, t_ms: float, direction: str, nbytes: int) -> int:
        """Hand a message to the link model; remember the host overhead its arrival will get."""
        h = self.link.submit(t_ms, direction, nbytes)
        oh = self.overhead
        if callable(oh):
            start = self.timeline_start_ms
            link = self.sc.timeline.link_at(0.0 if start is None else max(0.0, t_ms - start) / 1000.0, self.sc.link)
            oh = oh((link.uplink if direction == "up" else link.downlink).delay_ms)
        self._overhead_of[h] = float(oh)
        return h

    def _arrive(self, handle: int) -> float:
        """When the receiving node's code has the message: the link's delivery + host overhead."""
        return self.link.delivered_at(handle) + self._overhead_of.get(handle, 0.0)

    def _send(self, t_ms: float, direction: str, nbytes: int) -> float:
        return self._arrive(self._submit(t_ms, direction, nbytes))

    def _id(self) -> int:
        mid, self.next_id = self.next_id, self.next_id + 1
        return mid

    def _hello(self) -> None:
        mid = self._id()
        r = self._send(self.t, "up", self.sizes.hello(mid).wire)
        self.t = self._send(r, "down", self.sizes.hello_ok(mid).wire)

    def _cloud(self, arrival: float, compute_ms: float) -> tuple[float, float]:
        """(start, end) of a handler on the single-threaded cloud."""
        start = max(arrival, self.cloud_free)
        self.cloud_free = start + compute_ms
        return start, self.cloud_free

    def _flush_end(self) -> None:
        """The previous query's `end` (never awaited by the edge) is answered once it arrives."""
        if self.pending_end is None:
            return
        h, qid, mid = self.pending_end
        self.pending_end = None
        _, done = self._cloud(self._arrive(h), 0.0)
        self._submit(done, "down", self.sizes.end_ok(mid, qid).wire)

    def acceptance(self, strategy_name: str, index: int, prompt: str):
        if self.acceptance_mode == "synthetic":
            return SyntheticAcceptance(self.synthetic_profile, prompt)
        return IidAcceptance(self.p.alpha, random.Random(f"{self.seed}:{strategy_name}:{index}"))

    # -------------------------------------------------------------- one query
    def now(self) -> float:
        return self.t

    def query(self, strategy, prompt: dict, index: int, warmup: bool) -> tuple[dict, list[dict]]:
        L = _prompt_tokens(prompt["prompt"])
        seed = int(self.w["seed"]) * 100_003 + index
        max_new = self.w["max_new_tokens"]
        rec = {"scenario": self.sc.name, "strategy": strategy.name, "placement": strategy.placement,
               "query_index": index, "prompt_id": prompt["id"], "warmup": warmup, "backend": "sim",
               "link_model": self.link_model, "prompt_tokens": L, "temperature": self.w["temperature"],
               "payload": self.w["payload"], "seed": seed, "edge_fallback": False, "fallback_reason": None}
        before = self.link.stats()
        log = QueryLog(self.now, strategy.placement)
        query = _SimQuery(self, f"{strategy.name}/{index}/{SIM_QID_SUFFIX}", L, seed,
                          self.acceptance(strategy.name, index, prompt["prompt"]))
        try:
            run_query(strategy, query, log, max_new, SYNTHETIC_EOS)
        except StrategyError as e:
            raise SimError(str(e)) from None
        rec.update(log.result(max_new))
        if hasattr(strategy, "provenance"):
            rec["controller"] = strategy.provenance()
        after = self.link.stats()
        rec["sim_tcp"] = {k: after[k] - before.get(k, 0) for k in after
                          if k.endswith(("retransmits", "tlp", "rto", "lost")) and isinstance(after[k], int)}
        cyc = log.cycles
        cycles = [{"scenario": rec["scenario"], "strategy": rec["strategy"], "query_index": index, "warmup": warmup,
                   "backend": "sim", "cycle": j, **{k: v[j] for k, v in cyc.items()}}
                  for j in range(len(cyc["k"]))]
        return rec, cycles


class _SimQuery:
    """One simulated query's driver for lab/core/cycle.py's run_query, as the edge node's EdgeQuery."""

    def __init__(self, run: _Run, qid: str, prompt_len: int, seed: int, acc):
        self.run, self.qid, self.L, self.seed, self.acc = run, qid, prompt_len, seed, acc

    def alone_seam(self) -> "_SimAlone":
        return _SimAlone(self.run, self.L)

    def split_seam(self) -> "_SimSplit":
        return _SimSplit(self)

    def cloud_generate(self, strategy, log: QueryLog) -> None:
        """The edge sends `generate`; the cloud computes (cloud_node's on_generate) and streams tokens."""
        run, L = self.run, self.L
        p, w, sizes = run.p, run.w, run.sizes
        spec_mode = strategy.placement == "cloud-spec"
        k = strategy.next_k() if spec_mode else 0
        mid = run._id()
        stop, stop_min = draft_limits(strategy) if spec_mode else (None, 1)
        up = sizes.generate(mid, self.qid, "spec" if spec_mode else "target", k, w, self.seed, L, stop, stop_min)
        h = run._submit(run.t, "up", up.wire)
        run._flush_end()
        start, _ = run._cloud(run._arrive(h), 0.0)
        sends, t_last, seq = [], start, 0

        def send(tc: float, new: int, done: bool, extra) -> None:
            nonlocal t_last, seq
            size = sizes.tokens(mid, self.qid, seq, new, done, tc - t_last, extra)
            sends.append((run._submit(tc, "down", size.wire), tc - t_last, size.payload, new, extra))
            t_last, seq = tc, seq + 1

        if spec_mode:
            # cloud_node runs the one cycle co-located: the same loop, on the cloud's clock.
            seam = _SimColocated(self, start + p.prefill_ms_per_token * (L - 1) + p.prefill_ms_per_token * L)
            speculate(FixedK(k, stop, stop_min), seam, QueryLog(seam.now, "cloud-spec"), w["max_new_tokens"], SYNTHETIC_EOS,
                      on_cycle=lambda new, kk, n: send(seam.tc, len(new), False, (kk, n)))
            tc = seam.tc
            send(tc, 0, True, (0, 0))
        else:
            tc = start + p.prefill_ms_per_token * (L - 1)
            # the target alone stops at its answer's EOS (if the profile ends it) or at max_new_tokens
            n = next((i + 1 for i in range(w["max_new_tokens"]) if self.acc.token(L + i) in SYNTHETIC_EOS),
                     w["max_new_tokens"])
            for produced in range(1, n + 1):
                tc += p.step_ms()
                send(tc, 1, produced >= n, None)
        run.cloud_free = tc
        t_prev, up_payload = log.t_submit, up.payload
        for h, compute, size, new, extra in sends:
            run.t = max(run._arrive(h), t_prev)
            kk, n = extra or (0, 0)
            log.add([FAKE_TOKEN] * new, kk, n, run.t - t_prev, 0.0, compute, up_payload, size)
            up_payload, t_prev = 0, run.t


class _SimAlone:
    """The draft alone on the simulated edge: the first token pays the prompt's prefill."""

    def __init__(self, run: _Run, prompt_len: int):
        self.run, self.L, self.first = run, prompt_len, True

    def now(self) -> float:
        return self.run.t

    def alone(self) -> int:
        p = self.run.p
        self.run.t += p.prefill_ms_per_token * self.L if self.first else p.t_draft_ms
        self.first = False
        return FAKE_TOKEN


class _SimSplit:
    """The cycle's seam in the simulator: EdgeSeam's messages, compute from the profile, the link model."""

    def __init__(self, q: _SimQuery):
        self.q, self.run = q, q.run
        run, p, L = self.run, self.run.p, q.L
        self.position = L                    # where the next draft token sits in the sequence
        self.first = True                    # the first cycle drafts from the prefill's logits
        mid = run._id()
        self.up0 = run.sizes.prefill(mid, q.qid, L)
        h = run._submit(run.t, "up", self.up0.wire)
        run._flush_end()
        edge_ready, t_sent, arrival = run.t + p.prefill_ms_per_token * L, run.t, run._arrive(h)
        _, done_at = run._cloud(arrival, p.prefill_ms_per_token * (L - 1))
        self.down0 = run.sizes.prefill_ok(mid, q.qid, p.prefill_ms_per_token * (L - 1))
        back = run._send(done_at, "down", self.down0.wire)
        # The prefill exchange is the query's first round trip: what the edge measures of the link
        # before its first cycle (the round trip minus the cloud's time holding the request).
        self.rtt_hint_ms = self.last_net_ms = (back - t_sent) - (done_at - arrival)
        self.stretch: tuple | None = None      # a stretch already requested and scheduled (_request_stretch)
        self.catch_up_ms = 0.0               # the draft's prefill of tokens the cloud made alone
        self.whole = False                   # the last block was accepted whole: a two-token catch-up
        run.t = max(edge_ready, back)

    def now(self) -> float:
        return self.run.t

    def start_cycle(self, seq: int) -> None:
        if seq:
            self.run._align_clock(seq)

    def draft(self, k: int, seq: int, stop: float | None = None, stop_min: int = 1) -> list[int]:
        k = drafted(self.q.acc, self.position, k, stop, stop_min)
        self.run.t += drafting_ms(self.run.p, k, self.first, self.whole) + self.catch_up_ms
        self.first, self.catch_up_ms, self.whole = False, 0.0, False
        self.chain = k
        return [self.q.acc.token(self.position + i, drafted=True) for i in range(k)]

    def verify(self, drafts: list[int], seq: int) -> Verdict:
        run, q, k = self.run, self.q, len(drafts)
        rid = run._id()
        up = run.sizes.verify(rid, q.qid, seq, k, run.w, q.seed)
        a = run._send(run.t, "up", up.wire)
        verify = run.p.verify_ms(k + 1)
        _, c_end = run._cloud(a, verify)
        n = q.acc.accepted(k, self.position)
        self.whole = n == k
        down = run.sizes.verdict(rid, q.qid, seq, n, verify)
        t_sent = run.t
        run.t = run._send(c_end, "down", down.wire)
        self.last_net_ms = (run.t - t_sent) - (c_end - a)
        up, down = up.payload, down.payload
        if seq == 0:                                 # the nodes count the prefill exchange in cycle 0
            up, down = up + self.up0.payload, down + self.down0.payload
        return Verdict(n, q.acc.token(self.position + n), verify, up, down)

    def commit(self, accepted: list[int], token: int) -> None:
        self.position += len(accepted) + 1

    def cloud_alone(self, n: int, seq: int, decide, emit, room: int | None = None) -> None:
        """The cloud decodes n tokens alone from the accepted prefix and streams them (fallback: cloud).

        The stretch was requested (and the cloud scheduled it) during the previous stretch, or is
        requested now.  At its first token the edge knows the request's network time (round trip minus
        the time the cloud held it, which the token message reports) and asks decide(network_ms, cloud
        ms per token) for the next K; another stretch (at most `room` − n tokens) is requested at once if
        that is CLOUD_ALONE, so the cloud streams on without a gap when a stretch outlasts the round
        trip.  emit(tokens, network_ms, cloud_ms, bytes_up, bytes_down) records each token message as it
        arrives (on the edge's clock).  The probe takes the time the cloud held the request since it
        arrived, queueing behind the previous stretch included, as cloud_node reports it (`queued_ms`;
        it dates a mid-stream arrival at the middle of the token it came during: ±half a step, not
        modelled here).  On resuming, the edge's draft takes in the streamed tokens (a prefill of n
        tokens, paid with the next draft) and drafts from their logits."""
        run, p = self.run, self.run.p
        if self.stretch is None:
            # Sized to outlast the round trip last measured, so the next request (sent at this
            # stretch's first token) reaches the cloud before it runs dry.
            cover = math.ceil(self.last_net_ms / p.step_ms()) + 2
            self.stretch = self._request_stretch(max(n, cover) if room is None else min(max(n, cover), room))
        sends, t_sent, arrival, start, up, down = self.stretch
        self.stretch = None
        n = len(sends)
        first = run._arrive(sends[0])
        network_ms = (first - t_sent) - (start - arrival + p.step_ms())
        run.t = max(run.t, first)
        self.last_net_ms = network_ms
        k_next = decide(network_ms, p.step_ms())
        # Long enough that the next request reaches the cloud before this stretch ends: no idle gap.
        more = max(n, math.ceil(network_ms / p.step_ms()) + 2)
        more = more if room is None else min(more, room - n)
        if k_next == CLOUD_ALONE and more > 0:
            # Scheduled now, before this stretch's later tokens are read: the link model runs in time order.
            self.stretch = self._request_stretch(more)
        for i, hh in enumerate(sends):
            run.t = max(run.t, run._arrive(hh))
            emit([self.q.acc.token(self.position + i)], network_ms if i == 0 else None, p.step_ms(),
                 up if i == 0 else 0, down[i])
        self.position += n
        if k_next != CLOUD_ALONE:
            self.catch_up_ms += p.prefill_ms_per_token * n
            self.first = True

    def _request_stretch(self, n: int) -> tuple[list[int], float, float, float, int, list[int]]:
        """Send `generate` for n tokens now; the single-threaded cloud decodes them after what it is doing
        and submits each token message when it is made.  (handles, sent, arrival, start, bytes up, down)"""
        run, p, q = self.run, self.run.p, self.q
        mid = run._id()
        req = run.sizes.generate(mid, q.qid, "target", 0, {**run.w, "max_new_tokens": n}, q.seed, 0)
        t_sent = run.t
        h = run._submit(t_sent, "up", req.wire)
        arrival = run._arrive(h)
        start, tc = run._cloud(arrival, 0.0)
        sends, down = [], []
        for i in range(n):
            tc += p.step_ms()
            size = run.sizes.tokens(mid, q.qid, i, 1, i == n - 1, (tc - arrival) if i == 0 else p.step_ms(), None)
            sends.append(run._submit(tc, "down", size.wire))
            down.append(size.payload)
        run.cloud_free = tc
        return sends, t_sent, arrival, start, req.payload, down

    def alone(self) -> int:
        self.run.t += 0.0 if self.first else self.run.p.t_draft_ms
        self.first = False
        self.position += 1
        return FAKE_TOKEN

    # The pipelined cycle (lab/core/cycle.py PipeSeam), one block in flight: the block's whole exchange is
    # computed when it is sent (the link model takes messages in time order, and at depth 1 nothing else
    # is sent before its verdict arrives); polls and drafting ahead only move the edge's clock.
    chain = 0                                # tokens of the chain past S (blocks and guessed bonuses)
    guessed = False                          # the block being drafted ahead has its guessed bonus
    sent: dict | None = None                 # seq -> (verdict arrival, Verdict) of the block in flight
    hit = False                              # the block in flight is accepted whole with the guessed bonus

    def send(self, drafts: list[int], seq: int) -> None:
        run, q, k = self.run, self.q, len(drafts)
        if self.sent:
            raise SimError("the simulator models one pipelined block in flight (pipelined:K, depth 1)")
        base = self.position + self.chain - k
        rid = run._id()
        up = run.sizes.verify(rid, q.qid, seq, k, run.w, q.seed, pos=base)
        a = run._send(run.t, "up", up.wire)
        verify = run.p.verify_ms(k + 1)
        _, c_end = run._cloud(a, verify)
        n = q.acc.accepted(k, base)
        hit = n == k and q.acc.bonus(base + k)
        down = run.sizes.verdict(rid, q.qid, seq, n, verify)
        up_b, down_b = up.payload, down.payload
        if seq == 0:                                 # the nodes count the prefill exchange in cycle 0
            up_b, down_b = up_b + self.up0.payload, down_b + self.down0.payload
        self.sent = {seq: (run._send(c_end, "down", down.wire),
                           Verdict(n, q.acc.token(base + n), verify, up_b, down_b))}
        self.hit = hit

    def poll(self, seq: int, timeout_ms: float | None) -> Verdict | None:
        arrive, v = self.sent[seq]
        if timeout_ms is not None and self.run.t + timeout_ms < arrive:
            self.run.t += timeout_ms
            return None
        self.run.t = max(self.run.t, arrive)
        del self.sent[seq]
        return v

    def draft_ahead(self, k: int, seq: int, between) -> list[int] | None:
        self.guessed = False
        for i in range(k + 1):                   # the guessed bonus, then K drafts: one forward each
            if not between():
                return None
            self.run.t += self.run.p.t_draft_ms
            self.guessed = True
        base = self.position + self.chain + 1    # past the chain and its guessed bonus
        self.chain += k + 1
        return [self.q.acc.token(base + i, drafted=True) for i in range(k)]

    def guess_holds(self, k: int, verdict: Verdict) -> bool:
        return verdict.accepted == k and (not self.guessed or self.hit)

    def settle(self, k: int, verdict: Verdict) -> bool:
        held = verdict.accepted == k and self.guessed and self.hit and self.chain > k + 1
        self.guessed = False
        if held:
            self.position, self.chain = self.position + k + 1, self.chain - k - 1
            return True
        self.position, self.chain = self.position + verdict.accepted + 1, 0
        return False

    def resync(self) -> None:
        run, p = self.run, self.run.p
        rid, n_ctx = run._id(), self.position
        a = run._send(run.t, "up", run.sizes.prefill(rid, self.q.qid, n_ctx).wire)
        _, c_end = run._cloud(a, p.prefill_ms_per_token * (n_ctx - 1))
        ok = run.sizes.prefill_ok(rid, self.q.qid, p.prefill_ms_per_token * (n_ctx - 1))
        run.t = run._send(c_end, "down", ok.wire)

    def close(self) -> None:
        run, mid = self.run, self.run._id()
        run.pending_end = (run._submit(run.t, "up", run.sizes.end(mid, self.q.qid).wire), self.q.qid, mid)


class _SimColocated:
    """The cycle's seam for cloud-spec inside the simulated cloud: compute only, on the cloud's clock."""

    def __init__(self, q: _SimQuery, start_ms: float):
        self.q, self.p, self.tc = q, q.run.p, start_ms
        self.position, self.first, self.whole = q.L, True, False

    def now(self) -> float:
        return self.tc

    def start_cycle(self, seq: int) -> None:
        pass

    def draft(self, k: int, seq: int, stop: float | None = None, stop_min: int = 1) -> list[int]:
        k = drafted(self.q.acc, self.position, k, stop, stop_min)
        self.tc += drafting_ms(self.p, k, self.first, self.whole)
        self.first = self.whole = False
        return [self.q.acc.token(self.position + i, drafted=True) for i in range(k)]

    def verify(self, drafts: list[int], seq: int) -> Verdict:
        k = len(drafts)
        self.tc += self.p.verify_ms(k + 1)
        n = self.q.acc.accepted(k, self.position)
        self.whole = n == k
        return Verdict(n, self.q.acc.token(self.position + n), self.p.verify_ms(k + 1))

    def commit(self, accepted: list[int], token: int) -> None:
        self.position += len(accepted) + 1

    def alone(self) -> int:
        raise SimError("co-located speculation with K = 0 is not modelled")

    def resync(self) -> None:
        pass

    def close(self) -> None:
        pass


def _prompt_tokens(prompt: str) -> int:
    """Prompt length as lab.models.synthetic encodes it (a start token plus one per word)."""
    from lab.models.synthetic import encode_words
    return len(encode_words(prompt, 2))


def _link_changes(sc: Scenario, start_ms: float = 0.0):
    """The scenario's timeline begun at start_ms on the simulation clock, as (t_ms, LinkPair) after its
    t=0 state, repetition unrolled lazily (it may be endless)."""
    for t_s, link in sc.timeline.changes(sc.link):
        yield start_ms + t_s * 1000.0, link


def _restart_timeline(run: _Run, measured: bool) -> None:
    """Every strategy meets the same link trace, as in the lab (lab/runner.py; TIMELINE_ALIGNMENT): the
    link goes back to the timeline's t=0 state when a strategy starts (its warm-up runs on it), and the
    timeline starts from t=0 with the strategy's first measured query."""
    sc = run.sc
    run.timeline_start_ms = run.t if measured else None
    run.link.restart_timeline(run.t, sc.timeline.link_at(0.0, sc.link),
                              _link_changes(sc, run.t) if measured else ())


# ------------------------------------------------------------------ the public entry points

def simulate(scenario: Scenario, strategies: list[str] | None = None, profile="fast", queries: int | None = None,
             seed: int = 0, link_model: str = "tcp", *, warmup_queries: int | None = None,
             max_new_tokens: int | None = None, payload: str | None = None, temperature: float | None = None,
             prompts: str | None = None, acceptance: str = "auto", congestion_control: str | None = None,
             tcp_options: dict | None = None, host_overhead_ms=0.0,
             compute: ComputeProfile | None = None, paired_seed: int | None = None,
             link_out: list | None = None, timeline_out: list | None = None,
             clock_phase: Callable[[str, int, int | None], float | None] | None = None,
             compute_for: Callable[[str, int], ComputeProfile | None] | None = None,
             nasd_table: str | None = None,
             draft_stops: dict[str, tuple[float | None, bool]] | None = None) -> Iterator[tuple[dict, list[dict]]]:
    """Yield (query record, cycle records) for every query of every strategy, in the edge node's order.

    One connection carries the whole run, as in the lab.  `acceptance`: "iid", "synthetic", or "auto"
    (synthetic when `profile` is a lab.models.synthetic profile or its name, iid otherwise).
    `congestion_control`: what the lab run used (its meta.json records it; a scenario without
    tcp.congestion_control gets the kernel's default, which may be bbr) — default the scenario's,
    else cubic.  `tcp_options`: TcpLinkModel keyword arguments (config, shaper, l2_bytes).
    `host_overhead_ms`: added to every message's arrival (zmq I/O thread, decoding, the relay, waking
    an idle receiver) — 0 by default; a number, or a function of the one-way delay the message
    crosses (ms → ms); if used, measure it on unimpaired links, never fit it to the compared runs.
    `compute`: compute times to use instead of `profile`'s (which still decides acceptance) — e.g.
    the profile plus the host's measured overshoot (lab/validate.py calibrates it).
    `compute_for(strategy, index)`: that query's own compute times, where they differ from the rest
    (None: the rest's) — a real pair's run, whose host did not compute at one speed throughout
    (lab/validate.py judge_run).
    `paired_seed`: the seed of each packet's loss and jitter draws, keyed by the message it carries
    (netns/paired.py) — default `seed`, so a simulation and a wire-backend lab run with the same
    workload seed lose and delay the same messages' packets alike.
    `link_out`: a list the run's link model is appended to (its stats and lost_keys after the run).
    `timeline_out`: a list each strategy's timeline start is appended to, {"strategy", "start_ms"} on the
    simulation clock (the timeline restarts with each strategy's first measured query: _restart_timeline).
    `clock_phase(strategy, index, cycle)`: where the kernel's jiffy grid stood when that query (cycle None)
    or that split cycle started in a lab run (ms past a jiffies multiple of 512; lab/validate.py reads
    it), so the simulated TCP timers fire on the same grid phase as the lab's; None leaves the clock.
    `nasd_table`: the table file nasd plays when given no table= option — default the profile's
    calibrated one (a lab run's own copy, strategies.RUN_TABLE, when replaying that run).
    `draft_stops`: {strategy: (stop, by_rtt)} for adaptive strategies to draft with the stop a replayed
    lab run recorded (None: none; by_rtt: nasd's table chose each block's), whatever the profile's
    measured confidence would give them (lab/validate.py recorded_stops)."""
    prof = compute if compute is not None else ComputeProfile.of(profile)
    synthetic_profile = None
    if acceptance in ("auto", "synthetic"):
        if isinstance(profile, str):
            from lab.models.synthetic import load_profile
            synthetic_profile = load_profile(profile)
        elif type(profile).__module__ == "lab.models.synthetic":
            synthetic_profile = profile
        if acceptance == "synthetic" and synthetic_profile is None:
            raise SimError("acceptance 'synthetic' needs a lab.models.synthetic profile (or its name)")
        acceptance = "synthetic" if synthetic_profile is not None else "iid"
    elif acceptance != "iid":
        raise SimError(f"acceptance must be iid, synthetic or auto, got {acceptance!r}")
    w = asdict(scenario.workload)
    for key, v in (("queries", queries), ("warmup_queries", warmup_queries), ("max_new_tokens", max_new_tokens),
                   ("payload", payload), ("temperature", temperature), ("prompts", prompts)):
        if v is not None:
            w[key] = v
    objs = [make_strategy(s) for s in (strategies or scenario.strategies)]
    plist = load_prompts(w["prompts"])
    run = _Run(scenario, prof, w, link_model, seed, acceptance, synthetic_profile,
               (tcp_options or {}) if link_model == "tcp" else {}, congestion_control,
               host_overhead_ms if callable(host_overhead_ms) else float(host_overhead_ms),
               seed if paired_seed is None else paired_seed)
    _bind_controllers(objs, run, profile, prof, link_model, acceptance, nasd_table, draft_stops or {})
    if link_out is not None:
        link_out.append(run.link)
    for strat in objs:
        _restart_timeline(run, measured=False)
        for i in range(w["warmup_queries"] + w["queries"]):
            if i == w["warmup_queries"]:
                _restart_timeline(run, measured=True)
                if timeline_out is not None:
                    timeline_out.append({"strategy": strat.name, "start_ms": round(run.t, 3)})
            run.clock_phase = (lambda c, s=strat.name, i=i: clock_phase(s, i, c)) if clock_phase else None
            run.p = (compute_for(strat.name, i) if compute_for else None) or prof
            run._align_clock(None)
            yield run.query(strat, plist[i % len(plist)], i, warmup=i < w["warmup_queries"])
    run._flush_end()


def _bind_controllers(objs, run: _Run, profile, prof: ComputeProfile, link_model: str, acceptance: str,
                      nasd_table: str | None = None, draft_stops: dict[str, tuple[float | None, bool]] | None = None) -> None:
    """NASD without a table= option takes `nasd_table`, else the profile's calibrated table if `lab
    calibrate` wrote one; the adaptive controllers learn whether the draft's confidence is measured
    (the profile's, as a synthetic edge's draft would; an i.i.d. α is not a confidence); the oracle
    gets its hindsight (lab/sim/oracle.py)."""
    from lab.core.strategies import load_table
    from lab.models.synthetic import confidence_measured, nasd_table_path
    from lab.sim.oracle import OracleChooser
    measured = acceptance == "synthetic" and confidence_measured(run.synthetic_profile)
    for o in objs:
        if hasattr(o, "use_draft_confidence"):
            o.use_draft_confidence(measured)
            if draft_stops and o.name in draft_stops:
                o.replay_stop(*draft_stops[o.name])
        if hasattr(o, "use_table") and getattr(o, "table", None) is None:
            path = Path(nasd_table) if nasd_table else nasd_table_path(prof.source or prof.name)
            if path.is_file():
                o.use_table(load_table(str(path)))
        if hasattr(o, "bind"):
            o.bind(OracleChooser(run, simulate, profile, link_model, acceptance,
                                 with_cloud=getattr(o, "fallback", "cloud") == "cloud").choose)


def write_run(scenario: Scenario, out_dir: Path | None = None, **simulate_kwargs) -> Path:
    """Simulate and write a results folder (meta.json, queries.jsonl, cycles.jsonl, summary.csv)."""
    from lab import metrics
    from lab.results import JsonlWriter, Meta, new_run_dir, read_jsonl

    run_dir = new_run_dir(f"{scenario.name}-sim", Path(out_dir) if out_dir else None)
    opts = {k: v for k, v in simulate_kwargs.items() if k != "profile"}
    prof = ComputeProfile.of(simulate_kwargs.get("profile", "fast"))
    meta = Meta(run_dir, {"scenario": scenario.to_dict(), "backend": "sim", "profile": asdict(prof),
                          "options": json.loads(json.dumps(opts, default=str))})
    t0 = time.perf_counter()
    status = "failed"
    starts: list[dict] = []
    controllers: dict[str, dict] = {}           # each adaptive strategy's table and provenance
    try:
        with JsonlWriter(run_dir / "queries.jsonl") as qw, JsonlWriter(run_dir / "cycles.jsonl") as cw:
            for rec, cycles in simulate(scenario, timeline_out=starts, **simulate_kwargs):
                if "controller" in rec:
                    controllers[rec["strategy"]] = rec["controller"]
                qw.write(rec)
                for c in cycles:
                    cw.write(c)
        status = "complete"
    finally:
        meta.update(sim_wall_s=round(time.perf_counter() - t0, 3), timeline_alignment=TIMELINE_ALIGNMENT,
                    timeline_starts=starts, controllers=controllers)
        meta.finish(status)
    df = metrics.summarize(read_jsonl(run_dir / "queries.jsonl"), scenario=scenario.name, backend="sim",
                           models=f"synthetic:{prof.name}")
    df.to_csv(run_dir / "summary.csv", index=False)
    return run_dir
