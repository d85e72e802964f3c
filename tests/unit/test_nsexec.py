"""in_namespace waits for its helper process at most CHILD_TIMEOUT_S, then kills it (no namespace needed:
setns is replaced by a no-op, so the forked child runs fn where it is)."""
import time

import pytest

import netns.nsexec as nsexec
from netns.link import LinkError


@pytest.fixture
def no_setns(monkeypatch):
    monkeypatch.setattr(nsexec.netns, "setns", lambda ns, flags=0: None)


def test_result_comes_back(no_setns):
    assert nsexec.in_namespace("sdl-none", lambda a, b: {"sum": a + b}, 2, 3) == {"sum": 5}


def test_a_child_that_never_answers_is_killed_at_the_timeout(no_setns, monkeypatch):
    monkeypatch.setattr(nsexec, "CHILD_TIMEOUT_S", 0.5)
    t = time.monotonic()
    with pytest.raises(LinkError, match="no answer within 0.5 s; killed"):
        nsexec.in_namespace("sdl-none", time.sleep, 30)
    # in_namespace reaps its child before returning: a child still sleeping would hold it for 30 s.
    assert time.monotonic() - t < 5
