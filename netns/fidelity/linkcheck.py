"""`python -m lab linkcheck`: does the emulated link deliver what it was configured to?

No emulator in the peer list measures its own fidelity; this one does, on
the machine at hand, for every backend the kernel supports.  One topology per
backend is brought up and the link is *changed* between points (faster, and
it exercises `Topology.change`).  At each point our own probes
(`netns/fidelity/probe.py`) measure from inside the namespaces and each measured
figure is compared with the configuration:

  rtt       RTT P50 within ±0.5 ms (netem) / ±1.5 ms (wire) at 0…500 ms (--tcg: the RTT's P10
            inside the window derived from the guest's own unimpaired baseline, netns/fidelity/tcg.py)
  jitter    one-way delay std within 10 % of J/√3 (uniform ±J), per direction
  loss      lost count per direction inside the exact 99 % binomial region
  goodput   bulk TCP after warm-up within 5 % of the payload ceiling of the rate
  asym      different delay and rate per direction, each direction on its own

The plan is data (`plan()`), printed as it runs; the table comes last, then
the worst deviation (relative to its tolerance); the exit code is non-zero if
any row fails.  `quick=True` is a representative subset for CI (< 60 s).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from typing import Callable

from netns.link import LinkError, LinkPair, LinkSpec
from netns.fidelity.probe import run_goodput, run_udp_echo
from netns.fidelity.probe_stats import (
    L2_HEADER_BYTES, binomial_acceptance, payload_ceiling_mbit, uniform_jitter_iqr_ms, uniform_jitter_std_ms,
    warmup_s, wilson_interval,
)
from netns.fidelity.tcg import LEVEL as TCG_LEVEL, TcgBaseline, Window, delay_reading, rtt_reading, stat_name
from netns.fidelity.tcg import measure as measure_tcg_baseline

RTT_TOLERANCE_MS = {"netem": 0.5, "wire": 1.5}
# Inside a software-emulated guest (qemu TCG, `make vm-test`) every delay reads long by an amount that
# depends on how fast and busy the host is; with `--tcg` the RTT and one-way rows are judged against
# the guest's own unimpaired baseline, measured right after the topology is up (netns/fidelity/tcg.py),
# and labelled "<backend>+tcg".  netem's own ±0.5 ms is a claim about real hardware only.
# The emulated guest cannot move data as fast as real hardware, and its slow start ends late: with
# --tcg every goodput rate is capped at TCG_MAX_RATE_MBIT, and warm-up and window are TCG_WINDOW_FACTOR
# times as long (docs/MEASUREMENTS.md, "linkcheck in the TCG guest").
TCG_MAX_RATE_MBIT = 10
TCG_WINDOW_FACTOR = 2
JITTER_TOLERANCE_FRAC = 0.10
# A TCG guest delays a few packets by several milliseconds at random, and the std (a sum of squares)
# is at their mercy: on "+tcg" rows the jitter is judged by the interquartile range (uniform ±J: J),
# with the same ±10 %; the std is still shown (docs/MEASUREMENTS.md, "linkcheck in the TCG guest").
GOODPUT_TOLERANCE_FRAC = 0.05
# The lost count is judged inside its exact binomial region at this confidence: a correct link fails
# a row 1 - LOSS_CONFIDENCE of the time, and a test run judges four to six loss rows
# (docs/MEASUREMENTS.md, "linkcheck: loss confidence").
LOSS_CONFIDENCE = 0.999
# What tbf counts besides the IP packet depends on the device it sits on
# (probe_stats.L2_HEADER_BYTES): netem shapes the veth, wire shapes its TUN devices.
RATE_DEVICE = {"netem": "veth", "wire": "tun"}


@dataclass(frozen=True)
class Point:
    """One link configuration and what to measure on it."""
    check: str                 # rtt | jitter | loss | goodput | asym
    link: LinkPair
    echo_count: int = 0        # UDP echo packets (0: no echo)
    echo_interval_ms: float = 5.0
    goodput_dirs: tuple[str, ...] = ()
    measure_s: float = 4.0
    skip_s: float | None = None  # goodput warm-up (None: probe_stats.warmup_s of the RTT)


@dataclass(frozen=True)
class Row:
    check: str
    backend: str
    configured: str
    measured: str
    deviation: str
    tolerance: str
    ok: bool
    severity: float            # |deviation| / tolerance: 1.0 is at the edge; the worst is reported


def _sym(**kw) -> LinkPair:
    return LinkPair.symmetric(LinkSpec(**kw))


def plan(quick: bool, tcg: bool = False) -> list[Point]:
    """The points, in run order. Full: a few minutes per backend; quick: < 60 s.  tcg: goodput rates
    capped at TCG_MAX_RATE_MBIT (a software-emulated guest cannot fill a faster link), warm-up and
    window TCG_WINDOW_FACTOR times as long (its slow start ends late)."""
    slow = TCG_WINDOW_FACTOR if tcg else 1

    def rate(mbit: float) -> float:            # the guest's cap, every goodput rate alike
        return min(mbit, TCG_MAX_RATE_MBIT) if tcg else mbit

    def skip(rtt_ms: float) -> float | None:   # None: run_goodput's own warm-up
        return slow * warmup_s(rtt_ms) if tcg else None

    rtts = (0, 50) if quick else (0, 10, 50, 200, 500)
    points = [Point("rtt", _sym(delay_ms=r / 2), echo_count=200 if quick else 300, echo_interval_ms=5.0)
              for r in rtts]
    points.append(Point("jitter", _sym(delay_ms=25, jitter_ms=10), echo_count=1500, echo_interval_ms=2.0))
    for loss in ((5.0,) if quick else (1.0, 5.0)):
        points.append(Point("loss", _sym(loss_pct=loss), echo_count=2000 if quick else 3000,
                            echo_interval_ms=1.0))
    goodput = ((10, 0), (100, 100)) if quick else ((1, 0), (10, 0), (100, 0), (1, 100), (10, 100), (100, 100))
    for mbit, rtt in dict.fromkeys((rate(m), r) for m, r in goodput):     # capped points can coincide
        # Low rates get a longer window: a loss repaired near an edge of the window moves a
        # whole window's worth of in-order bytes across it, which weighs more when few bytes flow.
        window = 3.0 if quick else (6.0 if mbit < 5 else 4.0)
        points.append(Point("goodput", _sym(delay_ms=rtt / 2, rate_mbit=mbit), goodput_dirs=("uplink",),
                            measure_s=window * slow, skip_s=skip(rtt)))
    asym = LinkPair(uplink=LinkSpec(delay_ms=10, rate_mbit=rate(5)), downlink=LinkSpec(delay_ms=40, rate_mbit=rate(20)))
    points.append(Point("asym", asym, echo_count=200, echo_interval_ms=5.0, goodput_dirs=("uplink", "downlink"),
                        measure_s=(3.0 if quick else 4.0) * slow, skip_s=skip(asym.rtt_ms)))
    return points


# ------------------------------------------------------------------ judging one point

def _base(backend: str) -> str:
    return backend.split("+")[0]


def _delayed(spec: LinkSpec) -> bool:
    return spec.delay_ms > 0 or spec.jitter_ms > 0


def delay_window(backend: str, tcg: TcgBaseline | None, hops: int, direction: str | None = None) -> Window:
    """The accepted deviation of a delay reading (an RTT, or one direction's delay): the backend's own
    ± tolerance on hardware; with a TCG baseline, the window derived from it (netns/fidelity/tcg.py)
    for a packet that crossed `hops` delayed directions."""
    native = RTT_TOLERANCE_MS.get(_base(backend), 1.5)
    if tcg is None:
        return Window(-native, native, f"±{native:g} ms")
    if direction is None:
        return tcg.rtt_window(hops, native)
    return tcg.oneway_window(direction, hops > 0, native)


def _is_delay(row: Row) -> bool:
    """An RTT or one-way delay row: the readings a TCG baseline judges."""
    return row.check == "rtt" or " delay " in row.check


def _delay_row(check: str, backend: str, configured: str, want_ms: float, got_ms: float, w: Window,
               stat: str) -> Row:
    dev = got_ms - want_ms
    tolerance = w.how if w.how.startswith("±") else w.label()
    return Row(check, backend, configured, f"{stat} {got_ms:.2f} ms", f"{dev:+.2f} ms", tolerance,
               w.accepts(dev), w.severity(dev))


def _rtt_rows(p: Point, backend: str, st, tcg: TcgBaseline | None = None) -> list[Row]:
    """The RTT's P50 against the backend's ±; in a TCG guest its fast end against the guest's window."""
    hops = _delayed(p.link.uplink) + _delayed(p.link.downlink)
    guest = tcg is not None
    return [_delay_row("rtt", backend, f"RTT {p.link.rtt_ms:g} ms", p.link.rtt_ms, rtt_reading(st, guest),
                       delay_window(backend, tcg, hops), stat_name(guest))]


def _oneway_rows(p: Point, backend: str, st, tcg: TcgBaseline | None = None) -> list[Row]:
    guest = tcg is not None
    return [_delay_row(f"{p.check} delay {d}", backend, f"{spec.delay_ms:g} ms one-way", spec.delay_ms,
                       delay_reading(ds, guest), delay_window(backend, tcg, int(_delayed(spec)), d),
                       stat_name(guest))
            for d, spec, ds in (("up", p.link.uplink, st.uplink), ("down", p.link.downlink, st.downlink))]


def _jitter_rows(p: Point, backend: str, st) -> list[Row]:
    """The per-direction spread of the one-way delay against uniform ±J: the std (J/√3), or on
    "+tcg" rows the interquartile range (J), which TCG's occasional late packets barely move."""
    rows = []
    robust = backend.endswith("+tcg")
    for d, spec, ds in (("up", p.link.uplink, st.uplink), ("down", p.link.downlink, st.downlink)):
        if robust:
            want, got, what = uniform_jitter_iqr_ms(spec.jitter_ms), ds.delay_iqr_ms, "IQR"
            measured = f"IQR {got:.2f} ms, std {ds.delay_std_ms:.2f} ({ds.reorders} reordered)"
        else:
            want, got, what = uniform_jitter_std_ms(spec.jitter_ms), ds.delay_std_ms, "std"
            measured = f"std {got:.2f} ms ({ds.reorders} reordered)"
        tol = JITTER_TOLERANCE_FRAC * want
        dev = got - want
        rows.append(Row(f"jitter {d}", backend, f"±{spec.jitter_ms:g} ms: {what} {want:.2f}",
                        measured, f"{dev:+.2f} ms", f"±{tol:.2f} ms", abs(dev) <= tol, abs(dev) / tol))
    return rows


def _loss_rows(p: Point, backend: str, st) -> list[Row]:
    rows = []
    for d, spec, ds in (("up", p.link.uplink, st.uplink), ("down", p.link.downlink, st.downlink)):
        prob = spec.loss_pct / 100
        lo, hi = binomial_acceptance(ds.sent, prob, LOSS_CONFIDENCE)
        expect = ds.sent * prob
        half = (expect - lo) if ds.lost < expect else (hi - expect)
        severity = abs(ds.lost - expect) / half if half > 0 else (0.0 if ds.lost == expect else 9.99)
        wlo, whi = wilson_interval(ds.lost, ds.sent, LOSS_CONFIDENCE) if ds.sent else (0.0, 1.0)
        rows.append(Row(f"loss {d}", backend, f"{spec.loss_pct:g} % of {ds.sent}",
                        f"{ds.loss_pct:.2f} % ({ds.lost}; {100 * LOSS_CONFIDENCE:g} % CI {100 * wlo:.2f}–{100 * whi:.2f})",
                        f"{ds.loss_pct - spec.loss_pct:+.2f} pp",
                        f"{lo}–{hi} lost", lo <= ds.lost <= hi, severity))
    return rows


def _goodput_row(check: str, backend: str, spec: LinkSpec, run, drops: dict | None = None) -> Row:
    """drops: packets the qdiscs dropped during the run, {"sender": n, "receiver": n} by namespace —
    a retransmission the receiver's side did not cause was a drop inside the sending host."""
    l2 = L2_HEADER_BYTES[RATE_DEVICE.get(_base(backend), "veth")]
    ceiling = payload_ceiling_mbit(spec.rate_mbit, mss_bytes=run.mss_bytes, l2_header_bytes=l2)
    dev = (run.goodput.mbit - ceiling) / ceiling
    d = "up" if run.direction == "uplink" else "down"
    dlv = "" if run.delivered_mbit is None else f"delivered {run.delivered_mbit:.3f}, "
    dropped = "" if drops is None else f"; drops {drops['sender']} sender/{drops['receiver']} rcvr"
    return Row(f"goodput {d}" if check == "goodput" else f"{check} goodput {d}", backend,
               f"{spec.rate_mbit:g} Mbit/s {spec.delay_ms * 2 if check == 'goodput' else spec.delay_ms:g} ms"
               f"{'' if check == 'goodput' else ' one-way'}: {ceiling:.3f}",
               f"{run.goodput.mbit:.3f} Mbit/s ({dlv}{run.retransmits} rtx{dropped})", f"{100 * dev:+.1f} %",
               f"±{100 * GOODPUT_TOLERANCE_FRAC:g} %", abs(dev) <= GOODPUT_TOLERANCE_FRAC,
               abs(dev) / GOODPUT_TOLERANCE_FRAC)


def _scenario_rows(p: Point, backend: str, st, tcg: TcgBaseline | None = None) -> list[Row]:
    """Everything the link configures, per direction: delay always, jitter and loss when set
    (loss 0 is judged too: the region is then exactly 0 lost packets)."""
    rows = [Row("rtt", backend, f"RTT {p.link.rtt_ms:g} ms", f"P50 {st.rtt_p50_ms:.2f} ms",
                f"{st.rtt_p50_ms - p.link.rtt_ms:+.2f} ms", "(info)", True, 0.0)]
    rows += _oneway_rows(p, backend, st, tcg)
    if p.link.uplink.jitter_ms or p.link.downlink.jitter_ms:
        rows += [r for r in _jitter_rows(p, backend, st) if "±0 ms" not in r.configured]
    return rows + _loss_rows(p, backend, st)


def measure_point(p: Point, backend: str, spawn, addrs: dict | None = None,
                  qdisc_drops: Callable[[], dict] | None = None, tcg: TcgBaseline | None = None) -> list[Row]:
    """Run the probes one point asks for, on a link already set to p.link.
    addrs: {"edge_addr": …, "cloud_addr": …} (default: the lab's 198.18.0.1/.2).
    qdisc_drops: () → {"edge": n, "cloud": n}, the qdisc drop counters of each namespace; given, the
    goodput rows say where the packets behind the retransmissions were dropped.
    tcg: the guest's unimpaired baseline, when the delays are judged inside a TCG guest."""
    addrs = addrs or {}
    rows: list[Row] = []
    spread = max(p.link.uplink.jitter_ms, p.link.downlink.jitter_ms)
    if p.echo_count:
        st = run_udp_echo(spawn, count=p.echo_count, interval_ms=p.echo_interval_ms,
                          rtt_ms=p.link.rtt_ms, spread_ms=spread, **addrs)
        if st.rtt_p50_ms is None:
            raise LinkError("no UDP echo reply came back at all")
        if p.check in ("jitter", "loss"):
            rows += {"jitter": _jitter_rows, "loss": _loss_rows}[p.check](p, backend, st)
        else:
            rows += {"rtt": _rtt_rows, "asym": _oneway_rows, "scenario": _scenario_rows}[p.check](p, backend, st, tcg)
    for direction in p.goodput_dirs:
        spec = p.link.uplink if direction == "uplink" else p.link.downlink
        before = qdisc_drops() if qdisc_drops else None
        run = run_goodput(spawn, direction=direction, measure_s=p.measure_s, rtt_ms=p.link.rtt_ms,
                          skip_s=p.skip_s, **addrs)
        drops = None
        if before is not None:
            after = qdisc_drops()
            sender, receiver = ("edge", "cloud") if direction == "uplink" else ("cloud", "edge")
            drops = {"sender": after[sender] - before[sender], "receiver": after[receiver] - before[receiver]}
        row = _goodput_row(p.check, backend, spec, run, drops)
        if spec.loss_pct or spec.jitter_ms or p.link.uplink.loss_pct or p.link.downlink.loss_pct:
            # Under loss (or reordering by jitter) TCP cannot fill the rate: report, do not judge.
            row = Row(row.check, row.backend, row.configured, row.measured, row.deviation, "(info)", True, 0.0)
        rows.append(row)
    return rows


# ------------------------------------------------------------------ running and printing

def _error_row(p: Point, backend: str, e: Exception) -> Row:
    return Row(p.check, backend, p.link.describe(), f"error: {e}"[:120], "-", "-", False, 9.99)


def _addrs() -> dict:
    from netns.topology import CLOUD_ADDR, EDGE_ADDR
    return {"edge_addr": EDGE_ADDR, "cloud_addr": CLOUD_ADDR}


def side_drops(topo) -> dict[str, int]:
    """Packets dropped by every qdisc in each lab namespace, {"edge": n, "cloud": n}."""
    from netns.counters import qdisc_stats
    return {side: sum(q["drops"] for q in qdisc_stats(topo.ipr(ns)))
            for side, ns in (("edge", topo.edge_ns), ("cloud", topo.cloud_ns))}


def check_backend(backend: str, points: list[Point], out: Callable[[str], None],
                  prefix: str = "sdl-", tcg: bool = False) -> list[Row]:
    """Bring one topology up with `backend`, walk the points changing the link, tear down.
    tcg: first measure the guest's unimpaired baseline on the link at delay 0 (netns/fidelity/tcg.py),
    print how the delay windows follow from it, and judge every delay against them."""
    from netns.topology import Topology   # lazy: probes and stats do not need the topology
    rows: list[Row] = []
    topo = Topology(backend=backend, congestion_control=None, prefix=prefix)
    try:
        t0 = time.monotonic()
        first = _sym() if tcg else points[0].link
        topo.up(first)
        label = topo.backend_name + ("+tcg" if tcg else "")
        out(f"{backend}: topology up in {1000 * (time.monotonic() - t0):.0f} ms "
            f"({topo.edge_ns} ↔ {topo.cloud_ns}, backend {topo.backend_name})")
        baseline = None

        def measure_baseline():
            b = measure_tcg_baseline(topo.popen, _addrs())
            out(f"{backend}: {b.describe(RTT_TOLERANCE_MS.get(topo.backend_name, 1.5))}")
            out(f"{backend}: tcg-baseline {json.dumps(b.to_dict())}")
            return b

        if tcg:
            baseline = measure_baseline()
        for i, p in enumerate(points):
            t0 = time.monotonic()
            change_note = ""
            try:
                if i > 0 or p.link != first:
                    change_ms = topo.change(p.link)
                    change_note = f", change {change_ms:.1f} ms" if isinstance(change_ms, (int, float)) else ""
                new = measure_point(p, label, topo.popen, _addrs(), lambda: side_drops(topo), tcg=baseline)
                missed = [r for r in new if not r.ok and _is_delay(r)] if tcg else []
                if missed:
                    # As tests/netns do (conftest.check_rtts): the guest's excess can jump for seconds
                    # when the host is busy, so a delay outside its window is measured once more,
                    # baseline and point anew, and the second decides; a wrong netem fails both.
                    out(f"  [{i + 1:2d}/{len(points)}] TCG: " + "; ".join(
                        f"{r.check} {r.measured} outside {r.tolerance}" for r in missed)
                        + " — measuring the baseline and the point again")
                    topo.change(first)
                    baseline = measure_baseline()
                    topo.change(p.link)
                    new = measure_point(p, label, topo.popen, _addrs(), lambda: side_drops(topo), tcg=baseline)
            except LinkError as e:
                new = [_error_row(p, label, e)]
            rows += new
            summary = "; ".join(f"{r.check} {r.measured} {'ok' if r.ok else 'FAIL'}" for r in new)
            out(f"  [{i + 1:2d}/{len(points)}] {p.check:7s} {p.link.describe():40s} "
                f"{time.monotonic() - t0:5.1f} s{change_note}: {summary}")
    finally:
        topo.down()
    return rows


def text_table(head: tuple[str, ...], body: list[tuple[str, ...]]) -> list[str]:
    """Left-aligned columns separated by " | ", a dashed rule under the header (linkcheck, validate)."""
    cells = [head] + list(body)
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return lines


def format_table(rows: list[Row]) -> list[str]:
    head = ("check", "backend", "configured", "measured", "deviation", "tolerance", "ok")
    return text_table(head, [(r.check, r.backend, r.configured, r.measured, r.deviation, r.tolerance,
                              "ok" if r.ok else "FAIL") for r in rows])


def run_linkcheck(backends: list[str] | None = None, quick: bool = False, out=print,
                  prefix: str = "sdl-", tcg: bool = False) -> int:
    """Measure every backend in `backends` (None: all this kernel has); 0 if all rows pass, else 1."""
    if backends is None:
        from netns.backends import netem_available
        backends = ["wire"] + (["netem"] if netem_available() else [])
        out(f"backends on this kernel: {', '.join(backends)}"
            + ("" if "netem" in backends else " (no sch_netem: the netem path is checked in the VM)"))
    points = plan(quick, tcg)
    if tcg:
        out(f"software-emulated guest (TCG): delays judged by their fast end ({TCG_LEVEL}) against the guest's "
            f"own unimpaired baseline (measured first, per backend; a delay outside its window is measured "
            f"once more), jitter judged by its IQR, goodput rates capped at "
            f"{TCG_MAX_RATE_MBIT} Mbit/s (the guest's CPU is slower than the links) and measured {TCG_WINDOW_FACTOR}x as long "
            f"after a {TCG_WINDOW_FACTOR}x warm-up; rows are labelled <backend>+tcg")
    out(f"linkcheck {'quick' if quick else 'full'}: {len(points)} points per backend")
    t0 = time.monotonic()
    rows: list[Row] = []
    for b in backends:
        try:
            rows += check_backend(b, points, out, prefix=prefix, tcg=tcg)
        except LinkError as e:
            out(f"{b}: {e}")
            rows.append(Row("topology", b, "up", f"error: {e}"[:120], "-", "-", False, 9.99))
    out("")
    for line in format_table(rows):
        out(line)
    failed = [r for r in rows if not r.ok]
    if rows:
        worst = max(rows, key=lambda r: r.severity)
        out(f"\nworst deviation: {worst.check} ({worst.backend}) {worst.deviation} against "
            f"{worst.tolerance} — {worst.severity:.2f}x its tolerance")
    out(f"{len(rows) - len(failed)}/{len(rows)} within tolerance in {time.monotonic() - t0:.0f} s"
        + ("" if not failed else f"; FAILED: {', '.join(f'{r.check} ({r.backend})' for r in failed)}"))
    return 0 if rows and not failed else 1


def probe_scenario_link(link: LinkPair, backend: str = "auto", congestion_control: str | None = None,
                        name: str = "scenario", out=print, prefix: str = "sdl-") -> int:
    """`python -m lab probe SCENARIO`: the scenario's link alone, measured like a linkcheck point
    (delay, jitter, loss per direction; goodput per direction when the link is rate-limited)."""
    from netns.topology import Topology
    dirs = tuple(d for d, spec in (("uplink", link.uplink), ("downlink", link.downlink)) if spec.rate_mbit)
    jitter = max(link.uplink.jitter_ms, link.downlink.jitter_ms)
    lossy = max(link.uplink.loss_pct, link.downlink.loss_pct)
    # Enough packets to see the configured loss (≈50 expected losses), bounded to ~10 s.
    count = min(5000, max(500, int(50 / (lossy / 100)) if lossy else 500))
    point = Point("scenario", link, echo_count=count, echo_interval_ms=2.0, goodput_dirs=dirs,
                  measure_s=4.0)
    topo = Topology(backend=backend, congestion_control=congestion_control, prefix=prefix)
    t0 = time.monotonic()
    try:
        topo.up(link)
        out(f"{name}: {link.describe()} — {topo.backend_name} backend; measuring "
            f"({count} UDP echoes{', bulk TCP ' + ' and '.join(dirs) if dirs else ''}, jitter spread {jitter:g} ms)")
        rows = measure_point(point, topo.backend_name, topo.popen, _addrs(), lambda: side_drops(topo))
    finally:
        topo.down()
    for line in format_table(rows):
        out(line)
    failed = [r for r in rows if not r.ok]
    out(f"{len(rows) - len(failed)}/{len(rows)} within tolerance in {time.monotonic() - t0:.0f} s")
    return 0 if not failed else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netns.fidelity.linkcheck", description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", action="append", choices=sorted(RTT_TOLERANCE_MS),
                    help="repeat for several (default: every backend this kernel has)")
    ap.add_argument("--quick", action="store_true", help="a representative subset (< 60 s)")
    ap.add_argument("--tcg", action="store_true",
                    help="running in a software-emulated VM (make vm-test): delays judged against the "
                         "guest's unimpaired baseline, measured first")
    a = ap.parse_args(argv)
    return run_linkcheck(a.backend, a.quick, tcg=a.tcg)


if __name__ == "__main__":
    sys.exit(main())
