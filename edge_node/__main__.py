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
import math
import os
import select
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from lab.core import protocol, spec
from lab.core.budget import DEFAULT_FIXED_S, ReplyBudget
from lab.core.cycle import QueryLog, Verdict, alone_loop, draft_limits, run_query
from lab.core.decoding import DraftSide, DraftState, now_ms
from lab.core.protocol import Message, ProtocolError, generate_fields, ids
from lab.core.strategies import CLOUD_ALONE, StrategyError, make_strategy, split_strategies
from lab.models import warm_up
from lab.models.hf import KERNELS
from lab.results import JsonlWriter

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
        got = self.receive(mid, timeout_s or self.timeout_s)
        if got is None:
            self._open()                  # drop whatever is queued; late replies will not reach us
            raise CloudDown(f"no reply from {self.url} within {timeout_s or self.timeout_s:g} s")
        return got

    def receive(self, mid: int, timeout_s: float) -> tuple[Message, int] | None:
        """The reply to request `mid` if it comes within timeout_s (0: only if already here), else None;
        replies to other requests met on the way are dropped (late ones, superseded pipelined blocks)."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if not self.sock.poll(max(0, int(left * 1000) + (1 if left > 0 else 0))):
                if time.monotonic() >= deadline:
                    return None
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


class AloneSeam:
    """The draft alone on the edge (edge-only, and finishing a query the cloud cannot serve)."""

    def __init__(self, draft, ids_so_far: list[int], temperature: float, seed: int):
        self.draft, self.ids, self.temperature = draft, list(ids_so_far), temperature
        self.rng = np.random.default_rng(seed + 7)
        self.d: DraftState | None = None

    now = staticmethod(now_ms)

    def alone(self) -> int:
        if self.d is None:                            # the first token pays the prefill
            self.d, _ = DraftState.start(self.draft, self.ids)
        return self.d.step_alone(self.temperature, self.rng)


class EdgeSeam(DraftSide):
    """The cycle's seam on the edge: draft here, verify in the cloud over the link."""

    def __init__(self, node: "EdgeNode", qid: str, prompt_ids: list[int], seed: int):
        self.node, self.link, self.qid = node, node.link, qid
        mid, self.up0 = self.link.send("prefill", {"query": qid}, {"prompt_ids": ids(prompt_ids)})
        d, _ = DraftState.start(node.draft, prompt_ids)           # prefills while the cloud does
        super().__init__(d, node.w["temperature"], seed, node.w["payload"])
        _, self.down0 = self.link.wait(mid, node.budget.prefill_s(len(prompt_ids)))
        self.sent: dict[int, tuple[int, int]] = {}   # pipelined: block seq -> (verify request id, K)
        self.unreported_up = self.up0                # cycle 0 carries the prefill exchange's bytes
        self.rtt_hint_ms = node.hello_rtt_ms
        self.last_net_ms = node.hello_rtt_ms or 0.0   # the latest round trip measured (for sizing stretches)
        self.step_ms: float | None = None             # the cloud's time per token decoding alone
        self.stretch: tuple | None = None       # a `continue` already sent: (id, sent at, bytes, tokens asked)

    def verify(self, drafts: list[int], seq: int) -> Verdict:
        arrays = {"tokens": ids(drafts)}
        if self.temperature > 0:
            arrays.update(spec.encode_q(self.payload, drafts, self.q))
        t_sent = now_ms()
        mid, up = self.link.send("verify", {"query": self.qid, "seq": seq, "payload": self.payload,
                                            "temperature": self.temperature, "seed": self.seed}, arrays)
        msg, down = self.link.wait(mid, self.node.budget.verify_s(len(drafts)))
        self.last_net_ms = now_ms() - t_sent - float(msg["cloud_compute_ms"])
        if seq == 0:                                  # cycle 0 carries the prefill exchange's bytes
            up, down = up + self.up0, down + self.down0
        return Verdict(int(msg["n_accepted"]), int(msg["token"]), float(msg["cloud_compute_ms"]), up, down)

    # The pipelined cycle (lab/core/cycle.py PipeSeam): each block names the base it rests on, so the cloud
    # answers a block drafted on a refuted guess `stale` without touching its cache; the edge no longer
    # waits for such a block, and CloudLink drops its reply by request id.
    def send(self, drafts: list[int], seq: int) -> None:
        arrays = {"tokens": ids(drafts)}
        if self.temperature > 0:
            arrays.update(spec.encode_q(self.payload, drafts, self.qs[seq]))
        pos, last = self.block_base(drafts)
        mid, up = self.link.send("verify", {"query": self.qid, "seq": seq, "payload": self.payload,
                                            "temperature": self.temperature, "seed": self.seed,
                                            "pos": pos, "last": int(last)}, arrays)
        self.sent[seq] = (mid, len(drafts))
        self.unreported_up += up                   # superseded blocks' bytes go to the next verdict
        # zmq writes the block from its I/O thread, and the next thing this thread does is draft ahead.
        # On a node pinned to one core (lab/affinity.py) the I/O thread then waits for the scheduler to
        # take the core from the draft's forward: 3-9 ms on some blocks, which the cycle would count as
        # network time.  Hand the core over now; it comes back as soon as the block is on its way.
        os.sched_yield()

    def poll(self, seq: int, timeout_ms: float | None) -> Verdict | None:
        mid, k = self.sent.pop(seq)
        if timeout_ms is None:
            # the cloud may still be verifying the blocks sent before this one: one verify wait each
            got = self.link.wait(mid, self.node.budget.verify_s(k) * (1 + len(self.sent)))
        else:
            got = self.link.receive(mid, timeout_ms / 1000)
        if got is None:
            self.sent[seq] = (mid, k)
            return None
        msg, down = got
        if msg.get("stale"):
            raise ProtocolError(f"the cloud answered block {seq} stale, but its base is what the edge holds")
        if self.down0:
            down, self.down0 = down + self.down0, 0
        up, self.unreported_up = self.unreported_up, 0
        return Verdict(int(msg["n_accepted"]), int(msg["token"]), float(msg["cloud_compute_ms"]), up, down)
    def cloud_alone(self, n: int, seq: int, decide, emit, room: int | None = None) -> None:
        """fallback: cloud — the cloud decodes alone from the accepted prefix and streams (lab/core/cycle.py
        _cloud_stretch; the simulator's _SimSplit.cloud_alone is the same exchange).  The first token
        probes the link: round trip minus the cloud's compute and queueing.  If the strategy stays with
        the cloud, the next `continue` goes out at once, sized to outlast the round trip."""
        if self.stretch is None:
            step = self.step_ms or 1e9
            self.stretch = self._request(max(n, math.ceil(self.last_net_ms / step) + 2) if self.step_ms else n, room)
        mid, t_sent, up, n_req = self.stretch
        self.stretch, got, first = None, [], True
        while True:
            # each message is one target step (the first may follow the correction's: two)
            msg, down = self.link.wait(mid, self.node.budget.step_s(0) * (2 if first else 1))
            toks = [int(x) for x in msg["tokens"]]
            compute = float(msg["cloud_compute_ms"])
            net = None
            if first:
                net = self.last_net_ms = now_ms() - t_sent - compute - float(msg.get("queued_ms", 0.0))
                k_next = decide(net, self.step_ms or compute)
                more = max(n, math.ceil(net / (self.step_ms or compute)) + 2)
                more = more if room is None else min(more, room - n_req)
                if k_next == CLOUD_ALONE and more > 0 and not msg["done"]:
                    self.stretch = self._request(more, None)
            else:
                self.step_ms = compute
            emit(toks, net, compute, up if first else 0, down)
            got += toks
            first = False
            if msg["done"]:
                break
        self.d.committed += got              # the draft takes them in (prefilled with its next draft)

    def _request(self, n: int, room: int | None) -> tuple[int, float, int, int]:
        n = n if room is None else max(1, min(n, room))
        t = now_ms()
        self.stretches = getattr(self, "stretches", 0) + 1    # each stretch samples with its own seed
        mid, up = self.link.send("continue", {"query": self.qid, "max_new_tokens": n, "temperature": self.temperature,
                                              "seed": self.seed * 1009 + self.stretches})
        return mid, t, up, n

    def resync(self) -> None:
        """The cloud's cache no longer matches S: re-prefill it before the next verify."""
        mid, _ = self.link.send("prefill", {"query": self.qid}, {"prompt_ids": ids(self.d.committed)})
        self.link.wait(mid, self.node.budget.prefill_s(len(self.d.committed)))

    def close(self) -> None:
        if self.node.cloud_ok:
            self.link.send("end", {"query": self.qid})


class EdgeNode:
    def __init__(self, draft, link: CloudLink | None, workload: dict, writers, scenario: str, backend: str,
                 budget: ReplyBudget | None = None, alone=None):
        self.draft, self.link, self.w = draft, link, workload
        self.alone = alone or draft               # what answers on its own: edge-only, fallbacks (_alone_model)
        self.budget = budget or ReplyBudget(fixed_s=DEFAULT_FIXED_S)
        self.queries_out, self.cycles_out = writers
        self.scenario, self.backend = scenario, backend
        self.cloud_ok = link is not None
        self.eos = tuple(draft.eos_token_ids)     # replaced by the target's at the handshake
        self.hello_rtt_ms: float | None = None

    # -------------------------------------------------------------- cloud health
    def hello(self, timeout_s: float | None = None) -> dict:
        t0 = now_ms()
        mid, _ = self.link.send("hello", {"draft_model": self.draft.model_id, "target_model": "",
                                          "tokenizer_hash": self.draft.tokenizer_hash,
                                          "eos_token_ids": list(self.draft.eos_token_ids)})
        msg, _ = self.link.wait(mid, timeout_s)
        # The handshake's round trip, adaptive K's first estimate: the least seen, as the first hello may
        # have waited for the cloud to finish loading.
        rtt = now_ms() - t0
        self.hello_rtt_ms = rtt if self.hello_rtt_ms is None else min(self.hello_rtt_ms, rtt)
        self.eos = tuple(int(t) for t in msg["eos_token_ids"])    # the target's stopping rule
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
        prompt_ids = self.draft.encode_prompt(prompt["prompt"], prompt.get("template", "chat"))
        seed = int(self.w["seed"]) * 100_003 + index
        max_new = self.w["max_new_tokens"]
        rec = {"scenario": self.scenario, "strategy": strategy.name, "placement": strategy.placement,
               "query_index": index, "prompt_id": prompt["id"], "warmup": warmup, "backend": self.backend,
               "prompt_tokens": len(prompt_ids), "temperature": self.w["temperature"], "payload": self.w["payload"],
               "seed": seed, "edge_fallback": False, "fallback_reason": None, "fallback_at_token": None}
        log = QueryLog(now_ms, strategy.placement)
        rec["t_start_mono_ms"] = round(log.t_submit, 3)   # the kernel timers' clock (validate pairs its phase)
        query = EdgeQuery(self, prompt_ids, seed, f"{strategy.name}/{index}/{time.monotonic_ns()}")
        use_cloud = strategy.placement != "edge" and self._cloud_usable()
        try:
            if strategy.placement != "edge" and not use_cloud:
                rec.update(edge_fallback=True, fallback_reason="cloud unreachable at query start",
                           fallback_at_token=0)
                alone_loop(query.alone_seam(), log, max_new, self.eos)
            else:
                run_query(strategy, query, log, max_new, self.eos)
        except (CloudDown, ProtocolError, zmq.ZMQError) as e:
            # The cloud went away mid-query: finish from what is committed, with the draft alone.
            self.cloud_ok = False
            # Tokens from fallback_at_token on are the draft's: not this strategy's target output.
            rec.update(edge_fallback=True, fallback_reason=f"{type(e).__name__}: {e}",
                       fallback_at_token=len(log.tokens))
            alone_loop(AloneSeam(self.alone, prompt_ids + log.tokens, self.w["temperature"], seed),
                       log, max_new, self.eos)
        rec.update(log.result(max_new))
        if hasattr(strategy, "provenance"):
            rec["controller"] = strategy.provenance()     # the table file and its provenance
        out = log.tokens[:max_new]
        rec.update({"output_token_ids": out, "output_text": self.draft.decode(out)})
        return rec


class EdgeQuery:
    """One query's driver for lab/core/cycle.py's run_query: the seams and the streamed path."""

    def __init__(self, node: EdgeNode, prompt_ids: list[int], seed: int, qid: str):
        self.node, self.prompt_ids, self.seed, self.qid = node, prompt_ids, seed, qid

    def alone_seam(self) -> AloneSeam:
        return AloneSeam(self.node.alone, self.prompt_ids, self.node.w["temperature"], self.seed)

    def split_seam(self) -> EdgeSeam:
        return EdgeSeam(self.node, self.qid, self.prompt_ids, self.seed)

    def cloud_generate(self, strategy, log: QueryLog) -> None:
        """Cloud-only and cloud-spec: the prompt goes up, tokens stream down, one message per step."""
        w, link = self.node.w, self.node.link
        mode = "target" if strategy.placement == "cloud" else "spec"
        k = strategy.next_k() if mode == "spec" else 0
        stop, stop_min = draft_limits(strategy) if mode == "spec" else (None, 1)
        mid, up = link.send("generate", generate_fields(self.qid, mode, k, w["max_new_tokens"], w["temperature"],
                                                        self.seed, stop, stop_min),
                            {"prompt_ids": ids(self.prompt_ids)})
        t_prev = log.t_submit
        wait_s = self.node.budget.generate_first_s(len(self.prompt_ids), k)
        while True:
            msg, down = link.wait(mid, wait_s)
            wait_s = self.node.budget.step_s(k)
            t = now_ms()
            log.add([int(x) for x in msg["tokens"]], msg.get("drafted", 0) or 0, msg.get("accepted", 0) or 0,
                    t - t_prev, 0.0, float(msg["cloud_compute_ms"]), up, down)
            up, t_prev = 0, t
            if msg["done"]:
                return


def _alone_model(a, draft, strategies):
    """The model that answers on its own (edge-only; a query the cloud cannot finish).  An int8 draft
    only proposes tokens the target checks, and there its speed is the point; its own answers are
    another model's (MMLU 61/200 against 77/200, HumanEval 21/40 against 16/40; docs/MEASUREMENTS.md).
    So with an int8 draft and an edge-only strategy in the run the draft is loaded a second time,
    packed fp32, to answer alone as the named model does; otherwise the draft answers (fallbacks
    are marked anyway)."""
    from lab.models.kinds import kernels_of
    from lab.models.select import load_role
    if kernels_of(a.models, "draft", a.dtype, a.draft_kernels) != "int8" or not any(
            s.placement == "edge" for s in strategies):
        return draft
    alone = load_role(a.models, "draft", dtype=a.dtype, threads=a.threads, kernels="packed")
    warm_up(alone)
    return alone


def _default_tables(strategies, models: str, dtype: str, draft_kernels: str | None, out: str) -> None:
    """NASD without a table= option takes the calibrated table of the pair in use, if there is one,
    read from a copy in the results folder (RUN_TABLE): `lab calibrate` may rewrite the original
    later, and `validate --run` replays the rows this run played."""
    import shutil

    from lab.core.strategies import RUN_TABLE, load_table
    from lab.models.synthetic import nasd_table_for
    path = nasd_table_for(models, dtype, draft_kernels)
    takers = [s for s in strategies if hasattr(s, "use_table") and getattr(s, "table", None) is None]
    if path is None or not takers:
        return
    copy = Path(out) / RUN_TABLE
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, copy)
    table = load_table(str(copy), source=str(path))             # provenance names the original
    for s in takers:
        s.use_table(table)


def _wait_go() -> None:
    r, _, _ = select.select([sys.stdin], [], [], GO_TIMEOUT_S)
    if not r or sys.stdin.readline().strip() != "go":
        raise SystemExit("edge: the runner did not answer 'go' in time")


def _json_arg(flag: str, text: str) -> dict:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{flag}: not JSON ({e.msg})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{flag}: must be a JSON object, got {type(doc).__name__}")
    return doc


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m edge_node")
    ap.add_argument("--cloud", required=True)
    ap.add_argument("--models", default="embedded")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--draft-kernels", choices=KERNELS, help="the draft's Linear layers (default: int8 where it runs, else packed)")
    ap.add_argument("--strategies", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenario", default="?")
    ap.add_argument("--backend", default="?")
    ap.add_argument("--workload", required=True, help="JSON: queries, warmup_queries, max_new_tokens, ...")
    ap.add_argument("--reply-timeout-s", type=float,
                    help="one fixed wait for every reply (default: --reply-budget, else 20 s)")
    ap.add_argument("--reply-budget", help="JSON ReplyBudget (lab/core/budget.py): waits from the cloud's "
                                           "measured compute; the runner passes it")
    ap.add_argument("--standalone", action="store_true", help="no runner on stdin: do not wait for 'go'")
    ap.add_argument("--cpus", help="pin to these CPUs, e.g. 0 (the runner gives each node its own)")
    a = ap.parse_args(argv)
    from lab.affinity import pin
    pin(a.cpus)                    # before the models' and zmq's threads start
    from lab.models.select import load_role, resolved
    from lab.prompts import load_prompts
    from lab.models import ModelError
    from lab.prompts import PromptError
    t0 = time.monotonic()
    # Run by hand, a bad argument is an error event naming it (as the cloud's), not a traceback.
    try:
        workload = _json_arg("--workload", a.workload)
        strategies = [make_strategy(s) for s in split_strategies(a.strategies)]
        _default_tables(strategies, a.models, resolved(a.dtype), a.draft_kernels, a.out)
        prompts = load_prompts(workload.get("prompts"))
        budget_doc = _json_arg("--reply-budget", a.reply_budget) if a.reply_budget else None
        draft = load_role(a.models, "draft", dtype=a.dtype, threads=a.threads, kernels=a.draft_kernels)
        warm_up(draft)
        for s in strategies:
            if hasattr(s, "use_draft_confidence"):
                s.use_draft_confidence(draft.confidence_measured)
        alone = _alone_model(a, draft, strategies)
    except (ValueError, StrategyError, PromptError, ModelError, OSError) as e:
        emit(event="error", message=str(e))
        return 2
    if budget_doc is not None and a.reply_timeout_s is None:
        budget = ReplyBudget.from_dict(budget_doc)
    else:
        budget = ReplyBudget(fixed_s=a.reply_timeout_s or DEFAULT_FIXED_S)
    link = CloudLink(a.cloud, budget.hello_s())
    qw, cw = JsonlWriter(f"{a.out}/queries.jsonl"), JsonlWriter(f"{a.out}/cycles.jsonl")
    node = EdgeNode(draft, link, workload, (qw, cw), a.scenario, a.backend, budget, alone=alone)
    try:
        cloud = node.hello()
        node.hello()               # a second handshake measures the round trip with the cloud idle
    except (CloudDown, ProtocolError) as e:
        node.cloud_ok = False
        cloud = {"error": str(e)}
    emit(event="ready", draft=draft.model_id, threads=a.threads, dtype=getattr(draft, "dtype", resolved(a.dtype)),
         draft_kernels=getattr(draft, "kernels", None), alone_kernels=getattr(alone, "kernels", None), cloud=cloud,
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
