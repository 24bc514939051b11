"""Energy meters against a fake NVML, a fake powercap tree and an injected clock."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ecoinfer.energy import estimate, meters, nvml, rapl
from ecoinfer.energy.estimate import DEFAULT_CPU_POWER_W, EstimateMeter
from ecoinfer.energy.meters import PowerSample, open_meter, trapezoid_energy_j
from ecoinfer.energy.nvml import NvmlMeter
from ecoinfer.energy.rapl import RaplMeter
from ecoinfer.errors import EnergyMeterError

NOT_SUPPORTED, INVALID_ARGUMENT, LIBRARY_NOT_FOUND, GPU_IS_LOST = 3, 2, 12, 15
NEVER_S = 60.0  # sampler interval for tests that take every sample by hand


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 12: "NVML Shared Library Not Found", 15: "GPU is lost"}.get(
            self.value, f"NVML error {self.value}"
        )


class FakeNvml:
    """The pynvml calls the meter uses, with state a test sets: energy counter (mJ), power
    (mW), utilisation, clock, temperature, and errors per call name."""

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    NVML_ERROR_INVALID_ARGUMENT = INVALID_ARGUMENT
    NVML_ERROR_LIBRARY_NOT_FOUND = LIBRARY_NOT_FOUND
    NVML_ERROR_GPU_IS_LOST = GPU_IS_LOST
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self.energy_mj = 1_000_000
        self.power_mw = 100_000
        self.util_pct = 0
        self.errors: dict[str, int] = {}  # call name -> NVML return code it raises
        self.handles_asked: list[object] = []
        self.inits = 0
        self.shutdowns = 0

    def _check(self, name: str) -> None:
        if name in self.errors:
            raise FakeNVMLError(self.errors[name])

    def nvmlInit(self) -> None:
        self._check("nvmlInit")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self._check("nvmlDeviceGetHandleByIndex")
        self.handles_asked.append(index)
        if not 0 <= index < self.count:
            raise FakeNVMLError(INVALID_ARGUMENT)
        return f"gpu{index}"

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        self.handles_asked.append(uuid)
        return uuid

    def nvmlDeviceGetName(self, handle: object) -> bytes:
        return b"NVIDIA H200"  # older pynvml returns bytes

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: object) -> int:
        self._check("nvmlDeviceGetTotalEnergyConsumption")
        return self.energy_mj

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        self._check("nvmlDeviceGetPowerUsage")
        return self.power_mw

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> SimpleNamespace:
        self._check("nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=self.util_pct, memory=0)

    def nvmlDeviceGetClockInfo(self, handle: object, kind: int) -> int:
        self._check("nvmlDeviceGetClockInfo")
        return 1980

    def nvmlDeviceGetTemperature(self, handle: object, sensor: int) -> int:
        self._check("nvmlDeviceGetTemperature")
        return 41


class FakeClock:
    """Injected clock; sleep() advances it and runs `on_sleep` (to move counters)."""

    def __init__(self) -> None:
        self.t_s = 100.0
        self.on_sleep = None

    def __call__(self) -> float:
        return self.t_s

    def sleep(self, seconds: float) -> None:
        self.t_s += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)


@pytest.fixture(autouse=True)
def _no_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.fixture
def gpu() -> FakeNvml:
    return FakeNvml()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _meter(gpu: FakeNvml, clock: FakeClock, **kw: object) -> NvmlMeter:
    kw.setdefault("sample_interval_s", NEVER_S)
    return NvmlMeter(0, clock=clock, sleep=clock.sleep, nvml=gpu, **kw)


# ---- NVML counter ------------------------------------------------------------------------


def test_counter_delta_in_joules(gpu: FakeNvml, clock: FakeClock) -> None:
    m = _meter(gpu, clock)
    assert m.method == "nvml_counter" and m.device == "NVIDIA H200"
    gpu.power_mw = 300_000
    m.start()
    clock.t_s += 4.0
    gpu.energy_mj += 1_200_000  # 1200 J in mJ
    r = m.stop()
    assert r.method == "nvml_counter" and r.measured
    assert r.energy_j == pytest.approx(1200.0)
    assert r.duration_s == pytest.approx(4.0)
    assert r.mean_power_w == pytest.approx(300.0)
    assert r.idle_power_w is None and r.energy_above_idle_j is None
    assert r.alt["nvml_power_sampling_j"] == pytest.approx(1200.0)  # 300 W x 4 s
    assert r.warnings == []
    assert [s.t_s for s in r.samples] == pytest.approx([0.0, 4.0])
    s = r.samples[0]
    assert (s.power_w, s.gpu_util_pct, s.sm_clock_mhz, s.temp_c) == (300.0, 0.0, 1980.0, 41.0)
    m.close()
    assert gpu.shutdowns == 1


def test_power_sampling_trapezoid_and_comparison(gpu: FakeNvml, clock: FakeClock) -> None:
    m = _meter(gpu, clock)
    gpu.power_mw, gpu.util_pct = 100_000, 20
    m.start()  # 100 W at t=0
    gpu.power_mw, gpu.util_pct = 300_000, 80
    clock.t_s += 1.0
    m.sample_now()  # 300 W at t=1
    clock.t_s += 2.0
    m.sample_now()  # 300 W at t=3
    gpu.power_mw = 100_000
    clock.t_s += 1.0
    gpu.energy_mj += 1_050_000
    r = m.stop()  # 100 W at t=4
    # 0.5*(100+300)*1 + 300*2 + 0.5*(300+100)*1
    assert r.alt["nvml_power_sampling_j"] == pytest.approx(1000.0)
    assert r.energy_j == pytest.approx(1050.0)
    assert r.gpu_util_pct == pytest.approx((20 + 80 + 80 + 80) / 4)
    assert not r.warnings  # within 10%

    m.start()
    clock.t_s += 4.0
    gpu.energy_mj += 600_000  # counter 600 J, sampling 4 s x 100 W = 400 J
    r = m.stop()
    assert any("differ by -33%" in w for w in r.warnings)


def test_trapezoid_skips_missing_power() -> None:
    s = [
        PowerSample(0.0, 10.0, None, None, None),
        PowerSample(1.0, None, None, None, None),
        PowerSample(2.0, 30.0, None, None, None),
    ]
    assert trapezoid_energy_j(s) == pytest.approx(40.0)
    assert trapezoid_energy_j(s[:1]) is None


def test_short_window_is_flagged(gpu: FakeNvml, clock: FakeClock) -> None:
    m = _meter(gpu, clock)
    m.start()
    clock.t_s += 1.2
    gpu.energy_mj += 120_000
    r = m.stop()
    assert r.energy_j == pytest.approx(120.0)
    assert any("window 1.20 s is shorter than the 3 s" in w for w in r.warnings)


def test_counter_that_did_not_move_is_flagged(gpu: FakeNvml, clock: FakeClock) -> None:
    m = _meter(gpu, clock)
    m.start()
    clock.t_s += 0.05
    r = m.stop()
    assert r.energy_j == 0.0
    assert any("did not move" in w and "unknown, not zero" in w for w in r.warnings)


def test_counter_going_backwards_falls_back_to_sampling(gpu: FakeNvml, clock: FakeClock) -> None:
    m = _meter(gpu, clock)
    gpu.power_mw = 200_000
    m.start()
    clock.t_s += 5.0
    gpu.energy_mj = 10  # driver reload resets it
    r = m.stop()
    assert r.method == "nvml_power_sampling" and r.measured
    assert r.energy_j == pytest.approx(1000.0)
    assert any("went backwards" in w for w in r.warnings)


def test_idle_power_is_subtracted(gpu: FakeNvml, clock: FakeClock) -> None:
    m = _meter(gpu, clock, sample_interval_s=0.025)
    gpu.power_mw = 60_000
    slept: list[float] = []
    clock.on_sleep = slept.append
    assert m.idle_power_w(1.0) == pytest.approx(60.0)
    assert sum(slept) == pytest.approx(1.0)
    assert len(m.last_idle_samples) in (41, 42)  # t = 0, 0.025, ..., 1.0 (float rounding)
    # the thread would sample for real now; take samples by hand only
    m.sample_interval_s = NEVER_S
    gpu.power_mw = 300_000
    m.start()
    clock.t_s += 4.0
    gpu.energy_mj += 1_200_000
    r = m.stop()
    assert r.idle_power_w == pytest.approx(60.0)
    assert r.energy_above_idle_j == pytest.approx(1200.0 - 60.0 * 4.0)
    assert r.warnings == []


def test_busy_idle_is_flagged_and_idle_while_running_refused(
    gpu: FakeNvml, clock: FakeClock
) -> None:
    m = _meter(gpu, clock)
    gpu.util_pct = 50
    m.idle_power_w(0.5)
    m.start()
    with pytest.raises(EnergyMeterError, match="before start"):
        m.idle_power_w()
    clock.t_s += 3.0
    gpu.energy_mj += 300_000
    r = m.stop()
    assert any("utilisation was 50%" in w for w in r.warnings)


def test_fallback_to_sampling_when_counter_not_supported(gpu: FakeNvml, clock: FakeClock) -> None:
    gpu.errors["nvmlDeviceGetTotalEnergyConsumption"] = NOT_SUPPORTED
    m = _meter(gpu, clock)
    assert m.method == "nvml_power_sampling" and not m.has_counter
    gpu.power_mw = 250_000
    m.start()
    clock.t_s += 2.0
    m.sample_now()
    clock.t_s += 2.0
    r = m.stop()
    assert r.method == "nvml_power_sampling" and r.measured
    assert r.energy_j == pytest.approx(1000.0)
    assert r.alt == {}
    assert r.warnings == []


def test_unsupported_sample_fields_stay_empty(gpu: FakeNvml, clock: FakeClock) -> None:
    gpu.errors["nvmlDeviceGetUtilizationRates"] = NOT_SUPPORTED  # e.g. under MIG
    m = _meter(gpu, clock)
    m.start()
    clock.t_s += 3.0
    gpu.energy_mj += 300_000
    r = m.stop()
    assert r.gpu_util_pct is None and r.samples[0].gpu_util_pct is None
    assert r.warnings == []


def test_read_failing_mid_run_becomes_a_warning(gpu: FakeNvml, clock: FakeClock) -> None:
    m = _meter(gpu, clock)
    m.start()
    gpu.errors["nvmlDeviceGetTemperature"] = GPU_IS_LOST
    clock.t_s += 3.0
    gpu.energy_mj += 300_000
    r = m.stop()
    assert r.samples[-1].temp_c is None
    assert any("nvmlDeviceGetTemperature() failed while sampling" in w for w in r.warnings)


def test_background_thread_samples(gpu: FakeNvml) -> None:
    m = NvmlMeter(0, nvml=gpu, sample_interval_s=0.01)  # real clock, ~0.12 s
    m.start()
    time.sleep(0.12)
    gpu.energy_mj += 12_000
    r = m.stop()
    assert len(r.samples) >= 5
    ts = [s.t_s for s in r.samples]
    assert ts == sorted(ts) and ts[0] == 0.0 and ts[-1] == pytest.approx(r.duration_s)
    assert all(s.power_w == 100.0 for s in r.samples)
    assert r.alt["nvml_power_sampling_j"] == pytest.approx(100.0 * r.duration_s)
    assert any("shorter than the 3 s" in w for w in r.warnings)
    m.close()


# ---- NVML errors -------------------------------------------------------------------------


def test_no_driver_is_a_typed_error(gpu: FakeNvml) -> None:
    gpu.errors["nvmlInit"] = LIBRARY_NOT_FOUND
    with pytest.raises(EnergyMeterError, match=r"nvmlInit\(\) failed.*--device cpu"):
        NvmlMeter(0, nvml=gpu)


def test_bad_gpu_index_names_the_count(gpu: FakeNvml) -> None:
    with pytest.raises(EnergyMeterError, match=r"nvmlDeviceGetHandleByIndex\(3\).*1 GPU"):
        NvmlMeter(3, nvml=gpu)
    assert gpu.shutdowns == gpu.inits == 1  # the failed open gave NVML back


def test_error_while_reading_counter(gpu: FakeNvml, clock: FakeClock) -> None:
    m = _meter(gpu, clock)
    m.start()
    gpu.errors["nvmlDeviceGetTotalEnergyConsumption"] = GPU_IS_LOST
    with pytest.raises(EnergyMeterError, match="nvmlDeviceGetTotalEnergyConsumption.*nvidia-smi"):
        m.stop()


def test_neither_counter_nor_power_is_an_error(gpu: FakeNvml) -> None:
    gpu.errors["nvmlDeviceGetTotalEnergyConsumption"] = NOT_SUPPORTED
    gpu.errors["nvmlDeviceGetPowerUsage"] = NOT_SUPPORTED
    with pytest.raises(EnergyMeterError, match="neither"):
        NvmlMeter(0, nvml=gpu)


def test_missing_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with pytest.raises(EnergyMeterError, match="pip install nvidia-ml-py"):
        NvmlMeter(0)


def test_cuda_visible_devices_maps_the_index(
    gpu: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpu.count = 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    NvmlMeter(1, nvml=gpu).close()
    assert gpu.handles_asked == [3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    NvmlMeter(0, nvml=gpu).close()
    assert gpu.handles_asked[-1] == "GPU-abc"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(EnergyMeterError, match="makes 0 GPU"):
        NvmlMeter(0, nvml=gpu)


def test_start_stop_misuse(gpu: FakeNvml, clock: FakeClock) -> None:
    m = _meter(gpu, clock)
    with pytest.raises(EnergyMeterError, match="without start"):
        m.stop()
    m.start()
    with pytest.raises(EnergyMeterError, match="twice"):
        m.start()
    m.close()


# ---- RAPL --------------------------------------------------------------------------------


def _zone(root: Path, zone: str, name: str, energy_uj: int, max_uj: int = 10**9) -> Path:
    d = root / zone
    d.mkdir(parents=True)
    (d / "name").write_text(name + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def _set(zone: Path, energy_uj: int) -> None:
    (zone / "energy_uj").write_text(f"{energy_uj}\n")


@pytest.fixture
def powercap(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "powercap"
    return {
        "root": root,
        "pkg0": _zone(root, "intel-rapl:0", "package-0", 999_000_000),  # 1 J below the wrap
        "pkg1": _zone(root, "intel-rapl:1", "package-1", 5_000_000),
        "core0": _zone(root, "intel-rapl:0:0", "core", 0),  # inside package-0: not added
        "psys": _zone(root, "intel-rapl:2", "psys", 0),  # overlaps the packages
        "mmio": _zone(root, "intel-rapl-mmio:0", "package-0", 0),  # same package again
    }


def test_rapl_sums_packages_and_handles_wrap(powercap: dict[str, Path], clock: FakeClock) -> None:
    m = RaplMeter(powercap["root"], clock=clock, sleep=clock.sleep, sample_interval_s=NEVER_S)
    assert [d.name for d in m.domains] == ["package-0", "package-1"]
    m.start()
    for zone in ("core0", "psys", "mmio"):
        _set(powercap[zone], 777_000_000)
    _set(powercap["pkg0"], 1_000_000)  # wrapped: 1 J + 1 J
    _set(powercap["pkg1"], 8_000_000)  # 3 J
    clock.t_s += 1.0
    m.sample_now()
    _set(powercap["pkg0"], 500_000_000)  # 499 J, nearly half the range ...
    clock.t_s += 1.0
    m.sample_now()
    _set(powercap["pkg0"], 400_000_000)  # ... then a second wrap: 900 J
    clock.t_s += 2.0
    r = m.stop()
    assert r.method == "rapl" and r.measured
    assert r.energy_j == pytest.approx(2.0 + 3.0 + 499.0 + 900.0)
    assert r.duration_s == pytest.approx(4.0)
    assert [s.power_w for s in r.samples] == pytest.approx([None, 5.0, 499.0, 450.0])
    assert r.gpu_util_pct is None and r.warnings == []


def test_rapl_idle_power(powercap: dict[str, Path], clock: FakeClock) -> None:
    m = RaplMeter(powercap["root"], clock=clock, sleep=clock.sleep, sample_interval_s=0.05)
    level = {"uj": 999_000_000}

    def tick(seconds: float) -> None:  # 20 W on package-0, wrapping on the way
        level["uj"] = (level["uj"] + round(20e6 * seconds)) % 10**9
        _set(powercap["pkg0"], level["uj"])

    clock.on_sleep = tick
    assert m.idle_power_w(0.5) == pytest.approx(20.0)
    clock.on_sleep = None
    m.sample_interval_s = NEVER_S
    m.start()
    clock.t_s += 3.0
    _set(powercap["pkg1"], 5_000_000 + 300_000_000)  # 300 J
    r = m.stop()
    assert r.idle_power_w == pytest.approx(20.0)
    assert r.energy_above_idle_j == pytest.approx(300.0 - 60.0)


def test_rapl_unreadable_or_missing(
    powercap: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(EnergyMeterError, match="does not exist"):
        RaplMeter(tmp_path / "nope")
    real_read_text = Path.read_text

    def read_text(self: Path, *a: object, **kw: object) -> str:
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real_read_text(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", read_text)
    with pytest.raises(EnergyMeterError, match="not readable.*Linux 5.10"):
        RaplMeter(powercap["root"])


# ---- estimate ----------------------------------------------------------------------------


def test_estimate_is_labelled(clock: FakeClock) -> None:
    m = EstimateMeter(150.0, device="some CPU", reasons=["no CPU meter: x"], clock=clock)
    assert m.idle_power_w(1.0) is None
    m.start()
    clock.t_s += 2.0
    r = m.stop()
    assert r.method == "estimated" and r.measured is False
    assert r.energy_j == pytest.approx(300.0) and r.mean_power_w == pytest.approx(150.0)
    assert r.warnings[0].startswith("estimated, not measured")
    assert "declared 150 W" in r.warnings[0] and r.warnings[1] == "no CPU meter: x"
    assert r.idle_power_w is None and r.energy_above_idle_j is None and r.samples == []


def test_estimate_default_says_it_was_assumed(clock: FakeClock) -> None:
    m = EstimateMeter(clock=clock)
    m.start()
    clock.t_s += 1.0
    r = m.stop()
    assert r.energy_j == pytest.approx(DEFAULT_CPU_POWER_W)
    assert "assumed" in r.warnings[0] and "TDP is unknown" in r.warnings[0]
    with pytest.raises(EnergyMeterError, match="positive"):
        EstimateMeter(0.0)


# ---- open_meter --------------------------------------------------------------------------


@pytest.fixture
def no_rapl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", str(tmp_path / "no-powercap"))


def test_open_meter_picks_nvml(gpu: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu.count = 2
    monkeypatch.setitem(sys.modules, "pynvml", gpu)
    for device in ("auto", "cuda", "cuda:1"):
        m = open_meter(device)
        assert isinstance(m, NvmlMeter) and m.method == "nvml_counter"
        m.close()
    assert gpu.handles_asked == [0, 0, 1]


def test_open_meter_cpu_paths(
    gpu: FakeNvml, monkeypatch: pytest.MonkeyPatch, powercap: dict[str, Path]
) -> None:
    gpu.errors["nvmlInit"] = LIBRARY_NOT_FOUND
    monkeypatch.setitem(sys.modules, "pynvml", gpu)
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", str(powercap["root"]))
    # a measurement beats a declared figure
    assert isinstance(open_meter("auto", declared_power_w=80.0), RaplMeter)
    assert isinstance(open_meter("cpu"), RaplMeter)


def test_open_meter_falls_back_to_estimate(
    gpu: FakeNvml, monkeypatch: pytest.MonkeyPatch, no_rapl: None
) -> None:
    gpu.errors["nvmlInit"] = LIBRARY_NOT_FOUND
    monkeypatch.setitem(sys.modules, "pynvml", gpu)
    m = open_meter("auto", declared_power_w=80.0)
    assert isinstance(m, EstimateMeter) and m.power_w == 80.0 and m.method == "estimated"
    assert any("no GPU meter" in r and "--device cpu" in r for r in m.reasons)
    assert any("no CPU meter" in r for r in m.reasons)
    m = open_meter("cpu")
    assert isinstance(m, EstimateMeter) and m.power_w == DEFAULT_CPU_POWER_W
    assert m.device == estimate.cpu_model()
    # asked for the GPU: an error, unless a figure is declared
    with pytest.raises(EnergyMeterError, match="nvmlInit"):
        open_meter("cuda")
    m = open_meter("cuda", declared_power_w=700.0)
    assert isinstance(m, EstimateMeter) and m.device == "cuda:0"


def test_open_meter_without_pynvml(monkeypatch: pytest.MonkeyPatch, no_rapl: None) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    m = open_meter()
    assert isinstance(m, EstimateMeter)
    assert any("nvidia-ml-py" in r for r in m.reasons)


def test_open_meter_rejects_unknown_device() -> None:
    with pytest.raises(EnergyMeterError, match="unknown device 'tpu'"):
        open_meter("tpu")


def test_interface_names() -> None:
    # the contract in docs/measurement-api.md
    assert set(meters.EnergyReading.__dataclass_fields__) == {
        "method", "measured", "energy_j", "duration_s", "mean_power_w", "idle_power_w",
        "energy_above_idle_j", "gpu_util_pct", "samples", "device", "warnings", "alt",
    }  # fmt: skip
    assert list(meters.PowerSample.__dataclass_fields__) == [
        "t_s", "power_w", "gpu_util_pct", "sm_clock_mhz", "temp_c",
    ]  # fmt: skip
    assert nvml.COMPARE_TOLERANCE == 0.10
