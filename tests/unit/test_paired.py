"""Paired loss (netns/paired.py): the ZMTP message index, packet keys, and the loss process."""
import random
import struct

import pytest

from netns import paired as pl
from netns.link import LinkPair, LinkSpec


def _frame(body: bytes, more=False, command=False) -> bytes:
    flags = (pl.ZMTP_MORE if more else 0) | (pl.ZMTP_COMMAND if command else 0)
    if len(body) > 255:
        return bytes([flags | pl.ZMTP_LONG]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def _stream(messages: list[list[bytes]]) -> tuple[bytes, list[tuple[int, int]]]:
    """Greeting + READY + the messages (and a heartbeat command between two); (bytes, extents)."""
    out = bytearray(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x01" + b"NULL".ljust(20, b"\0") + b"\0" * 32)
    assert len(out) == pl.ZMTP_GREETING
    out += _frame(b"\x05READY" + b"\x0bSocket-Type\0\0\0\x06DEALER", command=True)
    extents = []
    for i, frames in enumerate(messages):
        start = len(out)
        for j, body in enumerate(frames):
            out += _frame(body, more=j < len(frames) - 1)
        extents.append((start, len(out)))
        if i == 1:
            out += _frame(b"\x04PING\0\0", command=True)
    return bytes(out), extents


MESSAGES = [[b'{"type":"hello"}'], [b"h" * 40, b"x" * 300], [b"", b"tail"], [b"y" * 3000], [b"z"]]


@pytest.mark.parametrize("chunk", [1, 7, 100, 1448, 100000])
def test_message_stream_finds_every_message_whatever_the_segmentation(chunk):
    data, extents = _stream(MESSAGES)
    s = pl.MessageStream()
    for i in range(0, len(data), chunk):
        s.feed(data[i:i + chunk])
    assert s.zmtp and s.fed == len(data)
    assert list(zip(s.starts, s.ends)) == extents
    assert s.locate(extents[3][0] + 1500) == (3, 1500)
    assert s.locate(10) is None                                   # inside the greeting
    assert s.complete_before(extents[2][1]) == 3 and s.complete_before(extents[2][1] - 1) == 2


def test_a_stream_that_is_not_zmtp_is_keyed_by_offset():
    s, o = pl.MessageStream(), pl.Ordinals()
    s.feed(b"GET / HTTP/1.1\r\n")
    assert s.zmtp is False
    assert pl.data_key(s, o, 0) == ("s", 0, 0) and pl.data_key(s, o, 0) == ("s", 0, 1)


def test_retransmissions_get_new_keys_and_draws():
    s, o = pl.MessageStream(), pl.Ordinals()
    s.add_message(0, 120)
    s.add_message(120, 200)
    first, again = pl.data_key(s, o, 0), pl.data_key(s, o, 0)
    assert first == ("d", 0, 0, 0) and again == ("d", 0, 0, 1)
    assert pl.data_key(s, o, 120) == ("d", 1, 0, 0)
    assert pl.keyed_uniform(3, "up", first) != pl.keyed_uniform(3, "up", again)
    assert pl.keyed_uniform(3, "up", first) == pl.keyed_uniform(3, "up", ("d", 0, 0, 0))
    assert pl.keyed_uniform(3, "up", first) != pl.keyed_uniform(3, "down", first)
    assert pl.keyed_uniform(3, "up", first) != pl.keyed_uniform(4, "up", first)


def test_keyed_draws_are_uniform_so_loss_stays_bernoulli():
    from scipy.stats import binomtest, kstest
    u = [pl.keyed_uniform(7, "up", ("d", m, 0, 0)) for m in range(20000)]
    assert kstest(u, "uniform").pvalue > 1e-3
    lost = sum(x * 100 < 5 for x in u)
    assert binomtest(lost, len(u), 0.05).pvalue > 1e-3


def _ipv4_tcp(seq: int, ack: int, flags: int, payload: bytes = b"", sport=40000, dport=5555, up=True) -> bytes:
    src, dst = bytes([198, 18, 0, 1]), bytes([198, 18, 0, 2])
    if not up:
        src, dst, sport, dport = dst, src, dport, sport
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0, 64, 6, 0, src, dst)
    return ip + tcp + payload


def test_relay_keyer_names_segments_by_message_as_the_simulator_does():
    data, extents = _stream(MESSAGES)
    k = pl.PacketKeyer()
    isn_up, isn_down = 1_000_000, 4_294_967_000          # the second wraps around 2^32
    assert k.key("up", _ipv4_tcp(isn_up, 0, pl.TCP_SYN))[0] == "n"
    assert k.key("down", _ipv4_tcp(isn_down, isn_up + 1, pl.TCP_SYN | pl.TCP_ACK, up=False))[0] == "n"
    keys = []
    for off in range(0, len(data), 1448):
        keys.append(k.key("up", _ipv4_tcp(isn_up + 1 + off, isn_down + 1, pl.TCP_ACK, data[off:off + 1448])))
    assert keys[0][0] == "p"                                   # greeting, READY, the first message's head
    # a retransmission of the segment holding message 3's second bucket
    start3 = extents[3][0]
    seg = (start3 + 1448) // 1448 * 1448
    rtx = k.key("up", _ipv4_tcp(isn_up + 1 + seg, isn_down + 1, pl.TCP_ACK, data[seg:seg + 1448]))
    assert rtx[0] == "d" and rtx[1] == 3 and rtx[3] == 1
    # the simulator's view of the same messages: same keys for the same first transmissions
    sim, o = pl.MessageStream(), pl.Ordinals()
    for a, b in extents:
        sim.add_message(a, b)
    assert pl.data_key(sim, o, start3) == ("d", 3, 0, 0)
    # pure ACKs from the cloud, keyed by how many up messages they cover
    a1 = k.key("down", _ipv4_tcp(isn_down + 1, isn_up + 1 + extents[1][1], pl.TCP_ACK, up=False))
    a2 = k.key("down", _ipv4_tcp(isn_down + 1, isn_up + 1 + extents[1][1], pl.TCP_ACK, up=False))
    assert a1 == ("a", 2, 0) and a2 == ("a", 2, 1)


def test_simulated_link_with_a_paired_seed_is_independent_of_its_own_generator():
    """Same paired seed, different generator seeds: the same first transmissions are lost."""
    from lab.sim.netsim import TcpLinkModel
    spec = LinkSpec(delay_ms=10, jitter_ms=2, loss_pct=5)
    runs = []
    for seed in (1, 2):
        m = TcpLinkModel(LinkPair(spec, spec), seed=seed, paired_seed=9)
        t = 0.0
        for i in range(400):
            t = m.send(t, "up", 200) + 1.0
            t = m.send(t, "down", 120) + 1.0
        runs.append({d: {pl.first_transmission(k) for k in keys} - {None} for d, keys in m.lost_keys.items()})
    assert 10 < len(runs[0]["up"]) < 40
    assert runs[0] == runs[1]


def test_relay_delay_line_uses_the_packets_own_draws_when_given():
    from netns.wire import DelayLine
    line = DelayLine(LinkSpec(delay_ms=5, jitter_ms=2, loss_pct=5), random.Random(0))
    assert line.admit(0, {"loss": 0.049, "jitter": 0.5}.get) is None        # 4.9 < 5: lost
    due, _ = line.admit(0, {"loss": 0.051, "jitter": 1.0}.get)
    assert due == int(7.0 * 1e6)                                             # delay + jitter·(2u − 1)
    due, _ = line.admit(0, {"loss": 0.9, "jitter": 0.0}.get)
    assert due == int(3.0 * 1e6)
    assert line.stats.lost == 1 and line.stats.received == 3
    clean = DelayLine(LinkSpec(delay_ms=5), random.Random(0))
    assert clean.admit(0, {"loss": 0.0, "jitter": 0.0}.get) is not None     # no loss configured: not used


def test_packet_draws_for_loss_and_jitter_are_distinct_and_reproducible():
    key = ("d", 3, 0, 0)
    assert pl.packet_draw(1, "up", key, "loss") == pl.keyed_uniform(1, "up", key)
    assert pl.packet_draw(1, "up", key, "jitter") != pl.packet_draw(1, "up", key, "loss")
    assert pl.packet_draw(1, "up", key, "jitter") == pl.packet_draw(1, "up", key, "jitter")


def test_validate_counts_the_lab_losses_the_simulator_drew_too(tmp_path):
    import json
    from types import SimpleNamespace
    from lab.validate import paired_loss_match
    (tmp_path / "paired_loss.json").write_text(json.dumps(
        {"seed": 0, "messages": {"up": 10, "down": 10}, "lost_first_tx": {"up": [[1, 0], [4, 0]], "down": [[7, 0]]}}))
    link = SimpleNamespace(lost_keys={"up": [("d", 1, 0, 0), ("d", 4, 0, 1), ("a", 3, 0)],
                                      "down": [("d", 7, 0, 0), ("d", 9, 0, 0)]})
    assert paired_loss_match(tmp_path, link) == "2/3"          # (4, 0)'s first transmission got through in the sim
    assert paired_loss_match(tmp_path / "nothing", link) == ""
