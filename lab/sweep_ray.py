"""`sweep --ray ADDRESS`: the points of a sweep as Ray tasks, gathered into the same resumable folder.

Ray is an optional extra (`pip install '.[ray]'`, or SDLAB_EXTRAS=ray for scripts/setup.sh); nothing
else imports it.  Each point is one task, lab/sweep.py's point_files: it runs execute_point into a
temporary folder on whichever host Ray picks and returns the folder's files; this process writes them under the
point's .partial- name and renames it, exactly as a local point finishes — so a Ray sweep is resumed
by the same command with or without --ray, and its folder reads the same.

A lab point needs the host's network namespaces to itself: lab tasks ask for one unit of the custom
resource LAB_RESOURCE, which every host offers once (`ray start … --resources='{"sdlab_lab": 1}'`;
`--ray local` starts a one-host instance here with it), so a host runs one lab at a time — and the
task still takes the host's lab lock, as any lab run does.  Every host needs this checkout at the same
path with its .venv (the tasks import lab/ from it: PYTHONPATH) and, for lab points, root.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import Path

LAB_RESOURCE = "sdlab_lab"
WAIT_S = 1.0              # how often the gathering loop wakes (Ctrl-C is seen at once, not after a point)



class RayMissing(Exception):
    """Ray is not installed; the message says how to install it."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayMissing("--ray: Ray is not installed (it is an optional extra: .venv/bin/pip install '.[ray]', "
                         "or SDLAB_EXTRAS=ray make setup)") from None
    return ray


def connect(address: str):
    """ray.init for `address` ("local": a one-host instance started here, offering LAB_RESOURCE once)."""
    from lab.results import REPO_ROOT
    ray = _ray()
    from netns.lock import LOCK_ENV
    env_vars = {"PYTHONPATH": str(REPO_ROOT)}
    if os.environ.get(LOCK_ENV):     # a sweep started inside a held lab lock (the e2e suite): tasks nest in it
        env_vars[LOCK_ENV] = os.environ[LOCK_ENV]
    env = {"env_vars": env_vars}
    if address == "local":
        ray.init(resources={LAB_RESOURCE: 1}, include_dashboard=False, runtime_env=env, log_to_driver=False,
                 configure_logging=False)
    else:
        ray.init(address=address, runtime_env=env, log_to_driver=False, configure_logging=False)
    return ray


def unpack(files: dict[str, bytes], dest: Path) -> None:
    for rel, data in files.items():
        target = dest / rel
        if ".." in Path(rel).parts:
            raise ValueError(f"a task returned a path outside its point: {rel!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _with_default_sigterm(point_task):
    """point_task with SIGTERM's default action in the worker.  Ray's workers handle SIGTERM by raising
    SystemExit and disconnecting from the raylet; pyroute2 forks a child to open each namespace's
    netlink socket and ends it with SIGTERM, and the child, running Ray's inherited handler, tore down
    the worker's raylet connection: every lab point died as "the worker died unexpectedly"."""
    def run(point: dict, plan: dict) -> dict[str, bytes]:
        import signal
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return point_task(point, plan)
    return run


def run_points_on_ray(todo, plan, folder, address: str, bar, point_task) -> list[tuple]:
    """Submit every unfinished point, finish each as it returns; (point, message) for the failed ones.
    point_task(point dict, plan dict) → {relative path: bytes}: lab/sweep.py's point_files, run remotely."""
    ray = connect(address)
    failed = []
    try:
        options = {"num_cpus": 1, "max_retries": 0}
        if plan.backend == "lab":
            options["resources"] = {LAB_RESOURCE: 1}
        task = ray.remote(**options)(_with_default_sigterm(point_task))
        pending = {task.remote(asdict(p), plan.to_json()): p for p in todo}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                for ref in done:
                    p = pending.pop(ref)
                    try:
                        files = ray.get(ref, timeout=60)
                    except ray.exceptions.RayError as e:
                        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                        failed.append((p, msg))
                        bar.write(f"  {p.name}: FAILED on Ray: {msg}", file=sys.stderr)
                    else:
                        staging = folder.staging(p)
                        unpack(files, staging)
                        folder.finish(p, staging)
                    bar.update(1)
        except KeyboardInterrupt:
            for ref in pending:          # points not finished stay unfinished; the same command resumes
                ray.cancel(ref, force=True)
            raise
    finally:
        ray.shutdown()
    return failed
