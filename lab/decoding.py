"""The decoding loops, over any Session (lab/models): draft, verify, and the co-located loops.

KV-cache bookkeeping — the one invariant both sides keep:

    committed sequence S = prompt + output so far; `last` = S[-1]
    target cache holds S[:-1]           (the target scores [last, d0..dK-1] in one pass)
    draft cache holds a prefix of S;    `pending` = the part of S it has not seen yet

    draft:   extend(pending) → d0; extend([d0]) → d1; … → d[K-1]   (draft cache += pending + d0..dK-2)
    verify:  extend([last, d0..dK-1]) → p[0..K]; accept n; next token t
             target cache → S + d0..d[n-1]     (rollback: drop the rejected drafts)
    commit:  S += d0..d[n-1], t; the draft cache is rolled back to what of S it holds,
             pending = the rest of S (1 or 2 tokens)

Nothing in the kept prefix is ever recomputed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from lab import spec


def now_ms() -> float:
    return time.monotonic_ns() / 1e6


@dataclass
class DraftState:
    """The edge's draft model on one query: its session and what of S it has not seen."""
    session: object
    committed: list[int]                  # S
    cached: int = 0                       # how many tokens of S the draft cache holds

    @classmethod
    def start(cls, model, prompt_ids: list[int]) -> tuple["DraftState", np.ndarray]:
        s = model.new_session()
        logits = s.prefill(prompt_ids)
        return cls(session=s, committed=list(prompt_ids), cached=len(prompt_ids)), logits

    def pending(self) -> list[int]:
        return self.committed[self.cached:]

    def draft(self, k: int, temperature: float, rng: np.random.Generator,
              first_logits: np.ndarray | None = None) -> tuple[list[int], np.ndarray | None]:
        """K draft tokens and, at temperature > 0, their distributions q [K, V]."""
        tokens: list[int] = []
        qs = []
        logits = first_logits
        feed = self.pending()
        for _ in range(k):
            if logits is None:
                logits = self.session.extend(feed)[-1]
            if temperature > 0:
                q = spec.softmax(logits, temperature)
                tok = spec.sample(q, rng)
                qs.append(q)
            else:
                tok = int(np.argmax(logits))
            tokens.append(tok)
            feed, logits = [tok], None
        # The cache now holds S + tokens[:-1] (the last draft was never fed).
        self.session_len_after_draft = self.session.length
        return tokens, (np.stack(qs) if qs else None)

    def commit(self, accepted: list[int], next_token: int) -> None:
        """Append the verdict to S and roll the draft cache back to the part of S it holds."""
        base = len(self.committed)
        self.committed += list(accepted) + [int(next_token)]
        # Cache holds (old S) + drafts[:-1]; of those, base + len(accepted) tokens are still in S
        # (at most the cache length).
        keep = min(self.session.length, base + len(accepted))
        self.session.rollback(keep)
        self.cached = keep

    def step_alone(self, temperature: float, rng: np.random.Generator) -> int:
        """One edge-only token (no verification): extend by pending, pick, commit."""
        logits = self.session.extend(self.pending())[-1]
        self.cached = len(self.committed)
        tok = spec.sample(spec.softmax(logits, temperature), rng) if temperature > 0 else int(np.argmax(logits))
        self.committed.append(tok)
        return tok


@dataclass
class TargetState:
    """The cloud's target model on one query: its cache holds S[:-1]; `last` = S[-1]."""
    session: object
    last: int
    length: int = 0                       # len(S) - 1, kept for checks

    @classmethod
    def start(cls, model, prompt_ids: list[int]) -> "TargetState":
        s = model.new_session()
        s.prefill(prompt_ids[:-1])
        return cls(session=s, last=int(prompt_ids[-1]), length=len(prompt_ids) - 1)

    def verify(self, drafts: list[int], temperature: float, rng: np.random.Generator,
               q: np.ndarray | None = None) -> tuple[int, int]:
        """Score [last] + drafts in one pass, accept, roll back; returns (n accepted, next token)."""
        logits = self.session.extend([self.last] + list(drafts))        # [K+1, V]
        if temperature > 0:
            p = spec.softmax(logits, temperature)
            n, tok = spec.rejection_accept(drafts, q, p, rng)
        else:
            n, tok = spec.greedy_accept(drafts, logits)
        keep = self.length + 1 + n                                      # S + accepted drafts
        self.session.rollback(keep)
        self.length = keep
        self.last = tok
        return n, tok

    def step(self, temperature: float, rng: np.random.Generator) -> int:
        """One autoregressive target token."""
        logits = self.session.extend([self.last])[-1]
        self.length += 1
        tok = spec.sample(spec.softmax(logits, temperature), rng) if temperature > 0 else int(np.argmax(logits))
        self.last = tok
        return tok


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)        # per cycle
    accepted: list[int] = field(default_factory=list)       # per cycle


def _stop(tokens: list[int], max_new: int, eos: tuple[int, ...]) -> tuple[list[int], bool]:
    """Cut at max_new tokens or after the first EOS; (kept, done)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1], True
    return tokens[:max_new], len(tokens) >= max_new


def autoregressive_generate(model, prompt_ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                            seed: int = 0, on_token=None) -> list[int]:
    """Plain decoding with the target alone (through TargetState, like cloud-only)."""
    rng = np.random.default_rng(seed)
    st = TargetState.start(model, prompt_ids)
    out: list[int] = []
    while len(out) < max_new_tokens:
        tok = st.step(temperature, rng)
        out.append(tok)
        if on_token:
            on_token([tok])
        if tok in model.eos_token_ids:
            break
    return out


def speculative_generate(draft_model, target_model, prompt_ids: list[int], max_new_tokens: int, k_fn,
                         temperature: float = 0.0, seed: int = 0, payload: str = "full",
                         on_cycle=None) -> Generation:
    """Co-located speculative decoding (cloud-spec; the reference for the distributed path).

    k_fn() gives K for each cycle; on_cycle(new_tokens, k, n_accepted) is called after each."""
    rng_d, rng_t = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    vocab = min(draft_model.vocab_size, target_model.vocab_size)
    d, first = DraftState.start(draft_model, prompt_ids)
    t = TargetState.start(target_model, prompt_ids)
    gen = Generation()
    eos = tuple(target_model.eos_token_ids)
    done = False
    while not done:
        k = max(1, min(int(k_fn()), max_new_tokens - len(gen.tokens)))
        drafts, q = d.draft(k, temperature, rng_d, first_logits=first if not gen.tokens else None)
        qv = None
        if temperature > 0:
            qv = spec.decode_q(payload, drafts, spec.encode_q(payload, drafts, q[:, :vocab]), vocab)
        n, tok = t.verify(drafts, temperature, rng_t, qv)
        d.commit(drafts[:n], tok)
        new, done = _stop(drafts[:n] + [tok], max_new_tokens - len(gen.tokens), eos)
        gen.tokens += new
        gen.drafted.append(k)
        gen.accepted.append(n)
        if on_cycle:
            on_cycle(new, k, n)
    return gen
