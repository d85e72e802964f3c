"""Command-line input: the error for bad usage, a parser that reports in one line, and value types.

Every value a person types is checked as it is parsed, so a bad one ends the command with one line
naming the option (exit 2, printed by lab/cli.py) before anything runs: no namespace, no model load,
no results folder.  The checks call the same code the run would (make_strategy, load_prompts,
load_profile, the scenario's payload rule), so the command line and a scenario file accept the
same things.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Callable


class UsageError(Exception):
    """Bad command-line input; printed as one line, exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a parse error is a UsageError (one line) instead of usage text and exit."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {' '.join(message.split())} (see {self.prog} --help)")


def _bad(reason: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(reason)


def whole(minimum: int) -> Callable[[str], int]:
    """A whole number >= minimum."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise _bad(f"must be a whole number >= {minimum}, got {text!r}") from None
        if v < minimum:
            raise _bad(f"must be a whole number >= {minimum}, got {text!r}")
        return v
    return parse


def _finite(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise _bad(f"must be a number, got {text!r}") from None
    if not math.isfinite(v):
        raise _bad(f"must be finite, got {text!r}")
    return v


def number(minimum: float | None = None, *, above: bool = False, maximum: float | None = None
           ) -> Callable[[str], float]:
    """A finite number, >= minimum (> minimum with above=True) and <= maximum where given."""
    def parse(text: str) -> float:
        v = _finite(text)
        if minimum is not None and (v <= minimum if above else v < minimum):
            raise _bad(f"must be {'>' if above else '>='} {minimum:g}, got {text!r}")
        if maximum is not None and v > maximum:
            raise _bad(f"must be <= {maximum:g}, got {text!r}")
        return v
    return parse


def number_list(minimum: float | None = None, *, above: bool = False, maximum: float | None = None
                ) -> Callable[[str], tuple[float, ...]]:
    """Comma-separated numbers, each as number() checks it."""
    one = number(minimum, above=above, maximum=maximum)

    def parse(text: str) -> tuple[float, ...]:
        items = [x.strip() for x in text.split(",")]
        if not all(items):
            raise _bad(f"must be a comma-separated list of numbers, got {text!r}")
        try:
            return tuple(one(x) for x in items)
        except argparse.ArgumentTypeError as e:
            raise _bad(f"{e} (in {text!r})" if len(items) > 1 else str(e)) from None
    return parse


def strategies(text: str) -> tuple[str, ...]:
    """Comma-separated strategy names, each one make_strategy knows."""
    from lab.core.strategies import StrategyError, make_strategy, split_strategies
    names = tuple(split_strategies(text))
    for s in names:
        try:
            make_strategy(s)
        except StrategyError as e:
            raise _bad(str(e)) from None
    return names


def payload(text: str) -> str:
    from lab.core.spec import parse_payload
    try:
        parse_payload(text)
    except ValueError as e:
        raise _bad(str(e)) from None
    return text


def prompts_file(text: str) -> str:
    """A JSONL prompts file that loads (every line checked); the path is kept, the run reads it."""
    from lab.prompts import PromptError, load_prompts
    try:
        load_prompts(text)
    except PromptError as e:
        raise _bad(str(e)) from None
    return text


def models(text: str) -> str:
    """embedded | embedded-gguf | synthetic[:PROFILE] (the profile must load) | DRAFT_ID,TARGET_ID."""
    from lab.models import ModelError
    from lab.models.select import parse_models
    try:
        kind, profile, _ = parse_models(text)
        if kind == "synthetic":
            from lab.models.synthetic import load_profile
            load_profile(profile)
    except ModelError as e:
        raise _bad(str(e)) from None
    return text


def validation_folder(text: str) -> str:
    """An earlier `validate` results folder (it holds calibration.json)."""
    p = Path(text)
    if not p.is_dir():
        raise _bad(f"{text}: no such folder")
    if not (p / "calibration.json").is_file():
        raise _bad(f"{text}: no calibration.json here (not a `python -m lab validate` results folder)")
    return text


def run_folder(text: str) -> str:
    """A `python -m lab scenario` results folder (it holds meta.json and queries.jsonl)."""
    p = Path(text)
    if not p.is_dir():
        raise _bad(f"{text}: no such folder")
    missing = [n for n in ("meta.json", "queries.jsonl") if not (p / n).is_file()]
    if missing:
        raise _bad(f"{text}: no {' or '.join(missing)} here (not a `python -m lab scenario` results folder)")
    return text
