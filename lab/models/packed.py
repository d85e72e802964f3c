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

On some CPUs oneDNN streams the packed weights slower for one or two rows than for four: on a Zen 4
EPYC (2 threads, fp32) a whole forward of the 1.5B target took 207–240 ms at 1 token, 262–292 ms at
2, and 151–163 ms at 1–6 tokens with every Linear fed at least 4 rows (the rest zeros, dropped
after).  On a Sapphire Rapids Xeon 1 row was the fastest.  So whether a forward of fewer rows is
padded is measured on each packed model as it loads (`choose_min_rows`), not assumed; a padded row
adds no term to a real row's dot products (docs/MEASUREMENTS.md, "Padded rows").
"""
from __future__ import annotations

import torch

PACK_BATCH_HINT = 8              # oneDNN's layout hint: the verify blocks we run are 1..K+1 <= 8 rows
PAD_ROWS = 4                     # the rows a short forward is padded to, where that measures faster
# Padding is kept where a padded step takes at most this share of an unpadded one: 0.74–0.82 on the EPYC; where
# it does not pay (the Xeon: 4 rows 5 % dearer than 1) noise would have to move the ratio by a tenth to pick it.
PAD_GAIN = 0.95
# Rounds run before the timed ones: right after packing, the first forwards read the new layout cold (the padded
# step measured 0.86–0.87 of the unpadded in one round after load, 0.74–0.82 once warm).
WARM_UP_ROUNDS = 2


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
        self.min_rows = 1                # set_min_rows: fewer rows are padded with zeros to this many

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        rows = x.shape[0]
        if rows < self.min_rows:
            x = torch.cat([x, x.new_zeros(self.min_rows - rows, shape[-1])])
        y = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")[:rows]
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


def set_min_rows(model: torch.nn.Module, rows: int) -> None:
    """Every PackedLinear of `model` pads a forward of fewer than `rows` rows to `rows`."""
    for m in model.modules():
        if isinstance(m, PackedLinear):
            m.min_rows = rows


def choose_min_rows(model: torch.nn.Module, repeats: int = 5) -> tuple[int, dict[int, float]]:
    """Time one-token forwards of the packed `model` unpadded and padded to PAD_ROWS in pairs, the order
    alternating, and keep padding only if the median of the pairs' ratios is at most PAD_GAIN: a pair
    shares the host's speed of its moment, which on a shared VM moves by a third within seconds.
    Returns (min_rows now set, {rows: median ms})."""
    import statistics
    import time

    x = torch.zeros(1, 1, dtype=torch.long)
    times: dict[int, list[float]] = {1: [], PAD_ROWS: []}
    with torch.inference_mode():
        for i in range(WARM_UP_ROUNDS + repeats):
            for rows in ((1, PAD_ROWS) if i % 2 else (PAD_ROWS, 1)):
                set_min_rows(model, rows)
                t = time.perf_counter()
                model(input_ids=x, use_cache=False)
                if i >= WARM_UP_ROUNDS:
                    times[rows].append((time.perf_counter() - t) * 1e3)
    ratio = statistics.median(p / u for p, u in zip(times[PAD_ROWS], times[1]))
    chosen = PAD_ROWS if ratio <= PAD_GAIN else 1
    set_min_rows(model, chosen)
    return chosen, {rows: statistics.median(v) for rows, v in times.items()}
