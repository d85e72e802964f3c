"""Whole scenarios hold the lab lock for the session (one lab at a time, netns/lock.py); the `python -m lab`
runs the tests start nest inside it, except where a test releases it to play two independent runs."""
import pytest

from tests.netns.conftest import hold_lab_lock, pytest_collection_modifyitems  # noqa: F401 — root-only skip


@pytest.fixture(scope="session", autouse=True)
def lab_lock():
    yield from hold_lab_lock("tests/e2e")
