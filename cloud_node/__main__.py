"""`python -m cloud_node --bind tcp://198.18.0.2:5555 --models embedded`

Serves many queries from one edge: prefill, verify (speculative cycles),
generate (cloud-only and cloud-spec, tokens streamed down), end.  A
malformed or oversized message gets an error reply and the server stays
up.  Prints one JSON line {"event": "ready", ...} when it can serve, then
logs to stderr; SIGTERM/SIGINT end it.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import deque

import numpy as np
import zmq

from lab.core import protocol, spec
from lab.core.decoding import TargetState, now_ms, speculative_generate, verify_rng
from lab.models import ModelError, measure_compute, warm_up
from lab.models.hf import KERNELS
from lab.core.protocol import Message, ProtocolError

POLL_MS = 200
MAX_QUERIES = 64          # sessions kept at once; the oldest is dropped beyond this


class CloudServer:
    def __init__(self, target, draft, max_bytes: int):
        self.target, self.draft = target, draft
        self.max_bytes = max_bytes
        self.sessions: dict[str, TargetState] = {}
        self.running = True
        self.sock = None
        self.arrived: deque = deque()          # (arrival ms, frames) taken off the socket mid-stream
        self.polled_ms = 0.0                   # when the socket was last looked at mid-stream
        self.arrival_ms: float | None = None   # when the message being handled reached this process

    # -------------------------------------------------------------- handlers
    def handle(self, msg: Message, reply) -> None:
        h = getattr(self, f"on_{msg.type}", None)
        if h is None:
            raise ProtocolError(f"the cloud does not accept {msg.type!r} messages")
        h(msg, reply)

    def on_hello(self, msg: Message, reply) -> None:
        # The edge names its draft; this side's draft (for cloud-spec) need not be the same model,
        # but the tokenizers must be, or token ids mean different words.
        protocol.check_hello(msg, "", self.target.model_id if msg["target_model"] else "",
                             self.target.tokenizer_hash, self.target.eos_token_ids)
        reply(Message("hello_ok", msg.id, {"draft_model": self.draft.model_id if self.draft else "",
                                           "target_model": self.target.model_id,
                                           "tokenizer_hash": self.target.tokenizer_hash,
                                           "eos_token_ids": list(self.target.eos_token_ids)}))

    def on_prefill(self, msg: Message, reply) -> None:
        t0 = now_ms()
        if len(self.sessions) >= MAX_QUERIES:
            self.sessions.pop(next(iter(self.sessions)))
        prompt = [int(x) for x in msg.arrays["prompt_ids"]]
        if len(prompt) < 2:
            raise ProtocolError("prefill: the prompt needs at least 2 tokens")
        self._check_ids(prompt)
        self.sessions[msg["query"]] = TargetState.start(self.target, prompt)
        reply(Message("prefill_ok", msg.id, {"query": msg["query"], "cloud_compute_ms": now_ms() - t0}))

    def on_verify(self, msg: Message, reply) -> None:
        t0 = now_ms()
        st = self.sessions.get(msg["query"])
        if st is None:
            raise ProtocolError(f"verify: unknown query {msg['query']!r} (prefill first)")
        drafts = [int(x) for x in msg.arrays["tokens"]]
        if not drafts:
            raise ProtocolError("verify: no draft tokens")
        self._check_ids(drafts)
        temperature = float(msg["temperature"])
        q = None
        if temperature > 0:
            try:
                q = spec.decode_q(msg["payload"], drafts, msg.arrays, self.target.vocab_size)
            except (KeyError, ValueError) as e:
                raise ProtocolError(f"verify: payload {msg['payload']!r} does not match its arrays ({e})") from None
        if "pos" in msg.fields and not st.holds(msg["pos"], msg["last"]):
            # A pipelined block drafted on a guess an earlier verdict refuted: not verified, nothing touched.
            reply(Message("verdict", msg.id, {"query": msg["query"], "seq": msg["seq"], "n_accepted": 0, "token": 0,
                                              "stale": True, "cloud_compute_ms": now_ms() - t0}))
            return
        rng = verify_rng(msg["seed"], msg["seq"])
        n, tok = st.verify(drafts, temperature, rng, q)
        reply(Message("verdict", msg.id, {"query": msg["query"], "seq": msg["seq"], "n_accepted": n, "token": tok,
                                          "cloud_compute_ms": now_ms() - t0}))

    def on_generate(self, msg: Message, reply) -> None:
        prompt = [int(x) for x in msg.arrays["prompt_ids"]]
        self._check_ids(prompt)
        if len(prompt) < 2:
            raise ProtocolError("generate: the prompt needs at least 2 tokens")
        q, temperature, max_new = msg["query"], float(msg["temperature"]), msg["max_new_tokens"]
        seq = 0
        t_last = now_ms()

        def send(tokens: list[int], done: bool, **extra) -> None:
            nonlocal seq, t_last
            t = now_ms()
            reply(Message("tokens", msg.id, {"query": q, "seq": seq, "tokens": [int(x) for x in tokens], "done": done,
                                             "cloud_compute_ms": t - t_last, **extra}))
            seq += 1
            t_last = now_ms()

        if msg["mode"] == "target":
            rng = np.random.default_rng(msg["seed"])
            st = TargetState.start(self.target, prompt)
            count = 0
            while True:
                tok = st.step(temperature, rng)
                count += 1
                done = count >= max_new or tok in self.target.eos_token_ids
                send([tok], done)
                if done:
                    return
        if self.draft is None:
            raise ProtocolError("generate: this cloud node has no draft model for co-located speculation")
        k = max(1, msg["k"])
        speculative_generate(self.draft, self.target, prompt, max_new, k_fn=lambda: k, temperature=temperature,
                             seed=msg["seed"], on_cycle=lambda new, kk, n: send(new, False, drafted=kk, accepted=n),
                             stop=msg.get("stop"), stop_min=msg.get("stop_min", 1))
        send([], True, drafted=0, accepted=0)

    def on_continue(self, msg: Message, reply) -> None:
        """The target decodes the query alone from where the last verdict left it (fallback: cloud) and
        streams each token.  Between tokens, arriving messages are taken off the socket with their
        arrival time, so the first token can say how long this request queued (`queued_ms`): the edge
        subtracts it and the cloud's compute from the round trip to probe the link."""
        t0 = now_ms()
        st = self.sessions.get(msg["query"])
        if st is None:
            raise ProtocolError(f"continue: unknown query {msg['query']!r} (prefill first)")
        max_new = int(msg["max_new_tokens"])
        if max_new < 1:
            raise ProtocolError(f"continue: max_new_tokens must be >= 1, got {max_new}")
        queued = max(0.0, t0 - self.arrival_ms) if self.arrival_ms is not None else 0.0
        rng = np.random.default_rng(msg["seed"])
        t_last = self.polled_ms = t0
        for i in range(max_new):
            tok = st.step(float(msg["temperature"]), rng)
            done = i + 1 >= max_new or tok in self.target.eos_token_ids
            t = now_ms()
            fields = {"query": msg["query"], "seq": i, "tokens": [int(tok)], "done": done, "cloud_compute_ms": t - t_last}
            if i == 0:
                fields["queued_ms"] = queued
            reply(Message("tokens", msg.id, fields))
            t_last = now_ms()
            self._take_arrivals()
            if done:
                return

    def _take_arrivals(self) -> None:
        """A message found now arrived since the last look, during a token's compute: its arrival is
        taken as the middle of that interval (±half a token's compute; a receiving thread would do
        better, at the price of handing the socket between threads)."""
        t = now_ms()
        while self.sock is not None and self.sock.poll(0):
            self.arrived.append(((self.polled_ms + t) / 2, self.sock.recv_multipart(copy=True)))
        self.polled_ms = t

    def on_end(self, msg: Message, reply) -> None:
        self.sessions.pop(msg["query"], None)
        reply(Message("end_ok", msg.id, {"query": msg["query"]}))

    def _check_ids(self, ids: list[int]) -> None:
        bad = [t for t in ids if not 0 <= t < self.target.vocab_size]
        if bad:
            raise ProtocolError(f"token ids outside the vocabulary (0..{self.target.vocab_size - 1}): {bad[:4]}")

    # -------------------------------------------------------------- loop
    def serve(self, sock) -> None:
        self.sock = sock
        while self.running:
            if self.arrived:
                self.arrival_ms, frames = self.arrived.popleft()
            else:
                if not sock.poll(POLL_MS):
                    continue
                frames = sock.recv_multipart(copy=True)
                self.arrival_ms = now_ms()
            ident, body = frames[0], frames[1:]

            def reply(m: Message, ident=ident) -> None:
                sock.send_multipart([ident] + protocol.encode(m))
            ref = None
            try:
                msg = protocol.decode(body, self.max_bytes)
                ref = msg.id
                self.handle(msg, reply)
            except (ProtocolError, ModelError, ValueError, IndexError) as e:
                # Anything a bad request can provoke gets an answer; the server stays up.
                print(f"cloud: refused a message: {type(e).__name__}: {e}", file=sys.stderr)
                reply(Message("error", ref or 0, {"message": f"{type(e).__name__}: {e}", "ref_id": ref}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cloud_node")
    ap.add_argument("--bind", required=True, help="e.g. tcp://198.18.0.2:5555 (the lab address only)")
    ap.add_argument("--models", default="embedded")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--draft-kernels", choices=KERNELS, help="the co-located draft's Linear layers (default: int8 where it runs, else packed)")
    ap.add_argument("--no-draft", action="store_true", help="serve without a draft model (no cloud-spec)")
    ap.add_argument("--max-message-bytes", type=int, default=protocol.MAX_MESSAGE_BYTES)
    ap.add_argument("--cpus", help="pin to these CPUs, e.g. 1 (the runner gives each node its own)")
    a = ap.parse_args(argv)
    from lab.affinity import pin
    pin(a.cpus)                    # before the models' and zmq's threads start
    t0 = time.monotonic()
    from lab.models.select import load_role, resolved
    try:
        target = load_role(a.models, "target", dtype=a.dtype, threads=a.threads)
        draft = None if a.no_draft else load_role(a.models, "draft", dtype=a.dtype, threads=a.threads,
                                                  kernels=a.draft_kernels)
    except ModelError as e:
        print(json.dumps({"event": "error", "message": str(e)}), flush=True)
        return 2
    for m in (target, draft):
        if m is not None:
            warm_up(m)
    compute = measure_compute(target, draft)      # the edge's reply budget comes from these (lab/core/budget.py)
    server = CloudServer(target, draft, a.max_message_bytes)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, a.max_message_bytes + 1024 * 1024)
    sock.bind(a.bind)

    def stop(signum, frame):
        server.running = False
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({"event": "ready", "bind": a.bind, "target": target.model_id,
                      "draft": draft.model_id if draft else None, "threads": a.threads,
                      "dtype": getattr(target, "dtype", resolved(a.dtype)),      # "gguf" under llama.cpp
                      "target_kernels": getattr(target, "kernels", None),
                      "draft_kernels": getattr(draft, "kernels", None),
                      "tokenizer_hash": target.tokenizer_hash, "compute": compute,
                      "load_s": round(time.monotonic() - t0, 2)}),
          flush=True)
    try:
        server.serve(sock)
    finally:
        sock.close(0)
        ctx.term()
    return 0


if __name__ == "__main__":
    sys.exit(main())
