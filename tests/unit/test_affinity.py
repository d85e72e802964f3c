"""lab/affinity.py: where the node processes run."""
import os

import pytest

from lab import affinity


def test_disjoint_cpus_for_edge_and_cloud_when_the_host_has_room(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert affinity.node_cpus(1) == {"edge": {0}, "cloud": {3}}
    assert affinity.node_cpus(2) == {"edge": {0, 1}, "cloud": {2, 3}}
    assert affinity.node_cpus(3) == {}                      # not enough for two disjoint sets: no pinning
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert affinity.node_cpus(1) == {}


def test_cpu_lists_parse_and_bad_ones_are_named():
    assert affinity.parse_cpus("0,3") == {0, 3}
    assert affinity.format_cpus({3, 0}) == "0,3"
    with pytest.raises(ValueError, match="--cpus takes comma-separated CPU numbers, got 'a'"):
        affinity.parse_cpus("a")
    with pytest.raises(ValueError, match="empty"):
        affinity.parse_cpus(",")


def test_pin_sets_this_process_affinity(monkeypatch):
    calls = []
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: calls.append((pid, cpus)))
    affinity.pin(None)
    affinity.pin("1")
    assert calls == [(0, {1})]


def test_default_layout_gives_pipelined_runs_their_own_cores(monkeypatch):
    """Sequential strategies share every core; a run where edge and cloud compute at once (pipelined)
    gets half the cores per node, so node_cpus can pin them apart; synthetic runs one pinned core."""
    from lab import affinity
    monkeypatch.setattr(affinity, "DEFAULT_THREADS_PER_NODE", 4)
    assert affinity.threads_per_node("embedded", ["cloud-only", "fixed-k:3"]) == 4
    assert affinity.threads_per_node("embedded", ["fixed-k:3", "pipelined:3"]) == 2
    assert affinity.threads_per_node("synthetic:fast", ["pipelined:3"]) == 1
