"""Prompts: a small built-in set (code and general questions) or a JSONL file of {"id", "prompt"}.

A record may add "template": "chat" (the default: one user turn in the model's chat template) or
"raw" (the text as it is, e.g. a few-shot prompt that ends in "Answer:"; lab/accuracy.py uses it)."""
from __future__ import annotations

from pathlib import Path

BUILTIN = (
    {"id": "fib", "prompt": "Write a Python function that returns the n-th Fibonacci number iteratively."},
    {"id": "reverse-words", "prompt": "Write a Python function that reverses the order of words in a sentence."},
    {"id": "tcp-loss", "prompt": "In two sentences, why does packet loss increase latency for TCP connections?"},
    {"id": "binary-search", "prompt": "Implement binary search over a sorted Python list and explain its complexity."},
    {"id": "json-merge", "prompt": "Write a Python function that deep-merges two dictionaries."},
    {"id": "capital", "prompt": "What is the capital of Australia, and why is it not Sydney?"},
    {"id": "sql-top", "prompt": "Write an SQL query that returns the three highest-paid employees per department."},
    {"id": "is-prime", "prompt": "Write a Python function is_prime(n) with a short docstring."},
)


TEMPLATES = ("chat", "raw")


class PromptError(Exception):
    """A prompts file is unreadable or malformed; the message names the file and the line."""


def load_prompts(path: str | None) -> list[dict]:
    if path is None:
        return [dict(p) for p in BUILTIN]
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PromptError(f"{p}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    from lab.results import json_objects
    out = []
    for i, rec in json_objects(text, p, PromptError):
        if not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise PromptError(f"{p}: line {i}: needs a non-empty string field \"prompt\"")
        extra = set(rec) - {"id", "prompt", "template"}
        if extra:
            raise PromptError(f"{p}: line {i}: unknown key(s) {', '.join(sorted(extra))} (allowed: id, prompt, template)")
        template = rec.get("template", "chat")
        if template not in TEMPLATES:
            raise PromptError(f"{p}: line {i}: template must be one of {', '.join(TEMPLATES)}, got {template!r}")
        out.append({"id": str(rec.get("id", f"line{i}")), "prompt": rec["prompt"], "template": template})
    if not out:
        raise PromptError(f"{p}: no prompts in the file")
    return out
