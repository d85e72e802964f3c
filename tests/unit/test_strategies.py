"""The strategy registry: names resolve, parameters are checked, baselines behave as documented."""
import pytest

from lab.core.strategies import CycleObservation, StrategyError, known_strategies, make_strategy


@pytest.mark.parametrize("spec, placement, k", [
    ("cloud-only", "cloud", 0),
    ("edge-only", "edge", 0),
    ("cloud-spec", "cloud-spec", 5),
    ("cloud-spec:3", "cloud-spec", 3),
    ("fixed-k:1", "split", 1),
    ("fixed-k:15", "split", 15),
])
def test_baselines(spec, placement, k):
    s = make_strategy(spec)
    assert s.placement == placement
    s.start_query()
    assert s.next_k() == k
    s.observe(CycleObservation(k=k, accepted=0, cycle_ms=1, network_ms=0.5, cloud_compute_ms=0.3,
                               edge_compute_ms=0.2))
    assert s.next_k() == k
    assert s.name == spec


@pytest.mark.parametrize("spec, words", [
    ("fixed-k", "needs a draft length"),
    ("fixed-k:0", "from 1 to 64"),
    ("fixed-k:abc", "whole number"),
    ("teleport", "unknown strategy"),
    ("cloud-only:3", "takes no parameter"),
])
def test_bad_names(spec, words):
    with pytest.raises(StrategyError, match=words):
        make_strategy(spec)


def test_registry_lists_baselines():
    assert {"cloud-only", "cloud-spec", "edge-only", "fixed-k"} <= set(known_strategies())
