"""`python -m lab sweep --sim | --lab`: the experiment grid, one resumable folder.

Grid (BACKGROUND.md "Experiment grid"): RTT {0, 10, 25, 50, 100, 200, 500} ms
× rate {100, 10, 1} Mbit/s — 21 stable links.  BACKGROUND lists jitter {0, 10,
25} ms and loss {0, 1, 5} % as further axes without saying where; the default
grid layers them on RTT {50, 100, 200} ms at 10 Mbit/s (split speculation's
home ground, the simulator's crossover with cloud-only, and inside the seed's
150–250 ms break-even; ±25 ms jitter needs a one-way delay of 25 ms, so no
lower RTT), one impairment at a time: jitter 10, 25 ms; loss 1, 5 % — 12 more
links, 33 in all.  `--grid full` is the whole
product (189 links); `--grid FILE` a YAML file (see load_grid_file).  Jitter is
uniform ±J, the lab's LinkSpec (BACKGROUND writes σ; ±J has σ = J/√3).  Every
link runs every strategy `--runs` times with different seeds; each run starts
with its own warm-up query, not summarized.

The folder (`--out DIR`, default results/<UTC>-sweep-<sim|lab>/):

    sweep.json              the plan (backend, models, strategies, runs, …) and every point asked for
    meta.json               status running → complete | interrupted | failed, git commit, host
    points/<point>/         one finished point: point.json, summary.csv (one row per strategy × run,
                            with the grid columns), run-<r>/ (sim: queries.jsonl, cycles.jsonl) or the
                            lab runner's results folder per run
    points/.partial-<point> a point being written; never read, removed when the sweep resumes
    summary.csv, best.csv   every finished point's rows, and per link the fastest lossless strategy,
                            rewritten (atomically) after each point

A point is finished when its folder has its final name: it is written under
.partial-<point> and renamed in one step once point.json is in it, so a crash,
Ctrl-C or SIGTERM leaves finished points intact and nothing half-written under
a final name.  Rerunning the same command with the same `--out` skips finished
points and redoes the rest; a rerun with a different plan (models, strategies,
runs, …) is refused, naming the field, rather than mixing two experiments.

`--lab` runs each point through the real runner (netns, root, the lab lock per
point); `--ray ADDRESS` runs the points as Ray tasks (lab/sweep_ray.py), the
results written into the same folder by this process.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

RTT_MS = (0, 10, 25, 50, 100, 200, 500)
RATE_MBIT = (100, 10, 1)
JITTER_MS = (0, 10, 25)
LOSS_PCT = (0, 1, 5)
STRATEGIES = ("cloud-only", "edge-only", "cloud-spec", "fixed-k:3", "fixed-k:5", "fixed-k:10", "fixed-k:15",
              "nasd", "ucb-specstop", "pipelined:3")
# The oracle (best K per link state in hindsight) exists only in the simulator: the claims' reference.
SIM_ONLY = ("oracle",)


def default_strategies(backend: str) -> tuple[str, ...]:
    """Every strategy the lab has, on the grid; the simulator adds its oracle."""
    return STRATEGIES + (SIM_ONLY if backend == "sim" else ())
# Where the default grid layers jitter and loss (see the module docstring for why these).
LAYER_RTT_MS = (50, 100, 200)
LAYER_RATE_MBIT = 10
GRID_COLUMNS = ["rtt_ms", "rate_mbit", "jitter_ms", "loss_pct", "payload"]


class SweepError(Exception):
    """A sweep cannot start or resume: the message names the field or file."""


@dataclass(frozen=True)
class GridPoint:
    rtt_ms: float
    rate_mbit: float
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    payload: str | None = None       # None: the workload's (tokens)

    @property
    def name(self) -> str:
        extra = (f"-j{self.jitter_ms:g}" if self.jitter_ms else "") + (f"-l{self.loss_pct:g}" if self.loss_pct else "")
        pay = f"-{self.payload.replace(':', '')}" if self.payload else ""
        return f"grid-{self.rtt_ms:g}ms-{self.rate_mbit:g}mbit{extra}{pay}"

    def scenario(self, strategies):
        from lab.scenario import parse_scenario
        link = {"delay_ms": self.rtt_ms / 2, "rate_mbit": self.rate_mbit}
        if self.jitter_ms:
            link["jitter_ms"] = self.jitter_ms
        if self.loss_pct:
            link["loss_pct"] = self.loss_pct
        doc = {"name": self.name, "link": link, "strategies": list(strategies),
               "description": f"grid: RTT {self.rtt_ms:g} ms, {self.rate_mbit:g} Mbit/s"
                              f"{f', ±{self.jitter_ms:g} ms' if self.jitter_ms else ''}"
                              f"{f', {self.loss_pct:g} % loss' if self.loss_pct else ''}"}
        if self.payload:
            doc["workload"] = {"payload": self.payload}
        return parse_scenario(doc)


def grid(full: bool = False, rtt=None, rate=None, jitter=None, loss=None) -> list[GridPoint]:
    """The product of the axes; an axis left None takes BACKGROUND.md's values (jitter and loss only with full)."""
    rtt = rtt if rtt is not None else RTT_MS
    rate = rate if rate is not None else RATE_MBIT
    jitter = jitter if jitter is not None else (JITTER_MS if full else (0,))
    loss = loss if loss is not None else (LOSS_PCT if full else (0,))
    return [GridPoint(*p) for p in itertools.product(rtt, rate, jitter, loss)]


def default_grid(rtt=None, rate=None) -> list[GridPoint]:
    """RTT × rate, then jitter and loss one at a time on LAYER_RTT_MS at LAYER_RATE_MBIT (33 links)."""
    points = grid(rtt=rtt, rate=rate)
    layered = [r for r in LAYER_RTT_MS if rtt is None or r in rtt]
    points += [GridPoint(r, LAYER_RATE_MBIT, j, 0) for r in layered for j in JITTER_MS if j]
    points += [GridPoint(r, LAYER_RATE_MBIT, 0, l) for r in layered for l in LOSS_PCT if l]
    return points


def load_grid_file(path: str) -> list[GridPoint]:
    """A YAML grid: `axes:` {rtt_ms, rate_mbit, jitter_ms, loss_pct, payload: lists} (their product;
    a missing axis is [0], payload [tokens]) and/or `points:` [{rtt_ms, rate_mbit, …}], in that order."""
    import yaml
    from lab.scenario import ScenarioError
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise SweepError(f"--grid {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise SweepError(f"--grid {path}: not YAML ({e.__class__.__name__})") from None
    if not isinstance(doc, dict) or not (set(doc) & {"axes", "points"}) or set(doc) - {"axes", "points"}:
        raise SweepError(f"--grid {path}: must be a mapping with `axes` and/or `points` (and nothing else)")
    points: list[GridPoint] = []
    names = [f.name for f in GridPoint.__dataclass_fields__.values()]
    axes = doc.get("axes") or {}
    if axes:
        if not isinstance(axes, dict) or set(axes) - set(names) or "rtt_ms" not in axes:
            raise SweepError(f"--grid {path}: axes: needs rtt_ms and only {', '.join(names)}")
        lists = []
        for n in names:
            v = axes.get(n, [None] if n == "payload" else [0] if n != "rate_mbit" else [100])
            lists.append(v if isinstance(v, list) else [v])
        points += [GridPoint(*p) for p in itertools.product(*lists)]
    for i, p in enumerate(doc.get("points") or []):
        if not isinstance(p, dict) or set(p) - set(names) or "rtt_ms" not in p or "rate_mbit" not in p:
            raise SweepError(f"--grid {path}: points[{i}]: needs rtt_ms and rate_mbit, only {', '.join(names)}")
        points.append(GridPoint(**p))
    for i, p in enumerate(points):
        for n in names[:4]:
            v = getattr(p, n)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SweepError(f"--grid {path}: point {i}: {n} must be a number, got {v!r}")
        try:
            p.scenario(["cloud-only"])
        except ScenarioError as e:
            raise SweepError(f"--grid {path}: point {i} ({p.name}): {e}") from None
    if not points:
        raise SweepError(f"--grid {path}: no points")
    return points


@dataclass(frozen=True)
class Plan:
    """What every point of one sweep folder shares; a resumed sweep must have the same."""
    backend: str                       # "sim" | "lab"
    strategies: tuple[str, ...] = STRATEGIES
    runs: int = 3
    models: str = "synthetic:embedded-cpu"
    queries: int | None = None
    # Warm-up queries per strategy before the measured ones (None: the workload's one).  A learning
    # controller's rate after its warm-up is what issue 16 compares: ucb-specstop explores its arms for
    # its first ~16 cycles, two or three queries of the built-in prompts.
    warmup_queries: int | None = None
    link_model: str = "tcp"            # the simulator's (sim only)
    lab_backend: str | None = None     # netem | wire | auto (lab only)
    temperature: float | None = None   # None: the workload's (0, greedy); > 0 makes the payload modes differ

    def to_json(self) -> dict:
        return {**asdict(self), "strategies": list(self.strategies)}

    @classmethod
    def from_json(cls, doc: dict) -> "Plan":
        # a folder written before a field existed resumes with that field's default
        known = {k: v for k, v in doc.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "strategies": tuple(doc["strategies"])})


# ---------------------------------------------------------------- one point

def _grid_columns(df: pd.DataFrame, p: GridPoint, run: int, payload: str, run_dir: str) -> pd.DataFrame:
    return df.assign(rtt_ms=p.rtt_ms, rate_mbit=p.rate_mbit, jitter_ms=p.jitter_ms, loss_pct=p.loss_pct,
                     payload=payload, run=run, run_dir=run_dir)


def cycle_columns(records: list[dict], df: pd.DataFrame) -> pd.DataFrame:
    """Per strategy, what the claims and the Ianvs export need beyond summary.csv's columns: mean
    tokens per split cycle (accepted + the target's one), mean K, median tokens per query."""
    tpc, kmean, ntok = [], [], []
    for s in df["strategy"]:
        n = sorted(r.get("n_tokens", 0) for r in records if r["strategy"] == s and not r.get("warmup"))
        ntok.append(float(n[len(n) // 2]) if n else math.nan)
        k = [x for r in records if r["strategy"] == s and not r.get("warmup") for x in r.get("k_per_cycle", [])]
        a = [x for r in records if r["strategy"] == s and not r.get("warmup")
             for x in r.get("accepted_per_cycle", [])]
        pairs = [(kk, aa) for kk, aa in zip(k, a) if kk > 0]
        tpc.append(sum(aa + 1 for _, aa in pairs) / len(pairs) if pairs else math.nan)
        kmean.append(sum(kk for kk, _ in pairs) / len(pairs) if pairs else math.nan)
    return df.assign(tokens_per_cycle=tpc, k_mean=kmean, tokens_p50=ntok)


def run_point_sim(p: GridPoint, plan: Plan, dest: Path) -> pd.DataFrame:
    """Simulate one point (every strategy × run) into dest; return its summary rows."""
    from lab import metrics
    from lab.results import json_line
    from lab.sim.simulator import simulate

    profile = plan.models.partition(":")[2] or "embedded-cpu"
    sc = p.scenario(plan.strategies)
    frames = []
    for r in range(plan.runs):
        rd = dest / f"run-{r}"
        rd.mkdir(parents=True)
        records, cycles = [], []
        for q, cs in simulate(sc, list(plan.strategies), profile, queries=plan.queries, seed=r,
                              link_model=plan.link_model, temperature=plan.temperature,
                              warmup_queries=plan.warmup_queries):
            records.append(q)
            cycles += cs
        # One write per file, no fsync per record (JsonlWriter's): the point's folder only takes its
        # final name once everything in it is written, so a torn file is never read.
        for name, recs in (("queries.jsonl", records), ("cycles.jsonl", cycles)):
            (rd / name).write_text("".join(json_line(x) for x in recs))
        # The simulated TCP's retransmissions (edge + cloud), as the lab's RetransSegs counts both ends.
        retrans: dict[str, int] = {}
        for q in records:
            if q.get("warmup"):
                continue
            t = q.get("sim_tcp") or {}
            retrans[q["strategy"]] = retrans.get(q["strategy"], 0) + t.get("edge_retransmits", 0) \
                + t.get("cloud_retransmits", 0)
        df = metrics.summarize(records, scenario=p.name, backend="sim", models=plan.models,
                               retrans_by_strategy=retrans if plan.link_model == "tcp" else None)
        df = cycle_columns(records, df)
        frames.append(_grid_columns(df, p, r, sc.workload.payload, f"run-{r}"))
    return pd.concat(frames, ignore_index=True)


def run_point_lab(p: GridPoint, plan: Plan, dest: Path, out: Callable[[str], None] = print) -> pd.DataFrame:
    """Run one point through the kernel lab (the runner, root, the lab lock), every run; its rows."""
    from lab.results import read_jsonl
    from lab.runner import RunError, RunOptions, run_scenario
    from netns.lock import LAB_LOCK

    sc = p.scenario(plan.strategies)
    frames = []
    for r in range(plan.runs):
        opts = RunOptions(models=plan.models, strategies=plan.strategies, queries=plan.queries, seed=r,
                          temperature=plan.temperature, warmup_queries=plan.warmup_queries,
                          backend=plan.lab_backend, out=str(dest), progress=False)
        with LAB_LOCK.holding(f"sweep --lab {p.name} run {r}"):
            run_dir = run_scenario(sc, opts, out=lambda s: None)
        meta = json.loads((run_dir / "meta.json").read_text())
        if meta.get("status") != "complete" or not (run_dir / "summary.csv").exists():
            raise RunError(f"{p.name} run {r}: the lab run ended {meta.get('status')} ({run_dir})")
        df = cycle_columns(read_jsonl(run_dir / "queries.jsonl"), pd.read_csv(run_dir / "summary.csv"))
        frames.append(_grid_columns(df, p, r, sc.workload.payload, run_dir.name))
    return pd.concat(frames, ignore_index=True)


def execute_point(p: GridPoint, plan: Plan, dest: Path) -> dict:
    """Run point p into the (empty) folder dest: its runs, summary.csv, point.json last; return point.json."""
    t0 = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    df = run_point_sim(p, plan, dest) if plan.backend == "sim" else run_point_lab(p, plan, dest)
    df.to_csv(dest / "summary.csv", index=False)
    doc = {"point": asdict(p), "name": p.name, "status": "complete", "rows": len(df),
           "wall_s": round(time.perf_counter() - t0, 3), "host": os.uname().nodename}
    (dest / "point.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def point_files(point: dict, plan: dict) -> dict[str, bytes]:
    """A point run where Ray put it (lab/sweep_ray.py): into a temporary folder; its files by relative path."""
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="sdlab-ray-point-"))
    try:
        dest = tmp / "point"
        execute_point(GridPoint(**point), Plan.from_json(plan), dest)
        return {str(f.relative_to(dest)): f.read_bytes() for f in dest.rglob("*") if f.is_file()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- the folder

class SweepFolder:
    """The resumable folder: which points are finished, the staging of the others, the roll-ups."""

    def __init__(self, path: Path, plan: Plan, points: list[GridPoint]):
        self.path, self.plan = Path(path), plan
        self.points_dir = self.path / "points"
        doc_path = self.path / "sweep.json"
        known: list[GridPoint] = []
        if not doc_path.exists() and self.path.exists() and any(self.path.iterdir()):
            raise SweepError(f"--out {self.path}: not empty and not a sweep folder (no sweep.json); "
                             f"give a new folder or an earlier sweep's")
        if doc_path.exists():
            doc = json.loads(doc_path.read_text())
            old = Plan.from_json(doc["plan"])
            for k, v in asdict(plan).items():
                if asdict(old)[k] != v:
                    raise SweepError(f"--out {self.path}: holds a sweep with {k} = {asdict(old)[k]!r}, "
                                     f"this one asks {v!r}; use another --out (or the same plan to resume)")
            known = [GridPoint(**d) for d in doc["points"]]
        # Points asked for earlier keep their place; new ones extend the sweep.
        self.points = known + [p for p in points if p not in known]
        self.asked = points
        self.points_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(doc_path, json.dumps({"plan": plan.to_json(), "points": [asdict(p) for p in self.points]},
                                           indent=1) + "\n")
        for stale in self.points_dir.glob(".partial-*"):     # half-written: redo
            shutil.rmtree(stale)

    def done(self, p: GridPoint) -> bool:
        return (self.points_dir / p.name / "point.json").exists()

    def staging(self, p: GridPoint) -> Path:
        d = self.points_dir / f".partial-{p.name}"
        if d.exists():
            shutil.rmtree(d)
        return d

    def finish(self, p: GridPoint, staging: Path) -> None:
        """The point's folder takes its final name in one rename: finished, or not there at all."""
        if not (staging / "point.json").exists():
            raise SweepError(f"{staging}: no point.json; not finishing {p.name}")
        final = self.points_dir / p.name
        if final.exists():          # finished by a concurrent rerun of the same sweep: keep the first
            shutil.rmtree(staging)
            return
        os.rename(staging, final)
        self.roll_up()

    def roll_up(self) -> pd.DataFrame:
        """summary.csv and best.csv from every finished point, in the sweep's point order."""
        frames = [pd.read_csv(self.points_dir / p.name / "summary.csv").assign(point=p.name)
                  for p in self.points if self.done(p)]
        if not frames:
            return pd.DataFrame()
        df = pd.concat(frames, ignore_index=True)
        df["run_dir"] = "points/" + df["point"] + "/" + df["run_dir"].astype(str)
        df = df.drop(columns=["point"])
        _atomic_csv(self.path / "summary.csv", df)
        _atomic_csv(self.path / "best.csv", best_by_link(df))
        return df


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_csv(path: Path, df: pd.DataFrame) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def default_out(backend: str) -> Path:
    from lab.results import DEFAULT_RESULTS
    from datetime import datetime, timezone
    return DEFAULT_RESULTS / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-sweep-{backend}"


def run_sweep(points: list[GridPoint], plan: Plan, out_dir: str | Path | None = None,
              out: Callable[[str], None] = print, ray_address: str | None = None,
              progress: bool = True, jobs: int = 1) -> Path:
    """Run the unfinished points of the sweep folder; return it.  KeyboardInterrupt (Ctrl-C, SIGTERM via
    lab/cli.py) propagates after the meta says `interrupted`; finished points stay.  jobs > 1 runs
    simulator points in that many processes (the lab's points share one kernel link: one at a time)."""
    from lab.results import Meta
    from tqdm import tqdm

    path = Path(out_dir) if out_dir else default_out(plan.backend)
    folder = SweepFolder(path, plan, points)
    todo = [p for p in folder.asked if not folder.done(p)]
    meta = Meta(path, {"backend": plan.backend, "plan": plan.to_json(), "points_total": len(folder.points),
                       "points_asked": len(folder.asked), "points_to_run": len(todo), "ray": ray_address,
                       "jobs": jobs})
    where = f"Ray at {ray_address}" if ray_address else ("the kernel lab" if plan.backend == "lab" else
                                                      f"the simulator ({jobs} processes)" if jobs > 1 else "the simulator")
    out(f"sweep: {len(folder.asked)} links × {len(plan.strategies)} strategies × {plan.runs} runs in {where} "
        f"({plan.models}) → {path}" + (f"; {len(folder.asked) - len(todo)} already finished" if len(todo) < len(folder.asked) else ""))
    t0 = time.perf_counter()
    status, failed = "failed", []
    bar = tqdm(total=len(todo), unit="point", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    try:
        if ray_address:
            from lab import sweep_ray
            try:
                failed = sweep_ray.run_points_on_ray(todo, plan, folder, ray_address, bar, point_files)
            except sweep_ray.RayMissing as e:
                raise SweepError(str(e)) from None
        elif jobs > 1 and plan.backend == "sim" and len(todo) > 1:
            failed = _run_points_in_processes(todo, plan, folder, bar, jobs)
        else:
            for p in todo:
                bar.set_description(p.name)
                staging = folder.staging(p)
                _settle(p, staging, lambda: execute_point(p, plan, staging), folder, bar, failed)
        status = "complete" if not failed else "failed"
    except KeyboardInterrupt as e:
        status = "interrupted"
        meta.update(interrupted_by=getattr(e, "signal_name", "SIGINT"))
        n = sum(folder.done(p) for p in folder.asked)
        bar.write(f"sweep interrupted: {n}/{len(folder.asked)} points finished and kept in {path}; "
                  f"the same command resumes it", file=sys.stderr)
        raise
    finally:
        bar.close()
        meta.update(wall_s=round(time.perf_counter() - t0, 3),
                    points_failed=[{"point": p.name, "error": m} for p, m in failed],
                    points_finished=sum(folder.done(p) for p in folder.points))
        meta.finish(status)
    df = folder.roll_up()
    if len(df):
        out(format_best(best_by_link(df)))
    out(f"\n{len(todo) - len(failed)} points run in {time.perf_counter() - t0:.1f} s; {path / 'summary.csv'}")
    if failed:
        out(f"{len(failed)} points failed (rerun the same command to retry them): "
            + "; ".join(f"{p.name}: {m}" for p, m in failed))
    return path


POINT_TIMEOUT_S = 600.0      # a simulator point takes seconds; one that takes this long is stuck


def _run_points_in_processes(todo: list[GridPoint], plan: Plan, folder: "SweepFolder", bar, jobs: int) -> list:
    """Simulator points are independent and CPU-bound: `jobs` worker processes run them, and this
    process finishes each (the rename into place) as it completes, so an interrupted sweep keeps
    what finished, as the serial loop does.  Returns [(point, error)] of the failed ones."""
    from concurrent.futures import ProcessPoolExecutor, TimeoutError as FuturesTimeout, as_completed

    failed = []
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), initializer=_leave_ctrl_c_to_the_parent)
    try:
        futs = {}
        for p in todo:
            staging = folder.staging(p)
            futs[pool.submit(execute_point, p, plan, staging)] = (p, staging)
        try:
            for f in as_completed(futs, timeout=POINT_TIMEOUT_S * len(todo) / min(jobs, len(todo))):
                p, staging = futs[f]
                bar.set_description(p.name)
                _settle(p, staging, f.result, folder, bar, failed)
        except FuturesTimeout:
            raise SweepError(f"sweep: points still running after {POINT_TIMEOUT_S:.0f} s each; "
                             f"rerun the same command to resume") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return failed


def _settle(p: GridPoint, staging: Path, run: Callable[[], object], folder: "SweepFolder", bar, failed: list) -> None:
    """run() gives the point's outcome (runs it, or collects it from a worker): finished into place, or
    noted in `failed` with its staging folder removed; either way one step of the bar."""
    try:
        run()
    except _point_errors() as e:
        failed.append((p, str(e)))
        bar.write(f"  {p.name}: FAILED: {e}", file=sys.stderr)
        shutil.rmtree(staging, ignore_errors=True)
    else:
        folder.finish(p, staging)
    bar.update(1)


def _leave_ctrl_c_to_the_parent() -> None:
    """Ctrl-C reaches the whole foreground process group; the workers ignore it so that only this
    process stops the sweep (marks it interrupted, keeps the finished points), not a traceback each."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _point_errors() -> tuple:
    """What fails one point but not the sweep: a lab run that died (RunError), a busy lab."""
    from lab.runner import RunError
    return (RunError,)


# ---------------------------------------------------------------- ranking

def best_by_link(df: pd.DataFrame) -> pd.DataFrame:
    """Per link: the lossless strategy (one whose output is the target's) with the lowest median (over
    runs) E2E P50, its margin over the runner-up, and edge-only's E2E beside it — edge-only is faster
    where the network is bad but answers with the draft model's quality, so it is shown, not ranked.
    The ranking is the report's (lab/verdict.py rank_link)."""
    from lab.verdict import rank_link

    keys = [k for k in GRID_COLUMNS if k in df.columns]
    df = df.assign(**{k: df[k].fillna("tokens") for k in keys if k == "payload"})
    agg = df.groupby(keys + ["strategy"], sort=False)["e2e_ms_p50"].median().reset_index()
    rows = []
    for link, g in agg.groupby(keys, sort=False):
        r = rank_link(g)
        rows.append({**dict(zip(keys, link if isinstance(link, tuple) else (link,))),
                     "best": r["winner"], "e2e_ms_p50": r["winner_e2e_ms"], "runner_up": r["runner_up"],
                     "margin_pct": r["margin_pct"], "edge_only_e2e_ms_p50": r["edge"]})
    return pd.DataFrame(rows)


def format_best(best: pd.DataFrame) -> str:
    lines = ["", f"{'RTT ms':>7} {'Mbit/s':>7} {'jitter':>7} {'loss %':>7}  {'best lossless (E2E p50)':24s} "
                 f"{'ms':>7}  {'runner-up (+%)':24s} {'edge-only ms':>12}  payload"]
    for _, r in best.iterrows():
        runner = f"{r.runner_up} (+{r.margin_pct:.0f} %)" if isinstance(r.runner_up, str) else "–"
        lines.append(f"{r.rtt_ms:7g} {r.rate_mbit:7g} {r.jitter_ms:7g} {r.loss_pct:7g}  {str(r.best):24s} "
                     f"{r.e2e_ms_p50:7.0f}  {runner:24s} {r.edge_only_e2e_ms_p50:12.0f}  {r.get('payload', 'tokens')}")
    return "\n".join(lines)
