"""The CPU at hand, as the model back-ends see it: its model, the flags that decide speed, bf16.

Whether bfloat16 is fast here decides the default dtype and what a measured profile is worth
on another machine: a CPU with AVX-512-BF16 or AMX-BF16 runs bf16 GEMMs natively; one with
AVX2 only converts bf16 to fp32 in software and is slower in bf16 than in fp32 (figures in
docs/MEASUREMENTS.md, "dtype and threads").  torch's own dispatch level is what actually runs,
and it can be capped below the hardware (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2),
which is how an AVX2-only CPU is emulated on a newer one: both are recorded.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
from functools import lru_cache

# The flags that change which kernels run for the models (others do not move the timings).
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
               "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")
BF16_NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")
DTYPE_CHOICES = ("auto", "float32", "bfloat16")
# The environment switches that cap the ISA torch / oneDNN / MKL use (see `isa_env`).
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return model, flags
    m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    f = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return (m.group(1).strip() if m else model), frozenset(f.group(1).split() if f else ())


def isa_cap() -> str | None:
    """The ISA cap asked of torch through the environment (ATEN_CPU_CAPABILITY), if any."""
    return os.environ.get("ATEN_CPU_CAPABILITY") or None


def isa_env(isa: str | None) -> dict[str, str]:
    """Environment that caps torch/oneDNN/MKL at `isa` ("avx2"), for a child process; {} for None."""
    if isa is None:
        return {}
    if isa not in ISA_ENV:
        raise ValueError(f"isa must be one of {sorted(ISA_ENV)}, got {isa!r}")
    return dict(ISA_ENV[isa])


def bf16_native(flags: frozenset[str] | None = None) -> bool:
    """True when the hardware runs bf16 GEMMs natively and torch is not capped below it."""
    flags = _cpuinfo()[1] if flags is None else flags
    cap = isa_cap()
    if cap and not cap.startswith(("avx512", "amx")):
        return False
    return any(f in flags for f in BF16_NATIVE_FLAGS)


def torch_capability() -> str | None:
    """What torch dispatches to here (e.g. AVX512, AVX2); None if torch is not importable."""
    try:
        import torch
        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError):
        return None


def int8_runs_here(dtype: str) -> bool:
    """Whether the int8 draft (lab/models/quant.py: fbgemm's dynamic int8 Linear) runs here: float32
    activations on an x86-64 CPU with AVX2.  Read from the flags, so that naming this host's profile
    (`lab sim`) does not import torch; x86 builds of torch carry fbgemm."""
    return dtype == "float32" and platform.machine() in ("x86_64", "AMD64") and "avx2" in _cpuinfo()[1]


def resolve_dtype(dtype: str) -> str:
    """`auto` → float32: exactly lossless at temperature 0 on every CPU, and on AVX2-only CPUs also
    faster than bf16.  bfloat16 only when asked for (near-tie tokens may then differ from the
    target's one-token decode)."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    return "float32" if dtype == "auto" else dtype


def describe() -> dict:
    """What results record about the CPU: model, the speed-relevant flags, bf16, torch's level."""
    model, flags = _cpuinfo()
    return {"cpu_model": model, "cpu_flags": [f for f in SPEED_FLAGS if f in flags],
            "bf16_native": bf16_native(flags), "isa_cap": isa_cap(), "torch_capability": torch_capability(),
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def host_key(dtype: str) -> str:
    """Names this host's measured profile: CPU model + speed flags + ISA cap + dtype.  Two machines
    with the same key run the same kernels, so one's profile predicts the other's timings."""
    model, flags = _cpuinfo()
    ident = "|".join([model, ",".join(f for f in SPEED_FLAGS if f in flags), isa_cap() or "", dtype])
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40]
    return f"{slug}-{isa_cap() or 'native'}-{dtype}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


def bf16_note(dtype: str) -> str | None:
    """The sentence a report prints when bf16 is in use, else None."""
    if dtype != "bfloat16":
        return None
    return ("note: bfloat16 — near-tie tokens may differ from the target's one-token decode; "
            "lossless checks use float32" + ("" if bf16_native() else
                                             " (and this CPU has no native bf16: float32 is faster here)"))


def gemm_ms(dtype: str, m: int = 1, n: int = 8960, k: int = 1536, repeats: int = 20) -> float:
    """Median ms of one [m, k] × [k, n] matmul in `dtype` (the shape of the 1.5B target's MLP up
    projection at m tokens): a seconds-cheap reading of what each dtype costs on this CPU."""
    import statistics
    import time

    import torch

    dt = getattr(torch, dtype)
    a, b = torch.randn(m, k).to(dt), torch.randn(k, n).to(dt)
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            t = time.perf_counter()
            a @ b
            if i >= 3:                      # the first calls pick kernels and grow the allocator
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def dtype_report() -> list[str]:
    """Lines for `doctor` and `bench colocated`: the CPU, bf16 nativeness, each dtype's GEMM cost."""
    d = describe()
    lines = [f"cpu: {d['cpu_model']}  flags {' '.join(d['cpu_flags']) or '-'}  torch dispatch "
             f"{d['torch_capability'] or '?'}" + (f" (capped by ATEN_CPU_CAPABILITY={d['isa_cap']})" if d['isa_cap'] else ""),
             f"bf16: {'native (AVX-512-BF16/AMX)' if d['bf16_native'] else 'NOT native: emulated through fp32, slower than float32'}"]
    try:
        costs = {dt: (gemm_ms(dt, 1), gemm_ms(dt, 6)) for dt in ("float32", "bfloat16")}
    except ImportError:
        return lines + ["dtype cost: torch not importable (run: make setup)"]
    lines.append("dtype cost (1536×8960 GEMM, M=1 / M=6 tokens): " + "; ".join(
        f"{dt} {a:.2f} / {b:.2f} ms" for dt, (a, b) in costs.items()) + "  → --dtype auto = float32")
    return lines
