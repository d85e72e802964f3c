"""Where the rate is shaped: a lossless, rate-limited bulk transfer with the kernel's default congestion
control retransmits only what the emulated link dropped — at its bottleneck, on the receiver's side —
never packets the sending host dropped itself (a tbf on the sender's own device would be a local
congestion signal that no real link gives)."""
import pytest

from netns.fidelity.linkcheck import side_drops
from netns.fidelity.probe import run_goodput
from netns.topology import CLOUD_ADDR, EDGE_ADDR
from tests.netns.conftest import sym

pytestmark = pytest.mark.root


@pytest.mark.parametrize("rtt_ms", [0, 20])
def test_lossless_bulk_retransmits_only_the_links_drops(topo, rtt_ms):
    topo.up(sym(delay_ms=rtt_ms / 2, rate_mbit=10))
    before = side_drops(topo)
    run = run_goodput(topo.popen, direction="uplink", measure_s=2.0, rtt_ms=rtt_ms,
                      edge_addr=EDGE_ADDR, cloud_addr=CLOUD_ADDR)
    after = side_drops(topo)
    sender, link = after["edge"] - before["edge"], after["cloud"] - before["cloud"]
    assert run.cc == topo.congestion_control            # the kernel's default: the fixture sets none
    assert sender == 0, f"the sending host's own qdiscs dropped {sender} packets ({run.retransmits} rtx)"
    # Every retransmission repaired a drop of the link's, or the receiver had the segment already
    # (D-SACK): a timer that fired while the TCG guest stalled resends what was never lost.
    repairs = run.retransmits - (run.spurious or 0)
    assert repairs <= link, (f"{run.retransmits} retransmissions ({run.spurious} reported duplicate by the "
                             f"receiver) but the link dropped {link}")
