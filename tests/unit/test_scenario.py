"""Scenario schema: every shipped file loads; every malformed one gets a one-line error naming file and key."""
import itertools
import textwrap

import pytest

from lab.scenario import ScenarioError, available, load_scenario, parse_scenario, resolve_path
from netns.link import LinkError, LinkPair, LinkSpec


@pytest.mark.parametrize("name", available())
def test_every_shipped_scenario_loads(name):
    sc = load_scenario(name)
    assert sc.name == name
    assert sc.description, f"{name} should say what it models"
    assert isinstance(sc.link, LinkPair)
    for spec in (sc.link.uplink, sc.link.downlink):
        assert spec.problem() is None
        assert spec.effective_limit_pkts() >= 1000


def test_shipped_set_covers_the_issue():
    assert {"lan", "wan-50ms", "lossy-5pct", "jittery", "slow-1mbit", "sat-500ms", "oscillating"} <= set(available())


def test_lossy_scenario_values():
    sc = load_scenario("lossy-5pct")
    assert sc.link.rtt_ms == 50
    assert sc.link.uplink == sc.link.downlink == LinkSpec(delay_ms=25, loss_pct=5, rate_mbit=10)


def test_uplink_downlink_overrides():
    sc = load_scenario("asymmetric")
    assert sc.link.uplink.rate_mbit == 5 and sc.link.downlink.rate_mbit == 50
    assert sc.link.uplink.delay_ms == 20 and sc.link.downlink.delay_ms == 10


def test_oscillating_timeline_repeats():
    sc = load_scenario("oscillating")
    assert sc.timeline.link_at(1, sc.link).rtt_ms == 10
    assert sc.timeline.link_at(11, sc.link).rtt_ms == 200
    assert sc.timeline.link_at(21, sc.link).rtt_ms == 10
    times = [t for t, _ in itertools.takewhile(lambda c: c[0] <= 45, sc.timeline.changes(sc.link))]
    assert times == [10, 20, 30, 40]
    # Steps patch the base link: the rate is kept.
    assert sc.timeline.link_at(11, sc.link).uplink.rate_mbit == 100


def _write(tmp_path, body, name="bad.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


@pytest.mark.parametrize("body, key, words", [
    ("link: {delay_ms: 5}\nbogus: 1\n", "bogus", "unknown key"),
    ("link: {delay_ms: 5, speed: 3}\n", "link.speed", "unknown key"),
    ("link: {delay_ms: -5}\n", "link.delay_ms", ">= 0"),
    ("link: {delay_ms: 5, loss_pct: 150}\n", "link.loss_pct", "between 0 and 100"),
    ("link: {delay_ms: 5, rate_mbit: 0}\n", "link.rate_mbit", "> 0"),
    ("link: {delay_ms: fast}\n", "link.delay_ms", "must be a number"),
    ("link: {delay_ms: 5, downlink: {loss_pct: -1}}\n", "link.downlink.loss_pct", "between 0 and 100"),
    ("link: {delay_ms: 5, jitter_ms: 9}\n", "link.jitter_ms", "<= delay_ms"),
    ("link: {delay_ms: 5, limit_pkts: 2.5}\n", "link.limit_pkts", "whole number"),
    ("link: [1, 2]\n", "link", "must be a mapping"),
    ("description: no link\n", "link", "missing"),
    ("link: {}\ntimeline: {steps: [{at_s: 5, link: {}}, {at_s: 2, link: {}}]}\n", "timeline.steps[1].at_s", "increase"),
    ("link: {}\ntimeline: {steps: [{at_s: 0, link: {delay_ms: -1}}]}\n", "timeline.steps[0].link.delay_ms", ">= 0"),
    ("link: {}\nbackend: magic\n", "backend", "one of"),
    ("link: {}\nworkload: {queries: 0}\n", "workload.queries", "> 0"),
    ("link: {}\nworkload: {payload: topk:x}\n", "workload.payload", "topk:N"),
    ("link: {}\nstrategies: fixed-k:5\n", "strategies", "list"),
    ("link: {}\nstrategies: [cloud-only, teleport]\n", "strategies[1]", "unknown strategy 'teleport' (known: cloud-only"),
    ("link: {}\nstrategies: [fixed-k:0]\n", "strategies[0]", "fixed-k"),
    ("link: {}\ntcp: {congestion_control: 5}\n", "tcp.congestion_control", "string"),
])
def test_malformed_file_gets_one_line_error_naming_file_and_key(tmp_path, body, key, words):
    path = _write(tmp_path, body)
    with pytest.raises(ScenarioError) as exc:
        load_scenario(str(path))
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {key}: "), msg
    assert words in msg


def test_invalid_yaml_names_the_line(tmp_path):
    path = _write(tmp_path, "link: {delay_ms: 5\nname: x\n")
    with pytest.raises(ScenarioError, match=r"line \d+: not valid YAML"):
        load_scenario(str(path))


def test_empty_file(tmp_path):
    path = _write(tmp_path, "")
    with pytest.raises(ScenarioError, match="empty"):
        load_scenario(str(path))


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ScenarioError, match="known: .*lossy-5pct"):
        resolve_path("no-such-scenario")


def test_path_argument(tmp_path):
    path = _write(tmp_path, "link: {delay_ms: 7, rate_mbit: 3}\n", name="mine.yaml")
    sc = load_scenario(str(path))
    assert sc.name == "mine" and sc.link.uplink.delay_ms == 7


def test_linkspec_limit_from_bdp():
    # 100 Mbit/s × 250 ms = 3.125 MB in flight → 2×BDP / 1500 B = 4167 packets.
    assert LinkSpec(delay_ms=250, rate_mbit=100).effective_limit_pkts() == 4167
    assert LinkSpec(delay_ms=5, rate_mbit=10).effective_limit_pkts() == 1000
    assert LinkSpec(limit_pkts=50).effective_limit_pkts() == 50
    with pytest.raises(LinkError, match="rate_mbit"):
        LinkSpec(rate_mbit=-1)


def test_link_error_carries_the_field_as_data():
    with pytest.raises(LinkError) as e:
        LinkSpec(delay_ms=5, jitter_ms=8)
    assert e.value.field == "jitter_ms" and e.value.reason.startswith("must be <= delay_ms (5")
    assert str(e.value) == f"jitter_ms: {e.value.reason}"


def test_parse_round_trip_to_dict():
    sc = parse_scenario({"link": {"delay_ms": 10, "uplink": {"rate_mbit": 2}}}, source="t")
    d = sc.to_dict()
    assert d["link"]["uplink"]["rate_mbit"] == 2 and d["link"]["downlink"]["rate_mbit"] is None
