"""`python -m edge_node --cloud tcp://198.18.0.2:5555 --strategies cloud-only,fixed-k:5 --out DIR …`

The edge: the draft model, the strategy loop, the measurements.  Runs every
strategy's warm-up and measured queries in turn, appends each query to
DIR/queries.jsonl and its cycles to DIR/cycles.jsonl as soon as it ends, and
talks to the runner over stdin/stdout (see lab/runner.py).  If the cloud is
unreachable or dies mid-query, the query is finished by the draft alone and
marked `edge_fallback`; nothing waits longer than --reply-timeout-s.
"""
from __future__ import annotations

import argparse
import json
import select
import sys
import time

import numpy as np
import zmq

from lab.core import protocol, spec
from lab.core.decoding import DraftState, now_ms
from lab.models import warm_up
from lab.metrics import tokens_per_s
from lab.core.protocol import Message, ProtocolError, ids
from lab.results import JsonlWriter
from lab.core.strategies import CycleObservation, make_strategy

GO_TIMEOUT_S = 60


class CloudDown(Exception):
    """No (valid) answer from the cloud in time."""


class CloudLink:
    """A DEALER socket to the cloud with request ids; late replies are dropped by id."""

    def __init__(self, url: str, timeout_s: float, max_bytes: int = protocol.MAX_MESSAGE_BYTES):
        self.url, self.timeout_s, self.max_bytes = url, timeout_s, max_bytes
        self.ctx = zmq.Context.instance()
        self.sock = None
        self.next_id = 1
        self._open()

    def _open(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, self.max_bytes + 1024 * 1024)
        self.sock.connect(self.url)

    def send(self, mtype: str, fields: dict, arrays: dict | None = None) -> tuple[int, int]:
        """(request id, bytes sent)."""
        mid = self.next_id
        self.next_id += 1
        frames = protocol.encode(Message(mtype, mid, fields, arrays or {}))
        self.sock.send_multipart(frames, copy=False)
        return mid, protocol.frames_size(frames)

    def wait(self, mid: int, timeout_s: float | None = None) -> tuple[Message, int]:
        """The reply to request `mid` and its size; CloudDown on timeout (the socket is then reset)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1):
                if time.monotonic() >= deadline:
                    self._open()          # drop whatever is queued; late replies will not reach us
                    raise CloudDown(f"no reply from {self.url} within {timeout_s or self.timeout_s:g} s")
                continue
            frames = self.sock.recv_multipart(copy=True)
            try:
                msg = protocol.decode(frames, self.max_bytes)
            except ProtocolError as e:
                print(f"edge: dropped a malformed reply: {e}", file=sys.stderr)
                continue
            if msg.id != mid:
                continue                  # a late reply to an earlier request
            if msg.type == "error":
                raise ProtocolError(f"cloud refused: {msg['message']}")
            return msg, protocol.frames_size(frames)

    def close(self) -> None:
        self.sock.close(0)


class EdgeNode:
    def __init__(self, draft, link: CloudLink | None, workload: dict, writers, scenario: str, backend: str):
        self.draft, self.link, self.w = draft, link, workload
        self.queries_out, self.cycles_out = writers
        self.scenario, self.backend = scenario, backend
        self.cloud_ok = link is not None

    # -------------------------------------------------------------- cloud health
    def hello(self, timeout_s: float | None = None) -> dict:
        mid, _ = self.link.send("hello", {"draft_model": self.draft.model_id, "target_model": "",
                                          "tokenizer_hash": self.draft.tokenizer_hash})
        msg, _ = self.link.wait(mid, timeout_s)
        return msg.fields

    def _cloud_usable(self) -> bool:
        if self.link is None:
            return False
        if not self.cloud_ok:
            try:
                # The cloud may still be finishing the request we gave up on: allow a full timeout.
                self.hello()
                self.cloud_ok = True
            except (CloudDown, ProtocolError):
                return False
        return True

    # -------------------------------------------------------------- one query
    def run_query(self, strategy, prompt: dict, index: int, warmup: bool) -> dict:
        prompt_ids = self.draft.encode_prompt(prompt["prompt"])
        seed = int(self.w["seed"]) * 100_003 + index
        rec = {"scenario": self.scenario, "strategy": strategy.name, "placement": strategy.placement,
               "query_index": index, "prompt_id": prompt["id"], "warmup": warmup, "backend": self.backend,
               "prompt_tokens": len(prompt_ids), "temperature": self.w["temperature"], "payload": self.w["payload"],
               "seed": seed, "edge_fallback": False, "fallback_reason": None}
        cyc = {k: [] for k in ("k", "accepted", "cycle_ms", "network_ms", "cloud_compute_ms", "edge_compute_ms",
                               "bytes_up", "bytes_down", "t_ms")}
        t_submit = now_ms()
        rec["t_start_mono_ms"] = round(t_submit, 3)   # the kernel timers' clock (validate pairs its phase)
        out: list[int] = []
        state = {"ttft": None}

        def add_cycle(new_tokens, k, acc, cycle, edge_ms, cloud_ms, up=0, down=0):
            t = now_ms()
            if new_tokens and state["ttft"] is None:
                state["ttft"] = t - t_submit
            out.extend(new_tokens)
            net = max(0.0, cycle - edge_ms - cloud_ms) if strategy.placement != "edge" else 0.0
            for key, v in zip(cyc, (k, acc, cycle, net, cloud_ms, edge_ms, up, down, t - t_submit)):
                cyc[key].append(v)
            return net

        qid = f"{strategy.name}/{index}/{time.monotonic_ns()}"
        use_cloud = strategy.placement != "edge" and self._cloud_usable()
        if strategy.placement != "edge" and not use_cloud:
            rec.update(edge_fallback=True, fallback_reason="cloud unreachable at query start")
        try:
            if not use_cloud:
                self._edge_only(prompt_ids, seed, add_cycle, out)
            elif strategy.placement in ("cloud", "cloud-spec"):
                self._cloud_generate(strategy, qid, prompt_ids, seed, add_cycle, t_submit)
            else:
                self._split(strategy, qid, prompt_ids, seed, add_cycle, out)
        except (CloudDown, ProtocolError, zmq.ZMQError) as e:
            # The cloud went away mid-query: finish from what is committed, with the draft alone.
            self.cloud_ok = False
            rec.update(edge_fallback=True, fallback_reason=f"{type(e).__name__}: {e}")
            self._edge_only(prompt_ids + out, seed, add_cycle, out, already=len(out))
        e2e = now_ms() - t_submit
        out = out[: self.w["max_new_tokens"]]
        ttft = state["ttft"] if state["ttft"] is not None else e2e
        rec.update({"ttft_ms": ttft, "e2e_ms": e2e, "n_tokens": len(out),
                    "tokens_per_s": tokens_per_s(len(out), ttft, e2e),
                    "output_token_ids": out, "output_text": self.draft.decode(out)})
        rec.update({f"{k}_per_cycle": v for k, v in cyc.items()})
        return rec

    def _eos_cut(self, tokens: list[int], have: int) -> tuple[list[int], bool]:
        room = self.w["max_new_tokens"] - have
        for i, t in enumerate(tokens[:room]):
            if t in self.draft.eos_token_ids:
                return tokens[: i + 1], True
        return tokens[:room], len(tokens) >= room

    def _edge_only(self, ids_so_far: list[int], seed: int, add_cycle, out: list[int], already: int = 0) -> None:
        rng = np.random.default_rng(seed + 7)
        t0 = now_ms()
        d, logits = DraftState.start(self.draft, ids_so_far)
        first = True
        while len(out) < self.w["max_new_tokens"]:
            if first:
                temp = self.w["temperature"]
                tok = spec.sample(spec.softmax(logits, temp), rng) if temp > 0 else int(np.argmax(logits))
                d.committed.append(tok)
                first = False
            else:
                t0 = now_ms()
                tok = d.step_alone(self.w["temperature"], rng)
            ms = now_ms() - t0
            add_cycle([tok], 0, 0, ms, ms, 0.0)
            if tok in self.draft.eos_token_ids:
                return

    def _cloud_generate(self, strategy, qid, prompt_ids, seed, add_cycle, t_submit) -> None:
        mode = "target" if strategy.placement == "cloud" else "spec"
        k = strategy.next_k() if mode == "spec" else 0
        mid, up = self.link.send("generate", {"query": qid, "mode": mode, "k": k,
                                              "max_new_tokens": self.w["max_new_tokens"],
                                              "temperature": self.w["temperature"], "seed": seed},
                                 {"prompt_ids": ids(prompt_ids)})
        t_prev = t_submit
        while True:
            msg, down = self.link.wait(mid)
            t = now_ms()
            add_cycle([int(x) for x in msg["tokens"]], msg.get("drafted", 0) or 0, msg.get("accepted", 0) or 0,
                      t - t_prev, 0.0, float(msg["cloud_compute_ms"]), up, down)
            up, t_prev = 0, t
            if msg["done"]:
                return

    def _split(self, strategy, qid, prompt_ids, seed, add_cycle, out: list[int]) -> None:
        temp, payload = self.w["temperature"], self.w["payload"]
        rng = np.random.default_rng(seed)
        mid, up0 = self.link.send("prefill", {"query": qid}, {"prompt_ids": ids(prompt_ids)})
        t0 = now_ms()
        d, first = DraftState.start(self.draft, prompt_ids)
        prefill_edge_ms = now_ms() - t0
        msg, down0 = self.link.wait(mid)
        strategy.start_query()
        seq = 0
        done = False
        try:
            while not done:
                k = min(int(strategy.next_k()), self.w["max_new_tokens"] - len(out))
                t0 = now_ms()
                if k <= 0:                                        # the strategy serves this cycle locally
                    tok = self._first_alone(d, first, temp, rng) if first is not None else d.step_alone(temp, rng)
                    first = None
                    new, done = self._eos_cut([tok], len(out))
                    ms = now_ms() - t0
                    add_cycle(new, 0, 0, ms, ms, 0.0)
                    # The cloud's cache no longer matches S: re-prefill it before the next verify.
                    self._resync(qid, d)
                    strategy.observe(CycleObservation(k=0, accepted=0, cycle_ms=ms, network_ms=0.0,
                                                      cloud_compute_ms=0.0, edge_compute_ms=ms))
                    seq += 1
                    continue
                drafts, q = d.draft(k, temp, rng, first_logits=first, payload=payload)
                first = None
                edge_ms = now_ms() - t0
                arrays = {"tokens": ids(drafts)}
                if temp > 0:
                    arrays.update(spec.encode_q(payload, drafts, q))
                mid, up = self.link.send("verify", {"query": qid, "seq": seq, "payload": payload, "temperature": temp,
                                                    "seed": seed}, arrays)
                msg, down = self.link.wait(mid)
                n, tok = int(msg["n_accepted"]), int(msg["token"])
                if not 0 <= n <= k:
                    raise ProtocolError(f"verdict accepts {n} of {k} drafts")
                d.commit(drafts[:n], tok)
                new, done = self._eos_cut(drafts[:n] + [tok], len(out))
                cycle = now_ms() - t0
                cloud_ms = float(msg["cloud_compute_ms"])
                if seq == 0:
                    up, down = up + up0, down + down0
                net = add_cycle(new, k, n, cycle, edge_ms, cloud_ms, up, down)
                strategy.observe(CycleObservation(k=k, accepted=n, cycle_ms=cycle, network_ms=net,
                                                  cloud_compute_ms=cloud_ms, edge_compute_ms=edge_ms,
                                                  bytes_up=up, bytes_down=down))
                seq += 1
        finally:
            if self.cloud_ok:
                self.link.send("end", {"query": qid})

    def _first_alone(self, d: DraftState, logits, temp, rng) -> int:
        tok = spec.sample(spec.softmax(logits, temp), rng) if temp > 0 else int(np.argmax(logits))
        d.committed.append(tok)
        return tok

    def _resync(self, qid: str, d: DraftState) -> None:
        mid, _ = self.link.send("prefill", {"query": qid}, {"prompt_ids": ids(d.committed)})
        self.link.wait(mid)


def _wait_go() -> None:
    r, _, _ = select.select([sys.stdin], [], [], GO_TIMEOUT_S)
    if not r or sys.stdin.readline().strip() != "go":
        raise SystemExit("edge: the runner did not answer 'go' in time")


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_node")
    ap.add_argument("--cloud", required=True)
    ap.add_argument("--models", default="embedded")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--strategies", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenario", default="?")
    ap.add_argument("--backend", default="?")
    ap.add_argument("--workload", required=True, help="JSON: queries, warmup_queries, max_new_tokens, ...")
    ap.add_argument("--reply-timeout-s", type=float, default=20.0)
    ap.add_argument("--standalone", action="store_true", help="no runner on stdin: do not wait for 'go'")
    ap.add_argument("--cpus", help="pin to these CPUs, e.g. 0 (the runner gives each node its own)")
    a = ap.parse_args(argv)
    from lab.affinity import pin
    pin(a.cpus)                    # before the models' and zmq's threads start
    from lab.models.select import load_role
    from lab.prompts import load_prompts
    workload = json.loads(a.workload)
    strategies = [make_strategy(s) for s in a.strategies.split(",") if s]
    prompts = load_prompts(workload.get("prompts"))
    t0 = time.monotonic()
    draft = load_role(a.models, "draft", dtype=a.dtype, threads=a.threads)
    warm_up(draft)
    link = CloudLink(a.cloud, a.reply_timeout_s)
    qw, cw = JsonlWriter(f"{a.out}/queries.jsonl"), JsonlWriter(f"{a.out}/cycles.jsonl")
    node = EdgeNode(draft, link, workload, (qw, cw), a.scenario, a.backend)
    try:
        cloud = node.hello()
    except (CloudDown, ProtocolError) as e:
        node.cloud_ok = False
        cloud = {"error": str(e)}
    emit(event="ready", draft=draft.model_id, threads=a.threads, dtype=a.dtype, cloud=cloud,
         load_s=round(time.monotonic() - t0, 2))
    go = (lambda: None) if a.standalone else _wait_go
    try:
        for strat in strategies:
            emit(event="strategy_start", strategy=strat.name)
            go()
            n = workload["warmup_queries"] + workload["queries"]
            for i in range(n):
                if i == workload["warmup_queries"]:
                    # The runner restarts the link's timeline here: every strategy meets the same trace.
                    emit(event="measure_start", strategy=strat.name)
                    go()
                rec = node.run_query(strat, prompts[i % len(prompts)], i, warmup=i < workload["warmup_queries"])
                qw.write(rec)
                for j in range(len(rec["k_per_cycle"])):
                    cw.write({"scenario": rec["scenario"], "strategy": rec["strategy"], "query_index": i,
                              "warmup": rec["warmup"], "cycle": j,
                              **{k[: -len("_per_cycle")]: rec[k][j] for k in rec if k.endswith("_per_cycle")}})
                emit(event="query", strategy=strat.name, index=i, warmup=rec["warmup"], e2e_ms=round(rec["e2e_ms"], 1),
                     n_tokens=rec["n_tokens"], edge_fallback=rec["edge_fallback"])
            emit(event="strategy_end", strategy=strat.name)
            go()
        emit(event="done")
    finally:
        qw.close()
        cw.close()
        link.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
