"""Linear layers whose weights are packed once for oneDNN, so a forward over a few tokens costs
about what a forward over one token does.

A decode step and a block verify of K+1 tokens both read every weight once; on a CPU both are
bound by memory bandwidth, so they should cost about the same.  With torch's default fp32 path
they do not: from M = 4 rows on, the GEMM repacks each weight matrix on every call (a second
pass over all the weights), and t_verify(K+1) jumps to ~2x t_decode (docs/MEASUREMENTS.md,
"Block verify").  Packing each weight once, at load time, into oneDNN's blocked layout
(`mkldnn._reorder_linear_weight`, the layout torch's own inductor uses when it freezes a model)
removes the per-call pass.  Same weights, same math, fp32 accumulation: the outputs differ from
the unpacked GEMM's only in summation order (~1e-6 relative), as any two GEMM kernels do.
"""
from __future__ import annotations

import torch

PACK_BATCH_HINT = 8              # oneDNN's layout hint: the verify blocks we run are 1..K+1 <= 8 rows


class PackedLinear(torch.nn.Module):
    """nn.Linear with its weight in oneDNN's packed layout.  `weight` stays readable (shape, dtype)
    only where something else owns it (a tied lm_head); otherwise only the packed copy is kept."""

    def __init__(self, linear: torch.nn.Linear, keep_weight: bool):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(w, PACK_BATCH_HINT),
                             persistent=False)
        self.bias = linear.bias
        self.weight = linear.weight if keep_weight else None
        self.n_params = w.numel() + (linear.bias.numel() if linear.bias is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]), self.packed, self.bias, "none", [], "")
        return y.reshape(*shape[:-1], self.out_features)


def can_pack(dtype: torch.dtype) -> bool:
    """oneDNN packs fp32 everywhere it runs; bf16 only where the CPU has bf16 instructions."""
    from lab.models.cpu import bf16_native
    return torch.backends.mkldnn.is_available() and (dtype == torch.float32 or
                                                     (dtype == torch.bfloat16 and bf16_native()))


def pack_linears(model: torch.nn.Module) -> int:
    """Replace every nn.Linear of `model` by a PackedLinear, in place; returns how many.  The
    output embedding keeps its `weight` (HFModel reads its width; tied models share it)."""
    out_emb = model.get_output_embeddings()
    todo = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if type(child) is torch.nn.Linear]
    for parent, name, child in todo:
        setattr(parent, name, PackedLinear(child, keep_weight=child is out_emb))
    return len(todo)
