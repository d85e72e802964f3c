"""tbf sizing shared by both backends."""
from netns.link import LinkSpec
from netns.tbf import FRAME_BYTES, MIN_QUEUE_FRAMES, tbf_options


def _queue_bytes(opts, rate_mbit):
    return rate_mbit * 1e6 / 8 * int(opts["latency"].rstrip("us")) / 1e6


def test_unshaped_has_no_tbf():
    assert tbf_options(LinkSpec(delay_ms=10), 20) is None


def test_queue_covers_an_rtt_at_high_rates_and_ten_frames_at_low_ones():
    fast = tbf_options(LinkSpec(rate_mbit=100), rtt_ms=100)
    assert fast["latency"] == "105000us" and fast["rate"] == "100000000bit"
    slow = tbf_options(LinkSpec(rate_mbit=1), rtt_ms=0)
    assert _queue_bytes(slow, 1) >= MIN_QUEUE_FRAMES * FRAME_BYTES - 1
    assert _queue_bytes(slow, 1) < 2 * MIN_QUEUE_FRAMES * FRAME_BYTES     # not seconds of bufferbloat


def test_burst_is_two_ms_of_the_rate_but_at_least_two_frames():
    assert tbf_options(LinkSpec(rate_mbit=100), 0)["burst"] == 25_000
    assert tbf_options(LinkSpec(rate_mbit=1), 0)["burst"] == 2 * FRAME_BYTES
