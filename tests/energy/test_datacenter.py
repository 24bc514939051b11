"""The datacenter model against hand-computed cases (the arithmetic is in the comments).

Numbers from shared/USERS.md: PyTorch FP32 serves 1,200 req/s per GPU, fusion + FP16 2,800 req/s
at 0.62x the energy per request. We take FP32 at 0.3 J/inference (a GPU busy at 360 W), so
FP16 is 0.62 * 0.3 = 0.186 J. Fleet: 100 servers x 4 GPUs, 500 W host per server, GPUs idle at
60 W, load 200,000 req/s all year (8,760 h = 31,536,000 s).
"""

from __future__ import annotations

import json
import math

import pytest

from ecoinfer.energy.datacenter import (
    FacilityModel,
    Fleet,
    Measurement,
    ProjectionInputError,
    format_markdown,
    format_text,
    load_measurements,
    project,
    project_fleet,
)
from ecoinfer.errors import EcoinferError

approx = pytest.approx


def fp32(**kw) -> Measurement:  # noqa: ANN003
    args = dict(
        name="fp32",
        throughput_per_s=1200.0,
        p99_ms=25.0,
        j_per_inference=0.3,
        energy_measured=True,
        energy_method="nvml_counter",
    )
    return Measurement(**{**args, **kw})


def fp16(**kw) -> Measurement:  # noqa: ANN003
    args = dict(
        name="fp16",
        throughput_per_s=2800.0,
        p99_ms=9.0,
        j_per_inference=0.186,
        energy_measured=True,
        energy_method="nvml_counter",
    )
    return Measurement(**{**args, **kw})


def fleet(**kw) -> Fleet:  # noqa: ANN003
    args = dict(
        servers=100,
        gpus_per_server=4,
        host_power_w=500.0,
        load_rps=200_000.0,
        gpu_idle_power_w=60.0,
        facility=1.6,
        electricity_usd_per_kwh=0.15,
        grid_kgco2_per_kwh=0.4,
    )
    return Fleet(**{**args, **kw})


def test_gpus_needed_fp32_vs_fp16() -> None:
    a, b = project(fleet(), fp32()), project(fleet(), fp16())
    # FP32: 200,000 / 1,200 = 166.67 -> 167 GPUs; 167 / 4 = 41.75 -> 42 servers = 168 GPUs on
    assert (a.gpus_needed, a.servers_needed, a.servers_powered, a.gpus_powered) == (
        167,
        42,
        42,
        168,
    )
    # FP16: 200,000 / 2,800 = 71.43 -> 72 GPUs; 72 / 4 = 18 servers = 72 GPUs on
    assert (b.gpus_needed, b.servers_needed, b.gpus_powered) == (72, 18, 72)
    # utilisation = load / (GPUs on * throughput): 200,000 / (72 * 2,800) = 200,000 / 201,600
    assert b.gpu_utilisation == approx(200_000 / 201_600)
    assert a.gpu_utilisation == approx(200_000 / (168 * 1200))


def test_exact_multiple_is_not_rounded_up() -> None:
    # 192,000 / 1,200 = 160.0 exactly: 160 GPUs, not 161, and no idle GPU time
    p = project(fleet(load_rps=192_000.0), fp32())
    assert (p.gpus_needed, p.servers_needed) == (160, 40)
    assert p.gpu_idle_kwh == approx(0.0, abs=1e-6)


def test_energy_cost_co2_with_fixed_pue() -> None:
    a, b = project(fleet(), fp32()), project(fleet(), fp16())
    # FP32, mean powers:
    #   GPU active: 200,000 req/s * 0.3 J = 60,000 W -> 60 kW * 8,760 h = 525,600 kWh
    #   GPU idle: 168 GPUs on - 166.667 busy = 1.3333 GPUs * 60 W = 80 W -> 700.8 kWh
    #   host: 42 servers * 500 W = 21 kW -> 183,960 kWh
    #   IT: 81.08 kW -> 710,260.8 kWh; facility * 1.6 = 1,136,417.28 kWh
    #   cost 1,136,417.28 * 0.15 = $170,462.59; CO2 1,136,417.28 * 0.4 / 1000 = 454.567 t
    assert a.gpu_active_kwh == approx(525_600.0)
    assert a.gpu_idle_kwh == approx(700.8)
    assert a.host_kwh == approx(183_960.0)
    assert a.it_kwh == approx(710_260.8)
    assert a.it_power_kw == approx(81.08)
    assert a.facility_kwh == approx(1_136_417.28)
    assert a.pue == approx(1.6)
    assert a.cost_usd == approx(170_462.592)
    assert a.co2_tonnes == approx(454.566912)
    # FP16:
    #   GPU active: 200,000 * 0.186 J = 37,200 W -> 325,872 kWh
    #   GPU idle: 72 - 71.428571 = 0.571429 GPUs * 60 W = 34.2857 W -> 300.343 kWh
    #   host: 18 * 500 W = 9 kW -> 78,840 kWh
    #   IT: 46.234286 kW -> 405,012.34 kWh; facility * 1.6 = 648,019.75 kWh
    assert b.gpu_active_kwh == approx(325_872.0)
    assert b.gpu_idle_kwh == approx((72 - 200_000 / 2800) * 60 * 8.76)
    assert b.gpu_idle_kwh == approx(300.343, rel=1e-5)
    assert b.host_kwh == approx(78_840.0)
    assert b.it_kwh == approx(405_012.34, rel=1e-7)
    assert b.facility_kwh == approx(648_019.75, rel=1e-7)
    assert b.cost_usd == approx(97_202.96, rel=1e-7)
    assert b.co2_tonnes == approx(259.2079, rel=1e-6)


def test_savings_against_baseline() -> None:
    r = project_fleet(fleet(), [fp32(), fp16()])
    base, b = r.projections
    assert r.baseline == "fp32" and base.savings is None
    s = b.savings
    # IT power falls 81.08 - 46.234286 = 34.845714 kW; at the meter * 1.6 = 55.753143 kW
    #   * 8,760 h = 488,397.53 kWh; * $0.15 = $73,259.63; * 0.4 kg = 195.359 t
    #   percent = 34.845714 / 81.08 = 42.977 %; GPUs freed 168 - 72 = 96
    assert s.facility_kwh == approx(488_397.53, rel=1e-7)
    assert s.cost_usd == approx(73_259.63, rel=1e-7)
    assert s.co2_tonnes == approx(195.359, rel=1e-5)
    assert s.percent == approx(42.977, rel=1e-4)
    assert s.gpus == 96


def test_facility_model_lower_it_raises_pue_but_lowers_kwh() -> None:
    fm = FacilityModel(fixed_overhead_kw=20.0, proportional_overhead=0.35)
    a, b = project(fleet(facility=fm), fp32()), project(fleet(facility=fm), fp16())
    # FP32: 81.08 kW IT -> 81.08 * 1.35 + 20 = 129.458 kW; PUE = 129.458 / 81.08 = 1.59667
    #   facility = 129.458 * 8,760 = 1,134,052.08 kWh
    # FP16: 46.234286 kW IT -> 46.234286 * 1.35 + 20 = 82.416286 kW; PUE = 1.78258
    #   facility = 82.416286 * 8,760 = 721,966.66 kWh
    assert a.pue == approx(1.59667, rel=1e-5)
    assert a.facility_kwh == approx(1_134_052.08, rel=1e-8)
    assert b.pue == approx(1.78258, rel=1e-5)
    assert b.facility_kwh == approx(721_966.66, rel=1e-7)
    assert b.pue > a.pue and b.facility_kwh < a.facility_kwh  # PUE worse, bill lower
    # the same FP16 IT load under a fixed PUE of 1.6 would claim 648,019.75 kWh: the fixed
    # overhead that does not shrink with IT costs 721,966.66 - 648,019.75 = 73,946.9 kWh more
    fixed = project(fleet(), fp16())
    assert b.facility_kwh - fixed.facility_kwh == approx(73_946.91, rel=1e-6)


def test_facility_model_round_numbers() -> None:
    fm = FacilityModel(fixed_overhead_kw=400.0, proportional_overhead=0.2)
    # IT 1,000 kW: 1,000 + 400 + 200 = 1,600 kW (PUE 1.6); IT 500 kW: 500 + 400 + 100 = 1,000 kW
    # (PUE 2.0): the PUE rises by 0.4 while the facility's power falls by 37.5 %
    assert fm.facility_kw(1000.0) == approx(1600.0)
    assert fm.facility_kw(500.0) == approx(1000.0)


def test_slo_infeasible_is_flagged_and_gets_no_savings() -> None:
    r = project_fleet(fleet(p99_slo_ms=20.0), [fp16(), fp32()])
    b, a = r.projections
    # FP32's p99 is 25 ms > 20 ms: infeasible; FP16's 9 ms fits
    assert b.feasible and b.infeasible_reason is None
    assert not a.feasible and "25 ms exceeds the 20 ms SLO" in a.infeasible_reason
    assert a.savings is None  # no savings are claimed for a configuration that misses the SLO
    assert "INFEASIBLE, p99 25 ms exceeds the 20 ms SLO" in format_text(r)


def test_infeasible_baseline_still_gives_savings_with_a_warning() -> None:
    r = project_fleet(fleet(p99_slo_ms=20.0), [fp32(), fp16()], baseline="fp32")
    a, b = r.projections
    assert b.savings is not None and b.savings.gpus == 96
    assert any("baseline misses the SLO" in w for w in a.warnings)


def test_load_per_year_equals_load_per_second() -> None:
    # 200,000 req/s * 31,536,000 s = 6.3072e12 requests/year
    per_year = project(fleet(load_rps=None, load_requests_per_year=6.3072e12), fp16())
    per_s = project(fleet(), fp16())
    assert per_year.facility_kwh == approx(per_s.facility_kwh)
    assert per_year.gpus_needed == per_s.gpus_needed == 72


def test_headroom_and_keep_fleet() -> None:
    # 80 % max utilisation: 200,000 / (2,800 * 0.8) = 89.29 -> 90 GPUs; 90 / 4 = 22.5 -> 23 servers
    p = project(fleet(max_gpu_utilisation=0.8), fp16())
    assert (p.gpus_needed, p.servers_powered, p.gpus_powered) == (90, 23, 92)
    # keep the whole fleet on: 400 GPUs, 400 - 71.428571 = 328.571 idle GPUs * 60 W = 19,714.3 W
    #   -> 172,697.1 kWh idle; host 100 * 500 W = 50 kW -> 438,000 kWh
    k = project(fleet(keep_all_servers_on=True), fp16())
    assert (k.servers_powered, k.gpus_powered) == (100, 400)
    assert k.gpu_idle_kwh == approx(172_697.14, rel=1e-6)
    assert k.host_kwh == approx(438_000.0)


def test_fleet_too_small_is_a_warning() -> None:
    # 10 servers x 4 = 40 GPUs cannot serve what needs 167 (42 servers): projected with 42
    p = project(fleet(servers=10), fp32())
    assert p.servers_powered == 42
    assert any("more than the fleet's 10" in w for w in p.warnings)


def test_measured_idle_power_and_multi_gpu_measurement() -> None:
    # 2,400 req/s over 2 GPUs = 1,200 per GPU; idle 70 W measured instead of the default 60 W:
    # FP32 idle 1.3333 GPUs * 70 W = 93.33 W -> 817.6 kWh
    p = project(fleet(), fp32(throughput_per_s=2400.0, gpus=2, gpu_idle_power_w=70.0))
    assert p.gpus_needed == 167
    assert p.gpu_idle_kwh == approx(817.6)
    assert any("70 W (measured before the run)" in a for a in p.assumptions)


def test_estimated_energy_is_labelled_everywhere() -> None:
    est = fp16(name="int8", energy_measured=True, energy_method="estimated")
    r = project_fleet(fleet(), [fp32(), est])
    p = r.projections[1]
    assert p.energy_label == "estimated"  # method "estimated" wins over a stray measured=true
    assert "int8 (estimated)" in format_text(r) and "ESTIMATED" in format_text(r)
    assert "int8 (estimated)" in format_markdown(r)
    assert r.to_dict()["projections"][1]["energy_label"] == "estimated"


def test_every_assumption_is_listed_with_a_source() -> None:
    r = project_fleet(fleet(), [fp32(), fp16()])
    text = "\n".join(r.assumptions)
    for needle in (
        "fleet: 100 servers x 4 GPUs",
        "load: 200,000 req/s",
        "host power per server, GPUs excluded: 500 W",
        "fixed PUE 1.6",
        "electricity price: $0.15/kWh",
        "grid intensity: 0.4 kgCO2/kWh",
        "hours per year: 8760 (default)",
        "fp16: GPU idle power: 60 W",
        "fp32: energy: 0.3 J/inference (measured, nvml_counter)",
        "baseline: fp32",
    ):
        assert needle in text, needle
    assert all(": " in a and "(" in a for a in r.assumptions)
    assert "Assumptions:" in format_text(r) and "Model:" in format_text(r)


def test_default_grid_intensity_has_a_source() -> None:
    f = Fleet(load_rps=1000.0)
    assert f.grid_kgco2_per_kwh == 0.481 and "Ember" in f.grid_source
    assert f.facility == 1.6 and f.electricity_usd_per_kwh == 0.15 and f.hours_per_year == 8760


@pytest.mark.parametrize(
    "kw",
    [
        {"load_rps": None},  # no load
        {"load_requests_per_year": 1e9},  # both loads
        {"load_rps": -5.0},
        {"load_rps": 0.0},
        {"servers": 0},
        {"host_power_w": -1.0},
        {"facility": 0.9},  # PUE below 1
        {"facility": math.nan},
        {"max_gpu_utilisation": 1.5},
        {"electricity_usd_per_kwh": -0.1},
    ],
)
def test_bad_fleet_is_a_one_line_error(kw: dict) -> None:
    with pytest.raises(ProjectionInputError) as e:
        fleet(**kw)
    assert isinstance(e.value, EcoinferError) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kw", [{"j_per_inference": -0.1}, {"throughput_per_s": 0.0}, {"p99_ms": -1.0}]
)
def test_bad_measurement_is_an_error(kw: dict) -> None:
    with pytest.raises(ProjectionInputError):
        fp32(**kw)


def test_baseline_must_exist() -> None:
    with pytest.raises(ProjectionInputError, match="'nope' is not among the results"):
        project_fleet(fleet(), [fp32(), fp16()], baseline="nope")
    assert project_fleet(fleet(), [fp32(), fp16()], baseline="FP16").baseline == "fp16"


def _bench(name: str, tput: float, p99: float, j: float, measured: bool = True) -> dict:
    # the shape dataclasses.asdict(BenchResult) gives, trimmed to what matters plus noise
    return {
        "name": name,
        "device": "NVIDIA H100",
        "batch": 8,
        "latency": {"n": 100, "median_ms": p99 / 2, "p99_ms": p99},
        "gpu_compute": None,
        "throughput_per_s": tput,
        "energy": {
            "method": "nvml_counter" if measured else "estimated",
            "measured": measured,
            "idle_power_w": None,
            "samples": [],
        },
        "j_per_inference": j,
        "warnings": [],
        "skipped": None,
    }


def test_loader_reads_bench_results(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "r.json"
    rows = [_bench("a", 1200, 25, 0.3), _bench("b", 2800, 9, 0.186, measured=False)]
    rows.append({"name": "ort", "skipped": "onnxruntime not installed"})
    # the shape of bench/report.py's to_json (compare): a dict naming its baseline
    path.write_text(json.dumps({"schema": "ecoinfer.report/1", "baseline": "b", "results": rows}))
    loaded = load_measurements(path)
    ms, skipped = loaded.measurements, loaded.skipped
    assert loaded.baseline == "b"
    assert [m.name for m in ms] == ["a", "b"]
    assert ms[0].throughput_per_gpu_per_s == 1200 and ms[0].p99_ms == 25
    assert ms[1].energy_label == "estimated"
    assert skipped == ["ort: skipped (onnxruntime not installed)"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "is not a JSON file"),
        ("[]", "no benchmark result with numbers"),
        (
            '[{"name": "a", "throughput_per_s": 1}]',
            "has no latency.p99_ms, j_per_inference, energy.method, energy.measured \\(",
        ),
        ("[1, 2]", "is not an object"),
    ],
)
def test_loader_refuses_bad_files(tmp_path, content: str, message: str) -> None:  # noqa: ANN001
    path = tmp_path / "r.json"
    path.write_text(content)
    with pytest.raises(ProjectionInputError, match=message):
        load_measurements(path)


def test_loader_refuses_negative_and_missing(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ProjectionInputError, match="does not exist"):
        load_measurements(tmp_path / "missing.json")
    path = tmp_path / "r.json"
    path.write_text(json.dumps([_bench("a", -1200, 25, 0.3)]))
    with pytest.raises(ProjectionInputError, match="throughput_per_s must be greater than 0"):
        load_measurements(path)
    bad = _bench("a", 1200, 25, 0.3)
    del bad["energy"]["measured"]
    path.write_text(json.dumps([bad]))
    with pytest.raises(ProjectionInputError, match="energy.measured"):
        load_measurements(path)
