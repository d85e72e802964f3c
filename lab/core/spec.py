"""Speculative decoding math: acceptance, what crosses the link, the throughput model.  Pure numpy, no I/O.

Notation (one cycle): the draft proposed d[0..K-1], d[i] drawn from a
proposal distribution q[i] over the vocabulary V; the target scored
[last, d0..dK-1] in one pass, giving p[0..K] — p[i] is the target's
distribution for the position of d[i], p[K] the one after all drafts (the
bonus position).

Greedy (temperature 0): accept the longest prefix where d[i] == argmax p[i];
the next token is argmax p[n].  The output is exactly the target's greedy
output, whatever the draft does — no q is needed, so every payload mode is
exact at temperature 0.

Sampling (temperature T > 0), Leviathan et al. / Chen et al.: accept d[i]
with probability min(1, p[i][d]/q[i][d]); at the first rejection sample the
correction from norm(max(0, p[i] − q[i])); if all K are accepted sample the
bonus from p[K].  Every emitted token is then distributed exactly as p —
provided the cloud uses the SAME q the draft sampled from.  What the cloud
knows of q is what crossed the link (the payload mode), so the draft samples
from `proposal(mode, q)`, the distribution the cloud can rebuild exactly
whenever the mode allows it:

  mode          the draft proposes from        sent per position           at T > 0
  tokens        one-hot at argmax q (greedy)   d (int32)                   exact: the cloud knows q = one-hot(d)
  tokens+probs  q itself (sampled)             d, q(d) (float32)           acceptance test exact (up to the
                                                                           float32 rounding of q(d)); residual
                                                                           approximate: the cloud takes q = 0
                                                                           off d, so the residual is p without
                                                                           d, renormalised, and tokens the draft
                                                                           over-proposes (q > p) come out too
                                                                           often (TV ≈ 0.06 in the V=8 test)
  topk:N        q's top N, renormalised        N ids (int32) + N probs     exact (the proposal IS what is sent;
                                               (float32)                   the draft never proposes outside N)
  full          q rounded to fp16, renorm.     V probs (float16)           exact (the proposal IS what is sent)

Renormalisation happens on both sides from the same rounded numbers with
the same float64 arithmetic, so the two views of q are bit-identical.
`tokens` at T > 0 trades acceptance for exactness (a greedy draft is a
legitimate proposal: Leviathan's proof holds for any q).  `tokens+probs` is
the one approximate mode: tests/unit/test_spec.py measures its deviation.
If a caller hands the cloud a q it did not sample from (e.g. sampling from
the full softmax but sending topk), the result is approximate too; the
chi-square test shows that case as well.
"""
from __future__ import annotations

import bisect
import math
from typing import Callable

import numpy as np

PAYLOAD_MODES = ("tokens", "tokens+probs", "topk", "full")
_FP16_VALUES = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float64)   # bits → value


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """[..., V] logits → probabilities at temperature T > 0 (float64 so sums are exact enough for sampling)."""
    if not temperature > 0:
        raise ValueError(f"softmax needs a temperature > 0, got {temperature!r} (use argmax at 0)")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token id from a [V] distribution (inverse CDF: O(V), no renormalisation tolerance issues)."""
    cdf = np.cumsum(probs)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), probs.shape[-1] - 1))


def pick(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Next token from [V] logits: argmax at T = 0, a sample from softmax(logits/T) otherwise."""
    return sample(softmax(logits, temperature), rng) if temperature > 0 else int(np.argmax(logits))


def token_confidence(logits: np.ndarray, token: int, q: np.ndarray | None = None) -> float:
    """The draft's own probability of the token it proposed: q[token] for its softmax q at T > 0 (not
    the payload's proposal, which for `tokens` is one-hot: certain of everything), else of its softmax
    at T = 1 (the greedy token's).  A block's product of these is the
    draft's estimate that the target accepts all of it — what a confidence stop (draft_tokens `stop`)
    compares with its threshold; calibrated or not, it is high where the draft is sure and low at
    the forks where drafts are rejected (docs/MEASUREMENTS.md, the confidence stop)."""
    if q is not None:
        return float(q[token])
    z = np.asarray(logits, dtype=np.float64)
    return float(1.0 / np.exp(z - z[token]).sum())


class BlockStop:
    """The confidence stop, one block at a time: after each drafted token, the product of the draft's
    confidences so far (its estimate that the target accepts the whole block) is compared with the
    threshold, and the block ends below it, that token kept.  The drafting loop (decoding.draft_tokens)
    and the simulator's drafts (confidence from the profile) both ask `ends(confidence)`.

    at_least: the first draft the stop may end a block after (min_block: on a CPU whose verify of
    2–3 tokens costs more than of 4, a block the stop would end at 1 draft is better drafted on)."""

    def __init__(self, threshold: float, at_least: int = 1):
        self.threshold, self.at_least, self.sure, self.drafted = threshold, at_least, 1.0, 0

    def ends(self, confidence: float) -> bool:
        self.sure *= confidence
        self.drafted += 1
        return self.drafted >= self.at_least and self.sure < self.threshold


def min_block(verify_ms: Callable[[int], float], t_draft_ms: float, cap: int) -> int:
    """The fewest drafts a confidence stop should leave a block with: the largest m ≤ cap such that
    every shorter block j < m verifies at no less than m's cost plus the drafts between them,
    t_verify(j+1) ≥ t_verify(m+1) + (m − j)·t_draft — drafting on to m then costs nothing and may be
    accepted.  1 where t_verify grows with n, as on a GPU; 3 on a Zen 4 EPYC in fp32, where a verify
    of 2 tokens took 286 ms and of 4 took 186 (oneDNN; docs/MEASUREMENTS.md)."""
    best = 1
    for m in range(2, cap + 1):
        if all(verify_ms(j + 1) >= verify_ms(m + 1) + (m - j) * t_draft_ms for j in range(1, m)):
            best = m
    return best


# ------------------------------------------------------------------ acceptance

def greedy_accept(drafts: list[int], target_logits: np.ndarray) -> tuple[int, int]:
    """(n accepted, next token) at temperature 0.  target_logits: [K+1, V]."""
    best = np.argmax(target_logits, axis=-1)          # [K+1]
    n = 0
    while n < len(drafts) and int(best[n]) == int(drafts[n]):
        n += 1
    return n, int(best[n])


def residual(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """norm(max(0, p − q)) over [V]; falls back to p when p ≤ q everywhere (then rejection has probability 0)."""
    r = np.maximum(p - q, 0.0)
    total = r.sum()
    return r / total if total > 0 else p


def rejection_accept(drafts: list[int], q: np.ndarray, p: np.ndarray,
                     rng: np.random.Generator) -> tuple[int, int]:
    """(n accepted, next token) by rejection sampling.  q: [K, V] (the cloud's view), p: [K+1, V]."""
    k = len(drafts)
    for i in range(k):
        d = int(drafts[i])
        qd, pd = float(q[i, d]), float(p[i, d])
        # qd == 0 means the cloud's view of q is not the proposal (an approximate payload or a caller
        # bug): min(1, p/q) → 1 as q → 0, so accept whenever the target allows d at all.
        ratio = pd / qd if qd > 0.0 else (1.0 if pd > 0.0 else 0.0)
        if rng.random() < ratio:
            continue
        return i, sample(residual(p[i], q[i]), rng)
    return k, sample(p[k], rng)


def emitted_distribution(p: np.ndarray, proposal: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Exact distribution [V] of the first token a cycle emits, when the draft samples from `proposal`
    and the cloud believes q = `seen` (both [V]).  Equals p iff the scheme is exact for this p."""
    ratio = np.divide(p, seen, out=np.where(p > 0, 1.0, 0.0), where=seen > 0)
    accept = proposal * np.minimum(1.0, ratio)                   # P(draft x and keep it)
    return accept + (1.0 - accept.sum()) * residual(p, seen)


# ------------------------------------------------------------------ what crosses the link

def parse_payload(mode: str) -> tuple[str, int]:
    """"topk:8" → ("topk", 8); others → (mode, 0)."""
    base, _, n = str(mode).partition(":")
    if (base not in PAYLOAD_MODES or (base == "topk") != bool(n)
            or (n and (not n.isdigit() or int(n) < 1))):
        raise ValueError(f"payload mode must be tokens, tokens+probs, topk:N (N >= 1) or full, got {mode!r}")
    return base, int(n or 0)


def encode_q(mode: str, drafts: list[int], q: np.ndarray | None) -> dict[str, np.ndarray]:
    """The arrays the edge sends for its draft distributions q [K, V] under `mode` (nothing at T = 0: q None)."""
    base, n = parse_payload(mode)
    if base == "tokens" or q is None:
        return {}
    if base == "tokens+probs":
        return {"q_draft": q[np.arange(len(drafts)), drafts].astype(np.float32)}     # [K]
    if base == "topk":
        n = min(n, q.shape[-1])
        top = np.argpartition(-q, n - 1, axis=-1)[:, :n]                            # [K, N], unordered
        order = np.argsort(-np.take_along_axis(q, top, axis=-1), axis=-1, kind="stable")
        idx = np.take_along_axis(top, order, axis=-1).astype(np.int32)              # [K, N], best first
        return {"q_idx": idx, "q_val": np.take_along_axis(q, idx, axis=-1).astype(np.float32)}
    return {"q_full": _to_fp16(q)}                                                  # [K, V]


def decode_q(mode: str, drafts: list[int], arrays: dict[str, np.ndarray], vocab: int) -> np.ndarray:
    """The cloud's view of q [K, V=vocab] from what arrived.  Raises KeyError/ValueError on missing or
    inconsistent arrays (the cloud turns those into a protocol error)."""
    base, _ = parse_payload(mode)
    k = len(drafts)
    q = np.zeros((k, vocab), dtype=np.float64)
    rows = np.arange(k)
    if base == "tokens":
        q[rows, drafts] = 1.0
    elif base == "tokens+probs":
        q[rows, drafts] = _rows(arrays["q_draft"], k, "q_draft").astype(np.float64)
    elif base == "topk":
        idx, val = _rows(arrays["q_idx"], k, "q_idx"), _rows(arrays["q_val"], k, "q_val")
        if idx.shape != val.shape or idx.ndim != 2 or (idx.size and not 0 <= idx.min() <= idx.max() < vocab):
            raise ValueError(f"topk arrays must be [K, N] ids in 0..{vocab - 1} with matching values")
        np.put_along_axis(q, idx.astype(np.int64), val.astype(np.float64), axis=-1)
        q = _normalise(q)
    else:
        full = _rows(arrays["q_full"], k, "q_full")
        if full.ndim != 2 or full.dtype != np.float16:
            raise ValueError("q_full must be float16 [K, V]")
        w = min(full.shape[1], vocab)          # draft and target logits may differ in padding rows
        q[:, :w] = _FP16_VALUES[full[:, :w].view(np.uint16)]      # == .astype(float64), without the slow path
        q = _normalise(q)
    if not np.all(np.isfinite(q)) or (q < 0).any():
        raise ValueError("q must hold finite, non-negative probabilities")
    return q


def proposal(mode: str | None, q: np.ndarray) -> np.ndarray:
    """The [V] distribution the draft samples from, given its softmax q [V] and the payload mode:
    the cloud rebuilds exactly this from the payload wherever the mode allows (see the table above)."""
    base, _ = parse_payload(mode) if mode is not None else ("tokens+probs", 0)
    if base == "tokens":
        onehot = np.zeros_like(q, dtype=np.float64)
        onehot[int(np.argmax(q))] = 1.0
        return onehot
    if base == "tokens+probs":
        return np.asarray(q, dtype=np.float64)
    # topk / full: what the cloud will decode, computed the cloud's way.
    return decode_q(mode, [0], encode_q(mode, [0], q[None, :]), q.shape[-1])[0]


def _to_fp16(x: np.ndarray) -> np.ndarray:
    """x.astype(float16), bit for bit, for probabilities in [0, 1] — 4-8x faster: numpy converts
    fp16 subnormals (< 2^-14, most of a 150k-token softmax) on a slow path; here they are
    round-half-even multiples of 2^-24 computed directly."""
    x = np.asarray(x, dtype=np.float64)
    tiny = 2.0 ** -14
    sub_bits = np.rint(np.minimum(x, tiny) * 2.0 ** 24).astype(np.uint16)        # 0..1024
    norm_bits = np.maximum(x, tiny).astype(np.float16).view(np.uint16)
    return np.where(x < tiny, sub_bits, norm_bits).view(np.float16)


def _rows(a: np.ndarray, k: int, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim < 1 or a.shape[0] != k:
        raise ValueError(f"{name} has shape {list(a.shape)}, expected {k} rows (one per draft)")
    return a


def _normalise(q: np.ndarray) -> np.ndarray:
    s = q.sum(axis=-1, keepdims=True)
    if (s <= 0).any() or not np.all(np.isfinite(s)):
        raise ValueError("a q row sums to zero or is not finite")
    return q / s


def payload_bytes(mode: str, k: int, vocab: int) -> int:
    """Bytes of draft payload per cycle (token ids int32 + q per mode), without framing (sampling only;
    at T = 0 every mode sends the ids alone)."""
    base, n = parse_payload(mode)
    ids = 4 * k
    return ids + {"tokens": 0, "tokens+probs": 4 * k, "topk": 8 * k * min(n, vocab), "full": 2 * k * vocab}[base]


# ------------------------------------------------------------------ the throughput model (BACKGROUND.md)

def verify_ms_at(n: int, a: float, b: float, by_n: tuple[tuple[int, float], ...] = ()) -> float:
    """t_verify(n), one target forward over n tokens: a + b·n, or, where some sizes were measured
    (by_n, ((n, ms), …) sorted by n, each n once: bisect reads it), the measured ms at those sizes,
    straight between two of them and with the line's slope b beyond them.  A CPU's t_verify(n) is not a line: oneDNN's fp32 GEMM on a
    2-vCPU EPYC took 231, 293, 243, 228, 277 ms at n = 1, 2, 4, 6, 8, and the line through them missed
    n = 1, the cloud-only step, by 7 % (docs/MEASUREMENTS.md)."""
    if not by_n:
        return a + b * n
    i = bisect.bisect_left(by_n, (n,))
    if i < len(by_n) and by_n[i][0] == n:
        return by_n[i][1]
    if i == 0:
        return max(by_n[0][1] - b * (by_n[0][0] - n), 0.0)
    if i == len(by_n):
        return by_n[-1][1] + b * (n - by_n[-1][0])
    (n0, ms0), (n1, ms1) = by_n[i - 1], by_n[i]
    return ms0 + (ms1 - ms0) * (n - n0) / (n1 - n0)


def expected_tokens(alpha: float, k: int) -> float:
    """E[τ] = (1 − α^(K+1)) / (1 − α): accepted prefix + one correction/bonus token (i.i.d. acceptance α)."""
    if k <= 0:
        return 1.0
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def transmit_ms(n_bytes: float, rate_mbit: float) -> float:
    """Serialisation time of n_bytes at rate_mbit (0 or inf: unlimited)."""
    if not rate_mbit or math.isinf(rate_mbit):
        return 0.0
    return n_bytes * 8 / (rate_mbit * 1000.0)


def cycle_ms(k: int, t_draft_ms: float, t_verify_ms: float, rtt_ms: float, t_transmit_ms: float = 0.0) -> float:
    """T_distributed = K·t_draft + t_transmit(K) + RTT + t_verify(K)."""
    return k * t_draft_ms + t_transmit_ms + rtt_ms + t_verify_ms


def throughput(alpha: float, k: int, t_draft_ms: float, t_verify_ms: float, rtt_ms: float,
               t_transmit_ms: float = 0.0) -> float:
    """Tokens per second of distributed speculative decoding with draft length K: E[τ] / T_distributed."""
    return 1000.0 * expected_tokens(alpha, k) / cycle_ms(k, t_draft_ms, t_verify_ms, rtt_ms, t_transmit_ms)


def best_k(alpha: float, t_draft_ms: float, verify_ms: Callable[[int], float], rtt_ms: float, k_max: int = 15,
           transmit_ms: Callable[[int], float] = lambda k: 0.0, edge_only: bool = False) -> tuple[int, float]:
    """(K, tokens/s) maximising the model's throughput over K in 1..k_max; verify_ms(K), transmit_ms(K)
    are callables.  With edge_only=True, K = 0 (the draft alone, 1000 / t_draft tok/s) competes too."""
    best = (0, 1000.0 / t_draft_ms) if edge_only and t_draft_ms > 0 else (1, -math.inf)
    for k in range(1, k_max + 1):
        tps = throughput(alpha, k, t_draft_ms, verify_ms(k), rtt_ms, transmit_ms(k))
        if tps > best[1]:
            best = (k, tps)
    return best
