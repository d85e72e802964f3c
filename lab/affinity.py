"""CPU placement of the node processes.

The edge and the cloud are different machines; when the host has room, the lab gives
each node its own cores, so a message wakes a process on another core every
time instead of sometimes on its own core and sometimes on the other's.  By default
each node uses every core (DEFAULT_THREADS_PER_NODE), so they share them unpinned.
Left to the scheduler, the per-message host cost on a 0 ms link is bimodal
(which is what `lan`'s network time is made of; figures in
docs/MEASUREMENTS.md, "Node placement").
"""
from __future__ import annotations

import os

# torch threads per node process: every CPU, shared.  The speculative cycle is sequential (the edge
# waits while the cloud verifies and vice versa), so one pinned core per node leaves a core idle in
# every phase; all cores per node ran the embedded pair 1.8x faster on `lan` (docs/MEASUREMENTS.md,
# "dtype, threads and block verify").  Nodes are pinned only when they get disjoint cores.
DEFAULT_THREADS_PER_NODE = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_node(models: str, strategies) -> int:
    """The default layout for a run.  Synthetic models compute nothing: one pinned core per node keeps
    their per-message host cost unimodal, as validate's comparison with the simulator assumes.  A run
    with a pipelined strategy gets disjoint cores too: there the edge drafts while the cloud verifies,
    and on shared cores the two fight (docs/MEASUREMENTS.md: on 2 cores, wan-50ms, pipelined:3 fell to
    2.2 tok/s shared against fixed-k:3's 5.5).  Otherwise every core per node, shared."""
    from lab.core.strategies import make_strategy
    overlapping = any(getattr(make_strategy(s), "pipeline_depth", 0) for s in strategies)
    if models.startswith("synthetic"):
        return 1
    return max(1, DEFAULT_THREADS_PER_NODE // 2) if overlapping else DEFAULT_THREADS_PER_NODE


def node_cpus(threads_per_node: int) -> dict[str, set[int]]:
    """{"edge": …, "cloud": …}: disjoint CPU sets when the host has room for both, else {} (no pinning)."""
    try:
        avail = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return {}
    if len(avail) < 2 * threads_per_node:
        return {}
    return {"edge": set(avail[:threads_per_node]), "cloud": set(avail[-threads_per_node:])}


def format_cpus(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def parse_cpus(text: str) -> set[int]:
    """'0,3' → {0, 3}; the node's --cpus argument."""
    try:
        cpus = {int(c) for c in text.split(",") if c.strip()}
    except ValueError:
        raise ValueError(f"--cpus takes comma-separated CPU numbers, got {text!r}") from None
    if not cpus:
        raise ValueError("--cpus is empty")
    return cpus


def pin(text: str | None) -> None:
    """Pin this process (and the threads it starts afterwards) to the CPUs in `text`, if given."""
    if text:
        os.sched_setaffinity(0, parse_cpus(text))
