"""Scenario files: the YAML schema, validated into frozen data.

A scenario names a link (both directions, with per-direction overrides), a
timeline of link changes, TCP settings, and what runs over the link.  Every
error names the file, the key (as a dotted path) and the reason, on one line.
Units live in the key names.

    name: lossy-5pct
    description: RTT 50 ms, 5 % loss each way, 10 Mbit/s
    link: {delay_ms: 25, loss_pct: 5, rate_mbit: 10}     # both directions
      # uplink: {rate_mbit: 2}                            # overrides per direction
    tcp: {congestion_control: cubic}                      # default: the kernel's
    timeline:                                             # optional; restarts at t=0 with each
      repeat_every_s: 20                                  # strategy's first measured query; loops
      steps:
        - {at_s: 0,  link: {delay_ms: 5}}                 # patches over `link`
        - {at_s: 10, link: {delay_ms: 100}}
        - {at_s: 40, link: {delay_ms: 150}, ramp_s: 20}   # linear from the link in force at 20 s
    workload: {queries: 4, max_new_tokens: 32, ...}
    models: embedded
    strategies: [cloud-only, edge-only, fixed-k:5]
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import yaml

from lab.core.spec import parse_payload
from lab.core.strategies import StrategyError, make_strategy
from netns.link import LINKSPEC_KEYS, LinkError, LinkPair, LinkSpec

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"
BACKENDS = ("auto", "netem", "wire")
# A scenario's strategies unless it names its own: the fallback, the two placements of speculation,
# the draft alone, two fixed K, and nasd, so the first run already says whether adaptive K pays there.
DEFAULT_STRATEGIES = ("cloud-only", "cloud-spec", "edge-only", "fixed-k:3", "fixed-k:5", "nasd")
# How a run lines the timeline up with its strategies (recorded in meta.json): each strategy's warm-up
# runs on the timeline's t=0 link, and the timeline starts from t=0 with its first measured query, so
# every strategy meets the same link trace (lab/runner.py and lab/sim/simulator.py both do this).
TIMELINE_ALIGNMENT = "restart-per-strategy"
# A ramp becomes steps this far apart: the kernel applies a timeline as discrete changes anyway, and
# a second is short next to the ramps (tens of seconds) and long next to a cycle's round trip.
RAMP_STEP_S = 1.0


class ScenarioError(Exception):
    """A scenario file is unreadable or invalid; the message is one line naming file and key."""

    def __init__(self, source: str, key: str, reason: str):
        self.source, self.key, self.reason = source, key, reason
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class TimelineStep:
    at_s: float
    link: LinkPair


@dataclass(frozen=True)
class Timeline:
    steps: tuple[TimelineStep, ...] = ()
    repeat_every_s: float | None = None

    def link_at(self, t_s: float, base: LinkPair) -> LinkPair:
        """The link in force at t_s seconds after the start."""
        if not self.steps:
            return base
        if self.repeat_every_s:
            t_s = t_s % self.repeat_every_s
        current = base
        for step in self.steps:
            if step.at_s <= t_s:
                current = step.link
        return current

    def changes(self, base: LinkPair, start_s: float = 0.0) -> Iterator[tuple[float, LinkPair]]:
        """The changes after the timeline's t=0 state, as (start_s + t, link), lazily (a repeating
        timeline never ends).  A period whose first step comes after its start begins on `base`,
        as link_at says."""
        if not self.steps:
            return
        offset = 0.0
        while True:
            if offset and self.steps[0].at_s > 0:
                yield start_s + offset, base
            for step in self.steps:
                if offset or step.at_s:
                    yield start_s + offset + step.at_s, step.link
            if not self.repeat_every_s:
                return
            offset += self.repeat_every_s


@dataclass(frozen=True)
class Workload:
    queries: int = 3
    warmup_queries: int = 1
    max_new_tokens: int = 48
    temperature: float = 0.0
    payload: str = "tokens"
    prompts: str | None = None       # path to a .jsonl file; None: the built-in set
    seed: int = 0


@dataclass(frozen=True)
class Scenario:
    name: str
    link: LinkPair
    description: str = ""
    timeline: Timeline = field(default_factory=Timeline)
    congestion_control: str | None = None
    backend: str = "auto"
    workload: Workload = field(default_factory=Workload)
    models: str = "embedded"
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    source: str = "<built-in>"

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "source": self.source,
            "link": self.link.to_dict(),
            "timeline": {"repeat_every_s": self.timeline.repeat_every_s,
                         "steps": [{"at_s": s.at_s, "link": s.link.to_dict()} for s in self.timeline.steps]},
            "tcp": {"congestion_control": self.congestion_control},
            "backend": self.backend,
            "workload": {f.name: getattr(self.workload, f.name) for f in fields(Workload)},
            "models": self.models, "strategies": list(self.strategies),
        }


# ---------------------------------------------------------------- parsing

class _Reader:
    """Walks a parsed YAML document, raising ScenarioError with the dotted key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, reason: str) -> ScenarioError:
        return ScenarioError(self.source, key, reason)

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {_kind(value)}")
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else str(k)
                raise self.fail(where, f"unknown key (allowed: {', '.join(allowed)})")
        return value

    def number(self, value: Any, key: str, *, minimum: float | None = None,
               integer: bool = False, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, got {_kind(value)} {value!r}")
        if not math.isfinite(value):
            raise self.fail(key, f"must be finite, got {value!r}")
        if integer and int(value) != value:
            raise self.fail(key, f"must be a whole number, got {value!r}")
        if positive and value <= 0:
            raise self.fail(key, f"must be > 0, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum:g}, got {value!r}")
        return int(value) if integer else value

    def string(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(key, f"must be a non-empty string, got {_kind(value)} {value!r}")
        return value

    def link_fields(self, value: Any, key: str) -> dict:
        """A mapping of LinkSpec keys, each type-checked (range checks are LinkSpec's)."""
        m = self.mapping(value, key, LINKSPEC_KEYS)
        out = {}
        for k, v in m.items():
            if v is None and k in ("rate_mbit", "limit_pkts"):
                out[k] = None
                continue
            out[k] = self.number(v, f"{key}.{k}", integer=(k == "limit_pkts"))
        return out

    def spec(self, base: dict, override: dict, key: str) -> LinkSpec:
        merged = {**base, **override}
        try:
            return LinkSpec(**merged)
        except LinkError as e:
            where = f"{key}.{e.field}" if e.field in override else f"{key.rsplit('.', 1)[0]}.{e.field}"
            raise self.fail(where, e.reason) from None

    def link(self, value: Any, key: str, base: dict | None = None) -> LinkPair:
        """A link section (symmetric keys + optional uplink/downlink overrides)."""
        m = self.mapping(value, key, LINKSPEC_KEYS + ("uplink", "downlink"))
        common = self.link_fields({k: v for k, v in m.items() if k in LINKSPEC_KEYS}, key)
        up_o = self.link_fields(m.get("uplink", {}) or {}, f"{key}.uplink")
        down_o = self.link_fields(m.get("downlink", {}) or {}, f"{key}.downlink")
        base = base or {"uplink": {}, "downlink": {}}
        up = self.spec({**base["uplink"], **common}, up_o, f"{key}.uplink")
        down = self.spec({**base["downlink"], **common}, down_o, f"{key}.downlink")
        return LinkPair(uplink=up, downlink=down)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            type(None): "nothing"}.get(type(value), type(value).__name__)


TOP_KEYS = ("name", "description", "link", "timeline", "tcp", "backend", "workload", "models", "strategies")


def parse_scenario(doc: Any, source: str = "<string>", default_name: str = "scenario") -> Scenario:
    """A scenario document (parsed YAML) → Scenario; every key checked in file order, errors naming the
    file and key.  One function on purpose: it reads as the schema, one block per top-level key."""
    r = _Reader(source)
    if doc is None:
        raise r.fail("", "the file is empty")
    m = r.mapping(doc, "", TOP_KEYS)
    name = r.string(m.get("name", default_name), "name")
    description = m.get("description", "")
    if not isinstance(description, str):
        raise r.fail("description", f"must be a string, got {_kind(description)}")
    if "link" not in m:
        raise r.fail("link", "missing (give at least {} for an unimpaired link)")
    link = r.link(m["link"], "link")
    base = {"uplink": link.uplink.to_dict(), "downlink": link.downlink.to_dict()}

    timeline = Timeline()
    if m.get("timeline") is not None:
        t = m["timeline"]
        if isinstance(t, list):
            t = {"steps": t}
        t = r.mapping(t, "timeline", ("steps", "repeat_every_s"))
        steps_raw = t.get("steps")
        if not isinstance(steps_raw, list) or not steps_raw:
            raise r.fail("timeline.steps", "must be a non-empty list of {at_s, link}")
        steps, last = [], -1.0
        for i, s in enumerate(steps_raw):
            k = f"timeline.steps[{i}]"
            s = r.mapping(s, k, ("at_s", "link", "ramp_s"))
            if "at_s" not in s:
                raise r.fail(f"{k}.at_s", "missing")
            at = r.number(s["at_s"], f"{k}.at_s", minimum=0)
            if at <= last:
                raise r.fail(f"{k}.at_s", f"must increase from step to step ({at:g} after {last:g})")
            target = r.link(s.get("link", {}), f"{k}.link", base)
            if s.get("ramp_s") is not None:
                ramp = float(r.number(s["ramp_s"], f"{k}.ramp_s", positive=True))
                if at - ramp < max(last, 0.0):
                    raise r.fail(f"{k}.ramp_s", f"the ramp would start at {at - ramp:g} s, before the previous "
                                                f"step ({max(last, 0.0):g} s)")
                steps.extend(ramp_steps(steps[-1].link if steps else link, target, at - ramp, at))
            last = at
            steps.append(TimelineStep(at_s=float(at), link=target))
        repeat = t.get("repeat_every_s")
        if repeat is not None:
            repeat = float(r.number(repeat, "timeline.repeat_every_s", positive=True))
            if repeat <= last:
                raise r.fail("timeline.repeat_every_s", f"must be longer than the last step's at_s ({last:g})")
        timeline = Timeline(steps=tuple(steps), repeat_every_s=repeat)

    cc = None
    if m.get("tcp") is not None:
        tcp = r.mapping(m["tcp"], "tcp", ("congestion_control",))
        if tcp.get("congestion_control") is not None:
            cc = r.string(tcp["congestion_control"], "tcp.congestion_control")

    backend = r.string(m.get("backend", "auto"), "backend")
    if backend not in BACKENDS:
        raise r.fail("backend", f"must be one of {', '.join(BACKENDS)}, got {backend!r}")

    workload = Workload()
    if m.get("workload") is not None:
        w = r.mapping(m["workload"], "workload", tuple(f.name for f in fields(Workload)))
        vals = {}
        for k, v in w.items():
            key = f"workload.{k}"
            if k in ("queries", "max_new_tokens"):
                vals[k] = r.number(v, key, integer=True, positive=True)
            elif k in ("warmup_queries", "seed"):
                vals[k] = r.number(v, key, integer=True, minimum=0)
            elif k == "temperature":
                vals[k] = float(r.number(v, key, minimum=0))
            elif k == "payload":
                vals[k] = r.string(v, key)
                try:
                    parse_payload(vals[k])
                except ValueError as e:
                    raise r.fail(key, str(e)) from None
            elif k == "prompts":
                vals[k] = None if v is None else r.string(v, key)
        workload = Workload(**vals)

    models = r.string(m.get("models", "embedded"), "models")
    strategies = DEFAULT_STRATEGIES
    if m.get("strategies") is not None:
        s = m["strategies"]
        if not isinstance(s, list) or not s:
            raise r.fail("strategies", f"must be a non-empty list of strategy names, got {_kind(s)}")
        strategies = tuple(r.string(x, f"strategies[{i}]") for i, x in enumerate(s))
        for i, x in enumerate(strategies):
            try:
                make_strategy(x)
            except StrategyError as e:
                raise r.fail(f"strategies[{i}]", str(e)) from None

    return Scenario(name=name, description=description, link=link, timeline=timeline,
                    congestion_control=cc, backend=backend, workload=workload, models=models,
                    strategies=strategies, source=source)


def ramp_steps(start: LinkPair, end: LinkPair, t0_s: float, t1_s: float) -> list[TimelineStep]:
    """The steps of a linear ramp from `start` (in force at t0_s) to `end` (reached at t1_s, not
    included), RAMP_STEP_S apart: every numeric LinkSpec field is interpolated."""
    import dataclasses
    n = max(1, math.ceil((t1_s - t0_s) / RAMP_STEP_S))
    out = []
    for i in range(1, n):
        f = i / n

        def mix(a: LinkSpec, b: LinkSpec) -> LinkSpec:
            vals = {}
            for fld in dataclasses.fields(LinkSpec):
                x, y = getattr(a, fld.name), getattr(b, fld.name)
                if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool):
                    v = x + (y - x) * f
                    vals[fld.name] = round(v) if isinstance(y, int) and isinstance(x, int) else round(v, 6)
                else:
                    vals[fld.name] = y
            return LinkSpec(**vals)
        out.append(TimelineStep(at_s=round(t0_s + (t1_s - t0_s) * f, 6),
                                link=LinkPair(uplink=mix(start.uplink, end.uplink),
                                              downlink=mix(start.downlink, end.downlink))))
    return out


def resolve_path(name_or_path: str) -> Path:
    """A scenario argument: a name in scenarios/ or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ScenarioError(str(p), "", "no such file")
        return p
    candidate = SCENARIO_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(available())
    raise ScenarioError(name_or_path, "", f"no scenario of that name in {SCENARIO_DIR} (known: {known})")


def load_scenario(name_or_path: str) -> Scenario:
    path = resolve_path(name_or_path)
    source = str(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        raise ScenarioError(source, where, f"not valid YAML ({getattr(e, 'problem', e)})") from None
    except OSError as e:
        raise ScenarioError(source, "", f"cannot read ({e.strerror})") from None
    return parse_scenario(doc, source=source, default_name=path.stem)


def scenario_of_run(run_dir) -> Scenario:
    """The scenario a lab run ran, as its meta.json recorded it (the file it came from may have changed
    or gone since); ScenarioError naming the folder if the record is missing or unreadable."""
    source = str(Path(run_dir) / "meta.json")
    try:
        doc = json.loads(Path(source).read_text())["scenario"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ScenarioError(source, "scenario", f"no readable scenario record ({type(e).__name__}: {e}); "
                            "give a `lab scenario` results folder") from None
    def given(v):
        # the record spells every field out, unset ones as None and an absent timeline as no steps;
        # the schema wants them left out, as a scenario file would
        if isinstance(v, dict):
            return {k: given(x) for k, x in v.items() if x is not None}
        return [given(x) for x in v] if isinstance(v, list) else v
    doc = given({k: v for k, v in doc.items() if k != "source"})
    if not (doc.get("timeline") or {}).get("steps"):
        doc.pop("timeline", None)
    return parse_scenario(doc, source=source)


def available() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))
