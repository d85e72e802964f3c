"""Metrics from hand-computed records."""
import math

import pytest

from lab.core.cycle import pooled_tokens_per_s, tokens_per_s
from lab.metrics import SUMMARY_COLUMNS, fallback_note, format_table, percentiles, summarize


def rec(strategy, ttft, e2e, n, ks, accs, cyc, net, warmup=False, fallback=False):
    return {"scenario": "t", "strategy": strategy, "warmup": warmup, "ttft_ms": ttft, "e2e_ms": e2e,
            "n_tokens": n, "tokens_per_s": tokens_per_s(n, ttft, e2e),
            "k_per_cycle": ks, "accepted_per_cycle": accs, "cycle_ms_per_cycle": cyc,
            "network_ms_per_cycle": net, "bytes_up_per_cycle": [100] * len(ks),
            "bytes_down_per_cycle": [20] * len(ks), "edge_fallback": fallback}


def test_tokens_per_s_excludes_first_token():
    assert tokens_per_s(11, 100.0, 1100.0) == pytest.approx(10.0)
    assert math.isnan(tokens_per_s(1, 100.0, 100.0))


def test_pooled_tokens_per_s_is_the_workloads_rate_not_a_median_of_queries():
    records = [rec("fixed-k:3", 0, 1000, 101, [3], [3], [100], [0]),        # 100 tok/s for 1 s
               rec("fixed-k:3", 0, 10000, 11, [3], [3], [100], [0]),        # 1 tok/s for 10 s
               rec("fixed-k:3", 0, 5000, 41, [3], [3], [100], [0], warmup=True),
               rec("fixed-k:3", 0, 9000, 1000, [3], [3], [100], [0], fallback=True)]
    row = summarize(records, scenario="t", backend="sim", models="m").iloc[0]
    assert row["tokens_per_s_pooled"] == pytest.approx(110 / 11)           # Σ tokens / Σ time
    assert row["tokens_per_s_p50"] == pytest.approx(50.5)                  # the two queries' middle
    assert math.isnan(pooled_tokens_per_s([rec("x", 100, 100, 1, [], [], [], [])]))


def test_summary_row_from_hand_computed_cycles():
    records = [
        rec("fixed-k:3", 999, 9999, 5, [3], [3], [100], [90], warmup=True),   # ignored
        rec("fixed-k:3", 200, 1200, 11, [3, 3], [3, 1], [100, 100], [50, 30]),
        rec("fixed-k:3", 300, 1300, 11, [3, 3], [0, 2], [100, 100], [20, 0], fallback=True),
        rec("edge-only", 50, 550, 6, [0, 0], [0, 0], [100, 100], [0, 0]),
    ]
    df = summarize(records, scenario="t", backend="wire", models="synthetic")
    assert list(df.columns) == SUMMARY_COLUMNS
    row = df.set_index("strategy").loc["fixed-k:3"]
    assert row["queries"] == 2
    # The fallback query is counted, not summarized: its tokens are the draft's.
    assert row["acceptance"] == pytest.approx(4 / 6)
    assert row["network_overhead_ratio"] == pytest.approx(80 / 200)
    assert row["ttft_ms_p50"] == pytest.approx(200)
    assert row["tokens_per_s_p50"] == pytest.approx(10.0)
    assert row["bytes_per_cycle"] == pytest.approx(120)
    assert row["edge_fallbacks"] == 1
    assert math.isnan(df.set_index("strategy").loc["edge-only"]["acceptance"])
    table = format_table(df)
    assert "fixed-k:3" in table and "edge-only" in table and "50%" not in table.splitlines()[0]
    assert table.splitlines()[0].split()[-1] == "fallbacks"
    assert [line.split()[-1] for line in table.splitlines()[2:]] == ["1", "0"]
    assert fallback_note(df).startswith("fallbacks: fixed-k:3 1/2 queries")


def test_percentiles_ignore_nan():
    assert percentiles([1, 2, 3, math.nan], (50,)) == [2.0]
    assert all(math.isnan(x) for x in percentiles([]))


def test_token_equality_skips_fallbacks_and_says_so():
    from lab.metrics import token_equality
    base = {"strategy": "fixed-k:3", "warmup": False, "prompt_id": "p", "edge_fallback": False}
    records = [{**base, "query_index": 0, "output_token_ids": [1, 2, 3]},
               {**base, "query_index": 1, "output_token_ids": [1, 9, 3]},
               {**base, "query_index": 2, "output_token_ids": [7, 7, 7], "edge_fallback": True,
                "fallback_at_token": 0, "fallback_reason": "CloudDown: no reply"}]
    wrong, skipped = token_equality(records, {"p": [1, 2, 3]})
    assert wrong == ["fixed-k:3 query 1 (p): differs at token 1: ours [9, 3]… (3 tokens) vs reference [2, 3]… (3)"]
    assert len(skipped) == 1 and skipped[0].startswith("fixed-k:3 query 2 (p): skipped, finished by the draft alone")
