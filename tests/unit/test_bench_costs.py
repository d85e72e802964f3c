"""bench colocated's timing helper on a tiny random Qwen2 (no download): what it measures and returns."""
import copy

import numpy as np
import pytest
import torch
import transformers

from lab.bench import _first_difference, verify_costs
from lab.models.hf import HFModel


class _Tok:
    chat_template = None
    eos_token_id = None

    def get_vocab(self):
        return {f"t{i}": i for i in range(100)}

    def __len__(self):
        return 100


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                   eos_token_id=None, bos_token_id=None, pad_token_id=None)
    return HFModel.from_objects(transformers.Qwen2ForCausalLM(cfg).eval(), _Tok(), "tiny")


def test_verify_costs_leave_the_session_where_it_was(tiny):
    prompt = np.arange(3, 20).tolist()
    c = verify_costs(tiny, prompt, ks=(1, 3), repeats=2)
    assert set(c["t_verify_ms"]) == {1, 3} and c["t_decode_ms"] > 0
    assert c["ratio"][3] == pytest.approx(c["t_verify_ms"][3] / c["t_decode_ms"])
    only_decode = verify_costs(tiny, prompt, ks=(), repeats=2)       # a draft's step time alone
    assert only_decode["t_verify_ms"] == {} and only_decode["t_decode_ms"] > 0


def test_int8_kernels_run_through_the_timer(tiny):
    from lab.models.quant import can_quantize
    if not can_quantize(torch.float32):
        pytest.skip("torch built without fbgemm")
    q = HFModel.from_objects(copy.deepcopy(tiny.model), _Tok(), "tiny-int8", kernels="int8")
    assert verify_costs(q, list(range(5, 15)), ks=(2,), repeats=2)["t_verify_ms"][2] > 0
    # its sessions say their rows interact (activations quantised per call), a float32 model's do not
    assert q.new_session().rows_interact and not tiny.new_session().rows_interact


def test_first_difference():
    assert _first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert _first_difference([1, 2], [1, 2, 3]) == 2
    assert _first_difference([], [4]) == 0


def test_the_benchs_minimum_block_comes_from_the_verify_costs_it_measured():
    """t_verify(K+1) as verify_costs reports it (a Zen 4 EPYC in fp32: a verify of 2 tokens dearer than
    of 4) and t_draft 29 ms: the stop's minimum block is 3; with a verify that grows with K, 1."""
    from lab.bench import least_block
    zen4 = {"t_decode_ms": 228.5, "t_verify_ms": {1: 285.9, 2: 236.0, 3: 186.2, 4: 187.8, 5: 189.4}}
    assert least_block(zen4, 29.2, 20) == 3
    assert least_block(zen4, 29.2, 2) == 2
    grows = {"t_decode_ms": 100.0, "t_verify_ms": {k: 100.0 + 10 * k for k in range(1, 6)}}
    assert least_block(grows, 29.2, 20) == 1


def test_the_benchs_minimum_block_is_the_simulators_only_on_a_measured_host_profile(tmp_path, monkeypatch):
    """Without this host's profile (measured t_verify(n) and draft confidence) the simulator cannot
    say which minimum block is fastest: None, and why; the bench then takes spec.min_block."""
    from lab.bench import simulated_stop_min
    monkeypatch.setenv("SDLAB_CACHE", str(tmp_path / "cache" / "models"))
    m, why = simulated_stop_min("embedded", "float32", "int8", 20, 0.5)
    assert m is None and "python -m lab profile" in why
