"""The e2e suite needs root (it runs `python -m lab scenario`, which builds namespaces): without it,
every test here is skipped with the reason.  This conftest gates its own folder, so
`pytest tests/e2e` alone is gated as well as `pytest tests`."""
import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (network namespaces); run: sudo make test")
        for item in items:
            if Path(__file__).parent in Path(item.fspath).parents:
                item.add_marker(skip)
