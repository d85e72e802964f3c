"""The edge's reply waits from the cloud's measured compute (lab/core/budget.py)."""
import pytest

from lab.core.budget import FLOOR_S, SAFETY, ReplyBudget, budget_from_compute, rto_room_s


def test_waits_scale_with_prompt_and_k_and_include_rto_room():
    b = budget_from_compute({"prefill_ms_per_token": 20.0, "verify_a_ms": 400.0, "verify_b_ms": 50.0,
                             "draft_ms": 100.0, "draft_prefill_share": 0.3}, rtt_ms=100.0)
    room = rto_room_s(100.0)
    assert room == pytest.approx(0.3 * 15)                       # (200 ms + RTT) · (2^4 − 1)
    assert b.verify_s(4) == pytest.approx(SAFETY * 0.65 + room)
    assert b.prefill_s(500) == pytest.approx(SAFETY * (10.0 + 0.45) + room)
    assert b.prefill_s(500) > b.prefill_s(50) > b.verify_s(4)
    # cloud-spec's first message: both prefills, K drafts, one verify
    assert b.generate_first_s(100, 3) == pytest.approx(SAFETY * (2.0 * 1.3 + 0.3 + 0.6) + room)
    assert b.generate_first_s(100, 0) == pytest.approx(SAFETY * (2.0 + 0.45) + room)


def test_fixed_override_and_floor():
    b = ReplyBudget(fixed_s=7.5)
    assert b.prefill_s(10_000) == b.verify_s(5) == b.hello_s() == 7.5
    tiny = ReplyBudget(prefill_ms_per_token=0.01, verify_a_ms=1.0, room_s=0.0)
    assert tiny.verify_s(1) == FLOOR_S


def test_round_trip_and_unknown_field():
    b = budget_from_compute({"prefill_ms_per_token": 2, "verify_a_ms": 30, "verify_b_ms": 1}, rtt_ms=10)
    assert ReplyBudget.from_dict(b.to_dict()).verify_s(3) == pytest.approx(b.verify_s(3), abs=1e-3)
    with pytest.raises(ValueError, match="unknown field"):
        ReplyBudget.from_dict({"bogus": 1})


def test_measure_compute_reports_what_the_budget_reads():
    from lab.models import measure_compute
    from lab.models.synthetic import load_synthetic
    c = measure_compute(load_synthetic("target", "fast"), load_synthetic("draft", "fast"))
    assert set(c) == {"prefill_ms_per_token", "verify_a_ms", "verify_b_ms", "draft_ms", "draft_prefill_share"}
    assert c["verify_a_ms"] > 0 and c["prefill_ms_per_token"] > 0 and c["draft_ms"] > 0
    assert budget_from_compute(c, rtt_ms=0.0).verify_s(4) >= FLOOR_S
