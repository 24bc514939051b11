"""Reports of benchmark results: JSON, Markdown, a terminal table and one self-contained HTML
file with embedded matplotlib plots (PNG as base64): power trace over time per configuration,
latency histogram, J/inference bars and throughput vs energy.

Everything takes a `Report`, a `peers.Comparison` or a plain list of `BenchResult`
(`as_report` turns the last two into a Report). The table always shows what the platform
engineer asks for (shared/USERS.md): latency, throughput, GPU utilisation, energy per
inference and energy relative to the FP32 baseline, plus the error against it; skipped
configurations stay in the table with their reason.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecoinfer.bench.harness import BenchResult

SCHEMA = "ecoinfer.report/1"

COMPARE_COLUMNS = [
    "name",
    "device",
    "batch",
    "p50_ms",
    "p99_ms",
    "throughput",
    "gpu_util",
    "sm_clock",
    "j_per_inf",
    "energy_rel",
    "error",
]
TUNE_COLUMNS = [
    "name",
    "batch",
    "precision",
    "cuda_graphs",
    "p50_ms",
    "p99_ms",
    "slo",
    "throughput",
    "gpu_util",
    "power_w",
    "j_per_inf",
    "error",
    "pareto",
    "choice",
]


@dataclass
class Report:
    """What every output format is made from."""

    title: str
    results: list[BenchResult]
    kind: str = "compare"  # "compare" | "tune-energy" | "bench"
    baseline: str | None = None  # name of the result energy and errors are relative to
    meta: dict[str, Any] = field(default_factory=dict)  # model, device, batch, inputs, config
    environment: dict[str, Any] = field(default_factory=dict)  # versions, GPU, driver, date
    notes: list[str] = field(default_factory=list)  # shown above the table (choices, limits)
    warnings: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=lambda: list(COMPARE_COLUMNS))
    slo_ms: float | None = None  # tune-energy: the p99 bound, drawn on the plots


def as_report(obj: Any, title: str | None = None) -> Report:
    """A Report from a Report, a peers.Comparison or a sequence of BenchResult."""
    if isinstance(obj, Report):
        return obj
    if hasattr(obj, "results") and hasattr(obj, "baseline"):  # peers.Comparison
        cfg = getattr(obj, "config", None)
        meta = {
            "model": obj.model,
            "device": obj.device,
            "device_name": obj.device_name,
            "batch": obj.batch,
            "inputs": dict(obj.inputs),
            "config": dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg,
        }
        return Report(
            title=title or f"ecoinfer compare: {Path(obj.model).name} on {obj.device_name}",
            results=list(obj.results),
            kind="compare",
            baseline=obj.baseline,
            meta=meta,
            environment=dict(obj.environment),
            warnings=list(obj.warnings),
        )
    results = list(obj)
    return Report(title=title or "ecoinfer benchmark", results=results, kind="bench")


# ---------------------------------------------------------------------------- values
def fmt_num(x: float | None, unit: str = "") -> str:
    """3-4 significant figures without exponent for everyday magnitudes."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    a = abs(x)
    if a >= 100:
        s = f"{x:.0f}"
    elif a >= 10:
        s = f"{x:.1f}"
    elif a >= 1:
        s = f"{x:.2f}"
    elif a >= 1e-3 or a == 0:
        s = f"{x:.3g}"
    else:
        s = f"{x:.2e}"
    return s + unit


def is_estimated(r: BenchResult) -> bool:
    return r.energy is not None and (not r.energy.measured or r.energy.method == "estimated")


def latencies_ms(r: BenchResult) -> list[float] | None:
    """Raw per-call latencies when the harness kept them (for the histogram)."""
    for v in (getattr(r, "latencies_ms", None), r.extra.get("latencies_ms")):
        if v:
            return [float(x) for x in v]
    v = getattr(r, "latencies_s", None) or r.extra.get("latencies_s")
    return [float(x) * 1e3 for x in v] if v else None


def _lat(r: BenchResult, attr: str) -> float | None:
    return getattr(r.latency, attr) if r.latency is not None and r.latency.n else None


def _energy_rel(r: BenchResult, rep: Report) -> str:
    v = r.extra.get("energy_vs_baseline")
    if v is None:
        return "-"
    s = f"{v:.2f}x"
    if r.name == rep.baseline:
        return s + " (baseline)"
    base = next((b for b in rep.results if b.name == rep.baseline), None)
    # a ratio with an estimate on either side is an estimate too
    return s + (" (estimated)" if is_estimated(r) or (base and is_estimated(base)) else "")


def _error(r: BenchResult, rep: Report) -> str:
    if r.name == rep.baseline and r.extra.get("rel_l2_error") is not None:
        return "baseline"
    rel, mx = r.extra.get("rel_l2_error"), r.extra.get("max_abs_error")
    if rel is None:
        return "-"
    return f"{rel:.1e} / {mx:.1e}"


def _j(r: BenchResult, rep: Report) -> str:
    if r.j_per_inference is None:
        return "-"
    return fmt_num(r.j_per_inference) + (" (estimated)" if is_estimated(r) else "")


def _power(r: BenchResult) -> str:
    """Mean power; an estimate is an assumed figure, and says so like its J/inference."""
    w = fmt_num(r.energy.mean_power_w if r.energy is not None else None)
    return w + (" (estimated)" if is_estimated(r) and w != "-" else "")


def _util(r: BenchResult, rep: Report) -> str:
    u = r.energy.gpu_util_pct if r.energy is not None else None
    return "-" if u is None else f"{u:.0f}"


def sm_clock_mhz(r: BenchResult) -> float | None:
    """The median SM clock the meter sampled over the timed window (NVML), or None. A GPU
    held at its power limit lowers it: then the J per inference, not the kernels' speed at
    full clock, bounds the throughput."""
    clocks = [s.sm_clock_mhz for s in (r.energy.samples if r.energy else []) if s.sm_clock_mhz]
    return float(statistics.median(clocks)) if clocks else None


def _slo(r: BenchResult, rep: Report) -> str:
    ok = r.extra.get("meets_slo")
    return "-" if ok is None else ("yes" if ok else "no")


Column = tuple[str, Callable[[BenchResult, Report], str]]
COLUMNS: dict[str, Column] = {
    "name": ("configuration", lambda r, rep: r.name),
    "device": ("device", lambda r, rep: r.device),
    "batch": ("batch", lambda r, rep: str(r.batch)),
    "precision": ("precision", lambda r, rep: str(r.extra.get("precision", "-"))),
    "cuda_graphs": (
        "CUDA graphs",
        lambda r, rep: {True: "on", False: "off"}.get(r.extra.get("cuda_graphs"), "-"),
    ),
    "p50_ms": ("p50 ms", lambda r, rep: fmt_num(_lat(r, "median_ms"))),
    "p99_ms": ("p99 ms", lambda r, rep: fmt_num(_lat(r, "p99_ms"))),
    "slo": ("p99 <= SLO", _slo),
    "throughput": ("throughput/s", lambda r, rep: fmt_num(r.throughput_per_s or None)),
    "gpu_util": ("GPU util %", _util),
    "sm_clock": ("SM MHz", lambda r, rep: fmt_num(sm_clock_mhz(r))),
    "power_w": ("mean power W", lambda r, rep: _power(r)),
    "j_per_inf": ("J/inference", _j),
    "energy_rel": ("energy vs FP32", _energy_rel),
    "error": ("error vs FP32 (rel L2 / max abs)", _error),
    "compile_s": (
        "compile s",
        lambda r, rep: fmt_num(r.extra.get("compile_time_s")),
    ),
    "pareto": ("Pareto", lambda r, rep: "yes" if r.extra.get("pareto") else ""),
    "choice": ("choice", lambda r, rep: "CHOSEN" if r.extra.get("chosen") else ""),
}
_LEFT = {"name", "device", "precision", "cuda_graphs", "slo", "pareto", "choice"}
# a skipped row keeps these cells; the reason spans the others
_KEEP_ON_SKIP = {"name", "device", "batch", "precision", "cuda_graphs"}


def table(obj: Any) -> tuple[list[str], list[list[str] | tuple[list[str], str]]]:
    """(headers, rows); a skipped row is (leading cells, reason)."""
    rep = as_report(obj)
    cols = [c for c in rep.columns if c in COLUMNS]
    headers = [COLUMNS[c][0] for c in cols]
    rows: list[list[str] | tuple[list[str], str]] = []
    for r in rep.results:
        if r.skipped:
            lead: list[str] = []
            for c in cols:
                if c not in _KEEP_ON_SKIP:
                    break
                lead.append(COLUMNS[c][1](r, rep))
            rows.append((lead, f"skipped: {r.skipped}"))
        else:
            rows.append([COLUMNS[c][1](r, rep) for c in cols])
    return headers, rows


def footnotes(obj: Any) -> list[str]:
    """How to read the table: the baseline, how energy was obtained, warnings per row."""
    rep = as_report(obj)
    out: list[str] = []
    if rep.baseline:
        out.append(
            f"Energy and errors are relative to {rep.baseline} (same inputs, same device, same "
            "run); error = relative L2 ||out - ref|| / ||ref|| / max abs, worst over outputs."
        )
    methods = sorted(
        {f"{r.energy.method}" for r in rep.results if r.energy is not None and not r.skipped}
    )
    if methods:
        out.append("Energy method: " + ", ".join(methods) + ".")
    est = next((r for r in rep.results if is_estimated(r) and not r.skipped), None)
    if est is not None and est.energy is not None and est.energy.warnings:
        w = est.energy.warnings[0].removeprefix("estimated, not measured: ")
        out.append(f"J/inference marked 'estimated' is not measured: {w}.")
    # a warning every row shares (the meter's) is said once
    ran = [r for r in rep.results if not r.skipped]
    per_row = {
        r.name: list(dict.fromkeys([*(r.extra.get("error_notes") or []), *r.warnings])) for r in ran
    }
    per_row = {
        k: [w for w in v if not w.startswith("estimated, not measured")] for k, v in per_row.items()
    }
    shared = [w for w in next(iter(per_row.values()), []) if all(w in v for v in per_row.values())]
    out += shared if len(ran) > 1 else []
    for name, ws in per_row.items():
        for w in ws:
            if len(ran) <= 1 or w not in shared:
                out.append(f"{name}: {w}")
    out += rep.warnings
    return out


# ---------------------------------------------------------------------------- text formats
def to_text(obj: Any) -> str:
    """An aligned table for the terminal, then the notes."""
    rep = as_report(obj)
    headers, rows = table(rep)
    widths = [len(h) for h in headers]
    for row in rows:
        for k, c in enumerate(row if isinstance(row, list) else row[0]):
            widths[k] = max(widths[k], len(c))

    left = [c in _LEFT for c in rep.columns if c in COLUMNS]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if left[k] else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [*rep.notes, line(headers), "  ".join("-" * w for w in widths)]
    for row in rows:
        if isinstance(row, list):
            out.append(line(row))
        else:
            lead, reason = row
            cells = "  ".join(c.ljust(w) for c, w in zip(lead, widths))
            out.append(f"{cells}  {reason}")
    foot = footnotes(rep)
    if foot:
        out.append("")
        out += [f"- {f}" for f in foot]
    return "\n".join(out)


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(obj: Any) -> str:
    rep = as_report(obj)
    headers, rows = table(rep)
    out = [f"# {rep.title}", ""]
    for k in ("model", "device_name", "batch"):
        if k in rep.meta:
            out.append(f"- {k.replace('_', ' ')}: {rep.meta[k]}")
    if rep.meta.get("inputs"):
        ins = ", ".join(f"{k}: {v}" for k, v in rep.meta["inputs"].items())
        out.append(f"- inputs: {ins}")
    if rep.slo_ms is not None:
        out.append(f"- p99 latency SLO: {rep.slo_ms:g} ms")
    env = ", ".join(f"{k} {v}" for k, v in rep.environment.items() if v is not None)
    if env:
        out.append(f"- environment: {env}")
    out.append("")
    out += [n for n in rep.notes]
    if rep.notes:
        out.append("")
    out.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
    out.append("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        if isinstance(row, list):
            cells = row
        else:
            lead, reason = row
            cells = [*lead, reason] + [""] * (len(headers) - len(lead) - 1)
        out.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    foot = footnotes(rep)
    if foot:
        out.append("")
        out += [f"- {_md_cell(f)}" for f in foot]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- JSON
def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, dataclasses -> dicts, anything else unknown -> str."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _clean(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items() if not callable(v)}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if x is None or isinstance(x, bool | int | str):
        return x
    if hasattr(x, "item"):  # numpy scalar
        return _clean(x.item())
    return str(x)


def to_dict(obj: Any) -> dict[str, Any]:
    rep = as_report(obj)
    return {
        "schema": SCHEMA,
        "kind": rep.kind,
        "title": rep.title,
        "baseline": rep.baseline,
        "slo_ms": rep.slo_ms,
        "meta": _clean(rep.meta),
        "environment": _clean(rep.environment),
        "notes": list(rep.notes),
        "warnings": list(rep.warnings),
        "results": [_clean(r) for r in rep.results],
    }


def to_json(obj: Any) -> str:
    return json.dumps(to_dict(obj), indent=2, allow_nan=False)


# ---------------------------------------------------------------------------- plots
def _figure(w_in: float = 7.5, h_in: float = 4.0) -> Any:
    from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: no global backend)

    return Figure(figsize=(w_in, h_in), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _ran(rep: Report) -> list[BenchResult]:
    return [r for r in rep.results if not r.skipped and r.latency is not None and r.latency.n]


def plot_power_trace(obj: Any) -> bytes | None:
    """Power over the timed window, one line per configuration (from EnergyReading.samples);
    None when no result has sampled power (e.g. every reading was estimated)."""
    rep = as_report(obj)
    series = []
    for r in _ran(rep):
        pts = [(s.t_s, s.power_w) for s in (r.energy.samples if r.energy else []) if s.power_w]
        if pts:
            series.append((r, pts))
    if not series:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for r, pts in series:
        (ln,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], label=r.name, lw=1.2)
        if r.energy is not None and r.energy.idle_power_w is not None:
            ax.axhline(r.energy.idle_power_w, color=ln.get_color(), ls=":", lw=0.8)
    ax.set_xlabel("time since the window started (s)")
    ax.set_ylabel("power (W)")
    ax.set_title("Power during the timed window (dotted: idle power before the run)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_latency(obj: Any) -> bytes | None:
    """Latency histogram per configuration from the raw per-call latencies; where the
    harness kept only statistics, the recorded percentiles (min, p50, p90, p95, p99, max)."""
    rep = as_report(obj)
    ran = _ran(rep)
    if not ran:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    raw = {r.name: latencies_ms(r) for r in ran}
    if all(raw.values()):
        import numpy as np  # noqa: PLC0415

        lo = min(min(v) for v in raw.values())
        hi = max(max(v) for v in raw.values())
        log = hi / max(lo, 1e-9) > 20
        bins = (
            np.geomspace(max(lo, 1e-6), hi * 1.001, 60) if log else np.linspace(lo, hi * 1.001, 60)
        )
        for r in ran:
            ax.hist(raw[r.name], bins=bins, alpha=0.5, label=r.name, histtype="stepfilled")
        if log:
            ax.set_xscale("log")
        ax.set_ylabel("calls")
        ax.set_title("Latency histogram (host wall time per call, synchronised)")
    else:
        qs = [("min", "min_ms"), ("p50", "median_ms"), ("p90", "p90_ms")]
        qs += [("p95", "p95_ms"), ("p99", "p99_ms"), ("max", "max_ms")]
        for k, r in enumerate(ran):
            vals = [getattr(r.latency, a) for _, a in qs]
            ax.plot(vals, [k] * len(vals), "-", color="0.7", lw=1, zorder=1)
            ax.scatter(vals, [k] * len(vals), zorder=2, s=18)
            for j, ((lab, _), v) in enumerate(zip(qs, vals)):
                ax.annotate(lab, (v, k), textcoords="offset points", xytext=(0, 6 if j % 2 else -11),
                            ha="center", fontsize=7)  # fmt: skip
        ax.set_yticks(range(len(ran)), [r.name for r in ran], fontsize="small")
        ax.set_ylim(-0.6, len(ran) - 0.4)
        lo = min(r.latency.min_ms for r in ran)
        if max(r.latency.max_ms for r in ran) / max(lo, 1e-9) > 20:
            ax.set_xscale("log")
        ax.set_title("Latency distribution (percentiles; raw per-call times not recorded)")
    if rep.slo_ms is not None:
        ax.axvline(rep.slo_ms, color="red", ls="--", lw=1, label=f"SLO {rep.slo_ms:g} ms")
    ax.set_xlabel("latency (ms)")
    if all(raw.values()) or rep.slo_ms is not None:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_energy_bars(obj: Any) -> bytes | None:
    """J/inference per configuration (hatched: estimated), labelled with the ratio to the
    baseline."""
    rep = as_report(obj)
    rows = [r for r in _ran(rep) if r.j_per_inference is not None]
    if not rows:
        return None
    fig = _figure(7.5, 0.9 + 0.45 * len(rows))
    ax = fig.add_subplot()
    ys = list(range(len(rows)))[::-1]
    for y, r in zip(ys, rows):
        est = is_estimated(r)
        ax.barh(
            y,
            r.j_per_inference,
            color="#8fb3d9" if est else "#2f6fb0",
            hatch="//" if est else None,
            edgecolor="#1d4a78",
        )
        rel = r.extra.get("energy_vs_baseline")
        lab = fmt_num(r.j_per_inference, " J") + (f"  ({rel:.2f}x)" if rel is not None else "")
        ax.annotate(lab, (r.j_per_inference, y), textcoords="offset points", xytext=(4, 0),
                    va="center", fontsize=8)  # fmt: skip
    ax.set_yticks(ys, [r.name for r in rows], fontsize="small")
    ax.set_xlim(0, max(r.j_per_inference for r in rows) * 1.35)
    ax.set_xlabel("energy per inference (J)")
    title = "Energy per inference"
    if rep.baseline:
        title += f" (ratio to {rep.baseline})"
    if any(is_estimated(r) for r in rows):
        title += "; hatched = estimated"
    ax.set_title(title, fontsize="medium")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def pareto_front(results: Sequence[BenchResult]) -> list[BenchResult]:
    """Results no other result beats on both throughput (higher) and J/inference (lower),
    sorted by J/inference."""
    pts = [
        r
        for r in results
        if not r.skipped and r.j_per_inference is not None and r.throughput_per_s > 0
    ]
    front = []
    for r in pts:
        dominated = any(
            o is not r
            and o.throughput_per_s >= r.throughput_per_s
            and o.j_per_inference <= r.j_per_inference
            and (o.throughput_per_s > r.throughput_per_s or o.j_per_inference < r.j_per_inference)
            for o in pts
        )
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r.j_per_inference)


def plot_throughput_vs_energy(obj: Any) -> bytes | None:
    """Throughput against J/inference; the Pareto front is joined, the chosen configuration
    starred, configurations that miss the SLO drawn hollow."""
    rep = as_report(obj)
    rows = [r for r in _ran(rep) if r.j_per_inference is not None]
    if not rows:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    front = pareto_front(rows)
    ax.plot(
        [r.j_per_inference for r in front],
        [r.throughput_per_s for r in front],
        "-s",
        color="#2f6fb0",
        mfc="none",
        ms=12,
        lw=1,
        alpha=0.6,
        label="Pareto front",
    )
    for r in rows:
        miss = r.extra.get("meets_slo") is False
        ax.scatter(
            r.j_per_inference,
            r.throughput_per_s,
            s=40,
            facecolors="none" if miss else "#2f6fb0",
            edgecolors="#2f6fb0",
            marker="o",
            zorder=3,
        )
        if r.extra.get("chosen"):
            ax.scatter(r.j_per_inference, r.throughput_per_s, s=220, marker="*",
                       color="#d98c00", zorder=4, label=f"chosen: {r.name}")  # fmt: skip
        ax.annotate(r.name, (r.j_per_inference, r.throughput_per_s), textcoords="offset points",
                    xytext=(5, 4), fontsize=7)  # fmt: skip
    ax.set_xlabel(
        "energy per inference (J)" + (" (estimated)" if any(map(is_estimated, rows)) else "")
    )
    ax.set_ylabel("throughput (inferences/s)")
    ax.margins(x=0.25, y=0.12)
    t = "Throughput vs energy per inference (up and left is better)"
    if any(r.extra.get("meets_slo") is False for r in rows):
        t += "; hollow = misses SLO"
    ax.set_title(t, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _png(fig)


PLOTS: list[tuple[str, str, Callable[[Any], bytes | None], str]] = [
    # (id, caption, function, what to say when there is nothing to plot)
    (
        "power",
        "Power trace over time per configuration",
        plot_power_trace,
        "No power trace: no configuration has sampled power (energy was estimated, or the meter "
        "reads a counter without samples).",
    ),
    ("latency", "Latency distribution", plot_latency, "No latency to plot (nothing ran)."),
    ("energy", "J/inference", plot_energy_bars, "No energy was measured."),
    (
        "scatter",
        "Throughput vs energy",
        plot_throughput_vs_energy,
        "No energy was measured.",
    ),
]


def plots(obj: Any) -> dict[str, bytes | None]:
    """id -> PNG bytes (None where there is nothing to plot)."""
    rep = as_report(obj)
    return {pid: fn(rep) for pid, _, fn, _ in PLOTS}


def write_png(path: str | Path, png: bytes) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(png)
    return p


# ---------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;
max-width:1100px;color:#1d2330;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #d5dae3;padding:.3em .6em;text-align:right;vertical-align:top}
th{background:#eef2f8}td.l,th.l{text-align:left}
tr.skipped td{color:#7a8294;font-style:italic}tr.chosen td{background:#fff4d6;font-weight:600}
tr.baseline td{background:#eef7ee}
.meta td,.meta th{text-align:left}ul.notes li{margin:.2em 0}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #e3e7ee}
figcaption{font-size:.9em;color:#4a5263}.empty{color:#7a8294;font-style:italic}
"""

# annotates the page once images decode: tests (headless Chromium) read it from the DOM
_SCRIPT = """
window.addEventListener('load',function(){var im=document.querySelectorAll('img.plot'),ok=0;
for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)ok++;}
document.body.setAttribute('data-plots-rendered',ok+'/'+im.length);});
"""


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def to_html(obj: Any) -> str:
    """One self-contained page: no external file, font, script or stylesheet."""
    rep = as_report(obj)
    headers, rows = table(rep)
    al = ["l" if c in _LEFT else "" for c in rep.columns if c in COLUMNS]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{_e(rep.title)}</title><style>{_CSS}</style></head>",
        f'<body data-report-kind="{_e(rep.kind)}">',
        f"<h1>{_e(rep.title)}</h1>",
    ]
    meta_rows = []
    for k in ("model", "device_name", "batch"):
        if k in rep.meta:
            meta_rows.append((k.replace("_", " "), rep.meta[k]))
    if rep.meta.get("inputs"):
        meta_rows.append(("inputs", ", ".join(f"{k}: {v}" for k, v in rep.meta["inputs"].items())))
    if rep.slo_ms is not None:
        meta_rows.append(("p99 latency SLO", f"{rep.slo_ms:g} ms"))
    if rep.baseline:
        meta_rows.append(("FP32 baseline", rep.baseline))
    if rep.environment.get("date"):
        meta_rows.append(("date", rep.environment["date"]))
    if meta_rows:
        parts.append('<table class="meta">')
        parts += [
            f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(v)}</td></tr>' for k, v in meta_rows
        ]
        parts.append("</table>")
    if rep.notes:
        parts.append('<ul class="notes" id="summary">')
        parts += [f"<li>{_e(n)}</li>" for n in rep.notes]
        parts.append("</ul>")

    parts.append("<h2>Results</h2>")
    parts.append('<table id="results"><thead><tr>')
    parts += [f'<th class="{al[k]}">{_e(h)}</th>' for k, h in enumerate(headers)]
    parts.append("</tr></thead><tbody>")
    for r, row in zip(rep.results, rows):
        cls = []
        if r.skipped:
            cls.append("skipped")
        if r.extra.get("chosen"):
            cls.append("chosen")
        if rep.baseline and r.name == rep.baseline:
            cls.append("baseline")
        tr = f'<tr class="{" ".join(cls)}" data-name="{_e(r.name)}">'
        if isinstance(row, list):
            cells = "".join(f'<td class="{al[k]}">{_e(c)}</td>' for k, c in enumerate(row))
        else:
            lead, reason = row
            cells = "".join(f'<td class="{al[k]}">{_e(c)}</td>' for k, c in enumerate(lead))
            cells += f'<td class="l" colspan="{len(headers) - len(lead)}">{_e(reason)}</td>'
        parts.append(tr + cells + "</tr>")
    parts.append("</tbody></table>")
    foot = footnotes(rep)
    if foot:
        parts.append('<ul class="notes" id="footnotes">')
        parts += [f"<li>{_e(f)}</li>" for f in foot]
        parts.append("</ul>")

    parts.append('<h2>Plots</h2><div id="plots">')
    for pid, caption, fn, empty in PLOTS:
        png = fn(rep)
        if png is None:
            parts.append(f'<p class="empty" id="plot-{pid}">{_e(caption)}: {_e(empty)}</p>')
            continue
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure id="plot-{pid}"><img class="plot" alt="{_e(caption)}" '
            f'src="data:image/png;base64,{b64}"><figcaption>{_e(caption)}</figcaption></figure>'
        )
    parts.append("</div>")

    details = []
    for r in rep.results:
        if r.skipped or r.latency is None:
            continue
        e = r.energy
        details.append(
            [
                r.name,
                fmt_num(r.latency.mean_ms),
                fmt_num(r.latency.p90_ms),
                fmt_num(r.latency.p95_ms),
                f"{r.latency.cv:.1%}" if math.isfinite(r.latency.cv) else "-",
                fmt_num(r.gpu_compute.median_ms) if r.gpu_compute else "-",
                fmt_num(e.mean_power_w) if e else "-",
                fmt_num(e.idle_power_w) if e and e.idle_power_w is not None else "-",
                fmt_num(r.j_per_inference_above_idle) if r.j_per_inference_above_idle else "-",
                e.method if e else "-",
                fmt_num(r.extra.get("compile_time_s")),
                f"{r.peak_memory_bytes / 2**20:.0f}" if r.peak_memory_bytes else "-",
            ]
        )
    if details:
        hs = ["configuration", "mean ms", "p90 ms", "p95 ms", "CV", "GPU compute p50 ms"]
        hs += ["mean power W", "idle power W", "J/inf above idle", "energy method"]
        hs += ["compile s", "peak memory MiB"]
        parts.append('<h2>Details</h2><table id="details"><tr>')
        parts += [f'<th class="{"l" if k == 0 else ""}">{_e(h)}</th>' for k, h in enumerate(hs)]
        parts.append("</tr>")
        for d in details:
            parts.append(
                "<tr>"
                + "".join(
                    f'<td class="{"l" if k == 0 else ""}">{_e(c)}</td>' for k, c in enumerate(d)
                )
                + "</tr>"
            )
        parts.append("</table>")

    env = [(k, v) for k, v in rep.environment.items() if v is not None]
    cfg = rep.meta.get("config")
    if env or cfg:
        parts.append('<h2>Environment</h2><table class="meta" id="environment">')
        parts += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in env]
        if isinstance(cfg, dict):
            parts.append(
                f"<tr><th>benchmark config</th><td>{_e(', '.join(f'{k}={v}' for k, v in cfg.items()))}</td></tr>"
            )
        parts.append("</table>")
    parts.append(f"<script>{_SCRIPT}</script>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- files
def write_reports(
    obj: Any,
    json_path: str | Path | None = None,
    markdown_path: str | Path | None = None,
    html_path: str | Path | None = None,
) -> list[Path]:
    """Write whichever formats have a path; returns the paths written."""
    rep = as_report(obj)
    written = []
    for path, render in ((json_path, to_json), (markdown_path, to_markdown), (html_path, to_html)):
        if path is None:
            continue
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(render(rep), encoding="utf-8")
        written.append(p)
    return written
