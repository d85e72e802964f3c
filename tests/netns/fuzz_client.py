"""Runs inside the edge namespace: throws hostile frames at the cloud node, then checks it still answers.

Prints one JSON line: how many frames were sent, how many error replies came
back, and whether a valid hello afterwards got a hello_ok.
"""
import json
import random
import sys

import zmq

from lab.core import protocol
from lab.core.protocol import Message, ids


def main(url: str, n: int, token_hash: str) -> None:
    rng = random.Random(7)
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(url)
    good = protocol.encode(Message("verify", 5, {"query": "nope", "seq": 0, "payload": "tokens", "temperature": 0,
                                                 "seed": 0}, {"tokens": ids([1, 2, 3])}))
    errors = sent = 0
    for i in range(n):
        kind = i % 4
        if kind == 0:
            frames = [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200)))]
        elif kind == 1:
            frames = [f[: rng.randint(0, len(f))] for f in good]
        elif kind == 2:
            frames = [good[0], good[1] + b"\x00"]
        else:
            h = json.loads(good[0])
            h[rng.choice(["type", "id", "seq", "query", "v"])] = rng.choice([None, -3, "zz", [1], 2.5])
            frames = [json.dumps(h).encode()] + good[1:]
        s.send_multipart(frames)
        sent += 1
        if s.poll(2000):
            reply = protocol.decode(s.recv_multipart())
            errors += reply.type == "error"
    # Oversized: bigger than the server's limit.
    s.send_multipart([good[0], b"\x00" * (protocol.MAX_MESSAGE_BYTES + 10)])
    oversize_closed_or_refused = True
    if s.poll(3000):
        oversize_closed_or_refused = protocol.decode(s.recv_multipart()).type == "error"
    # A fresh socket (the server may have dropped the oversize peer) asks for a normal hello.
    s.close(0)
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(url)
    s.send_multipart(protocol.encode(Message("hello", 99, {"draft_model": "fuzz", "target_model": "",
                                                          "tokenizer_hash": token_hash,
                                                          "eos_token_ids": []})))
    # Generous: the server may still be reading and refusing the 64 MB message, which takes seconds in
    # the software-emulated VM of `make vm-test`; the question is whether it answers, not how fast.
    ok = bool(s.poll(30_000)) and protocol.decode(s.recv_multipart()).type == "hello_ok"
    print(json.dumps({"sent": sent, "errors": errors, "oversize_refused": oversize_closed_or_refused,
                      "alive": ok}))
    s.close(0)
    ctx.term()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
