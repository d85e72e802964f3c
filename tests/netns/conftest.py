"""Root-only fixtures: a lab topology with a test prefix, removed on every path."""
import os
import subprocess
from pathlib import Path

import pytest

from netns.link import LinkPair, LinkSpec

PREFIX = os.environ.get("SDLAB_TEST_PREFIX", "sdl-t-")
BACKEND = os.environ.get("SDLAB_BACKEND", "auto")
# In the software-emulated guest of `make vm-test` (SDLAB_TCG=1) timers fire late and a Python TCP
# round trip costs more, and more so on longer delays: measured +0.4 to +2.2 ms (November runs), and on a
# quiet host +4.3 ms at RTT 30 ms and +7.6 ms at RTT 80 ms (2026-11-25).  These tests check that the
# netem backend does what it is told (a change takes effect mid-connection, asymmetric delays); its
# precision is linkcheck's job (kernel ping, labelled allowance).  On the host the slack is 0.
TCG = os.environ.get("SDLAB_TCG") == "1"


def tcg_slack_ms(rtt_ms: float) -> float:
    """Extra RTT tolerance inside the TCG guest: linkcheck's allowance plus 10 % of the RTT."""
    if not TCG:
        return 0.0
    from netns.fidelity.linkcheck import TCG_RTT_ALLOWANCE_MS
    return TCG_RTT_ALLOWANCE_MS + 0.1 * rtt_ms


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (network namespaces); run: sudo make test")
        for item in items:
            if Path(__file__).parent in Path(item.fspath).parents:
                item.add_marker(skip)


def ip_netns_list() -> list[str]:
    """Independent cross-check with iproute2 (the product itself never shells out)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


@pytest.fixture
def topo():
    from netns.topology import Topology
    t = Topology(backend=BACKEND, prefix=PREFIX)
    try:
        yield t
    finally:
        t.down()
        left = [n for n in ip_netns_list() if n.startswith(PREFIX)]
        assert not left, f"namespaces left behind: {left}"


def sym(**kw) -> LinkPair:
    return LinkPair.symmetric(LinkSpec(**kw))
