"""Where the wire backend shapes the rate (pure; no root)."""
import pytest

from netns.link import LinkError
from netns.names import IFB_CLOUD, IFB_EDGE, TUN_IFNAME
from netns.wire import DEFAULT_PLACEMENT, WireBackend, shaping_devices


def test_default_shapes_each_direction_at_its_receivers_ifb():
    assert DEFAULT_PLACEMENT == "ifb"
    assert shaping_devices(("E", "C"), "ifb") == {"uplink": ("C", IFB_CLOUD), "downlink": ("E", IFB_EDGE)}
    assert shaping_devices(("E", "C"), "egress") == {"uplink": ("E", TUN_IFNAME), "downlink": ("C", TUN_IFNAME)}


def test_unknown_placement_is_a_one_line_error(monkeypatch):
    monkeypatch.setenv("SDLAB_WIRE_PLACEMENT", "middle")
    with pytest.raises(LinkError, match="unknown wire placement 'middle'"):
        WireBackend(topology=None)
