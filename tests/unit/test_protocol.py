"""The wire format: round trips of every message type, limits, handshake, and 1,000 hostile frames
that only ever raise ProtocolError."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from lab.core import spec
from lab.core.protocol import (MAX_HEADER_BYTES, MAX_MESSAGE_BYTES, SCHEMA, Message, ProtocolError, check_hello,
                          decode, encode, frames_size, generate_fields, ids)


def _verify(payload: str, temperature: float = 0.7, k: int = 3, vocab: int = 50) -> Message:
    rng = np.random.default_rng(0)
    q = spec.softmax(rng.normal(size=(k, vocab)), 1.0)
    drafts = [int(np.argmax(q[i])) for i in range(k)]
    arrays = {"tokens": ids(drafts)}
    if temperature > 0:
        arrays.update(spec.encode_q(payload, drafts, q))
    return Message("verify", 3, {"query": "q1", "seq": 0, "payload": payload, "temperature": temperature,
                                 "seed": 5}, arrays)


ALL = [
    Message("hello", 1, {"draft_model": "d", "target_model": "", "tokenizer_hash": "abc",
                         "eos_token_ids": [151645, 151643]}),
    Message("hello_ok", 1, {"draft_model": "d", "target_model": "t", "tokenizer_hash": "abc",
                            "eos_token_ids": [151643, 151645]}),
    Message("prefill", 2, {"query": "q1"}, {"prompt_ids": ids([1, 2, 3])}),
    Message("prefill_ok", 2, {"query": "q1", "cloud_compute_ms": 12.5}),
    _verify("tokens", 0.0), _verify("tokens"), _verify("tokens+probs"), _verify("topk:4"), _verify("full"),
    Message("verdict", 3, {"query": "q1", "seq": 0, "n_accepted": 1, "token": 9, "cloud_compute_ms": 3.5}),
    Message("generate", 4, {"query": "q2", "mode": "spec", "k": 5, "max_new_tokens": 8, "temperature": 0,
                            "seed": 0}, {"prompt_ids": ids([7, 8])}),
    Message("continue", 6, {"query": "q2", "max_new_tokens": 4, "temperature": 0, "seed": 3}),
    Message("generate", 5, {"query": "q3", "mode": "target", "k": 0, "max_new_tokens": 8, "temperature": 1.0,
                            "seed": 3}, {"prompt_ids": ids([7, 8])}),
    Message("tokens", 4, {"query": "q2", "seq": 0, "tokens": [1, 2], "done": False, "cloud_compute_ms": 1.0,
                          "drafted": 5, "accepted": 1}),
    Message("tokens", 4, {"query": "q2", "seq": 1, "tokens": [], "done": True, "cloud_compute_ms": 0.0}),
    Message("end", 6, {"query": "q1"}),
    Message("end_ok", 6, {"query": "q1"}),
    Message("error", 0, {"message": "nope", "ref_id": 3}),
    Message("error", 0, {"message": "undecodable", "ref_id": None}),
]


def test_every_type_is_covered():
    assert {m.type for m in ALL} == set(SCHEMA)


@pytest.mark.parametrize("msg", ALL, ids=lambda m: f"{m.type}-{m.get('payload', '')}-{m.get('temperature', '')}")
def test_roundtrip(msg):
    frames = encode(msg)
    back = decode(frames)
    assert back.type == msg.type and back.id == msg.id and back.fields == msg.fields
    assert back.arrays.keys() == msg.arrays.keys()
    for k, a in msg.arrays.items():
        assert np.array_equal(back.arrays[k], a) and back.arrays[k].dtype == a.dtype
    assert frames_size(frames) == sum(len(f) for f in frames) > 0


def test_bytes_per_cycle_by_payload():
    """What the runner records: the full payload dwarfs the others (and matches spec.payload_bytes)."""
    sizes = {p: frames_size(encode(_verify(p, k=5, vocab=1000))) for p in ("tokens", "tokens+probs", "topk:4",
                                                                          "full")}
    print(f"\nverify message bytes, K=5, V=1000: {sizes}")
    assert sizes["tokens"] < sizes["tokens+probs"] < sizes["topk:4"] < sizes["full"]
    header = len(encode(_verify("full", k=5, vocab=1000))[0])
    assert sizes["full"] - header == spec.payload_bytes("full", 5, 1000)


def test_version_mismatch_and_size_limit():
    frames = encode(Message("end", 1, {"query": "x"}))
    h = json.loads(frames[0])
    for bad in (99, "1", True, None):
        h["v"] = bad
        with pytest.raises(ProtocolError, match="version"):
            decode([json.dumps(h).encode()])
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(frames + [b"\0" * 100], max_bytes=50)
    big = encode(_verify("full", k=15, vocab=151936))               # a real full payload: ≈4.6 MB
    assert decode(big).arrays["q_full"].shape == (15, 151936)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(big, max_bytes=1_000_000)
    with pytest.raises(ProtocolError, match="header of"):
        decode([b"{" + b" " * (MAX_HEADER_BYTES + 1) + b"}"])


def test_buffer_length_must_match_shape():
    frames = encode(Message("prefill", 1, {"query": "q"}, {"prompt_ids": ids([1, 2, 3])}))
    with pytest.raises(ProtocolError, match="needs 12 bytes"):
        decode([frames[0], frames[1][:-1]])
    with pytest.raises(ProtocolError, match="buffers follow"):
        decode([frames[0]])


def test_missing_fields_and_bad_values():
    with pytest.raises(ProtocolError, match="missing field"):
        encode(Message("verdict", 1, {"query": "q"}))
    with pytest.raises(ProtocolError, match="missing array"):
        encode(Message("verify", 1, {"query": "q", "seq": 0, "payload": "tokens", "temperature": 0, "seed": 0}))
    with pytest.raises(ProtocolError, match="seq must be"):
        encode(Message("verdict", 1, {"query": "q", "seq": -1, "n_accepted": 0, "token": 0, "cloud_compute_ms": 0}))
    with pytest.raises(ProtocolError, match="needs array 'q_full'"):
        m = _verify("full")
        encode(Message(m.type, m.id, m.fields, {"tokens": m.arrays["tokens"]}))
    with pytest.raises(ProtocolError, match="rows"):
        m = _verify("tokens+probs")
        encode(Message(m.type, m.id, m.fields, {**m.arrays, "q_draft": np.ones(7, np.float32)}))
    with pytest.raises(ProtocolError, match="payload mode"):
        encode(Message("verify", 1, {"query": "q", "seq": 0, "payload": "bits", "temperature": 0, "seed": 0},
                       {"tokens": ids([1])}))
    with pytest.raises(ProtocolError, match="reserved"):
        encode(Message("end", 1, {"query": "q", "type": "hello"}))
    with pytest.raises(ProtocolError, match="not plain JSON"):
        encode(Message("end", 1, {"query": "q", "x": float("nan")}))
    with pytest.raises(ProtocolError, match="dtype float64 not allowed"):
        encode(Message("prefill", 1, {"query": "q"}, {"prompt_ids": np.ones(3)}))


def test_late_reply_is_recognisable_by_id():
    reply = decode(encode(Message("verdict", 41, {"query": "q", "seq": 7, "n_accepted": 0, "token": 1,
                                                  "cloud_compute_ms": 0})))
    assert reply.id == 41 and reply.id != 42            # the edge waiting for request 42 drops it


def test_handshake():
    hello = decode(encode(ALL[0]))
    eos = (151643, 151645)
    check_hello(hello, "d", "t", "abc", eos)                         # empty target_model: no expectation
    with pytest.raises(ProtocolError, match=r"draft model: peer has 'd', this side 'other'"):
        check_hello(hello, "other", "t", "abc", eos)
    with pytest.raises(ProtocolError, match="tokenizer: peer has 'abc'.*this side 'xyz'"):
        check_hello(hello, "d", "t", "xyz", eos)


def test_handshake_refuses_a_pair_that_stops_differently():
    """The edge stops where the target would; a draft with other EOS ids is refused by name."""
    hello = decode(encode(ALL[0]))
    with pytest.raises(ProtocolError, match=r"special tokens: the peer stops at \[151643, 151645\], "
                                            r"this side at \[151643\]"):
        check_hello(hello, "d", "t", "abc", (151643,))


# ------------------------------------------------------------------ fuzz

def _hostile_headers(rng: random.Random) -> bytes:
    """Valid-looking JSON that is still wrong in a nasty way."""
    choice = rng.randrange(8)
    if choice == 0:
        return b"[" * 30_000 + b"]" * 30_000                      # deep nesting (RecursionError in json)
    if choice == 1:
        return b'{"v": 1, "type": "end", "id": ' + b"9" * 5000 + b', "query": "x"}'    # int too long
    if choice == 2:
        return b'{"v": 1, "type": "prefill_ok", "id": 1, "query": "x", "cloud_compute_ms": NaN}'
    if choice == 3:
        return b'{"v": 1, "type": "end", "id": 1, "query": "' + b"\xff\xfe" + b'"}'   # not UTF-8
    if choice == 4:
        return json.dumps({"v": 1, "type": "prefill", "id": 1, "query": "x",
                           "arrays": [{"name": "prompt_ids", "dtype": "int32",
                                       "shape": [2**40, 2**40, 2**40]}]}).encode()
    if choice == 5:
        return json.dumps({"v": 1, "type": "prefill", "id": 1, "query": "x",
                           "arrays": [{"name": "prompt_ids", "dtype": "object", "shape": [1]}]}).encode()
    if choice == 6:
        return json.dumps({"v": 1, "type": "tokens", "id": 1, "query": "x", "seq": 0, "tokens": [1, -2, "a"],
                           "done": 1, "cloud_compute_ms": 0}).encode()
    return json.dumps({"v": 1, "type": rng.choice(list(SCHEMA)), "id": rng.choice([0, -1, 2**70, "1"])}).encode()


def test_fuzz_only_protocol_errors():
    rng = random.Random(1234)
    good = [encode(m) for m in ALL]
    outcomes = {"decoded": 0, "ProtocolError": 0}
    for i in range(1000):
        frames = [bytearray(f) for f in rng.choice(good)]
        action = i % 8
        if action == 0:                         # random bytes
            frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64))) for _ in range(rng.randint(0, 3))]
        elif action == 1:                       # truncate a frame
            j = rng.randrange(len(frames))
            frames[j] = frames[j][: rng.randint(0, len(frames[j]))]
        elif action == 2:                       # flip bytes in the header
            for _ in range(rng.randint(1, 8)):
                if frames[0]:
                    frames[0][rng.randrange(len(frames[0]))] = rng.getrandbits(8)
        elif action == 3:                       # drop or duplicate a frame
            if rng.random() < 0.5 and len(frames) > 1:
                frames.pop(rng.randrange(len(frames)))
            else:
                frames.append(frames[-1])
        elif action == 4:                       # mutate a JSON field's value
            h = json.loads(frames[0])
            key = rng.choice([k for k in h if k != "arrays"])
            h[key] = rng.choice([None, -1, "x", [], {}, 1.5, True, 10 ** 12, "topk:0", 1e308])
            frames[0] = bytearray(json.dumps(h).encode())
        elif action == 5:                       # mutate an array spec
            h = json.loads(frames[0])
            if h["arrays"]:
                s = rng.choice(h["arrays"])
                key = rng.choice(["name", "dtype", "shape"])
                s[key] = rng.choice([None, "float64", [-1], [1, 2, 3, 4, 5], "tokens", [0], {"a": 1}, [True]])
            else:
                h["arrays"] = rng.choice([None, {}, [{}], "x"])
            frames[0] = bytearray(json.dumps(h).encode())
        elif action == 6:                       # hostile but syntactically valid headers
            frames[0] = bytearray(_hostile_headers(rng))
        else:                                   # remove a field
            h = json.loads(frames[0])
            h.pop(rng.choice(list(h)))
            frames[0] = bytearray(json.dumps(h).encode())
        try:
            decode([bytes(f) for f in frames], max_bytes=MAX_MESSAGE_BYTES)
            outcomes["decoded"] += 1
        except ProtocolError:
            outcomes["ProtocolError"] += 1
        # anything else propagates and fails the test
    print(f"\nfuzz: {outcomes}")
    assert sum(outcomes.values()) == 1000
    assert outcomes["ProtocolError"] > 700


def test_generate_carries_a_confidence_stop_only_when_there_is_one():
    plain = generate_fields("q", "spec", 8, 32, 0.0, 1)
    assert "stop" not in plain
    m = Message("generate", 1, generate_fields("q", "spec", 8, 32, 0.0, 1, stop=0.5), {"prompt_ids": ids([1, 2])})
    assert decode(encode(m)).fields["stop"] == 0.5
    for bad in (0, 1.5, "0.5", True):
        with pytest.raises(ProtocolError, match=r"generate: stop must be a number in \(0, 1\]"):
            encode(Message("generate", 1, {**plain, "stop": bad}, {"prompt_ids": ids([1, 2])}))
    assert "stop_min" not in generate_fields("q", "spec", 8, 32, 0.0, 1, stop=0.5, stop_min=1)
    least = generate_fields("q", "spec", 8, 32, 0.0, 1, stop=0.5, stop_min=3)
    assert decode(encode(Message("generate", 1, least, {"prompt_ids": ids([1, 2])}))).fields["stop_min"] == 3
    for bad in ({**least, "stop_min": 0}, {**least, "stop_min": 2.5}, {**plain, "stop_min": 3}):
        with pytest.raises(ProtocolError, match=r"generate: stop_min must be a whole number >= 1 with a stop"):
            encode(Message("generate", 1, bad, {"prompt_ids": ids([1, 2])}))
