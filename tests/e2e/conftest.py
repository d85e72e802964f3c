"""The e2e suite needs root (it runs `python -m lab scenario`, which builds namespaces): without it,
every test here is skipped with the reason; this conftest gates its own folder.  Whole scenarios hold
the lab lock for the session (one lab at a time, netns/lock.py); the `python -m lab` runs the tests
start nest inside it, except where a test releases it to play two independent runs."""
import os
import signal
from pathlib import Path

import pytest

from tests.netns.conftest import hold_lab_lock


def ctrl_c_as_in_a_terminal():
    """preexec_fn for a child that a test stops with SIGINT: its default back, as under a terminal.  A
    suite started in the background (CI under `&`, nohup) inherits SIGINT *ignored*, and Python then
    never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (network namespaces); run: sudo make test")
        for item in items:
            if Path(__file__).parent in Path(item.fspath).parents:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def lab_lock():
    yield from hold_lab_lock("tests/e2e")
