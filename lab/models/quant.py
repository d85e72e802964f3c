"""Linear layers in int8 (dynamic quantisation): a draft that reads a quarter of the bytes.

A decode step on CPU is bound by memory bandwidth: every step reads every weight once.  In fp32 the
0.5B draft reads ~2 GB per token (its lm_head over 151,936 rows alone is 0.54 GB), so on a 2-core
AVX2 host drafting K tokens costs about as much as the target's block verify.  torch's dynamic
quantisation (fbgemm on x86: int8 weights, one scale per output channel, activations quantised per
call) reads 1 byte per weight and has AVX2 kernels.

Only the draft is meant for this.  Its outputs only propose tokens; the target accepts or rejects
each, so the split output stays the target's own greedy decode token for token whatever the draft
computes — int8 moves the acceptance rate and the draft's time, never the answer.  Quantising the
target would change the answer; the lab does not offer it.

torch 2.13 marks torch.ao.quantization deprecated in favour of the separate torchao package; the
eager API still ships and works with the pinned torch, so the lab uses it rather than add a
dependency, and keeps its deprecation warnings out of every run's output.
"""
from __future__ import annotations

import warnings

import torch


def can_quantize(dtype: torch.dtype) -> bool:
    """fbgemm's dynamic int8 Linear takes fp32 activations (x86 with AVX2, which torch needs anyway)."""
    return dtype == torch.float32 and "fbgemm" in torch.backends.quantized.supported_engines


def quantize_linears(model: torch.nn.Module) -> int:
    """Replace every nn.Linear of `model` by a dynamically quantised int8 one, in place (per-channel
    weight scales); returns how many.  A tied output embedding keeps its fp32 input embedding: the
    embedding lookup reads one row per token and costs nothing worth quantising."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    n = sum(type(m) is torch.nn.Linear for m in model.modules())
    torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, message=".*quantize_per_")
        quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return n
