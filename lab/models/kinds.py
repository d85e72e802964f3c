"""What a `--models` value names, and the kernels each of its roles runs with: plain functions that
lab/models/select.py (loading) and lab/models/synthetic.py (naming a host's profile) both use."""
from __future__ import annotations

from lab.models import ModelError
from lab.models.cpu import resolve_dtype


def parse_models(spec: str) -> tuple[str, str | None, str | None]:
    """("embedded"|"embedded-gguf"|"synthetic"|"hf", profile or draft id, target id)."""
    if spec in ("embedded", "embedded-gguf"):
        return spec, None, None
    if spec == "synthetic" or spec.startswith("synthetic:"):
        return "synthetic", spec.partition(":")[2] or None, None
    if "," in spec:
        draft, _, target = spec.partition(",")
        if draft and target:
            return "hf", draft.strip(), target.strip()
    raise ModelError(f"--models must be embedded, embedded-gguf, synthetic[:PROFILE] or DRAFT_ID,TARGET_ID; "
                     f"got {spec!r}")


def kernels_of(spec: str, role: str, dtype: str, asked: str | None = None) -> str | None:
    """The Linear kernels `role` of `spec` runs with: `asked`, else the role's default here
    (lab/models/hf.py default_kernels); None where there is no such choice (synthetic models compute
    nothing, llama.cpp runs the GGUF's own kernels), and asking for one there is refused."""
    kind = parse_models(spec)[0]
    if kind in ("synthetic", "embedded-gguf"):
        if asked not in (None, "default"):
            raise ModelError(f"kernels {asked!r}: " + ("synthetic models compute nothing" if kind == "synthetic"
                                                       else "llama.cpp runs the GGUF's own kernels")
                             + "; kernels apply to the torch models (embedded, DRAFT_ID,TARGET_ID)")
        return None
    from lab.models.hf import default_kernels
    return asked or default_kernels(role, resolve_dtype(dtype))
