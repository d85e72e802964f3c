"""HFSession against plain transformers on a tiny random Qwen2 (no download, fp32).

The reference for every check is the model itself run without our cache
bookkeeping: full-sequence forward passes and `model.generate(do_sample=False)`.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from lab.models import ModelError
from lab.models.hf import HFModel, HFSession, check_pair, greedy_generate, set_threads

VOCAB = 1000
ATOL = 1e-4


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=256, tie_word_embeddings=False,
                                   eos_token_id=None, bos_token_id=None, pad_token_id=None)
    model = transformers.Qwen2ForCausalLM(cfg).to(torch.float32).eval()
    return model


def full_logits(model, ids: list[int]) -> np.ndarray:
    """Logits at every position of one uncached forward pass over ids: [len, vocab]."""
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


def ids(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, VOCAB, n).tolist()


def test_prefill_and_extend_shapes(tiny):
    s = HFSession(tiny)
    prompt = ids(12, 1)
    last = s.prefill(prompt)
    assert last.shape == (VOCAB,) and last.dtype == np.float32
    assert s.length == 12
    rows = s.extend(ids(5, 2))
    assert rows.shape == (5, VOCAB) and rows.dtype == np.float32
    assert s.length == 17
    assert s.extend([]).shape == (0, VOCAB) and s.length == 17


def test_prefill_matches_full_forward(tiny):
    prompt = ids(20, 3)
    np.testing.assert_allclose(HFSession(tiny).prefill(prompt), full_logits(tiny, prompt)[-1], atol=ATOL)


def test_extend_equals_step_by_step(tiny):
    prompt, cont = ids(10, 4), ids(7, 5)
    batched = HFSession(tiny)
    batched.prefill(prompt)
    one_pass = batched.extend(cont)
    stepwise = HFSession(tiny)
    stepwise.prefill(prompt)
    steps = np.stack([stepwise.extend([t])[0] for t in cont])
    np.testing.assert_allclose(one_pass, steps, atol=ATOL)
    # and both equal the uncached forward over the whole sequence
    np.testing.assert_allclose(one_pass, full_logits(tiny, prompt + cont)[len(prompt):], atol=ATOL)
    assert batched.length == stepwise.length == 17


def test_rollback_then_reextend_reproduces_logits(tiny):
    prompt, first, other = ids(9, 6), ids(6, 7), ids(4, 8)
    s = HFSession(tiny)
    s.prefill(prompt)
    a = s.extend(first)
    s.rollback(len(prompt) + 2)                 # keep two of the six drafted tokens
    assert s.length == len(prompt) + 2
    b = s.extend(first[2:])                     # the same four again: identical logits
    np.testing.assert_allclose(b, a[2:], atol=ATOL)
    s.rollback(len(prompt) + 2)
    c = s.extend(other)                         # a different continuation: equals a fresh computation
    ref = full_logits(tiny, prompt + first[:2] + other)[len(prompt) + 2:]
    np.testing.assert_allclose(c, ref, atol=ATOL)
    s.rollback(s.length)                        # no-op
    assert s.length == len(prompt) + 2 + len(other)


def test_rollback_bounds_and_misuse(tiny):
    s = HFSession(tiny)
    with pytest.raises(ModelError):
        s.extend([1, 2])                        # extend before prefill
    with pytest.raises(ModelError):
        s.prefill([])
    with pytest.raises(ModelError, match="ints in 0..999"):
        s.prefill([1, VOCAB])                   # out of the vocabulary: refused before the embedding
    assert s.length == 0
    s.prefill(ids(5, 9))
    with pytest.raises(ModelError):
        s.rollback(6)
    with pytest.raises(ModelError):
        s.rollback(-1)
    with pytest.raises(ModelError):
        s.prefill([1, 2, 3])                    # prefill twice on one session
    s.rollback(0)
    assert s.length == 0
    np.testing.assert_allclose(s.prefill([7, 8, 9]), full_logits(tiny, [7, 8, 9])[-1], atol=ATOL)


class _NoTokenizer:
    """Just enough tokenizer for HFModel: an identity vocabulary, no chat template."""
    chat_template = None
    eos_token_id = None

    def get_vocab(self) -> dict[str, int]:
        return {f"t{i}": i for i in range(VOCAB)}

    def __len__(self) -> int:
        return VOCAB


def test_greedy_session_equals_generate(tiny):
    model = HFModel.from_objects(tiny, _NoTokenizer(), "tiny-qwen2")
    assert model.vocab_size == VOCAB and model.eos_token_ids == ()
    for seed in (10, 11, 12):
        prompt = ids(8, seed)
        ours = greedy_generate(model, prompt, max_new_tokens=24)
        with torch.inference_mode():
            ref = tiny.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                do_sample=False, max_new_tokens=24, min_new_tokens=24)
        assert ours == ref[0, len(prompt):].tolist()


def test_speculative_cycle_is_lossless(tiny):
    """Draft K, verify them in one extend, roll back the rejects: the output equals plain greedy."""
    model = HFModel.from_objects(tiny, _NoTokenizer(), "tiny-qwen2")
    prompt, n_new, k = ids(6, 13), 30, 4
    reference = greedy_generate(model, prompt, n_new)
    s = model.new_session()
    pending = int(np.argmax(s.prefill(prompt)))     # committed but not yet in the cache
    out = [pending]
    rng = np.random.default_rng(14)
    cycles = 0
    while len(out) < n_new:
        base = s.length
        # a bad drafter: the true continuation with random corruptions, so both paths get exercised
        truth = reference[len(out):len(out) + k] + [0] * k
        draft = [t if rng.random() < 0.7 else int(rng.integers(VOCAB)) for t in truth[:k]]
        rows = s.extend([pending] + draft)              # [k+1, vocab]: row i predicts draft[i]
        n = 0
        while n < k and int(np.argmax(rows[n])) == draft[n]:
            n += 1
        s.rollback(base + 1 + n)                        # keep pending + accepted drafts
        pending = int(np.argmax(rows[n]))               # correction, or the bonus token when n == k
        out += draft[:n] + [pending]
        cycles += 1
    assert out[:n_new] == reference[:n_new]
    assert cycles < n_new                               # speculation did accept something


def test_check_pair_rejects_different_tokenizers(tiny):
    class Other(_NoTokenizer):
        def get_vocab(self) -> dict[str, int]:
            return {f"x{i}": i for i in range(VOCAB)}

    a = HFModel.from_objects(tiny, _NoTokenizer(), "a")
    b = HFModel.from_objects(tiny, Other(), "b")
    check_pair(a, HFModel.from_objects(tiny, _NoTokenizer(), "a2"))
    with pytest.raises(ModelError, match="different tokenizers"):
        check_pair(a, b)


def test_set_threads_records_value():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        with pytest.raises(ModelError):
            set_threads(0)
    finally:
        torch.set_num_threads(before)


class _ChatTokenizer(_NoTokenizer):
    """A tokenizer with a chat template that wraps the user turn in markers 1 … 2."""
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return f"<1> {messages[0]['content']} <2>"

    def encode(self, text, add_special_tokens=True):
        return [int(w.strip("<>")) for w in text.split()]


def test_raw_prompts_skip_the_chat_template(tiny):
    """lab accuracy's few-shot prompts are continued as they are; everything else is a user turn."""
    model = HFModel.from_objects(tiny, _ChatTokenizer(), "tiny-qwen2")
    assert model.encode_prompt("7 8") == [1, 7, 8, 2]
    assert model.encode_prompt("7 8", "raw") == [7, 8]


def test_packed_linears_give_the_same_greedy_tokens(tiny):
    """oneDNN-packed Linear weights (lab/models/packed.py): the same greedy continuation through a
    session (prefill, one-token extends, a block extend) as transformers' own generate of the
    unpacked model; the logits width still reads."""
    import copy

    from lab.models.packed import PackedLinear, can_pack, pack_linears
    if not can_pack(torch.float32):
        pytest.skip("torch built without oneDNN")
    packed = copy.deepcopy(tiny)
    assert pack_linears(packed) == 2 * 7 + 1                  # q k v o gate up down per layer, lm_head
    assert isinstance(packed.lm_head, PackedLinear) and packed.get_output_embeddings().weight.shape[0] == VOCAB
    prompt = ids(12, seed=3)
    s = HFSession(packed)
    logits = s.prefill(prompt)
    ours = []
    for _ in range(20):
        ours.append(int(np.argmax(logits)))
        logits = s.extend([ours[-1]])[-1]
    x = torch.tensor([prompt])
    with torch.inference_mode():
        ref = tiny.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=20,
                            min_new_tokens=20)[0, len(prompt):].tolist()
    assert ours == ref
    # a block extend scores the same as the unpacked model's, to fp32 summation-order noise
    s2 = HFSession(tiny)
    s2.prefill(prompt)
    s.rollback(len(prompt))
    np.testing.assert_allclose(s.extend(ref[:6]), s2.extend(ref[:6]), atol=ATOL)


def test_packed_short_forwards_padded_give_the_same_rows(tiny):
    """A packed model padded to PAD_ROWS (lab/models/packed.py): a forward of 1…3 rows returns those
    rows as the unpadded one does (zero rows add no term), so a session's greedy tokens are unchanged."""
    import copy

    from lab.models.packed import PAD_ROWS, can_pack, pack_linears, set_min_rows
    if not can_pack(torch.float32):
        pytest.skip("torch built without oneDNN")
    packed = copy.deepcopy(tiny)
    pack_linears(packed)
    prompt = ids(12, seed=5)
    runs = {}
    for rows in (1, PAD_ROWS):
        set_min_rows(packed, rows)
        s = HFSession(packed)
        first = s.prefill(prompt)
        runs[rows] = (first, [s.extend(ids(n, seed=n)) for n in (1, 2, 3)])
    np.testing.assert_allclose(runs[1][0], runs[PAD_ROWS][0], atol=ATOL)
    for unpadded, padded in zip(runs[1][1], runs[PAD_ROWS][1]):
        assert padded.shape == unpadded.shape
        np.testing.assert_allclose(padded, unpadded, atol=ATOL)


class _Timed(torch.nn.Module):
    """A packed layer whose forward takes `slow_ms` unpadded and `fast_ms` padded (a sleep)."""

    def __init__(self, slow_ms: float, fast_ms: float):
        super().__init__()
        from lab.models.packed import PackedLinear
        self.layer = PackedLinear(torch.nn.Linear(4, 4), keep_weight=False)
        self.ms = {1: slow_ms, 4: fast_ms}

    def forward(self, input_ids, use_cache=False):
        import time
        time.sleep(self.ms[self.layer.min_rows] / 1e3)


@pytest.mark.parametrize("slow_ms, fast_ms, chosen", [(30, 5, 4), (5, 30, 1), (30, 29, 1)])
def test_padding_is_kept_only_where_it_measures_faster(slow_ms, fast_ms, chosen):
    """choose_min_rows times both ways and keeps padding only if it is clearly faster (PAD_GAIN);
    the layers are left at the choice it returns."""
    from lab.models.packed import PAD_ROWS, can_pack, choose_min_rows
    if not can_pack(torch.float32):
        pytest.skip("torch built without oneDNN")
    assert PAD_ROWS == 4
    m = _Timed(slow_ms, fast_ms)
    rows, ms = choose_min_rows(m)
    assert rows == chosen and m.layer.min_rows == chosen
    assert ms[1] >= slow_ms and ms[4] >= fast_ms


def test_int8_draft_keeps_the_targets_greedy_output(tiny):
    """An int8 draft (lab/models/quant.py) only proposes: speculative decoding with it returns the
    fp32 target's own greedy decode token for token, and its logits keep the vocabulary's width."""
    import copy

    from lab.core.decoding import speculative_generate
    from lab.models.quant import can_quantize
    if not can_quantize(torch.float32):
        pytest.skip("torch built without fbgemm")
    torch.manual_seed(1)
    other = transformers.Qwen2ForCausalLM(tiny.config).to(torch.float32).eval()   # a different draft
    draft = HFModel.from_objects(copy.deepcopy(other), _NoTokenizer(), "tiny-draft", kernels="int8")
    assert draft.kernels.startswith("int8-dynamic") and draft.vocab_size == VOCAB
    assert type(draft.model.lm_head).__module__.startswith("torch.ao.nn.quantized")
    target = HFModel.from_objects(tiny, _NoTokenizer(), "tiny-target")
    # the int8 draft scores close to its fp32 self (it is the same model, quantised)
    s8, s32 = draft.new_session(), HFSession(other)
    prompt = ids(12, seed=7)
    l8, l32 = s8.prefill(prompt), s32.prefill(prompt)
    assert l8.shape == (VOCAB,) and np.abs(l8 - l32).max() < 0.1 * np.abs(l32).max()
    for k in (1, 3, 5):
        gen = speculative_generate(draft, target, prompt, 24, k_fn=lambda: k)
        assert gen.tokens == greedy_generate(target, prompt, 24)
        assert sum(gen.drafted) > 0


def test_int8_needs_float32(tiny):
    import copy
    with pytest.raises(ModelError, match="int8 needs float32"):
        HFModel.from_objects(copy.deepcopy(tiny).to(torch.bfloat16), _NoTokenizer(), "t", kernels="int8")
    with pytest.raises(ModelError, match="kernels must be one of"):
        HFModel.from_objects(copy.deepcopy(tiny), _NoTokenizer(), "t", kernels="fp4")


def test_the_draft_defaults_to_int8_where_it_runs_and_the_target_to_packed(monkeypatch):
    from lab.models import cpu
    from lab.models.hf import default_kernels
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ("Some x86", frozenset({"avx", "avx2", "fma"})))
    monkeypatch.setattr(cpu.platform, "machine", lambda: "x86_64")
    assert cpu.int8_runs_here("float32") and not cpu.int8_runs_here("bfloat16")
    assert default_kernels("draft", "float32") == "int8"
    assert default_kernels("draft", "bfloat16") == "packed"           # fbgemm's int8 takes fp32 activations
    assert default_kernels("target", "float32") == "packed"           # the target's weights are the output's
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ("Old x86", frozenset({"avx", "sse4_2"})))
    assert default_kernels("draft", "float32") == "packed"
    monkeypatch.setattr(cpu, "_cpuinfo", lambda: ("Some x86", frozenset({"avx2"})))
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    assert default_kernels("draft", "float32") == "packed"
