"""Edge↔cloud messages: pyzmq multipart frames, a small JSON header plus raw numpy buffers.

    frame 0     JSON header {"v": 1, "type": "verify", "id": 17, ..., "arrays": [{"name", "dtype", "shape"}]}
    frame 1..n  the arrays' raw bytes, in the order the header lists them

No pickle: a malformed or hostile message can only raise ProtocolError.
Every request carries an id and its reply the same id, so a late reply
(after a timeout) is never taken for the answer to the current request.

Pipelined blocks (pipelined:K) carry their base: `pos` = the length of the sequence the drafts
follow and `last` = its last token.  The cloud verifies a block only if its session holds exactly
that; otherwise the block was drafted on a guess an earlier verdict refuted, and the verdict says
`stale: true` (n_accepted 0, token 0) with the session untouched.  `seq` numbers a query's blocks;
the edge discards the verdicts of blocks it superseded.

Messages (edge → cloud, cloud → edge):
  hello      {draft_model, target_model, tokenizer_hash, eos_token_ids}
                                                                → hello_ok {target_model, draft_model, tokenizer_hash,
                                                                            eos_token_ids}  (the target's)
  prefill    {query} + prompt_ids                               → prefill_ok {query, cloud_compute_ms}
  verify     {query, seq, payload, temperature, seed[, pos, last]} + tokens [+ q arrays]
                                                                → verdict {query, seq, n_accepted, token, cloud_compute_ms
                                                                           [, stale]}
  generate   {query, mode: target|spec, k, max_new_tokens, temperature, seed[, stop[, stop_min]]} + prompt_ids
                                                                → tokens {query, seq, tokens, done, cloud_compute_ms,
                                                                          drafted, accepted}  (streamed, one per step)
  end        {query}                                            → end_ok {query}
  any        malformed / refused                                → error {message, ref_id}

verify arrays at temperature > 0, by payload mode (lab/core/spec.py says which modes are exact):
  tokens        tokens int32 [K]
  tokens+probs  tokens int32 [K], q_draft float32 [K]
  topk:N        tokens int32 [K], q_idx int32 [K, N], q_val float32 [K, N]
  full          tokens int32 [K], q_full float16 [K, V]
At temperature 0 only `tokens` is sent, whatever the mode.

`frames_size(frames)` is the byte count the runner records per cycle (payload
frames; zmq adds a few bytes of framing per frame, TCP/IP its headers).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from lab.core import spec

PROTOCOL_VERSION = 5                          # 2: hello carries the stopping tokens; 3: pipelined blocks, `continue`;
                                              # 4: generate's confidence stop; 5: its stop_min
MAX_MESSAGE_BYTES = 64 * 1024 * 1024          # a full-distribution payload at K=15 is ≈4.6 MB
MAX_HEADER_BYTES = 64 * 1024
ALLOWED_DTYPES = ("int32", "int64", "float16", "float32")

# type → required header fields (besides v, type, id)
SCHEMA: dict[str, tuple[str, ...]] = {
    "hello": ("draft_model", "target_model", "tokenizer_hash", "eos_token_ids"),
    "hello_ok": ("draft_model", "target_model", "tokenizer_hash", "eos_token_ids"),
    "prefill": ("query",),
    "prefill_ok": ("query", "cloud_compute_ms"),
    "verify": ("query", "seq", "payload", "temperature", "seed"),
    "verdict": ("query", "seq", "n_accepted", "token", "cloud_compute_ms"),
    "generate": ("query", "mode", "k", "max_new_tokens", "temperature", "seed"),
    # fallback: cloud — the target continues the query alone from its accepted prefix; answered by a
    # stream of `tokens` (the first also says how long the request queued behind the previous stream)
    "continue": ("query", "max_new_tokens", "temperature", "seed"),
    "tokens": ("query", "seq", "tokens", "done", "cloud_compute_ms"),
    "end": ("query",),
    "end_ok": ("query",),
    "error": ("message",),
}
REQUIRED_ARRAYS = {"prefill": ("prompt_ids",), "verify": ("tokens",), "generate": ("prompt_ids",)}
RESERVED = ("v", "type", "id", "arrays")
Q_ARRAYS = {"tokens": {}, "tokens+probs": {"q_draft": ("float32", 1)},
            "topk": {"q_idx": ("int32", 2), "q_val": ("float32", 2)}, "full": {"q_full": ("float16", 2)}}


class ProtocolError(Exception):
    """A message that cannot be decoded or is not allowed; the text says what is wrong."""


@dataclass
class Message:
    type: str
    id: int
    fields: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, key):
        return self.fields[key]

    def get(self, key, default=None):
        return self.fields.get(key, default)


# The header's JSON, compact and refusing NaN; built once (json.dumps with arguments builds an encoder
# per call).  lab/sim/simwire.py counts a header's bytes with this same encoder.
HEADER_JSON = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def encode(msg: Message) -> list[bytes]:
    """Message → frames.  Raises ProtocolError for a message this module would refuse to decode."""
    if not isinstance(msg.id, int) or isinstance(msg.id, bool) or msg.id < 0:
        raise ProtocolError(f"{msg.type}: id must be a non-negative integer, got {_short(msg.id)}")
    clash = [k for k in RESERVED if k in msg.fields]
    if clash:
        raise ProtocolError(f"{msg.type}: field name(s) {', '.join(clash)} are reserved for the header")
    _check_fields(msg.type, msg.fields, msg.arrays.keys())
    specs, bufs = [], []
    for name, arr in msg.arrays.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.name not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {a.dtype.name} not allowed ({', '.join(ALLOWED_DTYPES)})")
        specs.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
        bufs.append(a.tobytes())
    _check_arrays(msg.type, msg.fields, {s["name"]: (s["dtype"], s["shape"]) for s in specs})
    header = {"v": PROTOCOL_VERSION, "type": msg.type, "id": int(msg.id), **msg.fields, "arrays": specs}
    try:
        head = HEADER_JSON.encode(header).encode()
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"{msg.type}: header is not plain JSON ({e})") from None
    if len(head) > MAX_HEADER_BYTES:
        raise ProtocolError(f"{msg.type}: header of {len(head)} bytes exceeds {MAX_HEADER_BYTES}; "
                            "send bulk data as arrays")
    return [head] + bufs


def frames_size(frames: list[bytes]) -> int:
    """Bytes of a message as framed here (what the runner records per cycle)."""
    return sum(len(f) for f in frames)


def decode(frames: list[bytes], max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Frames → Message, or ProtocolError naming what is wrong."""
    if not frames:
        raise ProtocolError("empty message")
    total = frames_size(frames)
    if total > max_bytes:
        raise ProtocolError(f"message of {total} bytes exceeds the limit of {max_bytes}")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(frames[0])} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(bytes(frames[0]).decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError covers JSONDecodeError and integers too long to convert; RecursionError deep nesting.
        raise ProtocolError(f"header is not plain JSON ({e.__class__.__name__}: {str(e)[:80]})") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    v = header.get("v")
    if not isinstance(v, int) or isinstance(v, bool) or v != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {_short(v)} not supported (this side speaks "
                            f"{PROTOCOL_VERSION}); run the same sdlab version on both nodes")
    mtype, mid = header.get("type"), header.get("id")
    if not isinstance(mtype, str) or mtype not in SCHEMA:
        raise ProtocolError(f"unknown message type {_short(mtype)}")
    if not isinstance(mid, int) or isinstance(mid, bool) or mid < 0:
        raise ProtocolError(f"{mtype}: id must be a non-negative integer, got {_short(mid)}")
    specs = header.pop("arrays", [])
    if not isinstance(specs, list) or len(specs) != len(frames) - 1:
        raise ProtocolError(f"{mtype}: header lists {len(specs) if isinstance(specs, list) else '?'} arrays "
                            f"but {len(frames) - 1} buffers follow")
    arrays = {}
    for spec_, buf in zip(specs, frames[1:]):
        name, arr = _array(mtype, spec_, buf)
        if name in arrays:
            raise ProtocolError(f"{mtype}: array {name!r} listed twice")
        arrays[name] = arr
    fields = {k: v for k, v in header.items() if k not in ("v", "type", "id")}
    _check_fields(mtype, fields, arrays.keys())
    _check_arrays(mtype, fields, {k: (a.dtype.name, list(a.shape)) for k, a in arrays.items()})
    return Message(type=mtype, id=mid, fields=fields, arrays=arrays)


def _short(x) -> str:
    """repr() for error messages, cut so a hostile 60 kB value does not end up in a log line."""
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _array(mtype: str, spec, buf: bytes) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or not {"name", "dtype", "shape"} <= spec.keys():
        raise ProtocolError(f"{mtype}: array spec must have name, dtype, shape")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"{mtype}: array {_short(name)} has dtype {_short(dtype)} "
                            f"(allowed: {', '.join(ALLOWED_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_MESSAGE_BYTES for d in shape)):
        raise ProtocolError(f"{mtype}: array {_short(name)} has a bad shape {_short(shape)}")
    expected = np.dtype(dtype).itemsize
    for d in shape:
        expected *= d                     # Python ints: no overflow
    if expected != len(buf):
        raise ProtocolError(f"{mtype}: array {_short(name)} {dtype}{shape} needs {expected} bytes, got {len(buf)}")
    return name, np.frombuffer(bytes(buf), dtype=dtype).reshape(shape)


def _check_fields(mtype: str, fields: dict, array_names) -> None:
    if mtype not in SCHEMA:
        raise ProtocolError(f"unknown message type {mtype!r}")
    missing = [f for f in SCHEMA[mtype] if f not in fields]
    if missing:
        raise ProtocolError(f"{mtype}: missing field(s) {', '.join(missing)}")
    missing = [a for a in REQUIRED_ARRAYS.get(mtype, ()) if a not in array_names]
    if missing:
        raise ProtocolError(f"{mtype}: missing array(s) {', '.join(missing)}")
    for k in ("seq", "k", "max_new_tokens", "n_accepted", "token", "seed", "drafted", "accepted", "pos", "last"):
        if k in fields and (not isinstance(fields[k], int) or isinstance(fields[k], bool) or fields[k] < 0):
            raise ProtocolError(f"{mtype}: {k} must be a non-negative integer, got {_short(fields[k])}")
    for k in ("temperature", "cloud_compute_ms"):
        if k in fields and (not isinstance(fields[k], (int, float)) or isinstance(fields[k], bool) or fields[k] < 0):
            raise ProtocolError(f"{mtype}: {k} must be a non-negative number, got {_short(fields[k])}")
    if "ref_id" in fields and fields["ref_id"] is not None and (
            not isinstance(fields["ref_id"], int) or isinstance(fields["ref_id"], bool)):
        raise ProtocolError(f"{mtype}: ref_id must be an integer or null")
    if "query" in fields and not isinstance(fields["query"], str):
        raise ProtocolError(f"{mtype}: query must be a string")
    for k in ("payload", "message", "draft_model", "target_model", "tokenizer_hash", "mode"):
        if k in fields and not isinstance(fields[k], str):
            raise ProtocolError(f"{mtype}: {k} must be a string")
    for k in ("done", "stale"):
        if k in fields and not isinstance(fields[k], bool):
            raise ProtocolError(f"{mtype}: {k} must be true or false")
    if mtype == "generate" and fields["mode"] not in ("target", "spec"):
        raise ProtocolError(f"generate: mode must be 'target' or 'spec', got {_short(fields['mode'])}")
    if mtype == "generate" and "stop" in fields and (
            not isinstance(fields["stop"], (int, float)) or isinstance(fields["stop"], bool)
            or not 0 < fields["stop"] <= 1):
        raise ProtocolError(f"generate: stop must be a number in (0, 1], got {_short(fields['stop'])}")
    if mtype == "generate" and "stop_min" in fields and (
            not isinstance(fields["stop_min"], int) or isinstance(fields["stop_min"], bool)
            or fields["stop_min"] < 1 or "stop" not in fields):
        raise ProtocolError(f"generate: stop_min must be a whole number >= 1 with a stop, got {_short(fields['stop_min'])}")
    if mtype == "verify" and ("pos" in fields) != ("last" in fields):
        raise ProtocolError("verify: a pipelined block needs both pos and last")
    if mtype == "verify":
        try:
            spec.parse_payload(fields["payload"])
        except ValueError as e:
            raise ProtocolError(f"verify: {e}") from None
    if mtype == "tokens" and (not isinstance(fields["tokens"], list)
                              or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                         for t in fields["tokens"])):
        raise ProtocolError("tokens: tokens must be a list of non-negative integers")


def _check_arrays(mtype: str, fields: dict, arrays: dict[str, tuple[str, list]]) -> None:
    """Array dtypes and shapes a handler can rely on (name → (dtype, shape))."""
    want_1d = {"prefill": "prompt_ids", "generate": "prompt_ids", "verify": "tokens"}
    if mtype in want_1d:
        dtype, shape = arrays[want_1d[mtype]]
        if dtype not in ("int32", "int64") or len(shape) != 1:
            raise ProtocolError(f"{mtype}: {want_1d[mtype]} must be a 1-D integer array, got {dtype}{shape}")
    if mtype != "verify" or not fields["temperature"] > 0:
        return
    k = arrays["tokens"][1][0]
    base, _ = spec.parse_payload(fields["payload"])
    for name, (dtype, ndim) in Q_ARRAYS[base].items():
        if name not in arrays:
            raise ProtocolError(f"verify: payload {fields['payload']} at temperature > 0 needs array {name!r}")
        got_dtype, shape = arrays[name]
        if got_dtype != dtype or len(shape) != ndim or shape[0] != k:
            raise ProtocolError(f"verify: {name} must be {dtype} with {ndim} dimension(s) and {k} rows "
                                f"(one per draft), got {got_dtype}{shape}")
    if base == "topk" and arrays["q_idx"][1] != arrays["q_val"][1]:
        raise ProtocolError(f"verify: q_idx {arrays['q_idx'][1]} and q_val {arrays['q_val'][1]} differ in shape")


def check_hello(hello: Message, draft_model: str, target_model: str, tokenizer_hash: str,
                eos_token_ids=()) -> None:
    """The handshake rule: what the peer announces must match what this side runs.  An empty string
    (on either side) means "no expectation" for that model id; tokenizer hashes and the stopping
    tokens must always match (the edge stops where the target would: a pair that disagrees on EOS
    cannot be lossless).  Raises ProtocolError naming both sides, for the error reply."""
    problems = []
    for what, theirs, ours in (("draft model", hello["draft_model"], draft_model),
                               ("target model", hello["target_model"], target_model)):
        if theirs and ours and theirs != ours:
            problems.append(f"{what}: peer has {theirs!r}, this side {ours!r}")
    if hello["tokenizer_hash"] != tokenizer_hash:
        problems.append(f"tokenizer: peer has {hello['tokenizer_hash'][:16]!r}…, "
                        f"this side {tokenizer_hash[:16]!r}…")
    theirs_eos, ours_eos = sorted(int(t) for t in hello["eos_token_ids"]), sorted(int(t) for t in eos_token_ids)
    if theirs_eos != ours_eos:
        problems.append(f"special tokens: the peer stops at {theirs_eos}, this side at {ours_eos} "
                        "(a draft/target pair must share its end-of-sequence tokens)")
    if problems:
        raise ProtocolError("handshake mismatch: " + "; ".join(problems) + " — run both nodes with the same --models")


def generate_fields(query: str, mode: str, k: int, max_new_tokens: int, temperature: float, seed: int,
                    stop: float | None = None, stop_min: int = 1) -> dict:
    """The header of a generate request: the edge sends it, the simulator counts its bytes."""
    fields = {"query": query, "mode": mode, "k": k, "max_new_tokens": max_new_tokens, "temperature": temperature,
              "seed": seed}
    if stop is not None:                       # co-located drafting with a confidence stop (draft_tokens)
        fields["stop"] = float(stop)
        if stop_min > 1:                       # ... from the block's stop_min-th draft (spec.min_block)
            fields["stop_min"] = int(stop_min)
    return fields


def ids(values) -> np.ndarray:
    """Token ids as the int32 array the protocol carries."""
    return np.asarray(list(values), dtype=np.int32)
