"""What a person reads: the link as the kernel has it, and (later) tables and plots of runs."""
from __future__ import annotations

SPEC_KEYS = ("delay_ms", "jitter_ms", "loss_pct", "rate_mbit", "limit_pkts")


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:g}" if isinstance(v, (int, float)) else str(v)


def print_link_status(rb: dict, out=print) -> None:
    """The applied link, read back from the kernel (and the relay), beside the configuration."""
    out(f"backend {rb.get('backend')}  TCP {rb.get('congestion_control')}  "
        f"{rb.get('edge_ns')} {rb.get('edge_addr')} ↔ {rb.get('cloud_ns')} {rb.get('cloud_addr')}")
    conf = rb.get("configured") or {}
    width = max(len(k) for k in SPEC_KEYS)
    out(f"  {'':{width}}  {'uplink (edge→cloud)':>24}  {'downlink (cloud→edge)':>24}")
    for k in SPEC_KEYS:
        cells = []
        for d in ("uplink", "downlink"):
            applied = (rb.get(d) or {}).get(k)
            configured = (conf.get(d) or {}).get(k)
            mark = "" if configured is None or applied is None or abs(float(applied) - float(configured)) < 1e-6 \
                else f" (configured {_fmt(configured)})"
            cells.append(f"{_fmt(applied)}{mark}")
        out(f"  {k:{width}}  {cells[0]:>24}  {cells[1]:>24}")
    for q in rb.get("qdiscs", []):
        out(f"  qdisc {q.get('ns')}/{q.get('dev')}: {q.get('kind')}")
    relay = rb.get("relay")
    if relay:
        for d in ("uplink", "downlink"):
            s = relay.get(d, {})
            out(f"  relay {d}: {s.get('delivered', 0)} delivered, {s.get('lost', 0)} lost, "
                f"{s.get('limit_dropped', 0)} over limit, {s.get('reordered', 0)} reordered")
