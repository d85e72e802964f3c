"""The simulator replays the nodes' exchanges: sizes, compute, acceptance and network time per cycle.

Checks: message sizes equal lab/core/protocol.py's encoding; per-cycle accounting
(cycle = draft + verify + network, with the nodes' compute formulas); the
network time of a clean link is the RTT; loss shows up as retransmission
delay with the TCP model and never with the sleep model; acceptance follows
E[τ] (iid) or lab.models.synthetic exactly; timelines act; results folder.
"""
from __future__ import annotations

import statistics

import numpy as np
import pytest

from lab.core import protocol, spec
from lab.core.decoding import speculative_generate
from lab.metrics import SUMMARY_COLUMNS
from lab.models.synthetic import Profile, SyntheticModel
from lab.core.protocol import Message
from lab.results import read_jsonl
from lab.scenario import parse_scenario
from lab.bench import bench_grid
from lab.sim.simulator import ComputeProfile, SimError, simulate, write_run
from lab.sim.simwire import WireSizes, zmtp_bytes

PROF = ComputeProfile(t_draft_ms=2.0, verify_a_ms=4.0, verify_b_ms=0.5, prefill_ms_per_token=0.05, alpha=0.8,
                      vocab=1000)


def scenario(link: dict, **extra):
    return parse_scenario({"name": "t", "link": link, **extra})


def run(sc, strategies, **kw):
    kw.setdefault("profile", PROF)
    kw.setdefault("queries", 3)
    return [q for q, _ in simulate(sc, strategies, **kw)]


def cycles_of(records, strategy, key="network_ms_per_cycle"):
    return [x for r in records if r["strategy"] == strategy and not r["warmup"] for x in r[key]]


# ------------------------------------------------------------------ message sizes

@pytest.mark.parametrize("payload,temp", [("tokens", 0.0), ("tokens+probs", 0.7), ("topk:8", 0.7), ("full", 0.7)])
def test_wire_sizes_equal_the_protocol_encoding(payload, temp):
    w = WireSizes(vocab=50)
    k = 4
    arrays = {"tokens": np.zeros(k, np.int32)}
    if temp > 0:
        arrays.update(spec.encode_q(payload, [1, 2, 3, 4], np.full((k, 50), 1 / 50)))
    frames = protocol.encode(Message("verify", 17, {"query": "fixed-k:4/2/123456789012345", "seq": 3,
                                                    "payload": payload, "temperature": temp, "seed": 5}, arrays))
    size = w.verify(17, "fixed-k:4/2/123456789012345", 3, k, {"payload": payload, "temperature": temp}, 5)
    assert size.payload == protocol.frames_size(frames)
    assert size.wire == zmtp_bytes([len(f) for f in frames]) > size.payload
    verdict = protocol.encode(Message("verdict", 17, {"query": "q", "seq": 3, "n_accepted": 2, "token": 25,
                                                      "cloud_compute_ms": 4.500123}))
    assert w.verdict(17, "q", 3, 2, 4.5).payload == protocol.frames_size(verdict)


def test_remembered_sizes_follow_the_id_and_the_value_types():
    # message_bytes keeps each header's size with the id's digit count in its place; a size served
    # from there must still be the encoding's, for ids of other lengths and for values JSON spells
    # differently although Python finds them equal (4 == 4.0).
    from lab.sim.simwire import message_bytes
    for mid in (7, 3, 99, 100, 123456):
        base = {"query": "q", "seq": 3, "tokens": [5, 5], "done": True}
        for fields in ({**base, "cloud_compute_ms": 4}, {**base, "cloud_compute_ms": 4.0},
                       {**base, "cloud_compute_ms": -0.0}, {**base, "cloud_compute_ms": 0.0},
                       {**base, "cloud_compute_ms": 4.5, "done": False, "tokens": [5, 5, 5]}):
            want = protocol.frames_size(protocol.encode(Message("tokens", mid, fields)))
            assert message_bytes("tokens", mid, fields, {}).payload == want, (mid, fields)


def test_full_payload_is_megabytes():
    # BACKGROUND.md: vocab 151,936 × K × 2 bytes (fp16).
    w = WireSizes(vocab=151_936)
    size = w.verify(1, "q", 0, 5, {"payload": "full", "temperature": 1.0}, 0)
    assert size.payload == pytest.approx(151_936 * 5 * 2, rel=0.001)
    assert w.verify(1, "q", 0, 5, {"payload": "full", "temperature": 0.0}, 0).payload < 200  # greedy: ids only


# ------------------------------------------------------------------ accounting on a clean link

def test_split_cycle_is_draft_plus_verify_plus_rtt():
    sc = scenario({"delay_ms": 25, "rate_mbit": 100})
    for model in ("tcp", "sleep"):
        recs = run(sc, ["fixed-k:5"], link_model=model, max_new_tokens=30)
        for r in recs:
            ks, cyc, net = r["k_per_cycle"], r["cycle_ms_per_cycle"], r["network_ms_per_cycle"]
            for j, k in enumerate(ks):
                edge = r["edge_compute_ms_per_cycle"][j]
                assert edge == pytest.approx(PROF.t_draft_ms * (k - 1 if j == 0 else k))
                assert r["cloud_compute_ms_per_cycle"][j] == pytest.approx(PROF.verify_ms(k + 1))
                assert cyc[j] == pytest.approx(edge + PROF.verify_ms(k + 1) + net[j])
                # A one-segment request and reply: exactly the RTT (tbf passes them at once);
                # the sleep model adds size/rate (~0.03 ms at 100 Mbit/s).
                assert net[j] == pytest.approx(50.0, abs=0.1)
            assert r["n_tokens"] == 30 and sum(min(n + 1, 30) for n in r["accepted_per_cycle"]) >= 30


def test_a_draft_that_catches_up_one_token_a_forward_pays_one_more_after_a_whole_block():
    """catch_up_forwards = 2 (an int8 draft: lab/core/decoding.py feed_logits): the cycle after a block
    accepted whole drafts K + 1 forwards, after a rejection K, as with one forward."""
    from dataclasses import replace
    sc = scenario({"delay_ms": 5})
    prof = replace(PROF, catch_up_forwards=2)
    whole_seen = 0
    for r in run(sc, ["fixed-k:3"], profile=prof, max_new_tokens=40):
        ks, acc, edge = r["k_per_cycle"], r["accepted_per_cycle"], r["edge_compute_ms_per_cycle"]
        for j in range(1, len(ks)):
            whole = acc[j - 1] == ks[j - 1]
            whole_seen += whole
            assert edge[j] == pytest.approx(PROF.t_draft_ms * (ks[j] + whole))
    assert whole_seen > 0


def test_edge_only_never_touches_the_network():
    sc = scenario({"delay_ms": 100, "loss_pct": 5})
    r = run(sc, ["edge-only"], max_new_tokens=20)[0]
    assert set(r["network_ms_per_cycle"]) == {0.0} and set(r["bytes_up_per_cycle"]) == {0}
    L = r["prompt_tokens"]
    assert r["e2e_ms"] == pytest.approx(PROF.prefill_ms_per_token * L + 19 * PROF.t_draft_ms)
    assert r["ttft_ms"] == pytest.approx(PROF.prefill_ms_per_token * L)


def test_cloud_only_streams_one_message_per_token():
    sc = scenario({"delay_ms": 50})
    r = run(sc, ["cloud-only"], max_new_tokens=10)[1]
    L = r["prompt_tokens"]
    assert len(r["cycle_ms_per_cycle"]) == 10 and r["n_tokens"] == 10
    # TTFT: request up, prefill of L−1 tokens and one step in the cloud, the token down.
    assert r["ttft_ms"] == pytest.approx(100 + PROF.prefill_ms_per_token * (L - 1) + PROF.verify_ms(1), abs=0.01)
    assert r["e2e_ms"] == pytest.approx(r["ttft_ms"] + 9 * PROF.verify_ms(1), abs=0.01)


# ------------------------------------------------------------------ loss, jitter, bandwidth, timeline

def test_loss_appears_as_retransmission_delay_only_with_tcp():
    sc = scenario({"delay_ms": 25, "loss_pct": 5, "rate_mbit": 10})
    tcp = cycles_of(run(sc, ["fixed-k:3"], queries=30, link_model="tcp"), "fixed-k:3")
    naive = cycles_of(run(sc, ["fixed-k:3"], queries=30, link_model="sleep"), "fixed-k:3")
    assert statistics.median(tcp) == pytest.approx(50, abs=1)
    assert np.percentile(tcp, 99) > 50 + 200                 # TLP/RTO ≥ 200 ms after a loss
    assert max(naive) < 51


def test_full_payload_at_1mbit_pays_serialization():
    # temperature > 0 sends q in full: 3 × 1000 × 2 bytes per verify at 1 Mbit/s ≈ 48 ms + RTT.
    sc = scenario({"delay_ms": 10, "rate_mbit": 1}, workload={"payload": "full", "temperature": 0.8})
    net = cycles_of(run(sc, ["fixed-k:3"], queries=2, max_new_tokens=12), "fixed-k:3")
    wire = 3 * 1000 * 2 + 100
    assert statistics.median(net) > 20 + (wire - 3028) * 8 / 1e3
    assert statistics.median(net) < 20 + (wire + 6 * 52) * 8 / 1e3 + 15


def test_timeline_moves_the_network_time():
    sc = parse_scenario({"name": "osc", "link": {"delay_ms": 5},
                         "timeline": {"repeat_every_s": 2, "steps": [{"at_s": 0, "link": {"delay_ms": 5}},
                                                                      {"at_s": 1, "link": {"delay_ms": 50}}]}})
    net = cycles_of(run(sc, ["fixed-k:3"], queries=40, max_new_tokens=24), "fixed-k:3")
    assert any(abs(x - 10) < 0.5 for x in net) and any(abs(x - 100) < 0.5 for x in net)


def test_jitter_spreads_network_time():
    sc = scenario({"delay_ms": 25, "jitter_ms": 10, "rate_mbit": 100})
    net = cycles_of(run(sc, ["fixed-k:5"], queries=20), "fixed-k:5")
    assert 30 <= min(net) < 40 and 60 < max(net) <= 70 and statistics.median(net) == pytest.approx(50, abs=5)


# ------------------------------------------------------------------ acceptance

def test_iid_acceptance_matches_expected_tokens_per_cycle():
    sc = scenario({"delay_ms": 1})
    recs = run(sc, ["fixed-k:5"], queries=20, max_new_tokens=400, acceptance="iid")
    acc = cycles_of(recs, "fixed-k:5", "accepted_per_cycle")[:-40]       # drop cycles cut by max_new_tokens
    assert statistics.mean(a + 1 for a in acc) == pytest.approx(spec.expected_tokens(0.8, 5), rel=0.05)


def test_synthetic_acceptance_equals_the_synthetic_models():
    prof = Profile(t_draft_ms=0, verify_a_ms=0, verify_b_ms=0, prefill_ms_per_token=0, alpha=0.7, seed=3,
                   name="zero")
    sc = scenario({"delay_ms": 5}, workload={"max_new_tokens": 40, "warmup_queries": 0})
    rec = run(sc, ["fixed-k:4"], profile=prof, queries=1)[0]
    d, t = SyntheticModel("draft", prof), SyntheticModel("target", prof)
    from lab.prompts import load_prompts
    ids = d.encode_prompt(load_prompts(None)[0]["prompt"])
    gen = speculative_generate(d, t, ids, 40, k_fn=lambda: 4)
    assert rec["accepted_per_cycle"] == gen.accepted and rec["k_per_cycle"] == gen.drafted


def test_the_simulator_replays_each_prompts_own_agreement():
    """A profile measured per prompt: query i on prompt i accepts what the synthetic models accept on
    that prompt (and so what the real pair accepted on it), not one pooled pattern for every query."""
    from lab.models.synthetic import encode_words, prompt_key
    from lab.prompts import load_prompts
    texts = [p["prompt"] for p in load_prompts(None)[:2]]
    digits = ["1111111101", "0010010010"]
    prof = Profile(t_draft_ms=0, verify_a_ms=0, verify_b_ms=0, prefill_ms_per_token=0, alpha=0.7, seed=3,
                   vocab=1000, trace=(1, 0), name="pp",
                   prompt_agreement=tuple((prompt_key(encode_words(t, 1000)), d) for t, d in zip(texts, digits)))
    sc = scenario({"delay_ms": 5}, workload={"max_new_tokens": 24, "warmup_queries": 0})
    recs = run(sc, ["fixed-k:4"], profile=prof, queries=2)
    d, t = SyntheticModel("draft", prof), SyntheticModel("target", prof)
    for rec, text in zip(recs, texts):
        gen = speculative_generate(d, t, d.encode_prompt(text), 24, k_fn=lambda: 4)
        assert rec["accepted_per_cycle"] == gen.accepted
    assert recs[0]["accepted_per_cycle"][:3] == [4, 3, 1] and recs[1]["accepted_per_cycle"][:3] == [0, 0, 1]


def test_a_profiled_answer_ends_every_strategys_query_where_the_target_ends_it():
    """prompt_answer: the real target answered prompt 0 in 7 tokens (EOS included).  Every strategy's
    query on it stops at 7 tokens, as the synthetic models' own speculative decode does, and the one
    on prompt 1 (no answer end profiled) runs to max_new_tokens."""
    from lab.models.synthetic import encode_words, prompt_key
    from lab.prompts import load_prompts
    texts = [p["prompt"] for p in load_prompts(None)[:2]]
    key = prompt_key(encode_words(texts[0], 1000))
    prof = Profile(t_draft_ms=1, verify_a_ms=2, verify_b_ms=0.1, prefill_ms_per_token=0.01, alpha=0.7, seed=3,
                   vocab=1000, name="ends", prompt_agreement=((key, "1101111"),), prompt_answer=((key, 7),))
    sc = scenario({"delay_ms": 5}, workload={"max_new_tokens": 24, "warmup_queries": 0})
    strategies = ["cloud-only", "cloud-spec", "fixed-k:3", "fixed-k:5", "pipelined:3"]
    recs = run(sc, strategies, profile=prof, queries=2)
    for r in recs:
        assert r["n_tokens"] == (7 if r["query_index"] == 0 else 24), r["strategy"]
    d, t = SyntheticModel("draft", prof), SyntheticModel("target", prof)
    gen = speculative_generate(d, t, d.encode_prompt(texts[0]), 24, k_fn=lambda: 3)
    assert len(gen.tokens) == 7 and gen.tokens[-1] in t.eos_token_ids
    first = next(r for r in recs if r["strategy"] == "fixed-k:3" and r["query_index"] == 0)
    assert first["accepted_per_cycle"] == gen.accepted and first["k_per_cycle"] == gen.drafted


def test_synthetic_acceptance_needs_a_synthetic_profile():
    with pytest.raises(SimError, match="synthetic"):
        run(scenario({}), ["fixed-k:3"], acceptance="synthetic")


# ------------------------------------------------------------------ determinism and outputs

def test_deterministic_by_seed():
    sc = scenario({"delay_ms": 25, "jitter_ms": 5, "loss_pct": 5, "rate_mbit": 10})
    a = run(sc, ["cloud-only", "fixed-k:3"], seed=4, queries=4)
    b = run(sc, ["cloud-only", "fixed-k:3"], seed=4, queries=4)
    c = run(sc, ["cloud-only", "fixed-k:3"], seed=5, queries=4)
    assert a == b and a != c


def test_write_run_produces_a_results_folder(tmp_path):
    sc = scenario({"delay_ms": 10, "rate_mbit": 10}, strategies=["cloud-only", "edge-only", "fixed-k:3"])
    d = write_run(sc, tmp_path, profile=PROF, queries=2, seed=0)
    qs = read_jsonl(d / "queries.jsonl")
    assert len(qs) == 3 * 3 and {q["backend"] for q in qs} == {"sim"}
    assert len(read_jsonl(d / "cycles.jsonl")) == sum(len(q["k_per_cycle"]) for q in qs)
    header = (d / "summary.csv").read_text().splitlines()[0].split(",")
    assert header == SUMMARY_COLUMNS
    assert '"status": "complete"' in (d / "meta.json").read_text()


def test_bench_grid_runs(capsys):
    wall = bench_grid(runs=1, profile=PROF)
    assert wall > 0 and "bench_grid" in capsys.readouterr().out


@pytest.mark.parametrize("name", __import__("lab.scenario", fromlist=["available"]).available())
@pytest.mark.parametrize("link_model", ["tcp", "sleep"])
def test_every_shipped_scenario_simulates(name, link_model):
    from lab.scenario import load_scenario
    sc = load_scenario(name)
    recs = run(sc, ["cloud-only", "edge-only", "fixed-k:5", "cloud-spec"], queries=2, link_model=link_model,
               max_new_tokens=16)
    assert len(recs) == 4 * (2 + sc.workload.warmup_queries)
    for r in recs:
        assert r["n_tokens"] == 16 and r["e2e_ms"] >= r["ttft_ms"] > 0
        assert all(x >= 0 for x in r["network_ms_per_cycle"])
        if r["placement"] == "split":
            assert min(r["network_ms_per_cycle"]) >= sc.link.rtt_ms - 2 * sc.link.uplink.jitter_ms - 1e-6 \
                or sc.timeline.steps


def test_the_simulator_stops_blocks_where_the_synthetic_draft_does():
    """fixed-k:8,stop=P and cloud-spec:8,stop=P: the simulator's blocks end where the synthetic draft's
    logits (the profile's measured confidence) end them in the real drafting loop, cycle for cycle."""
    from lab.models.synthetic import encode_words, prompt_key
    from lab.prompts import load_prompts
    text = load_prompts(None)[0]["prompt"]
    key = prompt_key(encode_words(text, 1000))
    prof = Profile(t_draft_ms=1, verify_a_ms=2, verify_b_ms=0.1, prefill_ms_per_token=0.01, alpha=0.7, seed=3,
                   vocab=1000, name="sure", prompt_agreement=((key, "1111011111101111111"),),
                   prompt_confidence=((key, "99989790409896995020979899979899999999"),))
    sc = scenario({"delay_ms": 5}, workload={"max_new_tokens": 24, "warmup_queries": 0})
    d, t = SyntheticModel("draft", prof), SyntheticModel("target", prof)
    gen = speculative_generate(d, t, d.encode_prompt(text), 24, k_fn=lambda: 8, stop=0.6)
    assert min(gen.drafted) < 8 and gen.tokens == speculative_generate(d, t, d.encode_prompt(text), 24,
                                                                       k_fn=lambda: 8).tokens
    for strategy in ("fixed-k:8,stop=0.6", "cloud-spec:8,stop=0.6"):
        rec = run(sc, [strategy], profile=prof, queries=1)[0]
        assert [k for k in rec["k_per_cycle"] if k] == gen.drafted, strategy
        assert [a for k, a in zip(rec["k_per_cycle"], rec["accepted_per_cycle"]) if k] == gen.accepted


def test_adaptive_controllers_stop_by_default_only_on_a_measured_confidence():
    """nasd and ucb-specstop take the confidence stop where the profile measured the draft's confidence
    (as a synthetic edge's draft reports it), and draft without it on a stand-in's or an i.i.d. α."""
    from lab.core.strategies import ADAPTIVE_STOP
    from lab.models.synthetic import encode_words, prompt_key
    from lab.prompts import load_prompts
    key = prompt_key(encode_words(load_prompts(None)[0]["prompt"], 1000))
    base = dict(t_draft_ms=1, verify_a_ms=2, verify_b_ms=0.1, prefill_ms_per_token=0.01, alpha=0.7, seed=3,
                vocab=1000, name="sure", prompt_agreement=((key, "1111011111101111111"),))
    sure = Profile(**base, prompt_confidence=((key, "99989790409896995020979899979899999999"),))
    sc = scenario({"delay_ms": 5}, workload={"max_new_tokens": 24, "warmup_queries": 0})
    for strategy in ("nasd:fallback=none", "ucb-specstop:fallback=none"):
        assert run(sc, [strategy], profile=sure, queries=1)[0]["controller"]["stop"] == ADAPTIVE_STOP
        assert run(sc, [strategy], profile=Profile(**base), queries=1)[0]["controller"]["stop"] is None
        assert run(sc, [strategy], queries=1)[0]["controller"]["stop"] is None
    assert SyntheticModel("draft", sure).confidence_measured and not SyntheticModel("draft", Profile(**base)).confidence_measured
    # A replayed lab run's controllers draft with the stop the run recorded (validate --run), either way.
    got = run(sc, ["nasd:fallback=none"], profile=sure, queries=1, draft_stops={"nasd:fallback=none": (None, False)})
    assert got[0]["controller"]["stop"] is None
    got = run(sc, ["nasd:fallback=none"], profile=Profile(**base), queries=1, draft_stops={"nasd:fallback=none": (0.5, False)})
    assert got[0]["controller"]["stop"] == 0.5


def test_an_iid_draft_is_as_sure_as_its_acceptance_rate():
    """With i.i.d. acceptance the draft's confidence is α at every position: at α 0.8 a stop at 0.5 ends
    every block at 4 drafts (0.8⁴ = 0.41), whatever K allows beyond."""
    sc = scenario({"delay_ms": 5}, workload={"max_new_tokens": 40, "warmup_queries": 0})
    rec = run(sc, ["fixed-k:12,stop=0.5"], queries=1)[0]
    ks = rec["k_per_cycle"]
    assert set(ks[:-1]) == {4} and 1 <= ks[-1] <= 4


def test_an_adaptive_controllers_blocks_stop_within_the_k_it_chose():
    """nasd and ucb-specstop with stop=P: at α 0.8 (i.i.d.) no block passes 4 drafts, whatever K they chose."""
    sc = scenario({"delay_ms": 50}, workload={"max_new_tokens": 40, "warmup_queries": 0})
    for strategy in ("nasd:fallback=none,stop=0.5", "ucb-specstop:fallback=none,stop=0.5"):
        ks = [k for k in run(sc, [strategy], queries=2)[0]["k_per_cycle"] if k > 0]
        assert ks and max(ks) <= 4, (strategy, ks)
    free = [k for k in run(sc, ["nasd:fallback=none"], queries=2)[0]["k_per_cycle"] if k > 0]
    assert max(free) > 4, free                    # the stop, not the controller, kept them short
