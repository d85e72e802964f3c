"""The wire format: round trips, limits, and 1,000 hostile frames that only ever raise ProtocolError."""
import json
import random

import numpy as np
import pytest

from lab.protocol import MAX_MESSAGE_BYTES, Message, ProtocolError, decode, encode, ids


def roundtrip(m: Message) -> Message:
    return decode(encode(m))


@pytest.mark.parametrize("msg", [
    Message("hello", 1, {"draft_model": "d", "target_model": "t", "tokenizer_hash": "abc"}),
    Message("prefill", 2, {"query": "q1"}, {"prompt_ids": ids([1, 2, 3])}),
    Message("verify", 3, {"query": "q1", "seq": 0, "payload": "full", "temperature": 0.7, "seed": 5},
            {"tokens": ids([4, 5]), "q_full": np.ones((2, 10), np.float16)}),
    Message("verdict", 3, {"query": "q1", "seq": 0, "n_accepted": 1, "token": 9, "cloud_compute_ms": 3.5}),
    Message("generate", 4, {"query": "q2", "mode": "spec", "k": 5, "max_new_tokens": 8, "temperature": 0,
                            "seed": 0}, {"prompt_ids": ids([7])}),
    Message("tokens", 4, {"query": "q2", "seq": 0, "tokens": [1, 2], "done": False, "cloud_compute_ms": 1.0}),
    Message("error", 0, {"message": "nope", "ref_id": 3}),
])
def test_roundtrip(msg):
    back = roundtrip(msg)
    assert back.type == msg.type and back.id == msg.id and back.fields == msg.fields
    for k, a in msg.arrays.items():
        assert np.array_equal(back.arrays[k], a) and back.arrays[k].dtype == a.dtype


def test_version_mismatch_and_size_limit():
    frames = encode(Message("end", 1, {"query": "x"}))
    h = json.loads(frames[0])
    h["v"] = 99
    with pytest.raises(ProtocolError, match="version 99"):
        decode([json.dumps(h).encode()])
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decode(frames + [b"\0" * 100], max_bytes=50)


def test_buffer_length_must_match_shape():
    frames = encode(Message("prefill", 1, {"query": "q"}, {"prompt_ids": ids([1, 2, 3])}))
    with pytest.raises(ProtocolError, match="needs 12 bytes"):
        decode([frames[0], frames[1][:-1]])


def test_missing_fields_and_bad_values():
    with pytest.raises(ProtocolError, match="missing field"):
        encode(Message("verdict", 1, {"query": "q"}))
    with pytest.raises(ProtocolError, match="missing array"):
        encode(Message("verify", 1, {"query": "q", "seq": 0, "payload": "tokens", "temperature": 0, "seed": 0}))
    with pytest.raises(ProtocolError, match="seq must be"):
        encode(Message("verdict", 1, {"query": "q", "seq": -1, "n_accepted": 0, "token": 0, "cloud_compute_ms": 0}))


def test_fuzz_only_protocol_errors():
    rng = random.Random(1234)
    good = [encode(Message("verify", 7, {"query": "q", "seq": 3, "payload": "topk:4", "temperature": 0.5,
                                         "seed": 1}, {"tokens": ids(range(5)), "q_idx": np.zeros((5, 4), np.int32)})),
            encode(Message("tokens", 2, {"query": "q", "seq": 0, "tokens": [1], "done": True,
                                         "cloud_compute_ms": 0.1}))]
    outcomes = {"ok": 0, "error": 0}
    for i in range(1000):
        frames = [bytearray(f) for f in rng.choice(good)]
        action = i % 5
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
        else:                                   # mutate a JSON field's value
            h = json.loads(frames[0])
            key = rng.choice([k for k in h if k != "arrays"])
            h[key] = rng.choice([None, -1, "x", [], {}, 1.5, True, 10 ** 12])
            frames[0] = bytearray(json.dumps(h).encode())
        try:
            decode([bytes(f) for f in frames], max_bytes=MAX_MESSAGE_BYTES)
            outcomes["ok"] += 1
        except ProtocolError:
            outcomes["error"] += 1
    assert outcomes["error"] > 500
