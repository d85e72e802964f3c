"""The oracle's choice, in hindsight: per link state, the best fixed K (or the cloud fallback).

How: when the oracle strategy asks, the link state in force (the scenario's timeline at the
simulation's time since the strategy's timeline began) is held still in a stable copy of the
scenario, and every candidate — fixed-k:1..K_MAX and (unless fallback=none) cloud-only — is
simulated on it with the run's profile, workload (its warm-up and up to MAX_QUERIES of its queries)
and link model; the one with the highest tokens/s pooled over those queries is played while that
state lasts — on a stable link, the best fixed K of the run's own workload.  A real edge can know
neither the true state nor the outcomes, so this is a reference to measure adaptive controllers
against, never a strategy for the lab (strategies.Oracle refuses).

Choices are cached per (profile, link model, state, workload): a timeline returns to the same states
and a sweep repeats runs.  The candidates' runs use seed 0 whatever the run's seed: with loss or
jitter the choice is the best on average, not on this run's draws.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from lab.core.cycle import pooled_tokens_per_s
from lab.core.strategies import CLOUD_ALONE
from lab.scenario import Timeline

K_MAX = 20
MAX_QUERIES = 8                  # measured queries per candidate: the built-in prompts once, at most
_CACHE: dict[tuple, dict[str, float]] = {}


class OracleChooser:
    def __init__(self, run, simulate: Callable, profile, link_model: str, acceptance: str, with_cloud: bool = True):
        self.run, self.simulate, self.profile = run, simulate, profile
        self.link_model, self.acceptance, self.with_cloud = link_model, acceptance, with_cloud

    def state(self):
        run = self.run
        start = run.timeline_start_ms
        t_s = 0.0 if start is None else max(0.0, run.t - start) / 1000.0
        return run.sc.timeline.link_at(t_s, run.sc.link)

    def choose(self) -> tuple[int, float]:
        """(K to play — CLOUD_ALONE for the fallback —, the state's configured RTT in ms)."""
        link = self.state()
        w = self.run.w
        key = (getattr(self.profile, "name", str(self.profile)), self.link_model, link,
               w["max_new_tokens"], w["prompts"], w["payload"], w["temperature"], min(w["queries"], MAX_QUERIES),
               w["warmup_queries"])
        score = _CACHE.get(key)
        if score is None:
            score = _CACHE[key] = self._scores(link)
        cands = [c for c in score if self.with_cloud or c != "cloud-only"]
        best = max(cands, key=lambda c: score[c])
        return (CLOUD_ALONE if best == "cloud-only" else int(best.partition(":")[2]),
                link.uplink.delay_ms + link.downlink.delay_ms)

    def _scores(self, link) -> dict[str, float]:
        """Every candidate's tokens/s on `link` held still, pooled over the workload's measured queries
        (the rate a controller maximises); oracle and oracle:fallback=none choose from the same runs."""
        sc = replace(self.run.sc, link=link, timeline=Timeline())
        cands = [f"fixed-k:{k}" for k in range(1, K_MAX + 1)] + ["cloud-only"]
        w = self.run.w
        by: dict[str, list[dict]] = {c: [] for c in cands}
        for rec, _ in self.simulate(sc, cands, self.profile, queries=min(w["queries"], MAX_QUERIES), seed=0,
                                    link_model=self.link_model, warmup_queries=w["warmup_queries"],
                                    max_new_tokens=w["max_new_tokens"], payload=w["payload"],
                                    temperature=w["temperature"], prompts=w["prompts"],
                                    acceptance=self.acceptance):
            if not rec["warmup"]:
                by[rec["strategy"]].append(rec)
        return {c: pooled_tokens_per_s(v, empty=0.0) for c, v in by.items()}
