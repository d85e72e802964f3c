"""What each message of the edge↔cloud protocol weighs on the TCP stream, without building it.

The simulator needs the byte count of every message the nodes exchange, for
every payload mode — including `full` (K × vocab fp16: megabytes), which it
must not allocate per cycle.  The count is lab/core/protocol.py's encoding (a
compact JSON header frame, then one frame per array) plus ZMTP 3 framing
(libzmq: one flags byte and a 1-byte length for frames up to 255 bytes, an
8-byte length above).  tests/unit/test_simulator.py checks these counts
against protocol.encode for small messages, so the two cannot drift apart
unnoticed.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

from lab.core.protocol import HEADER_JSON, PROTOCOL_VERSION, generate_fields

SIM_QID_SUFFIX = "123456789012345"          # stands in for time.monotonic_ns() in the query id (15 digits)
ZMTP_SHORT_MAX = 255


def zmtp_bytes(frame_lengths: list[int]) -> int:
    """Bytes on the TCP stream for one multipart message of frames with these lengths."""
    return sum(n + (2 if n <= ZMTP_SHORT_MAX else 9) for n in frame_lengths)


class Size(NamedTuple):
    payload: int        # protocol.frames_size: what the nodes record as bytes_up / bytes_down
    wire: int           # + ZMTP framing: what the TCP stream carries


@functools.lru_cache(maxsize=None)
def _itemsize(dtype: str) -> int:
    # once per dtype: np.prod and np.dtype per message were 12 % of a simulation
    return np.dtype(dtype).itemsize


_SIZES: dict[tuple, Size] = {}
_SIZES_MAX = 1 << 16


def message_bytes(mtype: str, mid: int, fields: dict, arrays: dict[str, tuple[str, tuple[int, ...]]]) -> Size:
    """Size of protocol.encode(Message(mtype, mid, fields, arrays)) with arrays given as (dtype, shape).

    Most messages of a run repeat one another but for their id (a synthetic profile's compute times
    are constants), and encoding every header was a tenth of a simulation: sizes are kept per
    header with the id's digit count in place of the id — its only effect on the length.  The key
    spells values as JSON would tell them apart: with their types (True == 1 == 1.0), a list's
    elements' too, and a float by its repr (-0.0 == 0.0)."""
    mid = int(mid)
    key = (mtype, len(str(mid)), tuple((k, _spelled(v)) for k, v in fields.items()),
           tuple((n, d, tuple(s)) for n, (d, s) in arrays.items()))
    size = _SIZES.get(key)
    if size is None:
        if len(_SIZES) >= _SIZES_MAX:            # a long run's query ids: start over rather than grow
            _SIZES.clear()
        size = _SIZES[key] = _encoded_size(mtype, mid, fields, arrays)
    return size


def _spelled(v):
    t = type(v)
    if t is list:
        return (list, tuple(_spelled(x) for x in v))
    return (t, repr(v)) if t is float else (t, v)


def _encoded_size(mtype: str, mid: int, fields: dict, arrays: dict[str, tuple[str, tuple[int, ...]]]) -> Size:
    specs = [{"name": n, "dtype": d, "shape": list(s)} for n, (d, s) in arrays.items()]
    header = {"v": PROTOCOL_VERSION, "type": mtype, "id": mid, **fields, "arrays": specs}
    head = len(HEADER_JSON.encode(header).encode())
    frames = [head] + [math.prod(s) * _itemsize(d) for d, s in arrays.values()]
    return Size(sum(frames), zmtp_bytes(frames))


def _ms(value: float) -> float:
    """A compute time as the nodes report it (a difference of monotonic_ns/1e6: ~6 decimals)."""
    return round(value + 0.000123, 6)


class WireSizes:
    """Sizes of the messages edge_node and cloud_node send, field for field."""

    def __init__(self, vocab: int, draft_model: str = "synthetic:profile:draft",
                 target_model: str = "synthetic:profile:target", tokenizer_hash: str | None = None):
        self.vocab = vocab
        self.token = vocab // 2                      # a representative token id (its digit count matters)
        self.draft_model, self.target_model = draft_model, target_model
        self.tokenizer_hash = tokenizer_hash or f"synthetic-vocab-{vocab}"

    def hello(self, mid: int) -> Size:
        return message_bytes("hello", mid, {"draft_model": self.draft_model, "target_model": "",
                                            "tokenizer_hash": self.tokenizer_hash, "eos_token_ids": []}, {})

    def hello_ok(self, mid: int) -> Size:
        return message_bytes("hello_ok", mid, {"draft_model": self.draft_model, "target_model": self.target_model,
                                               "tokenizer_hash": self.tokenizer_hash, "eos_token_ids": []}, {})

    def prefill(self, mid: int, qid: str, n_tokens: int) -> Size:
        return message_bytes("prefill", mid, {"query": qid}, {"prompt_ids": ("int32", (n_tokens,))})

    def prefill_ok(self, mid: int, qid: str, ms: float) -> Size:
        return message_bytes("prefill_ok", mid, {"query": qid, "cloud_compute_ms": _ms(ms)}, {})

    def verify(self, mid: int, qid: str, seq: int, k: int, workload: dict, seed: int, pos: int | None = None) -> Size:
        payload, temp = workload["payload"], workload["temperature"]
        arrays = {"tokens": ("int32", (k,))}
        if temp > 0:                                 # the edge sends q only when sampling
            base, _, n = payload.partition(":")
            if base == "tokens+probs":
                arrays["q_draft"] = ("float32", (k,))
            elif base == "topk":
                arrays.update(q_idx=("int32", (k, int(n))), q_val=("float32", (k, int(n))))
            elif base == "full":
                arrays["q_full"] = ("float16", (k, self.vocab))
        fields = {"query": qid, "seq": seq, "payload": payload, "temperature": temp, "seed": seed}
        if pos is not None:                          # a pipelined block names its base
            fields.update(pos=pos, last=self.token)
        return message_bytes("verify", mid, fields, arrays)

    def verdict(self, mid: int, qid: str, seq: int, n_accepted: int, ms: float) -> Size:
        return message_bytes("verdict", mid, {"query": qid, "seq": seq, "n_accepted": n_accepted,
                                              "token": self.token, "cloud_compute_ms": _ms(ms)}, {})

    def generate(self, mid: int, qid: str, mode: str, k: int, workload: dict, seed: int, n_prompt: int,
                 stop: float | None = None, stop_min: int = 1) -> Size:
        return message_bytes("generate", mid, generate_fields(qid, mode, k, workload["max_new_tokens"],
                                                              workload["temperature"], seed, stop, stop_min),
                             {"prompt_ids": ("int32", (n_prompt,))})

    def tokens(self, mid: int, qid: str, seq: int, n_tokens: int, done: bool, ms: float,
               drafted_accepted: tuple[int, int] | None) -> Size:
        fields = {"query": qid, "seq": seq, "tokens": [self.token] * n_tokens, "done": done,
                  "cloud_compute_ms": _ms(ms)}
        if drafted_accepted is not None:
            fields.update(drafted=drafted_accepted[0], accepted=drafted_accepted[1])
        return message_bytes("tokens", mid, fields, {})

    def end(self, mid: int, qid: str) -> Size:
        return message_bytes("end", mid, {"query": qid}, {})

    def end_ok(self, mid: int, qid: str) -> Size:
        return message_bytes("end_ok", mid, {"query": qid}, {})
