"""`--models` → loaded models: "embedded", "embedded-gguf", "synthetic[:PROFILE]" or "DRAFT_ID,TARGET_ID".

embedded-gguf is the embedded pair's GGUF files run by llama.cpp (lab/models/llamacpp.py, the
optional `gguf` extra); its outputs are its own, not the fp32 pair's."""
from __future__ import annotations

from lab.models import ModelError
from lab.models.cpu import resolve_dtype
from lab.models.kinds import kernels_of, parse_models  # noqa: F401 (parse_models: callers import it from here)


def resolved(dtype: str) -> str:
    """--dtype → the dtype loaded ("auto" is float32; lab/models/cpu.py says why)."""
    try:
        return resolve_dtype(dtype)
    except ValueError as e:
        raise ModelError(f"--dtype: {e}") from None


def load_role(spec: str, role: str, dtype: str = "auto", threads: int | None = None, progress: bool = False,
              kernels: str | None = None):
    """The draft or target model named by `spec`, loaded in this process."""
    if role not in ("draft", "target"):
        raise ModelError(f"role must be draft or target, got {role!r}")
    dtype = resolved(dtype)
    kind, a, b = parse_models(spec)
    kernels = kernels_of(spec, role, dtype, kernels)
    if kind == "embedded":
        from lab.models.embedded import load_embedded
        return load_embedded(role, dtype=dtype, threads=threads, progress=progress, kernels=kernels)
    if kind == "embedded-gguf":
        from lab.models.embedded import load_embedded_gguf
        return load_embedded_gguf(role, threads=threads, progress=progress)
    if kind == "synthetic":
        from lab.models.synthetic import load_synthetic
        return load_synthetic(role, a)
    from lab.models.hf import HFModel
    return HFModel(a if role == "draft" else b, dtype=dtype, threads=threads, kernels=kernels)


def prepare(spec: str, dtype: str = "auto") -> dict:
    """Fetch/convert what `spec` needs before the nodes start (progress bars in the foreground)."""
    kind, _, _ = parse_models(spec)
    dtype = resolved(dtype)
    if kind == "embedded-gguf":
        from lab.models.llamacpp import INSTALL_HINT, available
        if not available():
            raise ModelError(INSTALL_HINT)
        dtype = "float32"            # the converted copy only lends its tokenizer and configs
    if kind in ("embedded", "embedded-gguf"):
        from lab.models.embedded import ensure_embedded
        paths = ensure_embedded(progress=True, dtype=dtype)
        return {"kind": kind, "hashes": paths.hashes, "draft_dir": str(paths.draft_dir),
                "target_dir": str(paths.target_dir)}
    return {"kind": kind}
