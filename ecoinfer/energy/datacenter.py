"""Datacenter projection: from measured J/inference and throughput to GPUs, kWh, PUE, $ and CO2.

A fleet serves a load (requests/s) within a p99 SLO. Each measured configuration tells how
many requests one GPU serves per second and how many joules one request costs; from that the
projection sizes the fleet, splits the IT energy into GPU-busy, GPU-idle and host energy,
puts a facility model on top (fixed PUE, or fixed plus load-proportional overhead with the
PUE computed) and prices it. docs/datacenter-model.md has the equations; every assumption
the numbers rest on travels with the result as "name: value (source)" strings.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ecoinfer.errors import EcoinferError

J_PER_KWH = 3.6e6
S_PER_H = 3600.0

# Defaults. Each one is printed with its source whenever it is used.
DEFAULT_SERVERS = 100  # the sustainability lead's example fleet
DEFAULT_GPUS_PER_SERVER = 4
DEFAULT_HOST_POWER_W = 500.0  # CPUs, memory, NICs, fans, disks of a 4-GPU server, GPUs excluded
DEFAULT_GPU_IDLE_POWER_W = 60.0  # H100/H200 SXM idle is roughly 60-75 W
DEFAULT_PUE = 1.6
DEFAULT_PRICE_USD_PER_KWH = 0.15
DEFAULT_GRID_KGCO2_PER_KWH = 0.481
DEFAULT_GRID_SOURCE = "world average of electricity generation in 2023, Ember (481 gCO2e/kWh)"
HOURS_PER_YEAR = 8760.0

# The model's equations, printed with every report (docs/datacenter-model.md derives them).
MODEL_EQUATIONS = [
    "requests/yr R = load_rps * hours * 3600",
    "GPUs needed = ceil(load_rps / (throughput_per_gpu * max_utilisation)); "
    "servers = ceil(GPUs needed / GPUs per server)",
    "GPU active J = R * J/inference   (busy GPU-seconds = R / throughput_per_gpu)",
    "GPU idle J = (powered GPUs * hours * 3600 - busy GPU-seconds) * GPU idle W",
    "host J = powered servers * host W * hours * 3600",
    "IT kWh = (GPU active + GPU idle + host) / 3.6e6",
    "facility kWh = IT kWh * PUE                                  (fixed PUE), or",
    "facility kWh = IT kWh + fixed_kW * hours + proportional * IT kWh   (facility model); "
    "PUE = facility / IT",
    "cost = facility kWh * price;  tCO2 = facility kWh * grid kgCO2/kWh / 1000",
    "savings = baseline - configuration (facility kWh, $, tCO2); % of the baseline's facility kWh",
]


class ProjectionInputError(EcoinferError):
    """A fleet description, measurement or results file the projection cannot use."""


def check_number(
    value: Any, what: str, *, positive: bool = False, allow_none: bool = False
) -> None:
    """Refuse NaN, infinities, negatives (and zero where the model divides by it)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProjectionInputError(f"{what} must be a finite number, got {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "greater than 0" if positive else "0 or more"
        raise ProjectionInputError(f"{what} must be {bound}, got {value!r}")


@dataclass
class FacilityModel:
    """Facility power = IT + fixed overhead + proportional * IT (cooling, UPS and lighting losses).

    The fixed part does not shrink when IT load falls, so PUE = 1 + proportional + fixed/IT rises
    as IT load drops, while the facility's kWh still fall.
    """

    fixed_overhead_kw: float
    proportional_overhead: float  # fraction of IT power, e.g. 0.35

    def __post_init__(self) -> None:
        check_number(self.fixed_overhead_kw, "facility fixed overhead (kW)")
        check_number(self.proportional_overhead, "facility proportional overhead")

    def facility_kw(self, it_kw: float) -> float:
        return it_kw + self.fixed_overhead_kw + self.proportional_overhead * it_kw


@dataclass
class Fleet:
    """The fleet and the load it serves. Exactly one of load_rps / load_requests_per_year."""

    servers: int = DEFAULT_SERVERS
    gpus_per_server: int = DEFAULT_GPUS_PER_SERVER
    host_power_w: float = DEFAULT_HOST_POWER_W  # per server, GPUs excluded, drawn whenever it is on
    load_rps: float | None = None
    load_requests_per_year: float | None = None
    p99_slo_ms: float | None = None  # None: no latency bound
    hours_per_year: float = HOURS_PER_YEAR
    electricity_usd_per_kwh: float = DEFAULT_PRICE_USD_PER_KWH
    grid_kgco2_per_kwh: float = DEFAULT_GRID_KGCO2_PER_KWH
    grid_source: str = DEFAULT_GRID_SOURCE
    facility: float | FacilityModel = DEFAULT_PUE  # a fixed PUE, or a model that computes it
    gpu_idle_power_w: float = DEFAULT_GPU_IDLE_POWER_W  # when a measurement has no idle figure
    max_gpu_utilisation: float = 1.0  # < 1 keeps headroom for bursts
    keep_all_servers_on: bool = False  # False: servers the load does not need are switched off
    # where each value came from ("--price", "default", ...); filled by the CLI
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.load_rps is None) == (self.load_requests_per_year is None):
            raise ProjectionInputError(
                "give the fleet's load either as requests/s or as requests/year (exactly one)"
            )
        for name in ("servers", "gpus_per_server"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ProjectionInputError(
                    f"{name} must be a whole number of at least 1, got {v!r}"
                )
        check_number(self.host_power_w, "host power per server (W)")
        check_number(self.load_rps, "load (requests/s)", positive=True, allow_none=True)
        check_number(
            self.load_requests_per_year, "load (requests/year)", positive=True, allow_none=True
        )
        check_number(self.p99_slo_ms, "p99 SLO (ms)", positive=True, allow_none=True)
        check_number(self.hours_per_year, "hours per year", positive=True)
        if self.hours_per_year > 8784:
            raise ProjectionInputError(
                f"hours per year must be at most 8784 (a leap year), got {self.hours_per_year}"
            )
        check_number(self.electricity_usd_per_kwh, "electricity price ($/kWh)")
        check_number(self.grid_kgco2_per_kwh, "grid intensity (kgCO2/kWh)")
        check_number(self.gpu_idle_power_w, "GPU idle power (W)")
        check_number(self.max_gpu_utilisation, "max GPU utilisation", positive=True)
        if self.max_gpu_utilisation > 1:
            raise ProjectionInputError(
                f"max GPU utilisation is a fraction (0-1], got {self.max_gpu_utilisation}"
            )
        if not isinstance(self.facility, FacilityModel):
            check_number(self.facility, "PUE", positive=True)
            if self.facility < 1:
                raise ProjectionInputError(
                    f"PUE is facility power / IT power and cannot be below 1, got {self.facility}"
                )

    @property
    def seconds_per_year(self) -> float:
        return self.hours_per_year * S_PER_H

    @property
    def requests_per_year(self) -> float:
        if self.load_requests_per_year is not None:
            return float(self.load_requests_per_year)
        return float(self.load_rps) * self.seconds_per_year  # type: ignore[arg-type]

    @property
    def mean_load_rps(self) -> float:
        return self.requests_per_year / self.seconds_per_year

    def source(self, name: str) -> str:
        """Where a field's value came from: the CLI's note, else 'default' or 'given'."""
        if name in self.sources:
            return self.sources[name]
        f = next(f for f in fields(self) if f.name == name)
        return (
            "default" if f.default is not MISSING and getattr(self, name) == f.default else "given"
        )


@dataclass
class Measurement:
    """One benchmarked configuration, as the projection needs it."""

    name: str
    throughput_per_s: float  # inferences/s over `gpus` GPUs (a bench run uses one)
    p99_ms: float
    j_per_inference: float  # whole-GPU energy per inference while serving at that throughput
    energy_measured: bool  # False: an estimate from a declared power figure
    energy_method: str  # "nvml_counter", "nvml_power_sampling", "rapl", "estimated", ...
    gpu_idle_power_w: float | None = None  # measured before the run; None: the fleet's default
    gpus: int = 1
    device: str | None = None
    device_kind: str | None = None  # "cuda" | "cpu" where the result says (None: unknown)

    def __post_init__(self) -> None:
        what = f"result '{self.name}'"
        check_number(self.throughput_per_s, f"{what}: throughput_per_s", positive=True)
        check_number(self.p99_ms, f"{what}: latency.p99_ms")
        check_number(self.j_per_inference, f"{what}: j_per_inference", positive=True)
        check_number(self.gpu_idle_power_w, f"{what}: energy.idle_power_w", allow_none=True)
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or self.gpus < 1:
            raise ProjectionInputError(f"{what}: gpus must be a whole number of at least 1")
        if self.energy_method == "estimated":
            self.energy_measured = False  # an estimate is never a measurement, whatever it says

    @property
    def throughput_per_gpu_per_s(self) -> float:
        return self.throughput_per_s / self.gpus

    @property
    def energy_label(self) -> str:
        return "measured" if self.energy_measured else "estimated"


@dataclass
class Savings:
    """Baseline minus this configuration: positive numbers are savings."""

    facility_kwh: float
    cost_usd: float
    co2_tonnes: float
    percent: float  # of the baseline's facility kWh
    gpus: int  # powered GPUs freed


@dataclass
class Projection:
    """One configuration serving the fleet's load for a year."""

    name: str
    energy_label: str  # "measured" | "estimated": every output shows it
    energy_method: str
    feasible: bool  # False when its p99 exceeds the SLO
    infeasible_reason: str | None
    throughput_per_gpu_per_s: float
    p99_ms: float
    j_per_inference: float
    gpu_idle_power_w: float
    gpus_needed: int
    servers_needed: int
    servers_powered: int
    gpus_powered: int
    gpu_utilisation: float  # mean over the year, powered GPUs
    requests_per_year: float
    gpu_active_kwh: float
    gpu_idle_kwh: float
    host_kwh: float
    it_kwh: float
    it_power_kw: float  # mean
    overhead_kwh: float  # facility - IT
    facility_kwh: float
    pue: float  # computed: facility / IT
    cost_usd: float
    co2_tonnes: float
    savings: Savings | None = None  # None for the baseline and for configurations that miss the SLO
    assumptions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class FleetReport:
    fleet: Fleet
    baseline: str | None
    projections: list[Projection]
    model: list[str]
    assumptions: list[str]
    skipped: list[str] = field(default_factory=list)  # results with no numbers, and why

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # asdict flattens the facility to a number or a dict; say which it was
        d["fleet"]["facility_kind"] = (
            "model" if isinstance(self.fleet.facility, FacilityModel) else "fixed_pue"
        )
        return d


def _ceil(x: float) -> int:
    # 192000/1200 may land a hair above 160.0 in floating point; that is not a 161st GPU
    return math.ceil(x - 1e-9 * max(1.0, x))


def project(fleet: Fleet, m: Measurement) -> Projection:
    """Size the fleet for one configuration and compute its year of energy, cost and CO2."""
    seconds = fleet.seconds_per_year
    requests = fleet.requests_per_year
    load_rps = fleet.mean_load_rps
    tput = m.throughput_per_gpu_per_s

    feasible, reason = True, None
    if fleet.p99_slo_ms is not None and m.p99_ms > fleet.p99_slo_ms:
        feasible = False
        reason = f"p99 {m.p99_ms:g} ms exceeds the {fleet.p99_slo_ms:g} ms SLO"

    gpus_needed = _ceil(load_rps / (tput * fleet.max_gpu_utilisation))
    servers_needed = _ceil(gpus_needed / fleet.gpus_per_server)
    servers_powered = (
        max(servers_needed, fleet.servers) if fleet.keep_all_servers_on else servers_needed
    )
    gpus_powered = servers_powered * fleet.gpus_per_server
    warnings = []
    if m.device_kind == "cpu":
        warnings.append(
            f"measured on a CPU ({m.device or 'cpu'}), not a GPU: each 'GPU' of this projection is one such "
            "CPU, with the GPU fleet's idle power and per-server count; project GPU results "
            "to size a GPU fleet"
        )
    if servers_needed > fleet.servers:
        warnings.append(
            f"needs {servers_needed} servers, more than the fleet's {fleet.servers}: "
            "the projection assumes they are added"
        )

    idle_w = m.gpu_idle_power_w if m.gpu_idle_power_w is not None else fleet.gpu_idle_power_w
    busy_gpu_s = requests / tput
    idle_gpu_s = max(0.0, gpus_powered * seconds - busy_gpu_s)
    gpu_active_kwh = requests * m.j_per_inference / J_PER_KWH
    gpu_idle_kwh = idle_gpu_s * idle_w / J_PER_KWH
    host_kwh = servers_powered * fleet.host_power_w * seconds / J_PER_KWH
    it_kwh = gpu_active_kwh + gpu_idle_kwh + host_kwh
    it_kw = it_kwh / fleet.hours_per_year

    if isinstance(fleet.facility, FacilityModel):
        facility_kwh = fleet.facility.facility_kw(it_kw) * fleet.hours_per_year
    else:
        facility_kwh = it_kwh * fleet.facility
    pue = facility_kwh / it_kwh

    if m.energy_measured:
        energy_note = f"measured, {m.energy_method}"
    else:
        energy_note = f"ESTIMATED, not measured, method {m.energy_method}"
    idle_note = (
        "measured before the run"
        if m.gpu_idle_power_w is not None
        else f"{fleet.source('gpu_idle_power_w')}: the result has no idle measurement"
    )
    assumptions = [
        f"{m.name}: energy: {m.j_per_inference:.4g} J/inference ({energy_note})",
        f"{m.name}: GPU idle power: {idle_w:g} W ({idle_note})",
        f"{m.name}: throughput per GPU: {tput:,.6g} req/s (benchmark"
        + (f", {m.throughput_per_s:,.6g} req/s over {m.gpus} GPUs)" if m.gpus > 1 else ")"),
    ]
    return Projection(
        name=m.name,
        energy_label=m.energy_label,
        energy_method=m.energy_method,
        feasible=feasible,
        infeasible_reason=reason,
        throughput_per_gpu_per_s=tput,
        p99_ms=m.p99_ms,
        j_per_inference=m.j_per_inference,
        gpu_idle_power_w=idle_w,
        gpus_needed=gpus_needed,
        servers_needed=servers_needed,
        servers_powered=servers_powered,
        gpus_powered=gpus_powered,
        gpu_utilisation=busy_gpu_s / (gpus_powered * seconds),
        requests_per_year=requests,
        gpu_active_kwh=gpu_active_kwh,
        gpu_idle_kwh=gpu_idle_kwh,
        host_kwh=host_kwh,
        it_kwh=it_kwh,
        it_power_kw=it_kw,
        overhead_kwh=facility_kwh - it_kwh,
        facility_kwh=facility_kwh,
        pue=pue,
        cost_usd=facility_kwh * fleet.electricity_usd_per_kwh,
        co2_tonnes=facility_kwh * fleet.grid_kgco2_per_kwh / 1000.0,
        assumptions=assumptions,
        warnings=warnings,
    )


def savings(baseline: Projection, p: Projection) -> Savings:
    return Savings(
        facility_kwh=baseline.facility_kwh - p.facility_kwh,
        cost_usd=baseline.cost_usd - p.cost_usd,
        co2_tonnes=baseline.co2_tonnes - p.co2_tonnes,
        percent=100.0 * (baseline.facility_kwh - p.facility_kwh) / baseline.facility_kwh,
        gpus=baseline.gpus_powered - p.gpus_powered,
    )


def find_measurement(measurements: list[Measurement], name: str) -> Measurement:
    """Exact name, else a case-insensitive match; the error lists what there is."""
    for m in measurements:
        if m.name == name:
            return m
    hits = [m for m in measurements if m.name.lower() == name.lower()]
    if len(hits) == 1:
        return hits[0]
    names = ", ".join(f"'{m.name}'" for m in measurements)
    raise ProjectionInputError(f"baseline '{name}' is not among the results ({names})")


def fleet_assumptions(fleet: Fleet) -> list[str]:
    """The fleet-level assumptions, each as 'name: value (source)'."""
    s = fleet.source
    load = (
        f"{fleet.load_rps:,.6g} req/s = {fleet.requests_per_year:.4g} requests/year"
        if fleet.load_rps is not None
        else f"{fleet.requests_per_year:.4g} requests/year = {fleet.mean_load_rps:,.6g} req/s mean"
    )
    load_src = s("load_rps") if fleet.load_rps is not None else s("load_requests_per_year")
    if isinstance(fleet.facility, FacilityModel):
        fm = fleet.facility
        facility = (
            f"facility model: {fm.fixed_overhead_kw:g} kW fixed + "
            f"{fm.proportional_overhead:g} x IT "
            f"power; PUE computed per configuration ({s('facility')})"
        )
    else:
        facility = (
            f"facility: fixed PUE {fleet.facility:g}, the same at every IT load ({s('facility')}; "
            "a facility model of fixed plus proportional overhead would make PUE rise as IT falls)"
        )
    slo = (
        f"p99 SLO: {fleet.p99_slo_ms:g} ms ({s('p99_slo_ms')})"
        if fleet.p99_slo_ms is not None
        else "p99 SLO: none (no SLO given: every configuration counts as feasible)"
    )
    on = (
        "servers the load does not need: kept on, their GPUs idle (--keep-fleet)"
        if fleet.keep_all_servers_on
        else "servers the load does not need: switched off or reused (right-sizing)"
    )
    return [
        f"fleet: {fleet.servers} servers x {fleet.gpus_per_server} GPUs "
        f"({', '.join(dict.fromkeys([s('servers'), s('gpus_per_server')]))})",
        f"hours per year: {fleet.hours_per_year:g} ({s('hours_per_year')})",
        f"load: {load} ({load_src})",
        slo,
        f"host power per server, GPUs excluded: {fleet.host_power_w:g} W, drawn whenever the "
        f"server is on ({s('host_power_w')})",
        f"GPU idle power where a result has none: {fleet.gpu_idle_power_w:g} W "
        f"({s('gpu_idle_power_w')}; H100/H200 SXM idle is roughly 60-75 W)",
        f"max GPU utilisation: {fleet.max_gpu_utilisation:.0%} ({s('max_gpu_utilisation')}"
        + ("; no headroom for bursts)" if fleet.max_gpu_utilisation == 1 else ")"),
        on,
        facility,
        f"electricity price: ${fleet.electricity_usd_per_kwh:g}/kWh at the facility meter, energy "
        f"only, no hardware or demand charges ({s('electricity_usd_per_kwh')})",
        f"grid intensity: {fleet.grid_kgco2_per_kwh:g} kgCO2/kWh ({s('grid_kgco2_per_kwh')}: "
        f"{fleet.grid_source})",
        "per-GPU throughput: the benchmark's, scaled linearly to many GPUs (benchmark)",
        "latency in service: the benchmark's p99 at that throughput; queueing under production "
        "traffic is not modelled (model)",
        "GPU power: J/inference x throughput while busy, idle power the rest of the year (model)",
    ]


def project_fleet(
    fleet: Fleet,
    measurements: list[Measurement],
    baseline: str | None = None,
    skipped: list[str] | None = None,
    baseline_source: str | None = None,
) -> FleetReport:
    """Project every configuration; savings are against `baseline` (default: the first)."""
    if not measurements:
        raise ProjectionInputError("no results to project")
    base_m = find_measurement(measurements, baseline) if baseline else measurements[0]
    projections = [project(fleet, m) for m in measurements]
    base_p = projections[measurements.index(base_m)]
    assumptions = fleet_assumptions(fleet)
    how = baseline_source or (
        "given" if baseline else "the first result; choose another with --baseline"
    )
    assumptions.append(f"baseline: {base_m.name} ({how})")
    if not base_p.feasible:
        base_p.warnings.append(
            f"the baseline misses the SLO ({base_p.infeasible_reason}); savings are still "
            "computed against it"
        )
    for p in projections:
        if p is not base_p and p.feasible:
            p.savings = savings(base_p, p)
        assumptions.extend(p.assumptions)
    return FleetReport(
        fleet=fleet,
        baseline=base_m.name,
        projections=projections,
        model=list(MODEL_EQUATIONS),
        assumptions=assumptions,
        skipped=list(skipped or []),
    )


# ---------------------------------------------------------------- reading BenchResult JSON


REQUIRED_FIELDS = (
    "name",
    "throughput_per_s",
    "latency.p99_ms",
    "j_per_inference",
    "energy.method",
    "energy.measured",
)


def _lookup(d: dict, dotted: str) -> tuple[bool, Any]:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def measurement_from_dict(d: Any, where: str) -> Measurement:
    """A BenchResult dict (dataclasses.asdict) -> Measurement; extra keys are ignored."""
    if not isinstance(d, dict):
        raise ProjectionInputError(f"{where} is not an object with a benchmark result")
    if isinstance(d.get("name"), str) and d["name"]:
        where = f"{where} ('{d['name']}')"
    missing = [f for f in REQUIRED_FIELDS if not _lookup(d, f)[0]]
    if missing:
        raise ProjectionInputError(
            f"{where} has no {', '.join(missing)} (a result needs {', '.join(REQUIRED_FIELDS)}, "
            "as bench and compare write them)"
        )
    v = {f: _lookup(d, f)[1] for f in REQUIRED_FIELDS}
    if not isinstance(v["name"], str) or not v["name"]:
        raise ProjectionInputError(f"{where}: 'name' must be a non-empty string")
    if not isinstance(v["energy.measured"], bool) or not isinstance(v["energy.method"], str):
        raise ProjectionInputError(
            f"{where}: energy.measured must be true/false and energy.method a string"
        )
    if v["j_per_inference"] is None:
        raise ProjectionInputError(
            f"{where} has no energy per inference (j_per_inference is null): run the benchmark "
            "with energy measurement on"
        )
    device = d.get("device")
    kind = (d.get("extra") or {}).get("device_kind") if isinstance(d.get("extra"), dict) else None
    return Measurement(
        name=v["name"],
        throughput_per_s=v["throughput_per_s"],
        p99_ms=v["latency.p99_ms"],
        j_per_inference=v["j_per_inference"],
        energy_measured=v["energy.measured"],
        energy_method=v["energy.method"],
        gpu_idle_power_w=d["energy"].get("idle_power_w"),
        gpus=d.get("gpus", 1),
        device=device if isinstance(device, str) else None,
        device_kind=kind if kind in ("cuda", "cpu") else None,
    )


@dataclass
class ResultsFile:
    measurements: list[Measurement]
    skipped: list[str]  # a note for every result that has `skipped` set instead of numbers
    baseline: str | None  # the baseline the file names (compare's report JSON has one)


def load_measurements(path: str | Path) -> ResultsFile:
    """Read a results file: a list of BenchResult dicts (bench --export-json), a report dict
    with a "results" list (compare, bench/report.py's to_json), or a single result."""
    p = Path(path)
    if p.is_dir():
        raise ProjectionInputError(
            f"results file '{path}' is a folder; give the JSON file bench --export-json or "
            "compare --json wrote"
        )
    if not p.is_file():
        raise ProjectionInputError(f"results file '{path}' does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProjectionInputError(f"'{path}' is not a JSON file ({e})") from None
    file_baseline = None
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        if isinstance(data.get("baseline"), str):
            file_baseline = data["baseline"]
        data = data["results"]
    elif isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ProjectionInputError(f"'{path}' holds no list of benchmark results")
    measurements, skipped = [], []
    for i, d in enumerate(data):
        if isinstance(d, dict) and d.get("skipped"):
            skipped.append(f"{d.get('name', f'result {i}')}: skipped ({d['skipped']})")
            continue
        measurements.append(measurement_from_dict(d, f"'{path}' result {i}"))
    if not measurements:
        raise ProjectionInputError(f"'{path}' has no benchmark result with numbers to project")
    names = [m.name for m in measurements]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ProjectionInputError(f"'{path}' has several results named {', '.join(dup)}")
    return ResultsFile(measurements, skipped, file_baseline)


# ---------------------------------------------------------------- text and Markdown


def _rows(report: FleetReport) -> list[tuple[str, list[str]]]:
    ps = report.projections
    fleet = report.fleet

    def sav(fn) -> list[str]:  # noqa: ANN001
        out = []
        for p in ps:
            if p.name == report.baseline:
                out.append("baseline")
            elif p.savings is None:
                out.append("n/a (misses SLO)")
            else:
                out.append(fn(p.savings))
        return out

    return [
        ("energy per inference (J)", [f"{p.j_per_inference:.4g} {p.energy_label}" for p in ps]),
        ("energy method", [p.energy_method for p in ps]),
        ("throughput per GPU (req/s)", [f"{p.throughput_per_gpu_per_s:,.0f}" for p in ps]),
        ("p99 latency (ms)", [f"{p.p99_ms:.3g}" for p in ps]),
        (
            "meets p99 SLO",
            ["no SLO" if fleet.p99_slo_ms is None else ("yes" if p.feasible else "NO") for p in ps],
        ),
        ("GPUs needed", [f"{p.gpus_needed:,}" for p in ps]),
        (f"servers on (fleet {fleet.servers})", [f"{p.servers_powered:,}" for p in ps]),
        ("GPUs on", [f"{p.gpus_powered:,}" for p in ps]),
        ("GPU utilisation", [f"{p.gpu_utilisation:.1%}" for p in ps]),
        ("GPU active kWh/yr", [f"{p.gpu_active_kwh:,.0f}" for p in ps]),
        ("GPU idle kWh/yr", [f"{p.gpu_idle_kwh:,.0f}" for p in ps]),
        ("host kWh/yr", [f"{p.host_kwh:,.0f}" for p in ps]),
        ("IT kWh/yr", [f"{p.it_kwh:,.0f}" for p in ps]),
        ("mean IT power (kW)", [f"{p.it_power_kw:,.1f}" for p in ps]),
        (
            "PUE (computed)" if isinstance(fleet.facility, FacilityModel) else "PUE (fixed)",
            [f"{p.pue:.3f}" for p in ps],
        ),
        ("facility kWh/yr", [f"{p.facility_kwh:,.0f}" for p in ps]),
        ("cost USD/yr", [f"${p.cost_usd:,.0f}" for p in ps]),
        ("CO2 t/yr", [f"{p.co2_tonnes:,.1f}" for p in ps]),
        ("saved kWh/yr", sav(lambda s: f"{s.facility_kwh:,.0f}")),
        ("saved USD/yr", sav(lambda s: f"${s.cost_usd:,.0f}")),
        ("saved tCO2/yr", sav(lambda s: f"{s.co2_tonnes:,.1f}")),
        ("saved %", sav(lambda s: f"{s.percent:.1f}%")),
        ("GPUs freed", sav(lambda s: f"{s.gpus:,}")),
    ]


def _title(report: FleetReport) -> str:
    f = report.fleet
    slo = f", p99 SLO {f.p99_slo_ms:g} ms" if f.p99_slo_ms is not None else ""
    return (
        f"Datacenter projection: {f.servers} servers x {f.gpus_per_server} GPUs, "
        f"load {f.mean_load_rps:,.0f} req/s{slo}, baseline '{report.baseline}'"
    )


def _notes(report: FleetReport) -> list[str]:
    notes = []
    for p in report.projections:
        if p.energy_label == "estimated":
            notes.append(
                f"{p.name}: energy is ESTIMATED (method {p.energy_method}), not measured; "
                "its kWh, cost "
                "and CO2 are estimates too"
            )
        if not p.feasible:
            notes.append(f"{p.name}: INFEASIBLE, {p.infeasible_reason}")
        notes.extend(f"{p.name}: {w}" for w in p.warnings)
    notes.extend(report.skipped)
    return notes


def _header(p: Projection) -> str:
    return p.name + (" (estimated)" if p.energy_label == "estimated" else "")


def format_text(report: FleetReport, columns_per_table: int = 4) -> str:
    """Rows are quantities, columns configurations (four per table to stay readable)."""
    rows = _rows(report)
    ps = report.projections
    lines = [_title(report), ""]
    label_w = max(len(r[0]) for r in rows)
    for start in range(0, len(ps), columns_per_table):
        idx = range(start, min(start + columns_per_table, len(ps)))
        headers = [_header(ps[i]) for i in idx]
        widths = [max(len(headers[k]), *(len(r[1][i]) for r in rows)) for k, i in enumerate(idx)]
        lines.append(" " * label_w + "  " + "  ".join(h.rjust(w) for h, w in zip(headers, widths)))
        for label, cells in rows:
            lines.append(
                label.ljust(label_w)
                + "  "
                + "  ".join(cells[i].rjust(w) for i, w in zip(idx, widths))
            )
        lines.append("")
    notes = _notes(report)
    if notes:
        lines += ["Notes:", *(f"  - {n}" for n in notes), ""]
    lines += ["Model:", *(f"  {e}" for e in report.model), ""]
    lines += ["Assumptions:", *(f"  - {a}" for a in report.assumptions)]
    return "\n".join(lines) + "\n"


def format_markdown(report: FleetReport) -> str:
    rows = _rows(report)
    ps = report.projections
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    lines = [f"## {esc(_title(report))}", ""]
    lines.append("| | " + " | ".join(esc(_header(p)) for p in ps) + " |")
    lines.append("|---|" + "---:|" * len(ps))
    for label, cells in rows:
        lines.append(f"| {esc(label)} | " + " | ".join(esc(c) for c in cells) + " |")
    notes = _notes(report)
    if notes:
        lines += ["", "### Notes", "", *(f"- {esc(n)}" for n in notes)]
    lines += ["", "### Model", "", "```", *report.model, "```"]
    lines += ["", "### Assumptions", "", *(f"- {a}" for a in report.assumptions)]
    return "\n".join(lines) + "\n"
