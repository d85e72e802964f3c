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
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from lab.metrics import tokens_per_s
from lab.sim.netsim import SimError, make_link_model
from lab.prompts import load_prompts
from lab.scenario import TIMELINE_ALIGNMENT, Scenario
from lab.sim.simwire import SIM_QID_SUFFIX, WireSizes
from lab.core.strategies import CycleObservation, make_strategy
from netns.link import LinkPair


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

    def verify_ms(self, n: int) -> float:
        return self.verify_a_ms + self.verify_b_ms * n

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
                       name=str(getattr(profile, "name", "custom")))
        except AttributeError as e:
            raise SimError(f"profile {profile!r} lacks a field the simulator needs ({e})") from None


# ------------------------------------------------------------------ acceptance

class IidAcceptance:
    def __init__(self, alpha: float, rng: random.Random):
        self.alpha, self.rng = alpha, rng

    def accepted(self, k: int, position: int) -> int:
        n = 0
        while n < k and self.rng.random() < self.alpha:
            n += 1
        return n


class SyntheticAcceptance:
    """lab.models.synthetic's own rule (SyntheticModel.agrees): whether the draft proposes the
    target's token at a sequence position; the draft session's origin is the prompt length."""

    def __init__(self, profile, prompt_len: int):
        from lab.models.synthetic import SyntheticModel
        self.draft, self.origin = SyntheticModel("draft", profile), prompt_len
        self.cache: dict[int, bool] = {}

    def hit(self, pos: int) -> bool:
        h = self.cache.get(pos)
        if h is None:
            h = self.cache[pos] = bool(self.draft.agrees(pos, self.origin))
        return h

    def accepted(self, k: int, position: int) -> int:
        n = 0
        while n < k and self.hit(position + n):
            n += 1
        return n


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

    def acceptance(self, strategy_name: str, index: int, prompt_len: int):
        if self.acceptance_mode == "synthetic":
            return SyntheticAcceptance(self.synthetic_profile, prompt_len)
        return IidAcceptance(self.p.alpha, random.Random(f"{self.seed}:{strategy_name}:{index}"))

    # -------------------------------------------------------------- one query
    def query(self, strategy, prompt: dict, index: int, warmup: bool) -> tuple[dict, list[dict]]:
        L = _prompt_tokens(prompt["prompt"])
        seed = int(self.w["seed"]) * 100_003 + index
        qid = f"{strategy.name}/{index}/{SIM_QID_SUFFIX}"
        rec = {"scenario": self.sc.name, "strategy": strategy.name, "placement": strategy.placement,
               "query_index": index, "prompt_id": prompt["id"], "warmup": warmup, "backend": "sim",
               "link_model": self.link_model, "prompt_tokens": L, "temperature": self.w["temperature"],
               "payload": self.w["payload"], "seed": seed, "edge_fallback": False, "fallback_reason": None}
        cyc = {k: [] for k in ("k", "accepted", "cycle_ms", "network_ms", "cloud_compute_ms", "edge_compute_ms",
                               "bytes_up", "bytes_down", "t_ms")}
        t_submit = self.t
        state = {"ttft": None, "out": 0}
        before = self.link.stats()

        def add_cycle(n_new, k, acc, cycle, edge_ms, cloud_ms, up=0, down=0):
            if n_new and state["ttft"] is None:
                state["ttft"] = self.t - t_submit
            state["out"] += n_new
            net = max(0.0, cycle - edge_ms - cloud_ms) if strategy.placement != "edge" else 0.0
            for key, v in zip(cyc, (k, acc, cycle, net, cloud_ms, edge_ms, up, down, self.t - t_submit)):
                cyc[key].append(v)
            return net

        acc = self.acceptance(strategy.name, index, L)
        if strategy.placement == "edge":
            self._edge_only(L, add_cycle)
        elif strategy.placement in ("cloud", "cloud-spec"):
            self._cloud_generate(strategy, qid, L, seed, acc, add_cycle, t_submit)
        elif strategy.placement == "split":
            self._split(strategy, qid, L, seed, acc, add_cycle, state)
        else:
            raise SimError(f"strategy {strategy.name!r} has placement {strategy.placement!r}, which the "
                           f"simulator does not know (cloud, cloud-spec, edge, split)")
        e2e = self.t - t_submit
        n = min(state["out"], self.w["max_new_tokens"])
        ttft = state["ttft"] if state["ttft"] is not None else e2e
        rec.update({"ttft_ms": ttft, "e2e_ms": e2e, "n_tokens": n, "tokens_per_s": tokens_per_s(n, ttft, e2e)})
        rec.update({f"{k}_per_cycle": v for k, v in cyc.items()})
        after = self.link.stats()
        rec["sim_tcp"] = {k: after[k] - before.get(k, 0) for k in after
                          if k.endswith(("retransmits", "tlp", "rto", "lost")) and isinstance(after[k], int)}
        cycles = [{"scenario": rec["scenario"], "strategy": rec["strategy"], "query_index": index, "warmup": warmup,
                   "backend": "sim", "cycle": j, **{k: v[j] for k, v in cyc.items()}}
                  for j in range(len(cyc["k"]))]
        return rec, cycles

    def _edge_only(self, L: int, add_cycle) -> None:
        ms = self.p.prefill_ms_per_token * L
        self.t += ms
        add_cycle(1, 0, 0, ms, ms, 0.0)
        for _ in range(self.w["max_new_tokens"] - 1):
            self.t += self.p.t_draft_ms
            add_cycle(1, 0, 0, self.p.t_draft_ms, self.p.t_draft_ms, 0.0)

    def _cloud_generate(self, strategy, qid, L, seed, acc, add_cycle, t_submit) -> None:
        p, w, sizes = self.p, self.w, self.sizes
        spec_mode = strategy.placement == "cloud-spec"
        k = strategy.next_k() if spec_mode else 0
        mid = self._id()
        up = sizes.generate(mid, qid, "spec" if spec_mode else "target", k, w, seed, L)
        h = self._submit(self.t, "up", up.wire)
        self._flush_end()
        start, _ = self._cloud(self._arrive(h), 0.0)
        tc = start + p.prefill_ms_per_token * (L - 1) + (p.prefill_ms_per_token * L if spec_mode else 0.0)
        sends, t_last, produced, seq = [], start, 0, 0
        while produced < w["max_new_tokens"]:
            if spec_mode:
                kk = max(1, min(k, w["max_new_tokens"] - produced))
                tc += p.t_draft_ms * (kk - 1 if seq == 0 else kk) + p.verify_ms(kk + 1)
                n = acc.accepted(kk, L + produced)
                new = min(n + 1, w["max_new_tokens"] - produced)
                extra = (kk, n)
            else:
                tc += p.step_ms()
                new, extra = 1, None
            produced += new
            done = produced >= w["max_new_tokens"] and not spec_mode
            size = sizes.tokens(mid, qid, seq, new, done, tc - t_last, extra)
            sends.append((self._submit(tc, "down", size.wire), tc - t_last, size.payload, new, extra))
            t_last, seq = tc, seq + 1
        if spec_mode:
            size = sizes.tokens(mid, qid, seq, 0, True, 0.0, (0, 0))
            sends.append((self._submit(tc, "down", size.wire), 0.0, size.payload, 0, (0, 0)))
        self.cloud_free = tc
        t_prev, up_payload = t_submit, up.payload
        for h, compute, size, new, extra in sends:
            self.t = max(self._arrive(h), t_prev)
            kk, n = extra or (0, 0)
            add_cycle(new, kk, n, self.t - t_prev, 0.0, compute, up_payload, size)
            up_payload, t_prev = 0, self.t

    def _split(self, strategy, qid, L, seed, acc, add_cycle, state) -> None:
        p, w, sizes = self.p, self.w, self.sizes
        mid = self._id()
        up0 = sizes.prefill(mid, qid, L)
        h = self._submit(self.t, "up", up0.wire)
        self._flush_end()
        edge_ready = self.t + p.prefill_ms_per_token * L
        _, done_at = self._cloud(self._arrive(h), p.prefill_ms_per_token * (L - 1))
        down0 = sizes.prefill_ok(mid, qid, p.prefill_ms_per_token * (L - 1))
        self.t = max(edge_ready, self._send(done_at, "down", down0.wire))
        strategy.start_query()
        seq, first, done = 0, True, False
        while not done:
            k = min(int(strategy.next_k()), w["max_new_tokens"] - state["out"])
            if seq:
                self._align_clock(seq)
            t0 = self.t
            if k <= 0:                                   # served by the edge alone, then the cloud re-prefills
                ms = 0.0 if first else p.t_draft_ms
                first = False
                self.t += ms
                add_cycle(1, 0, 0, ms, ms, 0.0)
                done = state["out"] >= w["max_new_tokens"]
                rid, n_ctx = self._id(), L + state["out"]
                a = self._send(self.t, "up", sizes.prefill(rid, qid, n_ctx).wire)
                _, c_end = self._cloud(a, p.prefill_ms_per_token * (n_ctx - 1))
                ok = sizes.prefill_ok(rid, qid, p.prefill_ms_per_token * (n_ctx - 1))
                self.t = self._send(c_end, "down", ok.wire)
                strategy.observe(CycleObservation(k=0, accepted=0, cycle_ms=ms, network_ms=0.0,
                                                  cloud_compute_ms=0.0, edge_compute_ms=ms))
                seq += 1
                continue
            edge_ms = p.t_draft_ms * (k - 1 if first else k)
            first = False
            rid = self._id()
            up = sizes.verify(rid, qid, seq, k, w, seed)
            a = self._send(t0 + edge_ms, "up", up.wire)
            verify = p.verify_ms(k + 1)
            _, c_end = self._cloud(a, verify)
            n = acc.accepted(k, L + state["out"])
            down = sizes.verdict(rid, qid, seq, n, verify)
            self.t = self._send(c_end, "down", down.wire)
            up, down = up.payload, down.payload
            if seq == 0:                                 # the nodes count the prefill exchange in cycle 0
                up, down = up + up0.payload, down + down0.payload
            new = min(n + 1, w["max_new_tokens"] - state["out"])
            net = add_cycle(new, k, n, self.t - t0, edge_ms, verify, up, down)
            done = state["out"] >= w["max_new_tokens"]
            strategy.observe(CycleObservation(k=k, accepted=n, cycle_ms=self.t - t0, network_ms=net,
                                              cloud_compute_ms=verify, edge_compute_ms=edge_ms,
                                              bytes_up=up, bytes_down=down))
            seq += 1
        mid = self._id()
        self.pending_end = (self._submit(self.t, "up", sizes.end(mid, qid).wire), qid, mid)


def _prompt_tokens(prompt: str) -> int:
    """Prompt length as lab.models.synthetic encodes it: a start token plus one per word."""
    return 1 + len(prompt.split() or ["<empty>"])


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
             clock_phase: Callable[[str, int, int | None], float | None] | None = None) -> Iterator[tuple[dict, list[dict]]]:
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
    `paired_seed`: the seed of each packet's loss and jitter draws, keyed by the message it carries
    (netns/paired.py) — default `seed`, so a simulation and a wire-backend lab run with the same
    workload seed lose and delay the same messages' packets alike.
    `link_out`: a list the run's link model is appended to (its stats and lost_keys after the run).
    `timeline_out`: a list each strategy's timeline start is appended to, {"strategy", "start_ms"} on the
    simulation clock (the timeline restarts with each strategy's first measured query: _restart_timeline).
    `clock_phase(strategy, index, cycle)`: where the kernel's jiffy grid stood when that query (cycle None)
    or that split cycle started in a lab run (ms past a jiffies multiple of 512; lab/validate.py reads
    it), so the simulated TCP timers fire on the same grid phase as the lab's; None leaves the clock."""
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
            run._align_clock(None)
            yield run.query(strat, plist[i % len(plist)], i, warmup=i < w["warmup_queries"])
    run._flush_end()


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
    try:
        with JsonlWriter(run_dir / "queries.jsonl") as qw, JsonlWriter(run_dir / "cycles.jsonl") as cw:
            for rec, cycles in simulate(scenario, timeline_out=starts, **simulate_kwargs):
                qw.write(rec)
                for c in cycles:
                    cw.write(c)
        status = "complete"
    finally:
        meta.update(sim_wall_s=round(time.perf_counter() - t0, 3), timeline_alignment=TIMELINE_ALIGNMENT,
                    timeline_starts=starts)
        meta.finish(status)
    df = metrics.summarize(read_jsonl(run_dir / "queries.jsonl"), scenario=scenario.name, backend="sim",
                           models=f"synthetic:{prof.name}")
    df.to_csv(run_dir / "summary.csv", index=False)
    return run_dir
