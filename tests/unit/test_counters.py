"""Kernel facts the runner records: HZ (from the kernel config or jiffies in /proc/timer_list) and the
jiffy grid that follows from it.  Fake files only; no root."""
import gzip

import pytest

from netns.counters import hz_from_config, hz_from_timer_lists, jiffy_grid_ms, kernel_hz


def timer_list(now_ns: int, jiffies: int) -> str:
    return (f"Timer List Version: v0.10\nHRTIMER_MAX_CLOCK_BASES: 8\nnow at {now_ns} nsecs\n\ncpu: 0\n"
            f" clock 0:\n  .base: 0\n\njiffies: {jiffies}\n")


def test_hz_comes_from_the_kernel_config_plain_or_gzipped(tmp_path):
    plain = tmp_path / "config-6.1"
    plain.write_text("# CONFIG_HZ_250 is not set\nCONFIG_HZ_1000=y\nCONFIG_HZ=1000\n")
    assert hz_from_config(plain.read_text()) == 1000
    assert kernel_hz(config_paths=(str(tmp_path / "missing"), str(plain))) == (1000, str(plain))
    gz = tmp_path / "config.gz"
    with gzip.open(gz, "wt") as f:
        f.write("CONFIG_HZ=300\n")
    assert kernel_hz(config_paths=(str(gz),))[0] == 300
    assert hz_from_config("CONFIG_NET=y\n") is None


def test_hz_is_counted_from_jiffies_when_no_config_is_readable(tmp_path):
    # 1000 Hz: 201 jiffies in 200 ms (one more from where the tick fell) still reads 1000
    assert hz_from_timer_lists(timer_list(5_000_000_000, 4_294_000_000),
                               timer_list(5_200_000_000, 4_294_000_201)) == 1000
    assert hz_from_timer_lists(timer_list(5_000_000_000, 100), timer_list(5_200_000_000, 150)) == 250
    assert hz_from_timer_lists(timer_list(5_000_000_000, 100), timer_list(5_000_000_000, 100)) is None
    assert hz_from_timer_lists(timer_list(5_000_000_000, 100), timer_list(5_200_000_000, 140)) is None  # 200 Hz
    static = tmp_path / "timer_list"
    static.write_text(timer_list(5_000_000_000, 100))
    hz, why = kernel_hz(config_paths=(), timer_list=str(static), sample_s=0.0)
    assert hz is None and "timer_list" in why


def test_the_jiffy_grid_follows_hz(tmp_path):
    f = tmp_path / "timer_list"
    f.write_text(timer_list(10_000_000_000, 512 * 1000 + 100))   # 100 jiffies past a grid boundary
    # HZ=1000: the boundary was 100 ms before now, modulo 512 ms; HZ=250: 400 ms before, modulo 2048 ms
    assert jiffy_grid_ms(1000, str(f)) == pytest.approx((10_000 - 100) % 512)
    assert jiffy_grid_ms(250, str(f)) == pytest.approx((10_000 - 400) % 2048)
