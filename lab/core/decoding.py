"""The decoding loops, over any Session (lab/models): draft, verify, and the co-located loops.

The edge node uses `DraftState`, the cloud node `TargetState`; `speculative_generate`
runs both in one process (cloud-spec, and the reference the distributed path must
reproduce token for token, sampling included: same seeds, same per-cycle RNGs).

KV-cache bookkeeping — the invariant both sides keep, cycle after cycle:

    S        = the committed sequence: prompt + output so far; last = S[-1]
    target   cache holds S[:-1] exactly (length len(S) − 1); `last` is fed with the drafts
    draft    cache holds S[:cached] (a prefix of S); pending = S[cached:] (1 or 2 tokens
             after a cycle, 0 right after prefill, when the prefill logits are used instead)

    draft:   extend(pending) → logits → d0; extend([d0]) → d1; … → d[K-1]
             (pending of 2 on a draft whose rows interact, int8: one token a forward, feed_logits)
             draft cache = S + d0..d[K-2]        (d[K-1] is never fed: nobody needs its logits yet)
    verify:  extend([last, d0..d[K-1]])  → p[0..K]   (ONE forward pass, K+1 positions)
             accept n ≤ K, next token t (correction if n < K, bonus if n = K)
             rollback target cache to S + d0..d[n-1]  = S'[:-1] for S' = S + d[:n] + [t]
    commit:  S' = S + d0..d[n-1] + t
             draft cache holds S + d0..d[K-2]; the part of it still in S' is
             S + d0..d[min(n, K-1)-1] → rollback to len(S) + min(n, K−1)
             pending = t (n < K), or d[K-1], t (n = K: the last draft was never fed)

Worked example, prompt [a b c], K = 3:
    start     target cache [a b]  last c           draft cache [a b c], pending [], logits ready
    draft     d0 from the ready logits; extend[d0] → d1; extend[d1] → d2    draft cache [a b c d0 d1]
    verify    extend[c d0 d1 d2] → p0..p3; say n = 1, t     target cache → [a b c d0], last t
    commit    S = [a b c d0 t]; draft rollback to 4 → [a b c d0], pending [t]
    next      draft: extend[t] → d0' …                       (nothing of the kept prefix recomputed)
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lab.core import spec
from lab.core.cycle import FixedK, QueryLog, Verdict, speculate
from lab.core.protocol import ProtocolError


VERIFY_SALT = 0x7E51F1          # non-zero: keeps verify streams apart from default_rng(seed)


def now_ms() -> float:
    """The monotonic clock both nodes read (same host), in ms."""
    return time.monotonic_ns() / 1e6


def verify_rng(seed: int, seq: int) -> np.random.Generator:
    """The target's RNG for cycle `seq` of a query: independent of how many draws earlier cycles made,
    so a distributed run and a co-located one with the same seed sample the same tokens.

    The salt matters: SeedSequence pads entropy with zeros, so default_rng([seed, 0]) IS
    default_rng(seed) — the edge's drafting RNG — and cycle 0 would reuse the draft's random numbers
    for its acceptance test (a real bias, caught by tests/unit/test_decoding.py)."""
    return np.random.default_rng([int(seed), int(seq), VERIFY_SALT])


# ------------------------------------------------------------------ the two primitives

# The longest feed a draft whose rows interact takes one token a forward: a fully accepted block's
# catch-up (its last draft, never fed, and the bonus).  Longer feeds (a prompt, tokens the cloud made
# alone) go in one forward, and the simulator charges them per token of prefill.
CATCH_UP_ROWS = 2


def feed_logits(session, feed: list[int]) -> np.ndarray:
    """The next-token logits [V] after `feed`.  One forward, except on a session whose rows interact
    (`rows_interact`: an int8 draft, whose fbgemm kernels quantise a forward's activations over all its
    rows, so one row's logits move with its neighbour's, by up to 1.8 here): there a catch-up of up to
    CATCH_UP_ROWS tokens is fed one token a forward, the roundings `lab profile` measured the draft's
    agreement with.  Fed as one two-row forward the int8 draft accepted 0.53 / 0.70 where its profile
    said 0.55 / 0.74; one token a forward, 0.55 / 0.73 and no slower (docs/MEASUREMENTS.md, the
    catch-up one row at a time)."""
    if 1 < len(feed) <= CATCH_UP_ROWS and getattr(session, "rows_interact", False):
        for t in feed[:-1]:
            session.extend([t])
        feed = feed[-1:]
    return session.extend(feed)[-1]


def draft_tokens(session, feed: list[int], k: int, temperature: float, rng: np.random.Generator,
                 payload: str | None = "full", logits: np.ndarray | None = None,
                 between: Callable[[], bool] | None = None,
                 stop: float | None = None, stop_min: int = 1) -> tuple[list[int] | None, np.ndarray | None]:
    """Up to K autoregressive draft steps.  The session's cache holds S minus `feed`; `logits` are the
    next-token logits when feed is empty.  Returns tokens [≤ K] and, at T > 0, the draft's softmax q
    [len(tokens), V] (what `spec.encode_q` turns into the payload).  Tokens are drawn from `spec.proposal(payload,
    q)`, the distribution the cloud can rebuild from that payload — so pass the payload mode the edge
    will send (None: sample from q itself).  stop: end the block early once the draft's own estimate
    that all of it is accepted falls below it (spec.BlockStop) — the token that crossed it is kept, no
    forward is spent after it, and not before `stop_min` drafts.  between(), if given, runs before every forward; False
    abandons the block: (None, None), the cache then holding whatever was fed so far."""
    tokens: list[int] = []
    qs: list[np.ndarray] = []
    if logits is None and not feed:
        raise ValueError("draft_tokens: nothing to feed and no logits to start from")
    block = spec.BlockStop(stop, stop_min) if stop is not None else None
    for _ in range(k):
        if logits is None:
            if between is not None and not between():
                return None, None
            logits = feed_logits(session, feed)                 # [V]
        if temperature > 0:
            q = spec.softmax(logits, temperature)                # [V]
            tok = spec.sample(spec.proposal(payload, q), rng)
            qs.append(q)
        else:
            q, tok = None, int(np.argmax(logits))
        tokens.append(tok)
        feed = [tok]
        if block is not None and block.ends(spec.token_confidence(logits, tok, q)):
            break
        logits = None
    return tokens, (np.stack(qs) if qs else None)             # q: [K, V]


def verify_tokens(session, last: int, drafts: list[int], temperature: float, rng: np.random.Generator,
                  q: np.ndarray | None = None) -> tuple[int, int]:
    """ONE extend() of [last] + drafts on the target, then the acceptance rule.  q: the cloud's view
    [K, V] (spec.decode_q), needed at T > 0 only.  The caller rolls the cache back."""
    logits = session.extend([int(last)] + [int(t) for t in drafts])      # [K+1, V]
    if temperature > 0:
        if q is None:
            raise ValueError("verify at temperature > 0 needs the draft's q")
        return spec.rejection_accept(drafts, q, spec.softmax(logits, temperature), rng)
    return spec.greedy_accept(drafts, logits)


# ------------------------------------------------------------------ per-node state

@dataclass
class DraftState:
    """The edge's draft model on one query: its session, S, and how much of S its cache holds."""
    session: object
    committed: list[int]                  # S
    cached: int = 0                       # the draft cache holds S[:cached]
    ready: np.ndarray | None = None       # next-token logits, valid while cached == len(S)
    # The pipelined cycle's chain: tokens past S drafted on the guess that every block in flight is accepted
    # whole with the draft's own bonus (blocks and guessed bonuses, oldest first).  The cache then holds a
    # prefix of S + ahead; a block abandoned mid-way may leave more, which the next commit rolls back.
    ahead: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, model, prompt_ids: list[int]) -> tuple["DraftState", np.ndarray]:
        """Prefill the prompt; returns the state and the prefill logits [V] (also kept as `ready`)."""
        s = model.new_session()
        logits = s.prefill(list(prompt_ids))
        return cls(session=s, committed=list(prompt_ids), cached=len(prompt_ids), ready=logits), logits

    def pending(self) -> list[int]:
        return self.committed[self.cached:]

    def _logits_if_ready(self, first_logits: np.ndarray | None) -> np.ndarray | None:
        if first_logits is not None:
            return first_logits
        return self.ready if self.cached == len(self.committed) else None

    def draft(self, k: int, temperature: float, rng: np.random.Generator,
              first_logits: np.ndarray | None = None, payload: str | None = "full", stop: float | None = None,
              stop_min: int = 1) -> tuple[list[int], np.ndarray | None]:
        """Up to K draft tokens (fewer if `stop` ends the block: draft_tokens) and, at T > 0, the draft's
        softmax q [len(tokens), V] (encode it with the same payload)."""
        tokens, q = draft_tokens(self.session, self.pending(), k, temperature, rng, payload,
                                 logits=self._logits_if_ready(first_logits), stop=stop, stop_min=stop_min)
        self.cached, self.ready = len(self.committed), None
        self.ahead = list(tokens)
        return tokens, q                       # the cache now holds S + tokens[:-1], stopped early or not

    def commit(self, accepted: list[int], next_token: int) -> None:
        """Append the verdict to S and roll the draft cache back to the part of S it still holds."""
        base = len(self.committed)
        self.committed += [int(t) for t in accepted] + [int(next_token)]
        # The cache holds (old S) + drafts[:-1]; base + len(accepted) of those are in S (capped by the cache).
        keep = min(self.session.length, base + len(accepted))
        self.session.rollback(keep)
        self.cached, self.ready = keep, None
        self.ahead = []

    def draft_ahead(self, k: int, temperature: float, rng: np.random.Generator,
                    between: Callable[[], bool] | None = None, payload: str | None = "full"
                    ) -> tuple[list[int], np.ndarray | None] | None:
        """One block past the chain: the guessed bonus (the draft's most likely next token: the likeliest to
        be the target's at T = 0 and near it at T > 0), then K drafts as `draft` makes them.  None if
        between() abandons it."""
        chain = self.committed + self.ahead
        feed = chain[self.session.length:]                # the chain's last token, never fed yet
        if between is not None and not between():
            return None
        guess = int(np.argmax(feed_logits(self.session, feed)))
        self.ahead.append(guess)
        tokens, q = draft_tokens(self.session, [guess], k, temperature, rng, payload, between=between)
        if tokens is None:
            return None
        self.ahead += tokens
        return tokens, q

    def guess_holds(self, k: int, n: int, token: int) -> bool:
        """Whether the verdict (n of the oldest block's k drafts, then token) agrees with the chain so far."""
        return n == k and (len(self.ahead) <= k or self.ahead[k] == int(token))

    def settle(self, k: int, n: int, token: int) -> bool:
        """The oldest block's verdict.  If the chain guessed it (all k accepted, the bonus as guessed), its
        first k + 1 tokens join S and the rest of the chain and the cache stand: True.  Otherwise commit."""
        if n == k and len(self.ahead) > k and self.ahead[k] == int(token):
            self.committed += self.ahead[: k + 1]
            self.ahead = self.ahead[k + 1:]
            self.cached, self.ready = min(self.session.length, len(self.committed)), None
            return True
        self.commit(self.ahead[:n], token)
        return False

    def step_alone(self, temperature: float, rng: np.random.Generator) -> int:
        """One edge-only token (no verification): feed pending, pick, commit."""
        logits = self._logits_if_ready(None)
        if logits is None:
            logits = feed_logits(self.session, self.pending())
        self.cached, self.ready = len(self.committed), None
        tok = spec.pick(logits, temperature, rng)
        self.committed.append(tok)
        return tok


@dataclass
class TargetState:
    """The cloud's target model on one query: its cache holds S[:-1]; `last` = S[-1]."""
    session: object
    last: int
    length: int = 0                       # len(S) − 1 = the target cache length

    @classmethod
    def start(cls, model, prompt_ids: list[int]) -> "TargetState":
        if len(prompt_ids) < 2:
            raise ValueError(f"the target needs a prompt of at least 2 tokens, got {len(prompt_ids)}")
        s = model.new_session()
        s.prefill(list(prompt_ids[:-1]))
        return cls(session=s, last=int(prompt_ids[-1]), length=len(prompt_ids) - 1)

    def holds(self, pos: int, last: int) -> bool:
        """Whether S is what a block drafted at position `pos` (len(S) it assumed) after `last` rests on; a
        pipelined block drafted on a guess the verdicts refuted does not (it is answered stale, untouched)."""
        return self.length + 1 == pos and self.last == int(last)

    def verify(self, drafts: list[int], temperature: float, rng: np.random.Generator,
               q: np.ndarray | None = None) -> tuple[int, int]:
        """Score [last] + drafts in one pass, accept, roll back; returns (n accepted, next token)."""
        n, tok = verify_tokens(self.session, self.last, drafts, temperature, rng, q)
        keep = self.length + 1 + n                                      # S + accepted drafts = S'[:-1]
        self.session.rollback(keep)
        self.length, self.last = keep, tok
        return n, tok

    def step(self, temperature: float, rng: np.random.Generator) -> int:
        """One autoregressive target token."""
        logits = self.session.extend([self.last])[-1]
        self.length += 1
        self.last = spec.pick(logits, temperature, rng)
        return self.last


# ------------------------------------------------------------------ the co-located path

class DraftSide:
    """The draft half of a cycle seam (lab/core/cycle.py), timed on this process's clock: K tokens
    drafted with the edge node's RNG (their q kept for the verify request), the verdict committed,
    tokens made alone.  A seam adds how the proposal reaches the target: verify, resync, close."""

    def __init__(self, draft: DraftState, temperature: float, seed: int, payload: str):
        self.d, self.temperature, self.seed, self.payload = draft, temperature, seed, payload
        self.rng = np.random.default_rng(seed)                 # the edge node's drafting RNG
        self.q: np.ndarray | None = None
        self.qs: dict[int, np.ndarray | None] = {}             # pipelined: each block's q, by seq

    now = staticmethod(now_ms)

    def start_cycle(self, seq: int) -> None:
        pass

    def draft(self, k: int, seq: int, stop: float | None = None, stop_min: int = 1) -> list[int]:
        drafts, self.q = self.d.draft(k, self.temperature, self.rng, payload=self.payload, stop=stop,
                                      stop_min=stop_min)
        self.qs = {seq: self.q}
        return drafts

    # the pipelined cycle's drafting (lab/core/cycle.py PipeSeam)
    def draft_ahead(self, k: int, seq: int, between) -> list[int] | None:
        out = self.d.draft_ahead(k, self.temperature, self.rng, between, self.payload)
        if out is None:
            return None
        drafts, self.qs[seq] = out
        return drafts

    def guess_holds(self, k: int, verdict: Verdict) -> bool:
        return self.d.guess_holds(k, verdict.accepted, verdict.token)

    def settle(self, k: int, verdict: Verdict) -> bool:
        return self.d.settle(k, verdict.accepted, verdict.token)

    def block_base(self, drafts: list[int]) -> tuple[int, int]:
        """(pos, last) of a block about to be sent, the chain's tail: what the target must hold to verify it."""
        chain = self.d.committed + self.d.ahead
        pos = len(chain) - len(drafts)
        if chain[pos:] != list(drafts):
            raise ValueError("a pipelined block must be the tail of the chain when it is sent")
        return pos, chain[pos - 1]

    def commit(self, accepted: list[int], token: int) -> None:
        self.d.commit(accepted, token)

    def alone(self) -> int:
        return self.d.step_alone(self.temperature, self.rng)

    def close(self) -> None:
        pass


class LocalSeam(DraftSide):
    """The cycle's seam with draft and target in this process (cloud-spec, bench, the reference).

    The proposal's q goes through the same encode/decode as on the wire (payload), and the target
    samples with the same per-cycle RNG as the cloud node, so a co-located run and a distributed
    one with the same seed produce the same tokens."""

    def __init__(self, draft_model, target_model, prompt_ids: list[int], temperature: float = 0.0,
                 seed: int = 0, payload: str = "full"):
        super().__init__(DraftState.start(draft_model, prompt_ids)[0], temperature, seed, payload)
        self.target_model = target_model
        self.t = TargetState.start(target_model, prompt_ids)
        self.queue: deque = deque()             # pipelined blocks sent, not yet verified
        self.stale = 0                          # blocks answered stale (superseded before their verify)

    def verify(self, drafts: list[int], seq: int, q: np.ndarray | None = None) -> Verdict:
        t0 = now_ms()
        qv = None
        if self.temperature > 0:
            q = self.q if q is None else q
            qv = spec.decode_q(self.payload, drafts, spec.encode_q(self.payload, drafts, q),
                               self.target_model.vocab_size)
        n, tok = self.t.verify(drafts, self.temperature, verify_rng(self.seed, seq), qv)
        return Verdict(n, tok, now_ms() - t0)

    def resync(self) -> None:
        self.t = TargetState.start(self.target_model, self.d.committed)

    # The pipelined cycle: blocks queue up as on the wire and the target takes them in order when polled,
    # answering a block whose base it no longer holds as the cloud node does (stale, cache untouched).
    def send(self, drafts: list[int], seq: int) -> None:
        self.queue.append((seq, list(drafts), *self.block_base(drafts), self.qs.get(seq)))

    def poll(self, seq: int, timeout_ms: float | None) -> Verdict | None:
        while self.queue:
            s, drafts, pos, last, q = self.queue.popleft()
            if not self.t.holds(pos, last):
                self.stale += 1
                if s == seq:
                    raise ProtocolError(f"the verdict for block {seq} is stale: the chain it rests on broke")
                continue                        # superseded: the edge no longer waits for it
            v = self.verify(drafts, s, q)
            if s == seq:
                return v
        raise ProtocolError(f"no verdict for block {seq}: it was never sent")


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    drafted: list[int] = field(default_factory=list)        # K per cycle
    accepted: list[int] = field(default_factory=list)       # n accepted per cycle


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
                         on_cycle=None, stop: float | None = None, stop_min: int = 1) -> Generation:
    """Co-located speculative decoding (cloud-spec; the reference for the distributed path): the one
    cycle (lab/core/cycle.py) over a LocalSeam.  k_fn() gives K for each cycle (with `stop`, the most a
    block may hold: draft_tokens); on_cycle(new_tokens, k drafted, n_accepted) is called after each cycle."""
    seam = LocalSeam(draft_model, target_model, prompt_ids, temperature, seed, payload)
    log = QueryLog(now_ms, "cloud-spec")
    speculate(FixedK(k_fn, stop, stop_min), seam, log, max_new_tokens, tuple(target_model.eos_token_ids), on_cycle)
    return Generation(tokens=log.tokens, drafted=log.cycles["k"], accepted=log.cycles["accepted"])
