"""Strategies: who drafts, who verifies, and how many tokens per cycle.

Every strategy is a small object behind one protocol, used unchanged by the
edge node and by the simulator.  A strategy sees only what a real edge could
observe: the previous cycles' K, accepted counts and timings.

    strategy = make_strategy("fixed-k:5")
    strategy.start_query()
    while not done:
        k = strategy.next_k()          # 0: serve this cycle from the edge alone
        ... draft k, send, verify ...
        strategy.observe(CycleObservation(k=k, accepted=n, network_ms=..., ...))

`placement` tells the node which loop to run:
  * "cloud"      — cloud-only: prompt up, target decodes autoregressively, tokens stream down.
  * "cloud-spec" — draft and target both in the cloud (co-located speculation, K from next_k).
  * "edge"       — edge-only: the draft model alone, nothing crosses the link.
  * "split"      — draft on the edge, verify in the cloud, K from next_k() every cycle.
A split strategy with `pipeline_depth` > 0 runs the pipelined cycle (lab/core/cycle.py
speculate_pipelined): the edge drafts the next block while the cloud verifies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


class StrategyError(Exception):
    """Unknown strategy name or bad parameter; the message names it and lists the known ones."""


@dataclass(frozen=True)
class CycleObservation:
    """What the edge measured for one finished cycle."""
    k: int                      # tokens drafted this cycle (0: edge-only cycle)
    accepted: int               # draft tokens the target accepted (0..k)
    cycle_ms: float             # wall time of the cycle on the edge (draft + round trip + verify)
    network_ms: float           # cycle time minus all compute (draft and cloud verify)
    cloud_compute_ms: float     # verify time reported by the cloud
    edge_compute_ms: float      # drafting time on the edge
    bytes_up: int = 0           # payload bytes sent edge→cloud this cycle
    bytes_down: int = 0         # payload bytes sent cloud→edge this cycle


class Strategy(Protocol):
    name: str
    placement: str              # "cloud" | "cloud-spec" | "edge" | "split"

    def start_query(self) -> None:
        """Reset per-query state (learned state across queries may be kept)."""

    def next_k(self) -> int:
        """Draft length for the next cycle; 0 means serve this cycle from the edge alone."""

    def observe(self, obs: CycleObservation) -> None:
        """Feed back the finished cycle."""


class _Fixed:
    """A constant K (or no speculation at all) — the baselines."""

    def __init__(self, name: str, placement: str, k: int):
        self.name, self.placement, self.k = name, placement, k

    def start_query(self) -> None:
        pass

    def next_k(self) -> int:
        return self.k

    def observe(self, obs: CycleObservation) -> None:
        pass

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


COLOCATED_DEFAULT_K = 5


def _int_param(name: str, param: str | None, default: int | None, lo: int = 1, hi: int = 64) -> int:
    if param is None or param == "":
        if default is None:
            raise StrategyError(f"strategy {name!r} needs a draft length, e.g. {name}:5")
        return default
    if not param.isdigit() or not lo <= int(param) <= hi:
        raise StrategyError(f"strategy {name!r}: K must be a whole number from {lo} to {hi}, got {param!r}")
    return int(param)


class _Pipelined(_Fixed):
    """A constant K, pipelined: the next block is drafted during the wait; `pipeline_depth` blocks in flight."""

    def __init__(self, k: int, depth: int):
        super().__init__(f"pipelined:{k}" if depth == 1 else f"pipelined:{k}:{depth}", "split", k)
        self.pipeline_depth = depth


MAX_PIPELINE_DEPTH = 4


def _pipelined(param: str | None) -> Strategy:
    k_text, _, depth_text = (param or "").partition(":")
    k = _int_param("pipelined", k_text, None)
    if depth_text and (not depth_text.isdigit() or not 1 <= int(depth_text) <= MAX_PIPELINE_DEPTH):
        raise StrategyError(f"strategy 'pipelined': depth (blocks in flight, pipelined:K:DEPTH) must be a whole "
                            f"number from 1 to {MAX_PIPELINE_DEPTH}, got {depth_text!r}")
    return _Pipelined(k, int(depth_text) if depth_text else 1)


# name → factory(param) ; param is the text after ':' or None
REGISTRY: dict[str, Callable[[str | None], Strategy]] = {
    "cloud-only": lambda p: _Fixed("cloud-only", "cloud", 0),
    "edge-only": lambda p: _Fixed("edge-only", "edge", 0),
    "cloud-spec": lambda p: _Fixed(f"cloud-spec:{_int_param('cloud-spec', p, COLOCATED_DEFAULT_K)}"
                                   if p else "cloud-spec", "cloud-spec",
                                   _int_param("cloud-spec", p, COLOCATED_DEFAULT_K)),
    "fixed-k": lambda p: _Fixed(f"fixed-k:{_int_param('fixed-k', p, None)}", "split",
                                _int_param("fixed-k", p, None)),
    "pipelined": _pipelined,
}


def register(name: str, factory: Callable[[str | None], Strategy]) -> None:
    REGISTRY[name] = factory


def make_strategy(spec: str) -> Strategy:
    """Build a strategy from its name, e.g. "cloud-only", "fixed-k:5", "nasd"."""
    base, _, param = spec.partition(":")
    factory = REGISTRY.get(base)
    if factory is None:
        known = ", ".join(sorted(REGISTRY))
        raise StrategyError(f"unknown strategy {spec!r} (known: {known}; fixed-k takes :K, pipelined :K or :K:DEPTH)")
    if param and base in ("cloud-only", "edge-only"):
        raise StrategyError(f"strategy {base!r} takes no parameter, got {spec!r}")
    return factory(param or None)


def known_strategies() -> list[str]:
    return sorted(REGISTRY)
