"""One scenario, end to end: link up, nodes up, queries, timeline, teardown, results.

The runner lives in the root namespace.  It never imports edge_node or
cloud_node: it starts them by module name inside their namespaces and talks
to the edge node over its stdin/stdout (JSON lines):

    edge → runner   {"event": "ready"}                       models loaded, connected
                    {"event": "strategy_start", "strategy": s}  then waits for "go"
                    {"event": "measure_start", "strategy": s}   before the first measured query; waits for "go"
                    {"event": "query", "strategy": s, "index": i, "warmup": b, "e2e_ms": …}
                    {"event": "strategy_end", "strategy": s}    then waits for "go"
                    {"event": "done"}
    runner → edge   "go"  (after it has snapshotted the kernel counters, or set up the link's timeline)

The edge node itself appends queries.jsonl / cycles.jsonl as it goes.  The
runner applies the scenario's timeline of link changes in a thread, restarted
for each strategy so that every strategy meets the same link trace
(TIMELINE_ALIGNMENT: the link goes back to the timeline's t=0 state at
strategy_start, the warm-up runs on it, and the timeline runs from its t=0 at
measure_start until strategy_end); a link change that fails stops the run
(status failed, meta.json's failure_reason).  It records TCP counters per
strategy, and on every path (error, Ctrl-C, SIGTERM) stops both nodes and
removes the link.

The nodes run in sessions of their own: a signal meant for the run (Ctrl-C in
the terminal, `timeout` or systemd signalling the process group) reaches the
runner alone, which stops them in order and writes what the run got.  While
it waits for the edge, the runner checks that the namespaces are still its
own and the relay alive: a link that vanishes under the run fails it rather
than letting every query fall back to edge-only.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lab.affinity import format_cpus, node_cpus, threads_per_node
from lab.results import Meta, new_run_dir, read_jsonl
from lab.scenario import TIMELINE_ALIGNMENT, Scenario
from netns.counters import jiffy_grid_ms, kernel_hz
from netns.signals import deferred_stop_signals

CLOUD_PORT = 5555
READY_TIMEOUT_S = 600          # first load of the embedded pair converts it (minutes); later ~seconds
EVENT_TIMEOUT_S = 900          # the longest a single query may take before the run is declared hung
STOP_TIMEOUT_S = 5
TIMELINE_POLL_S = 0.5          # how soon a failed link change stops the run while the edge is busy
INTACT_CHECK_S = 1.0           # how often, while waiting for the edge, the runner checks its link is still there


class RunError(Exception):
    """A run could not start or died; the message says which process and why."""


@dataclass(frozen=True)
class RunOptions:
    models: str = "embedded"
    strategies: tuple[str, ...] = ()
    queries: int | None = None
    warmup_queries: int | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    payload: str | None = None
    prompts: str | None = None
    seed: int | None = None
    backend: str | None = None
    out: str | None = None
    threads_per_node: int | None = None   # None: every CPU for real models, 1 (pinned) for synthetic ones
    dtype: str = "auto"            # auto = float32 (lab/models/cpu.py)
    draft_kernels: str | None = None   # the draft's Linear kernels (lab/models/hf.py KERNELS); None: the default
    reply_timeout_s: float | None = None   # None: from the cloud's measured compute (lab/core/budget.py)
    progress: bool = True
    pin_cpus: bool = True          # edge and cloud on disjoint CPUs when the host has enough (lab/affinity.py)
    omp_wait_policy: str | None = None   # PASSIVE: a node's idle OpenMP threads sleep instead of spinning


def effective_workload(sc: Scenario, opts: RunOptions) -> dict:
    """Scenario workload with command-line options on top."""
    w = asdict(sc.workload)
    for k in ("queries", "warmup_queries", "max_new_tokens", "temperature", "payload", "prompts", "seed"):
        v = getattr(opts, k)
        if v is not None:
            w[k] = v
    return w


class _Proc:
    """A node process with a line reader that never blocks past a deadline."""

    def __init__(self, name: str, popen: subprocess.Popen):
        self.name, self.p = name, popen
        self._buf = b""

    def readline(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([self.p.stdout], [], [], min(left, 0.5))
            if r:
                chunk = os.read(self.p.stdout.fileno(), 65536)
                if not chunk:
                    if self._buf:
                        break
                    return ""     # EOF: the process closed stdout (exited)
                self._buf += chunk
            elif self.p.poll() is not None and not self._buf:
                return ""
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode(errors="replace")

    def send(self, text: str) -> None:
        self.p.stdin.write((text + "\n").encode())
        self.p.stdin.flush()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(STOP_TIMEOUT_S)


class _TimelineThread(threading.Thread):
    """Applies one strategy's link changes at their times after its start; records each change and how
    long it took.  A change that raises ends the thread with `error` set (the runner stops the run)."""

    def __init__(self, topo, scenario: Scenario, strategy: str, log: list):
        super().__init__(daemon=True, name=f"timeline {strategy}")
        self.topo, self.sc, self.strategy, self.log = topo, scenario, strategy, log
        self.stop_event = threading.Event()
        self.error: str | None = None
        self.t0 = time.monotonic()

    def run(self) -> None:
        at, link = 0.0, None
        try:
            for at, link in self.sc.timeline.changes(self.sc.link):
                if self.stop_event.wait(max(0.0, self.t0 + at - time.monotonic())):
                    return
                ms = self.topo.change(link)
                t = time.monotonic()
                self.log.append({"strategy": self.strategy, "due_s": at, "at_s": round(t - self.t0, 3),
                                 "t_mono_ms": round(t * 1e3, 3), "link": link.to_dict(), "apply_ms": round(ms, 3)})
        except Exception as e:    # noqa: BLE001 — whatever it is, the run must not go on with a stale link
            self.error = (f"link change at t={at:g} s of {self.strategy}'s timeline "
                          f"({link.describe() if link else '?'}) failed: {type(e).__name__}: {e}")


class _Timeline:
    """The scenario's timeline, restarted per strategy (TIMELINE_ALIGNMENT): hold() puts the link back to
    the timeline's t=0 state, start() runs the timeline from t=0, stop() ends it.  A failed change raises
    RunError from the next call (or check()) and is kept in `error`."""

    def __init__(self, topo, scenario: Scenario):
        self.topo, self.sc = topo, scenario
        self.link0 = scenario.timeline.link_at(0.0, scenario.link)
        self.changes: list[dict] = []
        self.starts: list[dict] = []
        self.thread: _TimelineThread | None = None
        self.error: str | None = None

    def hold(self, strategy: str) -> None:
        self.stop()
        if self.topo.link == self.link0:
            return
        try:
            ms = self.topo.change(self.link0)
        except Exception as e:    # noqa: BLE001 — as in _TimelineThread.run
            self.error = f"resetting the link to the timeline's t=0 state for {strategy} failed: {type(e).__name__}: {e}"
            raise RunError(self.error) from e
        self.changes.append({"strategy": strategy, "at_s": None, "reset": True,
                             "t_mono_ms": round(time.monotonic() * 1e3, 3), "link": self.link0.to_dict(),
                             "apply_ms": round(ms, 3)})

    def start(self, strategy: str) -> None:
        self.stop()
        self.thread = _TimelineThread(self.topo, self.sc, strategy, self.changes)
        self.starts.append({"strategy": strategy, "t_mono_ms": round(self.thread.t0 * 1e3, 3)})
        if self.sc.timeline.steps:
            self.thread.start()

    def stop(self) -> None:
        """End the running strategy's timeline; RunError if a change failed."""
        self.close()
        self.check()

    def check(self) -> None:
        if self.thread is not None and self.thread.error and not self.error:
            self.error = self.thread.error
        if self.error:
            raise RunError(self.error)

    def close(self) -> None:
        """End the running strategy's timeline, keeping any failure in `error` (for meta()); never raises."""
        thread, self.thread = self.thread, None
        if thread is None:
            return
        thread.stop_event.set()
        if thread.is_alive():
            thread.join(STOP_TIMEOUT_S)
            if thread.is_alive():
                self.error = self.error or (f"a link change of {thread.strategy}'s timeline did not return "
                                            f"within {STOP_TIMEOUT_S} s")
        self.error = self.error or thread.error

    def meta(self) -> dict:
        out = {"timeline_alignment": TIMELINE_ALIGNMENT, "timeline_starts": self.starts, "link_changes": self.changes}
        if self.error:
            out["failure_reason"] = self.error
        return out


def _snapshot(topo) -> dict:
    from netns.counters import tcp_counters
    return {"edge": tcp_counters(topo.edge_ns), "cloud": tcp_counters(topo.cloud_ns)}


def _retrans(before: dict, after: dict) -> dict:
    """Kernel TCP recovery work between two snapshots, both namespaces added up."""
    keys = ("RetransSegs", "TCPLossProbes", "TCPTimeouts", "TCPFastRetrans", "TCPSlowStartRetrans")
    out = {}
    for k in keys:
        out[k] = sum(after[side].get(k, 0) - before[side].get(k, 0) for side in ("edge", "cloud"))
    return out


def _python() -> str:
    return sys.executable


def run_scenario(sc: Scenario, opts: RunOptions, out=print, on_query=None) -> Path:
    """Run one scenario and return its results folder.  Raises RunError on failure;
    everything created is removed on every path.  Long on purpose: set-up, the event loop and the
    teardown share one try/finally, which is what guarantees the teardown on every path.

    on_query(event, run_dir), if given, follows each query event: the query's record is already in
    run_dir/queries.jsonl (the edge writes it before it reports), so a caller can score it at once
    (lab/accuracy.py)."""
    from netns.topology import CLOUD_ADDR, Topology

    from lab.models import cpu

    workload = effective_workload(sc, opts)
    strategies = list(opts.strategies or sc.strategies)
    dtype = cpu.resolve_dtype(opts.dtype)
    run_dir = new_run_dir(sc.name, Path(opts.out) if opts.out else None)
    meta = Meta(run_dir, {"scenario": sc.to_dict(), "options": asdict(opts), "workload": workload,
                          "strategies": strategies, "models": opts.models, "dtype": dtype, "cpu": cpu.describe()})
    out(f"results: {run_dir}")
    topo = Topology(backend=opts.backend or sc.backend, congestion_control=sc.congestion_control)
    topo.paired_seed = int(workload["seed"])     # the wire relay keys loss and jitter draws as the simulator does (netns/paired.py)
    cloud = edge = None
    timeline = _Timeline(topo, sc)
    status = "failed"
    retrans: dict[str, dict] = {}
    try:
        t = time.monotonic()
        topo.up(sc.timeline.link_at(0.0, sc.link))
        hz, hz_source = kernel_hz()     # the TCP timers' tick: validate gives it to the simulator
        meta.update(backend=topo.backend_name, congestion_control=topo.congestion_control,
                    paired_seed=topo.paired_seed if topo.backend_name == "wire" else None,
                    kernel_hz=hz, kernel_hz_source=hz_source,
                    jiffy_grid_ms=jiffy_grid_ms(hz) if hz else None,
                    link_read_back=topo.read_back(), link_up_ms=round((time.monotonic() - t) * 1e3, 1))
        out(f"link up ({topo.backend_name}, TCP {topo.congestion_control}): {sc.link.describe()}")

        threads = opts.threads_per_node or threads_per_node(opts.models, strategies)     # lab/affinity.py says why
        node_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
        if opts.omp_wait_policy:
            node_env["OMP_WAIT_POLICY"] = opts.omp_wait_policy
        common = ["--models", opts.models, "--threads", str(threads), "--dtype", dtype,
                  *(["--draft-kernels", opts.draft_kernels] if opts.draft_kernels else [])]
        cpus = node_cpus(threads) if opts.pin_cpus else {}
        meta.update(node_cpus={k: sorted(v) for k, v in cpus.items()} or None,
                    thread_layout={"threads_per_node": threads, "pinned": bool(cpus),
                                   "omp_wait_policy": node_env.get("OMP_WAIT_POLICY")})
        pin = {k: ["--cpus", format_cpus(v)] for k, v in cpus.items()}
        cloud = _Proc("cloud", topo.popen("cloud", [_python(), "-m", "cloud_node", *pin.get("cloud", []),
                                                    "--bind", f"tcp://{CLOUD_ADDR}:{CLOUD_PORT}", *common],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=node_env,
                                          start_new_session=True))
        line = cloud.readline(READY_TIMEOUT_S)
        if not line or json.loads(line).get("event") != "ready":
            raise RunError(f"cloud node did not become ready (got {line!r}); see its output above")
        meta.update(cloud=json.loads(line))
        budget = reply_budget(sc, meta.data["cloud"].get("compute"), opts.reply_timeout_s)
        meta.update(reply_budget=budget.to_dict(),
                    reply_waits_s={"prefill_200_tokens": round(budget.prefill_s(200), 2),
                                   "verify_k5": round(budget.verify_s(5), 2), "hello": round(budget.hello_s(), 2)})
        edge_args = [_python(), "-m", "edge_node", *pin.get("edge", []),
                     "--cloud", f"tcp://{CLOUD_ADDR}:{CLOUD_PORT}", *common,
                     "--strategies", ",".join(strategies), "--out", str(run_dir), "--scenario", sc.name,
                     "--backend", topo.backend_name, "--workload", json.dumps(workload),
                     "--reply-budget", json.dumps(budget.to_dict())]
        edge = _Proc("edge", topo.popen("edge", edge_args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=node_env, start_new_session=True))
        line = edge.readline(READY_TIMEOUT_S)
        if not line or json.loads(line).get("event") != "ready":
            raise RunError(f"edge node did not become ready (got {line!r}); see its output above")
        ready = json.loads(line)
        meta.update(edge=ready)
        if "error" in (ready.get("cloud") or {}):
            raise RunError(f"the edge cannot use the cloud: {ready['cloud']['error']}")

        per_strategy = workload["queries"] + workload["warmup_queries"]
        total = per_strategy * len(strategies)
        bar = _progress(total, opts.progress)
        before = None
        while True:
            ev = _next_event(edge, timeline, topo)
            kind = ev.get("event")
            if kind == "strategy_start":
                timeline.hold(ev["strategy"])
                before = _snapshot(topo)
                bar.set_description(ev["strategy"])
                edge.send("go")
            elif kind == "measure_start":
                timeline.start(ev["strategy"])
                edge.send("go")
            elif kind == "strategy_end":
                timeline.stop()
                retrans[ev["strategy"]] = _retrans(before, _snapshot(topo))
                edge.send("go")
            elif kind == "query":
                bar.update(1)
                if on_query is not None:
                    on_query(ev, run_dir)
                if ev.get("edge_fallback"):
                    bar.write(f"  {ev['strategy']} query {ev['index']}: FALLBACK — the cloud did not answer in "
                              f"time; finished by the draft alone (not counted as {ev['strategy']}'s output)")
            elif kind == "done":
                break
            elif kind == "error":
                raise RunError(f"edge node: {ev.get('message')}")
        bar.close()
        _save_paired_loss(topo, run_dir)
        status = "complete"
    except KeyboardInterrupt as e:
        status = "interrupted"
        meta.update(interrupted_by=getattr(e, "signal_name", "SIGINT"))
        raise
    finally:
        with deferred_stop_signals():       # a second Ctrl-C / SIGTERM must not cut the teardown short
            timeline.close()
            for proc in (edge, cloud):
                if proc is not None:
                    proc.stop()
            topo.down()
            meta.update(tcp_recovery_by_strategy=retrans, **timeline.meta())
            meta.finish(status)
            _write_summary(run_dir, sc, topo.backend_name or "?", opts.models, retrans,
                           complete=(status == "complete"), out=out,
                           note=cpu.bf16_note(dtype) if not opts.models.startswith("synthetic") else None)
    return run_dir


def reply_budget(sc: Scenario, compute: dict | None, fixed_s: float | None):
    """The edge's reply waits: the cloud's measured compute plus RTO room for the scenario's worst RTT
    (lab/core/budget.py); --reply-timeout-s fixes one wait for all."""
    from lab.core.budget import DEFAULT_FIXED_S, ReplyBudget, budget_from_compute

    if fixed_s is not None or not compute:
        return ReplyBudget(fixed_s=fixed_s or DEFAULT_FIXED_S)
    links = [sc.link] + [step.link for step in sc.timeline.steps]
    rtt = max(p.rtt_ms + p.uplink.jitter_ms + p.downlink.jitter_ms for p in links)
    return budget_from_compute(compute, rtt)


def _next_event(edge: _Proc, timeline: _Timeline, topo) -> dict:
    """The edge node's next event.  Between short waits, and after each event, the link must still be
    the run's own (Topology.check_intact) and no link change may have failed: otherwise the run fails;
    RunError too if the edge is silent for EVENT_TIMEOUT_S or exits."""
    from netns.topology import TopologyError
    silent_since = time.monotonic()
    while True:
        timeline.check()
        line = edge.readline(min(TIMELINE_POLL_S, INTACT_CHECK_S))
        try:
            topo.check_intact()
        except TopologyError as e:
            raise RunError(f"the lab link is gone: {e}; stopping the run") from None
        if line is None:
            if time.monotonic() - silent_since > EVENT_TIMEOUT_S:
                raise RunError(f"edge node silent for {EVENT_TIMEOUT_S} s; stopping the run")
            continue
        if line == "":
            raise RunError(f"edge node exited (code {edge.p.poll()}) before finishing")
        return json.loads(line)


def _save_paired_loss(topo, run_dir: Path) -> None:
    """The wire relay's paired-loss record (messages seen, first transmissions lost) → paired_loss.json,
    for `validate` to show how closely the simulator's loss draws matched the lab's."""
    if topo.backend_name != "wire":
        return
    from netns.link import LinkError
    try:
        record = topo.backend.stats().get("paired_loss")
    except LinkError as e:
        print(f"note: could not read the relay's paired-loss record: {e}", file=sys.stderr)
        return
    if record:
        (run_dir / "paired_loss.json").write_text(json.dumps(record) + "\n")


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, unit="query", disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def _write_summary(run_dir: Path, sc: Scenario, backend: str, models: str, retrans: dict, *,
                   complete: bool, out=print, note: str | None = None) -> None:
    """summary.csv for a complete run, summary.partial.csv otherwise; the table on the terminal."""
    from lab import metrics

    records = read_jsonl(run_dir / "queries.jsonl")
    if not records:
        out("no query finished; nothing to summarize")
        return
    df = metrics.summarize(records, scenario=sc.name, backend=backend, models=models,
                           retrans_by_strategy={s: v["RetransSegs"] for s, v in retrans.items()})
    name = "summary.csv" if complete else "summary.partial.csv"
    df.to_csv(run_dir / name, index=False)
    out("")
    out(f"{sc.name} — {sc.link.describe()} ({backend} backend){'' if complete else '  [INCOMPLETE RUN]'}")
    out(metrics.format_table(df))
    for line in [note, metrics.fallback_note(df)]:
        if line:
            out(line)
    out(f"\n{run_dir / name}")
