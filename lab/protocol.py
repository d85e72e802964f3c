"""Edge↔cloud messages: pyzmq multipart frames, a small JSON header plus raw numpy buffers.

    frame 0     JSON header {"v": 1, "type": "verify", "id": 17, ..., "arrays": [{"name", "dtype", "shape"}]}
    frame 1..n  the arrays' raw bytes, in the order the header lists them

No pickle: a malformed or hostile message can only raise ProtocolError.
Every request carries an id and its reply the same id, so a late reply
(after a timeout) is never taken for the answer to the current request.

Messages (edge → cloud, cloud → edge):
  hello      {draft_model, target_model, tokenizer_hash}       → hello_ok {target_model, draft_model, ...}
  prefill    {query} + prompt_ids                               → prefill_ok {query, cloud_compute_ms}
  verify     {query, seq, payload, temperature, seed} + tokens [+ q arrays]
                                                                → verdict {query, seq, n_accepted, token, cloud_compute_ms}
  generate   {query, mode: target|spec, k, max_new_tokens, temperature, seed} + prompt_ids
                                                                → tokens {query, seq, tokens, done, cloud_compute_ms,
                                                                          drafted, accepted}  (streamed, one per step)
  end        {query}                                            → end_ok {query}
  any        malformed / refused                                → error {message, ref_id}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024 * 1024          # a full-distribution payload at K=15 is ≈4.6 MB
MAX_HEADER_BYTES = 64 * 1024
ALLOWED_DTYPES = ("int32", "int64", "float16", "float32")

# type → required header fields (besides v, type, id)
SCHEMA: dict[str, tuple[str, ...]] = {
    "hello": ("draft_model", "target_model", "tokenizer_hash"),
    "hello_ok": ("draft_model", "target_model", "tokenizer_hash"),
    "prefill": ("query",),
    "prefill_ok": ("query", "cloud_compute_ms"),
    "verify": ("query", "seq", "payload", "temperature", "seed"),
    "verdict": ("query", "seq", "n_accepted", "token", "cloud_compute_ms"),
    "generate": ("query", "mode", "k", "max_new_tokens", "temperature", "seed"),
    "tokens": ("query", "seq", "tokens", "done", "cloud_compute_ms"),
    "end": ("query",),
    "end_ok": ("query",),
    "error": ("message",),
}
REQUIRED_ARRAYS = {"prefill": ("prompt_ids",), "verify": ("tokens",), "generate": ("prompt_ids",)}


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


def encode(msg: Message) -> list[bytes]:
    """Message → frames.  Raises ProtocolError for a message this module would refuse to decode."""
    _check_fields(msg.type, msg.fields, msg.arrays.keys())
    specs, bufs = [], []
    for name, arr in msg.arrays.items():
        a = np.ascontiguousarray(arr)
        if a.dtype.name not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {name!r}: dtype {a.dtype.name} not allowed ({', '.join(ALLOWED_DTYPES)})")
        specs.append({"name": name, "dtype": a.dtype.name, "shape": list(a.shape)})
        bufs.append(a.tobytes())
    header = {"v": PROTOCOL_VERSION, "type": msg.type, "id": int(msg.id), **msg.fields, "arrays": specs}
    return [json.dumps(header, separators=(",", ":")).encode()] + bufs


def frames_size(frames: list[bytes]) -> int:
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
        header = json.loads(bytes(frames[0]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"header is not JSON ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {header.get('v')!r} not supported (this side speaks "
                            f"{PROTOCOL_VERSION}); run the same sdlab version on both nodes")
    mtype, mid = header.get("type"), header.get("id")
    if not isinstance(mtype, str) or mtype not in SCHEMA:
        raise ProtocolError(f"unknown message type {mtype!r}")
    if not isinstance(mid, int) or isinstance(mid, bool) or mid < 0:
        raise ProtocolError(f"{mtype}: id must be a non-negative integer, got {mid!r}")
    specs = header.pop("arrays", [])
    if not isinstance(specs, list) or len(specs) != len(frames) - 1:
        raise ProtocolError(f"{mtype}: header lists {len(specs) if isinstance(specs, list) else '?'} arrays "
                            f"but {len(frames) - 1} buffers follow")
    arrays = {}
    for spec, buf in zip(specs, frames[1:]):
        arrays.update([_array(mtype, spec, buf)])
    fields = {k: v for k, v in header.items() if k not in ("v", "type", "id")}
    _check_fields(mtype, fields, arrays.keys())
    return Message(type=mtype, id=mid, fields=fields, arrays=arrays)


def _array(mtype: str, spec, buf: bytes) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or not {"name", "dtype", "shape"} <= spec.keys():
        raise ProtocolError(f"{mtype}: array spec must have name, dtype, shape")
    name, dtype, shape = spec["name"], spec["dtype"], spec["shape"]
    if not isinstance(name, str) or dtype not in ALLOWED_DTYPES:
        raise ProtocolError(f"{mtype}: array {name!r} has dtype {dtype!r} (allowed: {', '.join(ALLOWED_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_MESSAGE_BYTES for d in shape)):
        raise ProtocolError(f"{mtype}: array {name!r} has a bad shape {shape!r}")
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if expected != len(buf):
        raise ProtocolError(f"{mtype}: array {name!r} {dtype}{shape} needs {expected} bytes, got {len(buf)}")
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
    for k in ("seq", "k", "max_new_tokens", "n_accepted", "token", "seed"):
        if k in fields and (not isinstance(fields[k], int) or isinstance(fields[k], bool) or fields[k] < 0):
            raise ProtocolError(f"{mtype}: {k} must be a non-negative integer, got {fields[k]!r}")
    for k in ("temperature", "cloud_compute_ms"):
        if k in fields and (not isinstance(fields[k], (int, float)) or isinstance(fields[k], bool) or fields[k] < 0):
            raise ProtocolError(f"{mtype}: {k} must be a non-negative number, got {fields[k]!r}")
    if "query" in fields and not isinstance(fields["query"], str):
        raise ProtocolError(f"{mtype}: query must be a string")
    for k in ("payload", "message", "draft_model", "target_model", "tokenizer_hash", "mode"):
        if k in fields and not isinstance(fields[k], str):
            raise ProtocolError(f"{mtype}: {k} must be a string")
    if "done" in fields and not isinstance(fields["done"], bool):
        raise ProtocolError(f"{mtype}: done must be true or false")
    if mtype == "generate" and fields["mode"] not in ("target", "spec"):
        raise ProtocolError(f"generate: mode must be 'target' or 'spec', got {fields['mode']!r}")
    if mtype == "tokens" and (not isinstance(fields["tokens"], list)
                              or not all(isinstance(t, int) and not isinstance(t, bool) for t in fields["tokens"])):
        raise ProtocolError("tokens: tokens must be a list of integers")


def ids(values) -> np.ndarray:
    """Token ids as the int32 array the protocol carries."""
    return np.asarray(list(values), dtype=np.int32)
