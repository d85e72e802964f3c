"""`python -m lab profile` measured on the synthetic pair, whose truth is known: the measurement must
recover the profile it runs (compute times within timer noise, the agreement trace exactly)."""
from dataclasses import replace

import pytest

from lab.models.synthetic import Profile, load_synthetic, save_profile
from lab.profile import agreement_trace, fit_line, measure_pair

PROMPTS = [{"id": "a", "prompt": "one two three"}, {"id": "b", "prompt": "four five six seven"}]


def test_agreement_trace_keeps_the_run_the_continuation_cut():
    T, F = True, False
    assert agreement_trace([T, T, F, T, F, F, T]) == [2, 1, 0, 1]
    assert agreement_trace([T, T, T]) == [3]
    assert agreement_trace([F]) == [0]


def test_fit_line_recovers_a_line_and_never_a_negative_slope():
    a, b = fit_line([1, 2, 4, 8], [5.5, 6.0, 7.0, 9.0])
    assert a == pytest.approx(5.0) and b == pytest.approx(0.5)
    a, b = fit_line([1, 2, 3], [10.0, 9.0, 8.0])
    assert b == 0.0 and a == pytest.approx(9.0)


@pytest.fixture
def pair(tmp_path):
    prof = Profile(t_draft_ms=3.0, verify_a_ms=6.0, verify_b_ms=0.75, prefill_ms_per_token=0.5, alpha=0.8,
                   vocab=500, seed=3, trace=(2, 0, 3))
    path = tmp_path / "truth.yaml"
    save_profile(prof, path)
    return load_synthetic("draft", str(path)), load_synthetic("target", str(path)), prof


def test_each_model_is_timed_in_a_process_of_its_own(tmp_path, monkeypatch):
    """time_alone loads the role in a fresh process (as its node does) and times it there: the synthetic
    pair's truth comes back, though loading a model in this process is made to fail."""
    import lab.models.select as select
    from lab.profile import time_alone

    def not_here(*a, **k):
        raise AssertionError("loaded in the test's own process")
    monkeypatch.setattr(select, "load_role", not_here)
    truth = Profile(t_draft_ms=3.0, verify_a_ms=6.0, verify_b_ms=0.75, prefill_ms_per_token=0.5, alpha=0.8,
                    vocab=500, seed=3)
    path = tmp_path / "truth.yaml"
    save_profile(truth, path)
    runs = [([5, 6, 7, 8], [9, 10, 11, 12, 13, 14])]
    t = time_alone(f"synthetic:{path}", "target", runs, "float32", 1, timeout_s=120)
    for n, ms in t["verify_ms_by_n"].items():
        assert ms == pytest.approx(truth.verify_ms(n), abs=0.8)
    assert t["prefill_ms_per_token"] == pytest.approx(truth.prefill_ms_per_token, abs=0.3)
    d = time_alone(f"synthetic:{path}", "draft", runs, "float32", 1, timeout_s=120)
    assert d["t_draft_ms"] == pytest.approx(truth.t_draft_ms, abs=0.5)


def test_measure_pair_recovers_the_synthetic_profile(pair):
    draft, target, truth = pair
    from lab.profile import time_draft, time_target
    m = measure_pair(draft, target, PROMPTS, max_new_tokens=16, out=lambda s: None)
    m.update(time_target(target, m["runs"]), **time_draft(draft, m["runs"]))
    # The trace pattern T T F | F | T T T F, read back exactly from each prompt's 16 positions.
    assert m["trace"] == [2, 0, 3, 2, 0, 3] * 2
    assert m["alpha"] == pytest.approx(10 / 16)
    # Compute times: the synthetic models really wait them (sleep + spin), so only timer noise remains.
    assert m["t_draft_ms"] == pytest.approx(truth.t_draft_ms, abs=0.5)
    assert m["verify_b_ms"] == pytest.approx(truth.verify_b_ms, abs=0.15)
    assert m["verify_a_ms"] == pytest.approx(truth.verify_a_ms, abs=0.8)
    assert m["prefill_ms_per_token"] == pytest.approx(truth.prefill_ms_per_token, abs=0.3)


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A copy of the shipped profiles folder, so a test that writes there cannot touch the real one."""
    import shutil

    import lab.models.synthetic as synthetic
    d = tmp_path / "shipped"
    shutil.copytree(synthetic.PROFILE_DIR, d)
    monkeypatch.setattr(synthetic, "PROFILE_DIR", d)
    return d


FEW_BUCKETS = (0, 100)


@pytest.fixture(autouse=True)
def calibrate_few_buckets(monkeypatch):
    """Every profile run calibrates nasd's table; two RTT buckets say the same as 28, in a second."""
    import functools
    import lab.calibrate as calibrate
    monkeypatch.setattr(calibrate, "calibrate", functools.partial(calibrate.calibrate, rtts=FEW_BUCKETS))


def _profile_run(pair, monkeypatch, tmp_path, to_cache: bool = False, **kw) -> tuple[int, list[str]]:
    """profile_main as `python -m lab profile` runs it, on the synthetic pair instead of the embedded one;
    into a results folder, or (to_cache) where the command puts it by default, this host's cache."""
    import lab.models.select as select
    from lab.profile import profile_main
    import lab.profile as profile
    draft, target, _ = pair
    monkeypatch.setattr(select, "prepare", lambda models, dtype: {})
    monkeypatch.setattr(select, "load_role", lambda models, role, **_: draft if role == "draft" else target)
    # Each model is timed in a process of its own (time_alone, tested below); here, in this one.
    monkeypatch.setattr(profile, "time_alone", lambda models, role, runs, *a, **k:
                        profile.time_target(target, runs) if role == "target" else profile.time_draft(draft, runs))
    lines: list[str] = []
    rc = profile_main("embedded", max_new_tokens=8, limit=1, out=lines.append,
                      results_base=None if to_cache else tmp_path / "results", **kw)
    return rc, lines


def test_profile_writes_to_a_results_folder_not_the_shipped_profile(pair, shipped, monkeypatch, tmp_path):
    before = {p.name: p.read_bytes() for p in shipped.iterdir()}
    rc, lines = _profile_run(pair, monkeypatch, tmp_path)
    assert rc == 0
    assert {p.name: p.read_bytes() for p in shipped.iterdir()} == before
    (written,) = (tmp_path / "results").glob("*-profile/embedded-cpu.yaml")
    assert f"wrote {written}" in lines[-1] and f"--models synthetic:{written}" in lines[-1]


def test_profile_replaces_the_shipped_one_only_when_asked(pair, shipped, monkeypatch, tmp_path):
    before = (shipped / "embedded-cpu.yaml").read_bytes()
    rc, lines = _profile_run(pair, monkeypatch, tmp_path, replace_shipped=True)
    assert rc == 0 and (shipped / "embedded-cpu.yaml").read_bytes() != before
    assert not (tmp_path / "results").exists()
    assert "--models synthetic:embedded-cpu)" in lines[-1]


def test_profile_goes_to_this_hosts_cache_and_sim_uses_it(pair, shipped, monkeypatch, tmp_path):
    """By default the profile is this host's (keyed by CPU model/flags and dtype) in the model cache, and
    `embedded-cpu` then means it; before that, the shipped one, with a line saying so."""
    from lab.models import cpu
    from lab.models.synthetic import host_profile_path, resolve_profile
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path / "cache" / "models"))
    name, which = resolve_profile("embedded-cpu")
    assert name == "embedded-cpu" and "no profile of this host" in which
    assert _profile_run(pair, monkeypatch, tmp_path, to_cache=True)[0] == 0
    path = host_profile_path("embedded", "float32")
    assert path.exists() and path.parent == tmp_path / "cache" / "profiles"
    assert cpu.host_key("float32") in path.name and "float32" in path.name
    name, which = resolve_profile("embedded-cpu")
    assert name == str(path) and "this host's" in which
    assert resolve_profile("fast") == ("fast", "profile fast")
    assert not host_profile_path("embedded", "bfloat16").exists()     # the dtype is part of the key


def test_measure_pair_keeps_each_prompts_agreement_keyed_as_a_synthetic_session_keys_it(pair):
    from lab.models.synthetic import encode_words, prompt_key
    draft, target, _ = pair
    m = measure_pair(draft, target, PROMPTS, max_new_tokens=16, out=lambda s: None)
    assert "verify_a_ms" not in m                   # the agreement only: time_alone times each model
    want = "11001110" * 2                          # T T F | F | T T T F, from the first generated position
    assert m["prompt_agreement"] == {prompt_key(encode_words(p["prompt"], 500)): want for p in PROMPTS}


def test_acceptance_only_rewrites_the_agreement_and_keeps_the_compute_times(pair, monkeypatch, tmp_path):
    import yaml

    from lab.models.synthetic import load_profile
    timed = Profile(t_draft_ms=77.0, verify_a_ms=123.0, verify_b_ms=4.0, prefill_ms_per_token=9.0, alpha=0.1,
                    vocab=500, trace=(0,))
    path = tmp_path / "host.yaml"
    save_profile(timed, path, {"measured_by": "python -m lab profile", "date": "then"})
    rc, lines = _profile_run(pair, monkeypatch, tmp_path, out_path=str(path), acceptance_only=True)
    assert rc == 0, lines
    got = load_profile(str(path))
    assert (got.t_draft_ms, got.verify_a_ms, got.verify_b_ms, got.prefill_ms_per_token) == (77.0, 123.0, 4.0, 9.0)
    assert got.trace == (2, 0, 3) and got.alpha == pytest.approx(5 / 8)     # 8 tokens: T T F F T T T F
    assert list(dict(got.prompt_agreement).values()) == ["11001110"]        # limit=1: one prompt
    prov = yaml.safe_load(path.read_text())["provenance"]
    assert prov["date"] == "then" and prov["acceptance"]["max_new_tokens"] == 8
    # the agreement says where it was measured: the compute kept beside it may be another host's
    assert prov["acceptance"]["cpu_model"] and "cpu_flags" in prov["acceptance"]


def test_acceptance_only_needs_a_profile_to_update(pair, monkeypatch, tmp_path):
    rc, lines = _profile_run(pair, monkeypatch, tmp_path, out_path=str(tmp_path / "none.yaml"), acceptance_only=True)
    assert rc == 2 and "none.yaml" in lines[-1] and "python -m lab profile" in lines[-1]


def test_a_hosts_nasd_table_sits_beside_its_profile_and_wins_over_the_shipped_one(monkeypatch, tmp_path):
    """calibrate on this host's profile writes the table beside it in the cache; the edge's nasd for the
    embedded pair takes that one, and the shipped embedded-cpu table only while there is none."""
    from lab.models.synthetic import (PROFILE_DIR, host_profile_path, nasd_table_for, nasd_table_path,
                                      resolve_profile)
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path / "cache" / "models"))
    assert nasd_table_path("gpu-orin-3090ti") == PROFILE_DIR / "gpu-orin-3090ti.nasd.json"
    shipped = nasd_table_for("embedded")
    assert shipped == PROFILE_DIR / "embedded-cpu.nasd.json" and shipped.is_file()
    host = host_profile_path("embedded", "float32")
    host.parent.mkdir(parents=True)
    save_profile(Profile(t_draft_ms=1, verify_a_ms=2, verify_b_ms=0, prefill_ms_per_token=0, alpha=0.5), host)
    assert resolve_profile("embedded-cpu")[0] == str(host)
    assert nasd_table_for("embedded") == shipped                  # measured, not yet calibrated here
    table = nasd_table_path(str(host))
    assert table.parent == host.parent and table.name.endswith(".nasd.json")
    table.write_text("{}")
    assert nasd_table_for("embedded") == table
    assert nasd_table_for("embedded", "bfloat16") == shipped      # the dtype is part of the host's key


def test_the_drafts_kernels_are_part_of_the_hosts_key(monkeypatch, tmp_path):
    """An int8 draft's t_draft and acceptance are not packed fp32's: each has its own host profile,
    and without --draft-kernels the draft's default here picks which one is used."""
    from lab.models import cpu
    from lab.models.synthetic import PROFILE_DIR, host_profile_path, nasd_table_for, nasd_table_path, resolve_profile
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path / "cache" / "models"))
    packed, int8 = (host_profile_path("embedded", "float32", k) for k in ("packed", "int8"))
    assert packed != int8 and packed.name.endswith("--draft-packed.yaml") and int8.name.endswith("--draft-int8.yaml")
    monkeypatch.setattr(cpu, "int8_runs_here", lambda dtype: dtype == "float32")
    assert host_profile_path("embedded", "float32") == int8
    assert host_profile_path("embedded", "bfloat16").name.endswith("--draft-packed.yaml")
    int8.parent.mkdir(parents=True)
    timed = Profile(t_draft_ms=1, verify_a_ms=2, verify_b_ms=0, prefill_ms_per_token=0, alpha=0.5)
    save_profile(timed, int8)
    assert resolve_profile("embedded-cpu")[0] == str(int8)
    # sim, sweep and calibrate say, as validate does, when an int8 draft's profile predates its catch-up
    save_profile(timed, int8, {"draft_kernels": "int8-dynamic (fbgemm, per-channel; 169 Linear layers)"})
    assert "predates its one-token-a-forward catch-up" in resolve_profile("embedded-cpu")[1]
    save_profile(replace(timed, draft_catch_up_forwards=2), int8, {"draft_kernels": "int8-dynamic (fbgemm)"})
    assert "note" not in resolve_profile("embedded-cpu")[1]
    name, which = resolve_profile("embedded-cpu", draft_kernels="packed")
    assert name == "embedded-cpu" and packed.name in which
    (table := nasd_table_path(str(int8))).write_text("{}")
    assert nasd_table_for("embedded") == table
    assert nasd_table_for("embedded", "float32", "packed") == PROFILE_DIR / "embedded-cpu.nasd.json"
    monkeypatch.setattr(cpu, "int8_runs_here", lambda dtype: False)
    assert host_profile_path("embedded", "float32") == packed


def _cycles(strategy, placement, ks, cloud, edge, **kw):
    return {"strategy": strategy, "placement": placement, "warmup": False, "edge_fallback": False,
            "k_per_cycle": ks, "cloud_compute_ms_per_cycle": cloud, "edge_compute_ms_per_cycle": edge, **kw}


RUN = [   # a verify of n tokens costs 200 + 20·n ms, a draft token 40 ms; first cycles hold the prefills
    _cycles("cloud-only", "cloud", [0, 0, 0], [900, 220, 220], [0, 0, 0]),
    _cycles("fixed-k:3", "split", [3, 3, 3, 1], [950, 280, 280, 240], [400, 120, 120, 40]),
    _cycles("fixed-k:5", "split", [5, 5], [990, 320], [500, 200]),
    _cycles("cloud-spec", "cloud-spec", [3, 3], [999, 999], [0, 0]),                # two models' compute
    _cycles("pipelined:3", "split", [3, 3], [999, 999], [999, 999]),               # overlaps the wait
    _cycles("fixed-k:3", "split", [3, 3], [999, 999], [999, 999], warmup=True),
    _cycles("fixed-k:3", "split", [3, 3], [999, 999], [999, 999], edge_fallback=True),
]


def test_compute_from_a_run_is_what_the_nodes_measured_per_cycle():
    from lab.profile import compute_from_run
    m = compute_from_run(RUN)
    assert m["cycles_by_n"] == {1: 2, 2: 1, 4: 2, 6: 1}
    assert m["verify_a_ms"] == pytest.approx(200) and m["verify_b_ms"] == pytest.approx(20)
    assert m["t_draft_ms"] == pytest.approx(40) and m["draft_cycles"] == 4


def test_a_cycle_after_a_block_accepted_whole_does_not_time_the_draft():
    """Its first forward also took in the last block's last draft and bonus (one forward, or two for an
    int8 draft): 160 ms for 3 drafts there is 4 forwards of 40, not 3 of 53."""
    from lab.profile import cycle_compute, compute_from_run
    rec = _cycles("fixed-k:3", "split", [3, 3, 3, 3, 3], [950, 280, 280, 280, 280], [400, 160, 120, 160, 120],
                  accepted_per_cycle=[3, 1, 3, 0, 2])
    assert [drafts for _, _, drafts in cycle_compute(rec)] == [[], [40.0], [], [40.0]]
    m = compute_from_run([RUN[0], rec])
    assert m["t_draft_ms"] == pytest.approx(40) and m["draft_cycles"] == 2


def test_a_run_without_two_verify_sizes_is_refused_by_name():
    from lab.models import ModelError
    from lab.profile import compute_from_run
    with pytest.raises(ModelError, match=r"--from-run: the run needs measured cycles of at least two verify sizes"):
        compute_from_run(RUN[:1])


def test_from_run_replaces_the_compute_of_this_hosts_profile_and_keeps_its_agreement(monkeypatch, tmp_path):
    import json

    import yaml

    from lab.models import ModelError
    from lab.models.synthetic import host_profile_path, load_profile
    from lab.profile import profile_from_run
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path / "cache" / "models"))
    run = tmp_path / "20261205T000000Z-lan"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"models": "embedded", "dtype": "float32", "scenario": {"name": "lan"},
                                               "options": {"draft_kernels": "packed"}}))
    (run / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RUN))
    with pytest.raises(ModelError, match="no profile of this host .* run `python -m lab profile` first"):
        profile_from_run(run, out=lambda s: None)
    host = host_profile_path("embedded", "float32", "packed")
    host.parent.mkdir(parents=True)
    save_profile(Profile(t_draft_ms=30, verify_a_ms=150, verify_b_ms=5, prefill_ms_per_token=9, alpha=0.8,
                         vocab=500, trace=(3, 0, 2)), host, {"measured_by": "python -m lab profile"})
    lines = []
    assert profile_from_run(run, out=lines.append) == 0
    got = load_profile(str(host))
    assert (got.t_draft_ms, got.verify_a_ms, got.verify_b_ms) == (40.0, 200.0, 20.0)
    assert (got.prefill_ms_per_token, got.alpha, got.trace) == (9, 0.8, (3, 0, 2))
    prov = yaml.safe_load(host.read_text())["provenance"]
    assert prov["measured_by"] == "python -m lab profile" and prov["compute"]["before"]["verify_a_ms"] == 150
    assert any("the profile before" in line for line in lines)
    assert got.verify_ms_by_n is None           # no size met VERIFY_BY_N_MIN_CYCLES times: the line alone


def test_well_measured_keeps_the_sizes_a_run_met_often():
    from lab.profile import VERIFY_BY_N_MIN_CYCLES, well_measured
    m = {"verify_ms_by_n": {1: 231.0, 2: 293.0, 6: 228.0}, "cycles_by_n": {1: 448, 2: VERIFY_BY_N_MIN_CYCLES - 1,
                                                                            6: VERIFY_BY_N_MIN_CYCLES}}
    assert well_measured(m) == ((1, 231.0), (6, 228.0))


def test_fit_line_weighs_each_size_by_how_often_it_was_measured():
    # A run's blocks: n = 4 27 times, n = 6 20 times; n = 2 once (a query's last, short block), off the line.
    ns, ms, counts = [2, 4, 6], [380.0, 560.0, 640.0], [1, 27, 20]
    a, b = fit_line(ns, ms, counts)
    assert a + 4 * b == pytest.approx(560, abs=8) and a + 6 * b == pytest.approx(640, abs=8)
    a, b = fit_line(ns, ms)                      # unweighted, the one odd block tilts the line
    assert abs(a + 4 * b - 560) > 30


def test_measure_pair_stops_at_the_targets_eos_and_records_the_answers_length(tmp_path):
    """A target that answers prompt "a" in 5 tokens: its agreement is measured over those 5 positions
    (a query never drafts past them) and prompt_answer keeps the 5; prompt "b" runs to max_new_tokens."""
    from lab.models.synthetic import encode_words, prompt_key
    key = prompt_key(encode_words(PROMPTS[0]["prompt"], 500))
    prof = Profile(t_draft_ms=0, verify_a_ms=0, verify_b_ms=0, prefill_ms_per_token=0, alpha=0.8, vocab=500, seed=3,
                   prompt_agreement=((key, "10111"),), prompt_answer=((key, 5),))
    path = tmp_path / "ends.yaml"
    save_profile(prof, path)
    draft, target = load_synthetic("draft", str(path)), load_synthetic("target", str(path))
    m = measure_pair(draft, target, PROMPTS, max_new_tokens=12, out=lambda s: None)
    assert m["prompt_answer"] == {key: 5}
    assert m["prompt_agreement"][key] == "10111" and m["positions"] == 5 + 12


def test_a_new_profile_calibrates_the_nasd_table_beside_it(pair, shipped, monkeypatch, tmp_path):
    """nasd's table is rebuilt with every profile: one calibrated on the profile being replaced would
    steer nasd by the old numbers."""
    import json
    import yaml
    from lab.models.synthetic import host_profile_path, nasd_table_path
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path / "cache" / "models"))
    rc, lines = _profile_run(pair, monkeypatch, tmp_path, to_cache=True)
    path = host_profile_path("embedded", "float32")
    table = nasd_table_path(str(path))
    assert rc == 0 and table.is_file() and any(ln.startswith("\ncalibrating nasd's table") for ln in lines)
    table.write_text(json.dumps({"rows": [], "provenance": {"profile": {"t_draft_ms": 999.0}}}))
    rc, lines = _profile_run(pair, monkeypatch, tmp_path, to_cache=True)
    doc = json.loads(table.read_text())
    assert rc == 0 and any(ln.startswith("\nrecalibrating") for ln in lines) and lines[-1].startswith("\nwrote ")
    assert [r["rtt_ms"] for r in doc["rows"]] == list(FEW_BUCKETS)
    assert doc["provenance"]["profile"]["t_draft_ms"] == yaml.safe_load(path.read_text())["t_draft_ms"]


def test_measure_pair_reads_the_drafts_confidence_back(tmp_path):
    """The draft's probability of its own token, position by position, as two-digit percents: a synthetic
    pair made from a profile gives back the profile's digits (and past them its measurements pooled by
    agreement: 0.697 where the draft agrees, 0.405 where it does not)."""
    from lab.models.synthetic import encode_words, prompt_key
    key = prompt_key(encode_words(PROMPTS[0]["prompt"], 500))
    prof = Profile(t_draft_ms=0, verify_a_ms=0, verify_b_ms=0, prefill_ms_per_token=0, alpha=0.8, vocab=500,
                   seed=3, prompt_agreement=((key, "110111"),), prompt_confidence=((key, "975040128899"),))
    path = tmp_path / "conf.yaml"
    save_profile(prof, path)
    draft, target = load_synthetic("draft", str(path)), load_synthetic("target", str(path))
    m = measure_pair(draft, target, PROMPTS[:1], max_new_tokens=8, out=lambda s: None)
    got = m["prompt_confidence"][key]
    assert got[:12] == "975040128899" and len(got) == 16
    assert all(got[i:i + 2] in ("69", "40") for i in (12, 14))


def test_a_model_that_fails_to_load_in_its_own_process_is_named(tmp_path):
    from lab.models import ModelError
    from lab.profile import time_alone
    with pytest.raises(ModelError, match=r"timing the target failed: ModelError: no synthetic profile"):
        time_alone(f"synthetic:{tmp_path / 'absent.yaml'}", "target", [([1, 2], [3, 4])], "float32", 1, timeout_s=120)
