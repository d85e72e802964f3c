"""Speculative decoding math: acceptance, and the throughput model.  Pure numpy, no I/O.

Notation (one cycle): the draft proposed d[0..K-1] with distributions
q[0..K-1] (each over the vocabulary V); the target scored [last, d0..dK-1]
in one pass, giving p[0..K] — p[i] is the target's distribution for the
position of d[i], p[K] the one after all drafts (the bonus position).

Greedy (temperature 0): accept the longest prefix where d[i] == argmax p[i];
the next token is argmax p[n].  The output is exactly the target's greedy
output, whatever the draft does.

Sampling (temperature T > 0), Leviathan et al. / Chen et al.: accept d[i]
with probability min(1, p[i][d]/q[i][d]); at the first rejection sample the
correction from norm(max(0, p[i] − q[i])); if all K are accepted sample the
bonus from p[K].  This leaves the target's distribution unchanged — exactly,
when the cloud knows q in full.  What the cloud knows of q depends on the
payload mode (what crossed the link):

  full          q[i] over the whole vocabulary (fp16)    exact
  topk:N        q[i] on the draft's top N tokens           acceptance test exact (d is in the top N
                                                           when sampled from it), residual approximate
  tokens+probs  q[i][d[i]] only                           acceptance test exact, residual approximate
  tokens        nothing                                   q treated as one-hot at d[i]: approximate

The approximate modes fill the unknown part of q with zeros, so the
residual keeps more mass than it should on tokens the draft also liked.
"""
from __future__ import annotations

import math

import numpy as np

PAYLOAD_MODES = ("tokens", "tokens+probs", "topk", "full")


def softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    """[..., V] logits → probabilities at temperature T > 0 (float64 for exact sums)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def greedy_accept(drafts: list[int], target_logits: np.ndarray) -> tuple[int, int]:
    """(n accepted, next token) at temperature 0.  target_logits: [K+1, V]."""
    best = np.argmax(target_logits, axis=-1)          # [K+1]
    n = 0
    while n < len(drafts) and int(best[n]) == int(drafts[n]):
        n += 1
    return n, int(best[n])


def rejection_accept(drafts: list[int], q: np.ndarray, p: np.ndarray,
                     rng: np.random.Generator) -> tuple[int, int]:
    """(n accepted, next token) by rejection sampling.  q: [K, V], p: [K+1, V], both probabilities."""
    k = len(drafts)
    for i in range(k):
        d = int(drafts[i])
        qd, pd = float(q[i, d]), float(p[i, d])
        # qd == 0 happens only with an approximate payload (q unknown at d): accept iff p allows d.
        if (qd > 0.0 and rng.random() < min(1.0, pd / qd)) or (qd <= 0.0 and pd > 0.0):
            continue
        residual = np.maximum(p[i] - q[i], 0.0)
        total = residual.sum()
        dist = residual / total if total > 0 else p[i]
        return i, int(rng.choice(dist.shape[0], p=dist))
    return k, int(rng.choice(p[k].shape[0], p=p[k]))


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    return int(rng.choice(probs.shape[-1], p=probs))


# ------------------------------------------------------------------ what crosses the link

def parse_payload(mode: str) -> tuple[str, int]:
    """"topk:8" → ("topk", 8); others → (mode, 0)."""
    base, _, n = mode.partition(":")
    if base not in PAYLOAD_MODES or (base == "topk") != bool(n) or (n and not n.isdigit()):
        raise ValueError(f"payload mode must be tokens, tokens+probs, topk:N or full, got {mode!r}")
    return base, int(n or 0)


def encode_q(mode: str, drafts: list[int], q: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays the edge sends for its draft distributions q [K, V] under `mode`."""
    base, n = parse_payload(mode)
    if base == "tokens":
        return {}
    if base == "tokens+probs":
        return {"q_draft": q[np.arange(len(drafts)), drafts].astype(np.float32)}
    if base == "topk":
        idx = np.argsort(-q, axis=-1)[:, :n].astype(np.int32)            # [K, N]
        return {"q_idx": idx, "q_val": np.take_along_axis(q, idx, axis=-1).astype(np.float32)}
    return {"q_full": q.astype(np.float16)}                              # [K, V]


def decode_q(mode: str, drafts: list[int], arrays: dict[str, np.ndarray], vocab: int) -> np.ndarray:
    """The cloud's view of q [K, V] from what arrived (zeros where nothing is known)."""
    base, _ = parse_payload(mode)
    k = len(drafts)
    q = np.zeros((k, vocab), dtype=np.float64)
    rows = np.arange(k)
    if base == "tokens":
        q[rows, drafts] = 1.0
    elif base == "tokens+probs":
        q[rows, drafts] = arrays["q_draft"].astype(np.float64)
    elif base == "topk":
        np.put_along_axis(q, arrays["q_idx"].astype(np.int64), arrays["q_val"].astype(np.float64), axis=-1)
    else:
        q[:, :] = arrays["q_full"].astype(np.float64)[:, :vocab]
        q /= q.sum(axis=-1, keepdims=True)      # fp16 rounding: renormalise
    return q


def payload_bytes(mode: str, k: int, vocab: int) -> int:
    """Bytes of draft payload per cycle (token ids int32 + q per mode), without framing."""
    base, n = parse_payload(mode)
    ids = 4 * k
    return ids + {"tokens": 0, "tokens+probs": 4 * k, "topk": 8 * k * n, "full": 2 * k * vocab}[base]


# ------------------------------------------------------------------ the throughput model (BACKGROUND.md)

def expected_tokens(alpha: float, k: int) -> float:
    """E[τ] = (1 − α^(K+1)) / (1 − α): accepted prefix + one correction/bonus token."""
    if k <= 0:
        return 1.0
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def cycle_ms(k: int, t_draft_ms: float, t_verify_ms: float, rtt_ms: float, t_transmit_ms: float = 0.0) -> float:
    """T_distributed = K·t_draft + t_transmit(K) + RTT + t_verify."""
    return k * t_draft_ms + t_transmit_ms + rtt_ms + t_verify_ms


def throughput(alpha: float, k: int, t_draft_ms: float, t_verify_ms: float, rtt_ms: float,
               t_transmit_ms: float = 0.0) -> float:
    """Tokens per second of distributed speculative decoding with draft length K."""
    return 1000.0 * expected_tokens(alpha, k) / cycle_ms(k, t_draft_ms, t_verify_ms, rtt_ms, t_transmit_ms)


def best_k(alpha: float, t_draft_ms: float, verify_ms, rtt_ms: float, k_max: int = 15,
           transmit_ms=lambda k: 0.0) -> tuple[int, float]:
    """(K, tokens/s) maximising throughput; verify_ms(K) and transmit_ms(K) are callables."""
    best = (1, -math.inf)
    for k in range(1, k_max + 1):
        tps = throughput(alpha, k, t_draft_ms, verify_ms(k), rtt_ms, transmit_ms(k))
        if tps > best[1]:
            best = (k, tps)
    return best
