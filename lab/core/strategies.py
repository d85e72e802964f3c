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

import itertools
import math
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
    cap: int | None = None      # the K the draft was given; more than k where a confidence stop ended the block


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
    """A constant K (or no speculation at all) — the baselines.  draft_stop: a confidence stop ends a
    block before K once the draft's own estimate that all of it is accepted falls below it
    (lab/core/decoding.draft_tokens); K is then the most a block may hold, and draft_min the fewest
    drafts the stop leaves it with (spec.min_block)."""

    def __init__(self, name: str, placement: str, k: int, draft_stop: float | None = None, draft_min: int = 1):
        self.name, self.placement, self.k, self.draft_stop, self.draft_min = name, placement, k, draft_stop, draft_min

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


def _fixed(base: str, placement: str, default_k: int | None) -> Callable[[str | None], Strategy]:
    """fixed-k:K and cloud-spec[:K], each with the option stop=P (a confidence stop, P in (0, 1]):
    "fixed-k:12,stop=0.5" drafts at most 12 tokens a cycle and fewer where the draft is unsure; and
    with it min=M, the fewest drafts the stop leaves a block with ("cloud-spec:20,stop=0.5,min=3")."""
    def make(param: str | None) -> Strategy:
        k_text, _, rest = (param or "").partition(",")
        if "=" in k_text:                              # cloud-spec:stop=0.5 (K left at its default)
            k_text, rest = "", param
        k = _int_param(base, k_text, default_k)
        o = parse_options(base, rest, {**STOP_OPTION, "min": _whole(1, 64)})
        stop, least = o.get("stop"), o.get("min", 1)
        if "min" in o and stop is None:
            raise StrategyError(f"strategy {base!r}: option 'min' is the confidence stop's; give stop=P with it")
        if least > k:
            raise StrategyError(f"strategy {base!r}: option 'min' ({least}) exceeds K ({k})")
        # spelled one way (fixed-k:05 is fixed-k:5), so results, claims and fixed_k() agree on it
        parts = ([str(k)] if k_text else []) + ([f"stop={stop:g}"] if stop is not None else []) \
            + ([f"min={least}"] if least > 1 else [])
        return _Fixed(f"{base}:{','.join(parts)}" if parts else base, placement, k, stop, least)
    return make


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
    "cloud-spec": _fixed("cloud-spec", "cloud-spec", COLOCATED_DEFAULT_K),
    "fixed-k": _fixed("fixed-k", "split", None),
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


def fixed_k(spec: str) -> int | None:
    """K of a plain `fixed-k:K` — the references adaptive K is judged against — else None (with a
    confidence stop, fixed-k:K,stop=P, K is only a cap and the block lengths vary)."""
    base, _, param = spec.partition(":")
    return int(param) if base == "fixed-k" and param.isdigit() else None


def known_strategies() -> list[str]:
    return sorted(REGISTRY)


def split_strategies(text: str) -> list[str]:
    """A comma-separated list of strategies, where options are comma-separated too:
    "fixed-k:3,nasd:k_max=12,fallback=edge,cloud-only" → fixed-k:3 | nasd:k_max=12,fallback=edge | cloud-only
    (a piece with '=' and no ':' is the previous strategy's option)."""
    out: list[str] = []
    for piece in (x.strip() for x in text.split(",")):
        if out and "=" in piece and ":" not in piece:
            out[-1] += "," + piece
        else:
            out.append(piece)
    return [s for s in out if s]


# ------------------------------------------------------------------ adaptive controllers
#
# next_k() may also answer CLOUD_ALONE: the cloud continues from the accepted prefix on its own and
# streams a stretch of tokens (fallback: cloud); the stretch's first token doubles as a probe of the
# link, fed back as an observation with k = CLOUD_ALONE.  Adaptive strategies also offer:
#   link_hint(rtt_ms)   the round trip the edge measured before the first cycle (the handshake)
#   split_k()           the K they would speculate with now (used when a seam cannot stream alone)
#   control()           {fallback, fallback_reason, estimate_ms} for the cycle record
#   provenance()        what the controller was built from (its table file), for the results' meta
# and any strategy may have draft_stop: a confidence stop within the K it asks for (decoding.draft_tokens).
# nasd and ucb-specstop take theirs from the driver, which calls use_draft_confidence(measured) once it
# knows the draft (edge_node, the simulator; validate --run calls replay_stop with a run's recorded one).

CLOUD_ALONE = -1
FALLBACKS = ("cloud", "edge")


def parse_options(name: str, param: str | None, schema: dict[str, Callable[[str], object]]) -> dict:
    """"k_max=12,fallback=edge" → {"k_max": 12, "fallback": "edge"}; each value checked by its parser,
    which raises ValueError with the reason; the StrategyError names the option."""
    out: dict = {}
    for item in (param or "").split(","):
        if not item:
            continue
        key, eq, value = item.partition("=")
        if key not in schema:
            raise StrategyError(f"strategy {name!r}: unknown option {key!r} (options: {', '.join(schema)})")
        if not eq or value == "":
            raise StrategyError(f"strategy {name!r}: option {key!r} needs a value, e.g. {key}=…")
        try:
            out[key] = schema[key](value)
        except ValueError as e:
            raise StrategyError(f"strategy {name!r}: option {key!r}: {e}") from None
    return out


def _whole(lo: int, hi: int) -> Callable[[str], int]:
    def parse(v: str) -> int:
        if not v.isdigit() or not lo <= int(v) <= hi:
            raise ValueError(f"must be a whole number from {lo} to {hi}, got {v!r}")
        return int(v)
    return parse


def _in_range(lo: float, hi: float, lo_open: bool, words: str) -> Callable[[str], float]:
    def parse(v: str) -> float:
        try:
            x = float(v)
        except ValueError:
            raise ValueError(f"must be {words}, got {v!r}") from None
        if not ((lo < x) if lo_open else (lo <= x)) or not x <= hi:      # NaN fails both
            raise ValueError(f"must be {words}, got {v!r}")
        return x
    return parse


_fraction = _in_range(0.0, 1.0, True, "a number in (0, 1]")
# stop=P, the option of every strategy that drafts: a confidence stop within the K it asks for
# (draft_stop; lab/core/decoding.draft_tokens)
STOP_OPTION = {"stop": _fraction}
# The adaptive controllers' stop when none is asked for and the draft's confidence is its own
# (docs/MEASUREMENTS.md, "The stop as the controllers' default"): the K they choose is then a cap.
ADAPTIVE_STOP = 0.3
ADAPTIVE_STOP_OPTION = {"stop": _in_range(0.0, 1.0, False, "a number in [0, 1] (0: no stop)")}


class _DefaultStop:
    """nasd and ucb-specstop: stop=P (0: none), else ADAPTIVE_STOP where the driver (the edge node,
    the simulator) says the draft's confidence is measured — never on a synthetic stand-in's."""

    stop_option: float | None = None
    draft_stop: float | None = None
    replayed_by_rtt: bool | None = None     # a replayed run's word on nasd's stop by RTT (replay_stop)

    def _stop_from(self, options: dict) -> None:
        self.stop_option = options.get("stop")
        self.draft_stop = self.stop_option or None

    def use_draft_confidence(self, measured: bool) -> None:
        if self.stop_option is None:
            self.draft_stop = ADAPTIVE_STOP if measured else None

    def replay_stop(self, stop: float | None, by_rtt: bool = False) -> None:
        """Draft with the stop a recorded run drafted with (validate --run replays it): None, none;
        by_rtt: whether nasd's table chose each block's stop in that run (runs before it could: no)."""
        self.draft_stop, self.replayed_by_rtt = stop, by_rtt


_positive = _in_range(0.0, math.inf, False, "a number >= 0")

def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {v!r}")
        return v
    return parse


class _Estimates:
    """What the edge learns of the pair from its own cycles: per-draft-token time, verify time, α.

    α from truncated-geometric counts (accepted, and whether a rejection ended the run), with a weak
    prior so the first cycles do not swing it; the throughput equation is BACKGROUND.md's."""

    def __init__(self, alpha0: float = 0.7):
        self.n_acc, self.n_rej = 2.0 * alpha0, 2.0 * (1 - alpha0)
        self.t_draft: float | None = None
        self.t_verify: float | None = None
        self.t_step: float | None = None       # the cloud's time per token when it decodes alone
        self._fit = [0.0] * 5                  # n, Σx, Σy, Σx², Σxy of verify time y over x = K + 1

    def observe(self, o: CycleObservation) -> None:
        if o.k > 0:
            self.n_acc += o.accepted
            self.n_rej += 1 if o.accepted < o.k else 0
            self.t_draft = _ewma(self.t_draft, o.edge_compute_ms / o.k, 0.3)
            self.t_verify = _ewma(self.t_verify, o.cloud_compute_ms, 0.3)
            x, y, f = o.k + 1, o.cloud_compute_ms, self._fit
            f[0] += 1; f[1] += x; f[2] += y; f[3] += x * x; f[4] += x * y
        elif o.k == CLOUD_ALONE and o.cloud_compute_ms > 0:
            self.t_step = _ewma(self.t_step, o.cloud_compute_ms, 0.3)

    def verify_ms(self, k: int) -> float:
        """A verify of K drafts (K + 1 tokens): a + b·(K + 1) fitted to the cycles seen, once two K differ."""
        n, sx, sy, sxx, sxy = self._fit
        det = n * sxx - sx * sx
        if n < 2 or det <= 1e-9:
            return self.t_verify or 1.0
        b = (n * sxy - sx * sy) / det
        return max(0.0, (sy - b * sx) / n + b * (k + 1))

    @property
    def alpha(self) -> float:
        return self.n_acc / (self.n_acc + self.n_rej)

    def split_rate(self, k: int, net_ms: float) -> float:
        """Predicted tokens per ms of speculation with K drafts at a network time of net_ms."""
        a = min(self.alpha, 0.999)
        tau = (1 - a ** (k + 1)) / (1 - a)
        return tau / (k * (self.t_draft or 1.0) + self.verify_ms(k) + net_ms)

    def fallback_rate(self, fallback: str) -> float:
        if fallback == "none":
            return 0.0
        if fallback == "edge":
            return 1.0 / (self.t_draft or 1.0)
        # Until a stretch measures the cloud's step, a one-token pass is the verify model at K = 0.
        return 1.0 / (self.t_step or self.verify_ms(0) or 1.0)


def _ewma(prev: float | None, x: float, w: float) -> float:
    return x if prev is None else (1 - w) * prev + w * x


# The copy of the table a lab run's nasd played, in its results folder (edge_node keeps it; `validate
# --run` replays it): the original beside the profile is rewritten by every `lab calibrate`.
RUN_TABLE = "nasd-table.json"


class NasdTable:
    """An RTT → K table (`python -m lab calibrate` writes it): per row the measured network time of a
    cycle, tokens/s of every K, and of each fallback.  Rows are looked up by the nearest network time
    on a log scale (a 10 ms error matters at 20 ms, not at 400).  Where the profile measured the
    draft's confidence, `stop` is the confidence stop the table was also calibrated under and each
    row's `stopped` holds tokens/s of every K as a cap under it, and (tables since the eleventh
    session) `tokens_per_s_by_stop`: of the longest cap under each stop of a grid.  One more draft
    pays while the chance that the block is still accepted exceeds tokens/s × t_draft, and tokens/s
    falls with the RTT, so a row may pay best with another stop than `stop` (on the hosts measured,
    a lower one past 100–180 ms): nasd reads the rows it plays."""

    def __init__(self, doc: dict, source: str = "<dict>"):
        try:
            self.rows = sorted(doc["rows"], key=lambda r: r["network_ms"])
            self.stop = None if doc.get("stop") is None else float(doc["stop"])
            for r in self.rows:
                r["tokens_per_s_by_k"] = {int(k): float(v) for k, v in r["tokens_per_s_by_k"].items()}
                float(r["cloud_tokens_per_s"]), float(r["edge_tokens_per_s"])
                if self.stop is not None:
                    st = r["stopped"]
                    st["tokens_per_s_by_k"] = {int(k): float(v) for k, v in st["tokens_per_s_by_k"].items()}
                    st["tokens_per_s_by_stop"] = {float(p): float(v) for p, v
                                                  in st.get("tokens_per_s_by_stop", {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StrategyError(f"NASD table {source}: not a calibration table ({type(e).__name__}: {e})") from None
        if not self.rows:
            raise StrategyError(f"NASD table {source}: no rows")
        self.source, self.provenance = source, doc.get("provenance", {})

    def under(self, stop: float | None) -> bool:
        """Whether the table has rows calibrated under this confidence stop."""
        return stop is not None and self.stop is not None and math.isclose(stop, self.stop)

    def row(self, net_ms: float) -> dict:
        x = math.log1p(max(0.0, net_ms))
        return min(self.rows, key=lambda r: abs(math.log1p(r["network_ms"]) - x))

    def choose(self, net_ms: float, k_min: int, k_max: int, fallback: str, stop: float | None = None,
               vary_stop: bool = False) -> tuple[int, float, float, float | None]:
        """(best K within [k_min, k_max], its tokens/s, the fallback's tokens/s — 0 for none —, the
        stop to draft it with) at net_ms.  With the confidence stop the table was calibrated under, K
        is a cap and those rows are read, and with vary_stop the longest cap under another stop of
        the row's grid competes (where it fits in [k_min, k_max]); with another stop or none, the
        rows without it (a cap no longer than the K that pays unstopped)."""
        r = self.row(net_ms)
        under = self.under(stop)
        by_k = r["stopped"]["tokens_per_s_by_k"] if under else r["tokens_per_s_by_k"]
        by_stop = r["stopped"]["tokens_per_s_by_stop"] if under and vary_stop else {}
        try:
            k, p, tps = self.best(by_k, by_stop, stop, k_min, k_max)
        except ValueError:
            raise StrategyError(f"NASD table {self.source}: no K in [{k_min}, {k_max}]") from None
        return k, tps, 0.0 if fallback == "none" else float(r[f"{fallback}_tokens_per_s"]), p

    @staticmethod
    def best(by_k: dict[int, float], by_stop: dict[float, float], stop: float | None, k_min: int,
             k_max: int) -> tuple[int, float | None, float]:
        """(K, the stop to draft it with, tokens/s): the best of every K in [k_min, k_max] with `stop`
        and of the longest K under each stop of by_stop (where it lies in the range).  Ties go to
        `stop`, then to the shorter K, then to the higher stop (the shorter block).  calibrate picks
        a row's choice with it too."""
        cands = {(k, stop): v for k, v in by_k.items() if k_min <= k <= k_max}
        longest = max(by_k, default=0)
        if k_min <= longest <= k_max:
            cands.update({(longest, p): v for p, v in by_stop.items() if stop is None or not math.isclose(p, stop)})
        if not cands:
            raise ValueError(f"no K in [{k_min}, {k_max}]")
        k, p = max(cands, key=lambda c: (cands[c], c[1] == stop, -c[0], c[1] or 0.0))
        return k, p, cands[(k, p)]

    def varies_stop(self, k_min: int, k_max: int) -> bool:
        """Whether a row holds stops to choose from, with its longest cap in [k_min, k_max]."""
        return any(r["stopped"]["tokens_per_s_by_stop"] and k_min <= max(r["stopped"]["tokens_per_s_by_k"]) <= k_max
                   for r in self.rows) if self.stop is not None else False


class Nasd(_DefaultStop):
    """Network-Adaptive Speculation Depth (the Ianvs proposal's NASD, BACKGROUND.md): each cycle, K from
    the RTT → K table at the smoothed network time of the previous cycles (the first from the
    handshake), and at the reversal — predicted split tokens/s below the fallback's — stop speculating:
    fallback=cloud lets the cloud continue alone and probes the link every `probe` tokens;
    fallback=edge drafts alone (draft quality) and tries one speculative cycle every `probe` tokens;
    fallback=none always speculates (only K adapts: the UCB-SpecStop paper's comparison, where the
    split is the deployment and the cloud is not to decode alone).  Without a table it predicts from
    the throughput equation and its own estimates (_Estimates).  With the confidence stop (by default
    where the draft's confidence is measured: _DefaultStop) K is a cap: a table calibrated under the
    same stop gives caps from its `stopped` rows, and, unless stop=P fixed it, the stop of each
    block too (`block_stop`, the stop its row pays best: NasdTable); the throughput equation still
    charges K drafts."""

    placement = "split"
    OPTIONS = {"k_min": _whole(1, 64), "k_max": _whole(1, 64), "table": str, "fallback": _choice(*FALLBACKS, "none"),
               "smoothing": _fraction, "probe": _whole(1, 1024), "patience": _whole(1, 64), **ADAPTIVE_STOP_OPTION}

    def __init__(self, param: str | None = None, table: NasdTable | None = None):
        o = parse_options("nasd", param, self.OPTIONS)
        self.k_min, self.k_max = o.get("k_min", 1), o.get("k_max", 20)
        if self.k_min > self.k_max:
            raise StrategyError(f"strategy 'nasd': option 'k_min' ({self.k_min}) exceeds 'k_max' ({self.k_max})")
        self.fallback, self.smoothing, self.probe = o.get("fallback", "cloud"), o.get("smoothing", 0.5), o.get("probe", 4)
        # Cycles in a row that must predict the fallback before it is taken: a one-cycle spike is
        # cheaper to ride out than a switch to the cloud and back (the `spikes` scenario).
        self.patience, self.past_reversal = o.get("patience", 2), 0
        self._stop_from(o)
        self.block_stop: float | None = None     # the stop of the block next_k chose (lab/core/cycle.py)
        self.table_path: str | None = o.get("table")
        self.table = table
        if self.table is None and self.table_path:
            self.table = load_table(self.table_path)
        self.name = f"nasd:{param}" if param else "nasd"
        self.est = _Estimates()
        self.net_ms: float | None = None
        self.alone_run = 0
        self._control = {"fallback": None, "fallback_reason": None, "estimate_ms": None}

    # -- the protocol
    def start_query(self) -> None:
        self.alone_run = 0           # the link estimate and the pair's estimates carry over

    def link_hint(self, rtt_ms: float) -> None:
        if self.net_ms is None:
            self.net_ms = float(rtt_ms)

    def use_table(self, table: "NasdTable") -> None:
        """The driver's default table for the pair in use (an explicit table= option wins)."""
        if self.table is None:
            self.table = table

    @property
    def in_fallback(self) -> bool:
        return self._control.get("fallback") is not None

    def observe(self, obs: CycleObservation) -> None:
        self.est.observe(obs)
        if obs.k != 0:               # split cycles and cloud stretches measure the link; edge-alone ones do not
            self.net_ms = _ewma(self.net_ms, obs.network_ms, self.smoothing)
            self.alone_run = 0
        else:
            self.alone_run += 1

    @property
    def stop_by_rtt(self) -> bool:
        """Whether the table picks each block's stop: the default stop (no stop=P), a table with rows
        under it that hold stops to choose from — and, replaying a run, that run did so too."""
        t = self.table
        return (self.stop_option is None and self.replayed_by_rtt is not False and t is not None
                and t.under(self.draft_stop) and t.varies_stop(self.k_min, self.k_max))

    def _choose(self) -> tuple[int, float, float]:
        net = self.net_ms or 0.0
        if self.table is not None:
            k, split, fb, self.block_stop = self.table.choose(net, self.k_min, self.k_max, self.fallback,
                                                              self.draft_stop, self.stop_by_rtt)
            return k, split, fb
        rates = {k: self.est.split_rate(k, net) for k in range(self.k_min, self.k_max + 1)}
        k = max(rates, key=lambda kk: (rates[kk], -kk))
        self.block_stop = self.draft_stop
        return k, 1000 * rates[k], 1000 * self.est.fallback_rate(self.fallback)

    def split_k(self) -> int:
        return self._choose()[0]

    def next_k(self) -> int:
        k, split_tps, fb_tps = self._choose()
        was_fallback = self.in_fallback
        self._control = {"fallback": None, "fallback_reason": None, "estimate_ms": self.net_ms,
                         "stop": self.block_stop}
        if split_tps >= fb_tps:
            self.past_reversal = 0
            return k
        self.past_reversal += 1
        if self.past_reversal < self.patience and not was_fallback:
            self._control.update(fallback_reason=f"past the reversal {self.past_reversal}/{self.patience}")
            return k
        reason = f"predicted {split_tps:.2f} tok/s split < {fb_tps:.2f} tok/s {self.fallback} at {self.net_ms or 0:.0f} ms"
        if self.fallback == "edge" and self.alone_run >= self.probe:
            self._control.update(fallback_reason=f"probe after {self.alone_run} edge tokens")
            return k                 # one speculative cycle measures the link again
        self._control.update(fallback=self.fallback, fallback_reason=reason)
        return CLOUD_ALONE if self.fallback == "cloud" else 0

    def control(self) -> dict:
        return dict(self._control)

    def provenance(self) -> dict:
        t = self.table
        return {"controller": "nasd", "k_min": self.k_min, "k_max": self.k_max, "fallback": self.fallback,
                "smoothing": self.smoothing, "probe": self.probe, "patience": self.patience, "stop": self.draft_stop,
                "table": t.source if t else None, "table_provenance": t.provenance if t else None,
                "table_rows": None if t is None else f"under the stop {t.stop:g}" if t.under(self.draft_stop) else "plain",
                "stop_by_rtt": self.stop_by_rtt,
                "predictor": "table" if t else "throughput equation, online estimates"}

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


def load_table(path: str, source: str | None = None) -> NasdTable:
    """The table in file `path`; `source` names it in provenance and in its shape errors (default path)."""
    import json
    try:
        with open(path) as f:
            doc = json.load(f)
    except OSError as e:
        raise StrategyError(f"NASD table {path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise StrategyError(f"NASD table {path}: not JSON ({e})") from None
    return NasdTable(doc, source or path)


class UcbSpecStop(_DefaultStop):
    """UCB-SpecStop (arXiv 2606.20591; BACKGROUND.md): online, no table.  Arms are draft lengths
    1..k_max, and the fallback; the context is the observed delay d.  A cycle's time is c(K) + d with
    c(K) = K·t_draft + t_verify learned from the cycles, so the index of arm K is (τ̂_K + bonus_K) /
    (c(K) + d): the ratio objective of the paper's optimal stopping, whose argmax is a threshold that
    grows with d.

    τ̂_K comes from the empirical prefix (the paper's calibration for heavy-head acceptance): per draft
    position j, how often the target accepted it among the cycles that reached it, and τ̂_K = 1 +
    Σ_{j≤K} Π_{i≤j} ĥ_i (Kaplan–Meier).  A cycle of K drafts with n accepted thus informs every arm:
    a rejection at n + 1 says what any longer draft would have got, and a fully accepted short cycle
    counts as surviving its K positions without claiming anything of the later ones (censored), so
    neither the queries' opening rejections nor a run of short cycles biases the long arms.  Each
    position leans on the pooled α̂ until its own samples outweigh it, and the bonus is c·sqrt(2 log t)
    times τ̂_K's standard error: it shrinks only as the positions of arm K are reached, so an arm
    whose later positions were never drafted stays worth a try.

    The fallback is an arm too: its rate is measured (the cloud's step, or the draft's), and every
    decision — a speculative cycle, a cloud stretch or an edge-alone token — counts in the log t of
    the bonus, so a near tie is re-examined by a speculative cycle now and then and a clear loss is
    not.  Warm-up: the first WARMUP_CYCLES speculative cycles, during which the fallback is not
    considered (reported in the cycle record's fallback_reason as "warm-up" and by provenance()).

    With a confidence stop (draft_stop) K is a cap and a block may end before it: a block of cap K
    drafts min(K, L) tokens, L where the stop ends it.  L's survival Ŝ_L(j) is learned as the
    acceptance's is (per position, the blocks that drafted it and whether the stop ended them there;
    a block that reached its cap is censored), so arm K costs E[min(K, L)] = Σ_{j≤K} Ŝ_L(j) drafts and
    a verify of as many, and earns 1 + Σ_{j≤K} Ŝ_L(j)·Π_{i≤j} ĥ_i: a long cap is charged only for
    the drafts the stop lets through."""

    placement = "split"
    WARMUP_CYCLES = 16      # speculative cycles before the fallback is trusted to beat every arm
    PRIOR_SAMPLES = 4
    OPTIONS = {"k_max": _whole(1, 64), "c": _positive, "fallback": _choice("cloud", "edge", "none"),
               "smoothing": _fraction, "probe": _whole(1, 1024), **ADAPTIVE_STOP_OPTION}

    def __init__(self, param: str | None = None):
        o = parse_options("ucb-specstop", param, self.OPTIONS)
        self.k_max, self.c = o.get("k_max", 20), o.get("c", 0.3)
        self.fallback, self.smoothing, self.probe = o.get("fallback", "cloud"), o.get("smoothing", 0.5), o.get("probe", 4)
        self._stop_from(o)
        self.name = f"ucb-specstop:{param}" if param else "ucb-specstop"
        self.reached = [0] * (self.k_max + 1)      # cycles whose draft at position j the target judged
        self.passed = [0] * (self.k_max + 1)       # ... and accepted
        self.drafted = [0] * (self.k_max + 1)      # blocks that drafted position j (a confidence stop's risk set)
        self.stopped = [0] * (self.k_max + 1)      # ... and ended there by the stop, below their cap
        self.t = 0                                 # speculative cycles
        self.decisions = 0                         # speculative cycles and fallback rounds
        self.est = _Estimates()
        self.d_ms: float | None = None
        self.alone_run = 0
        self.warmup_cycles: int | None = None
        self._control = {"fallback": None, "fallback_reason": None, "estimate_ms": None}

    def start_query(self) -> None:
        self.alone_run = 0

    def link_hint(self, rtt_ms: float) -> None:
        if self.d_ms is None:
            self.d_ms = float(rtt_ms)

    def observe(self, obs: CycleObservation) -> None:
        self.est.observe(obs)
        self.decisions += 1
        if obs.k > 0:
            self.t += 1
            judged = min(obs.k, obs.accepted + 1, self.k_max)     # positions up to the first rejection
            for j in range(1, judged + 1):
                self.reached[j] += 1
                self.passed[j] += j <= obs.accepted
            if self.draft_stop is not None:
                # The stop is asked after each draft but the cap's: a block that reached its cap is
                # censored after its last-but-one draft; one the stop ended, at its last.
                stopped = obs.cap is not None and obs.k < obs.cap
                for j in range(1, min(obs.k if stopped else obs.k - 1, self.k_max) + 1):
                    self.drafted[j] += 1
                if stopped and obs.k <= self.k_max:
                    self.stopped[obs.k] += 1
            if self.warmup_cycles is None and self.t >= self.WARMUP_CYCLES:
                self.warmup_cycles = self.t
        if obs.k != 0:
            self.d_ms = _ewma(self.d_ms, obs.network_ms, self.smoothing)
            self.alone_run = 0
        else:
            self.alone_run += 1

    def _cost(self, drafts: float) -> float:
        return drafts * (self.est.t_draft or 1.0) + self.est.verify_ms(drafts) + (self.d_ms or 0.0)

    def _reach(self) -> list[float]:
        """Ŝ_L(j), j = 0..k_max: the chance a block drafts position j before the confidence stop ends
        it (1 without a stop); each position's stop rate shrunk toward the pooled one."""
        if self.draft_stop is None:
            return [1.0] * (self.k_max + 1)
        m, at_risk = self.PRIOR_SAMPLES, sum(self.drafted)
        pooled = sum(self.stopped) / at_risk if at_risk else 0.0
        reach, s = [1.0, 1.0], 1.0
        for j in range(1, self.k_max):
            s *= 1.0 - (self.stopped[j] + m * pooled) / (self.drafted[j] + m)
            reach.append(s)
        return reach

    def _taus(self, reach: list[float]) -> tuple[list[float], list[float]]:
        """τ̂_K for K = 0..k_max from the empirical prefix, each position shrunk toward the pooled α̂, and
        its standard error (Greenwood's for the survival Ŝ_j, summed over the positions): a position few
        cycles reached is uncertain whatever the shorter drafts showed.  reach: Ŝ_L (_reach)."""
        a, m = min(self.est.alpha, 0.999), self.PRIOR_SAMPLES
        taus, errs, survive, rel_var, err = [1.0], [0.0], 1.0, 0.0, 0.0
        for j in range(1, self.k_max + 1):
            n = self.reached[j] + m
            h = max((self.passed[j] + m * a) / n, 0.01)
            survive *= h
            rel_var += (1 - h) / (h * n)
            err += survive * math.sqrt(rel_var)
            taus.append(taus[-1] + reach[j] * survive)
            errs.append(err)
        return taus, errs

    def _indices(self, bonus: bool) -> dict[int, float]:
        reach = self._reach()
        (taus, errs), scale = self._taus(reach), self.c * math.sqrt(2 * math.log(max(2, self.decisions)))
        # E[min(K, L)] + 1 at index K (reach[0] = 1 pads it); exactly K + 1 without a stop
        drafts = list(itertools.accumulate(reach))
        return {k: min(taus[k] + (scale * errs[k] if bonus else 0.0), k + 1) / self._cost(drafts[k] - 1.0)
                for k in range(1, self.k_max + 1)}

    def _choose(self) -> tuple[int, float]:
        """The arm with the highest optimistic index (the shorter on a tie), and that index."""
        idx = self._indices(True)
        k = max(idx, key=lambda kk: (idx[kk], -kk))
        return k, idx[k]

    def split_k(self) -> int:
        return self._choose()[0]

    def next_k(self) -> int:
        k, best = self._choose()
        warm = self.warmup_cycles is None
        self._control = {"fallback": None, "fallback_reason": "warm-up" if warm else None, "estimate_ms": self.d_ms}
        if warm or self.fallback == "none":
            return k
        fb = self.est.fallback_rate(self.fallback)
        if best >= fb:
            return k
        if self.fallback == "edge" and self.alone_run >= self.probe:
            self._control.update(fallback_reason=f"probe after {self.alone_run} edge tokens")
            return k
        self._control.update(fallback=self.fallback, fallback_reason=(
            f"UCB index {1000 * best:.2f} tok/s < {1000 * fb:.2f} tok/s {self.fallback} at {self.d_ms or 0:.0f} ms"))
        return CLOUD_ALONE if self.fallback == "cloud" else 0

    def control(self) -> dict:
        return dict(self._control)

    def provenance(self) -> dict:
        return {"controller": "ucb-specstop", "k_max": self.k_max, "c": self.c, "fallback": self.fallback,
                "smoothing": self.smoothing, "probe": self.probe, "stop": self.draft_stop,
                "warmup_cycles": self.warmup_cycles,
                "cycles": self.t, "estimator": "empirical prefix (Kaplan-Meier per draft position)"}

    def __repr__(self) -> str:
        return f"<strategy {self.name}>"


class Oracle:
    """The reference, simulator only: for each link state the best fixed K (or the cloud fallback) in
    hindsight.  The simulator binds `choose`, which knows the true link state now and the outcome of
    every candidate on it (lab/sim/oracle.py); a real edge cannot know either.  `oracle:fallback=none`
    chooses among the fixed K only: the reference for controllers run with fallback=none."""

    placement = "split"
    OPTIONS = {"fallback": _choice("cloud", "none")}

    def __init__(self, param: str | None = None):
        self.fallback = parse_options("oracle", param, self.OPTIONS).get("fallback", "cloud")
        self.name = f"oracle:{param}" if param else "oracle"
        self._choose: Callable[[], tuple[int, float]] | None = None
        self._control = {"fallback": None, "fallback_reason": None, "estimate_ms": None}

    def bind(self, choose: Callable[[], tuple[int, float]]) -> None:
        self._choose = choose

    def start_query(self) -> None:
        pass

    def observe(self, obs: CycleObservation) -> None:
        pass

    def next_k(self) -> int:
        if self._choose is None:
            raise StrategyError("strategy 'oracle' runs only in the simulator (it needs the link's true state)")
        k, rtt = self._choose()
        self._control = {"fallback": "cloud" if k == CLOUD_ALONE else None,
                         "fallback_reason": "best in hindsight" if k == CLOUD_ALONE else None, "estimate_ms": rtt}
        return k

    def split_k(self) -> int:
        return 1

    def control(self) -> dict:
        return dict(self._control)

    def provenance(self) -> dict:
        return {"controller": "oracle", "fallback": self.fallback,
                "how": "per link state, every fixed K 1..20" + (" and cloud-only" if self.fallback == "cloud" else "")
                       + " simulated on that state held still; the best tokens/s is played"}


register("nasd", lambda p: Nasd(p))
register("ucb-specstop", lambda p: UcbSpecStop(p))
register("oracle", lambda p: Oracle(p))


def deployable(spec: str) -> bool:
    """Whether a real edge could run the strategy: the oracle knows the link in hindsight, so tables of
    winners (sweep's best.csv, the report's verdict) rank every strategy but it; the claims compare with it."""
    return spec.partition(":")[0] != "oracle"
