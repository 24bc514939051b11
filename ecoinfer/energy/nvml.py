"""NVML meter: the GPU's total-energy counter, plus power/utilisation/clock/temperature
sampled on a background thread (the trace for plots, a second energy figure, and the
fallback where the counter is missing). Reads only: never changes clocks or power limits."""

from __future__ import annotations

import importlib
import os
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from ecoinfer.energy.meters import (
    DEFAULT_SAMPLE_INTERVAL_S,
    MIN_WINDOW_S,
    EnergyMeter,
    EnergyReading,
    PeriodicSampler,
    PowerSample,
    make_reading,
    mean_or_none,
    trapezoid_energy_j,
)
from ecoinfer.errors import EnergyMeterError

# NVML return codes (nvml.h); read from the module when it has them, so a minimal fake works
_ERR_UNINITIALIZED = 1
_ERR_INVALID_ARGUMENT = 2
_ERR_NOT_SUPPORTED = 3
_ERR_NO_PERMISSION = 4
_ERR_DRIVER_NOT_LOADED = 9
_ERR_LIBRARY_NOT_FOUND = 12
_ERR_FUNCTION_NOT_FOUND = 13
_ERR_GPU_IS_LOST = 15
_ERR_LIB_RM_VERSION_MISMATCH = 18

# the counter and sampling integral disagreeing by more than this gets a warning
COMPARE_TOLERANCE = 0.10
# above this GPU utilisation during idle_power_w(), the GPU was probably not idle
IDLE_BUSY_UTIL_PCT = 5.0


def import_pynvml() -> ModuleType:
    """The `pynvml` module (package nvidia-ml-py), or a typed error saying how to get it."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as err:
        raise EnergyMeterError(
            "cannot import pynvml: `pip install nvidia-ml-py` to measure GPU energy, "
            "or use --device cpu"
        ) from err


def _code(nvml: ModuleType, name: str, default: int) -> int:
    return int(getattr(nvml, name, default))


def _is_unsupported(nvml: ModuleType, err: Exception) -> bool:
    value = getattr(err, "value", None)
    return value in (
        _code(nvml, "NVML_ERROR_NOT_SUPPORTED", _ERR_NOT_SUPPORTED),
        # an old driver without the entry point: same as unsupported for us
        _code(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", _ERR_FUNCTION_NOT_FOUND),
    )


def _advice(nvml: ModuleType, err: Exception) -> str:
    """What to do about an NVML error, by its return code."""
    value = getattr(err, "value", None)
    if value in (
        _code(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", _ERR_LIBRARY_NOT_FOUND),
        _code(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", _ERR_DRIVER_NOT_LOADED),
    ):
        return "no NVIDIA driver (libnvidia-ml.so missing or driver not loaded): use --device cpu"
    if value == _code(nvml, "NVML_ERROR_NO_PERMISSION", _ERR_NO_PERMISSION):
        return "permission denied: run with access to /dev/nvidia*, or use --device cpu"
    if value == _code(nvml, "NVML_ERROR_NOT_SUPPORTED", _ERR_NOT_SUPPORTED):
        return "not supported on this GPU (energy needs Volta or newer)"
    if value == _code(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", _ERR_FUNCTION_NOT_FOUND):
        return "the NVIDIA driver is too old for this call: update the driver"
    if value == _code(nvml, "NVML_ERROR_GPU_IS_LOST", _ERR_GPU_IS_LOST):
        return "the GPU fell off the bus: check `nvidia-smi` and the kernel log"
    if value == _code(nvml, "NVML_ERROR_LIB_RM_VERSION_MISMATCH", _ERR_LIB_RM_VERSION_MISMATCH):
        return "driver and NVML library versions differ: reboot or reload the driver"
    if value == _code(nvml, "NVML_ERROR_UNINITIALIZED", _ERR_UNINITIALIZED):
        return "NVML was shut down while the meter was in use: open a new meter"
    return "check `nvidia-smi`, or use --device cpu"


def _decode(name: Any) -> str:
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


class NvmlMeter(EnergyMeter):
    """Energy of one NVIDIA GPU over a window.

    ``method`` is ``"nvml_counter"`` where ``nvmlDeviceGetTotalEnergyConsumption`` works
    (Volta and newer), else ``"nvml_power_sampling"``. Either way a background thread
    samples power, utilisation, SM clock and temperature every `sample_interval_s`.

    `gpu_index` counts the GPUs CUDA sees: under ``CUDA_VISIBLE_DEVICES`` it is mapped to
    the NVML index or UUID listed there (NVML itself ignores that variable). With
    ``CUDA_DEVICE_ORDER`` unset CUDA orders GPUs fastest first, NVML by PCI bus; on a host
    with mixed GPUs set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so the two agree.

    `clock`, `sleep` and `nvml` are injectable for tests.
    """

    def __init__(
        self,
        gpu_index: int = 0,
        *,
        sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
        min_window_s: float = MIN_WINDOW_S,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        nvml: ModuleType | None = None,
    ) -> None:
        self._nvml = nvml if nvml is not None else import_pynvml()
        self.sample_interval_s = sample_interval_s
        self.min_window_s = min_window_s
        self._clock = clock
        self._sleep = sleep
        self._initialised = False
        self._lock = threading.Lock()
        self._sampler: PeriodicSampler | None = None
        self._samples: list[PowerSample] = []
        self._sample_warnings: list[str] = []
        self._t0_s = 0.0
        self._e0_mj = 0
        self._idle_w: float | None = None
        self._idle_warnings: list[str] = []
        self.last_idle_samples: list[PowerSample] = []

        self._call("nvmlInit")
        self._initialised = True
        try:
            self._handle = self._resolve_handle(gpu_index)
            self.device = _decode(self._call("nvmlDeviceGetName", self._handle))
            self.has_counter = self._probe("nvmlDeviceGetTotalEnergyConsumption", self._handle)
            self._has_power = self._probe("nvmlDeviceGetPowerUsage", self._handle)
            self._has_util = self._probe("nvmlDeviceGetUtilizationRates", self._handle)
            self._clock_sm = _code(self._nvml, "NVML_CLOCK_SM", 1)
            self._has_clock = self._probe("nvmlDeviceGetClockInfo", self._handle, self._clock_sm)
            self._temp_gpu = _code(self._nvml, "NVML_TEMPERATURE_GPU", 0)
            self._has_temp = self._probe("nvmlDeviceGetTemperature", self._handle, self._temp_gpu)
            if not (self.has_counter or self._has_power):
                raise EnergyMeterError(
                    f"{self.device}: neither nvmlDeviceGetTotalEnergyConsumption nor "
                    "nvmlDeviceGetPowerUsage is supported (MIG instance or a pre-Volta GPU?): "
                    "measure the whole GPU, or declare a power figure for an estimate"
                )
        except BaseException:
            self.close()
            raise
        self.method = "nvml_counter" if self.has_counter else "nvml_power_sampling"

    # ---- NVML calls -------------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> Any:
        """Call pynvml.<name>; an NVMLError becomes an EnergyMeterError naming the call."""
        try:
            return getattr(self._nvml, name)(*args)
        except self._nvml.NVMLError as err:
            raise EnergyMeterError(
                f"NVML {name}() failed: {err}: {_advice(self._nvml, err)}"
            ) from err

    def _probe(self, name: str, *args: Any) -> bool:
        """Whether the call works on this GPU; only 'not supported' answers False."""
        try:
            getattr(self._nvml, name)(*args)
        except self._nvml.NVMLError as err:
            if _is_unsupported(self._nvml, err):
                return False
            raise EnergyMeterError(
                f"NVML {name}() failed: {err}: {_advice(self._nvml, err)}"
            ) from err
        return True

    def _resolve_handle(self, gpu_index: int) -> Any:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return self._handle_by_index(gpu_index)
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if gpu_index < 0 or gpu_index >= len(entries):
            raise EnergyMeterError(
                f"GPU {gpu_index} requested but CUDA_VISIBLE_DEVICES={visible!r} makes "
                f"{len(entries)} GPU(s) visible: pick another index, or use --device cpu"
            )
        entry = entries[gpu_index]
        if entry.isdigit():
            return self._handle_by_index(int(entry))
        return self._call("nvmlDeviceGetHandleByUUID", entry)

    def _handle_by_index(self, index: int) -> Any:
        try:
            return self._call("nvmlDeviceGetHandleByIndex", index)
        except EnergyMeterError as err:
            count = None
            try:
                count = self._nvml.nvmlDeviceGetCount()
            except Exception:  # noqa: BLE001 - only to improve the message
                pass
            if count is not None and not 0 <= index < count:
                raise EnergyMeterError(
                    f"NVML nvmlDeviceGetHandleByIndex({index}) failed: there are {count} "
                    "GPU(s); pick another index"
                ) from err
            raise

    def read_counter_mj(self) -> int:
        """The raw total-energy counter (mJ since the driver loaded); needs `has_counter`."""
        return int(self._call("nvmlDeviceGetTotalEnergyConsumption", self._handle))

    def _read_optional(self, name: str, *args: Any) -> Any:
        """A sample field: None (and a warning, once) when the read fails mid-run."""
        try:
            return getattr(self._nvml, name)(*args)
        except self._nvml.NVMLError as err:
            text = f"NVML {name}() failed while sampling ({err}); those samples leave it empty"
            if text not in self._sample_warnings:
                self._sample_warnings.append(text)
            return None

    def _read_sample(self, t_s: float) -> PowerSample:
        power_mw = (
            self._read_optional("nvmlDeviceGetPowerUsage", self._handle)
            if self._has_power
            else None
        )
        util = (
            self._read_optional("nvmlDeviceGetUtilizationRates", self._handle)
            if self._has_util
            else None
        )
        clock_mhz = (
            self._read_optional("nvmlDeviceGetClockInfo", self._handle, self._clock_sm)
            if self._has_clock
            else None
        )
        temp_c = (
            self._read_optional("nvmlDeviceGetTemperature", self._handle, self._temp_gpu)
            if self._has_temp
            else None
        )
        return PowerSample(
            t_s=t_s,
            power_w=None if power_mw is None else power_mw / 1000.0,  # NVML reports mW
            gpu_util_pct=None if util is None else float(util.gpu),
            sm_clock_mhz=None if clock_mhz is None else float(clock_mhz),
            temp_c=None if temp_c is None else float(temp_c),
        )

    # ---- the window -------------------------------------------------------------------

    def sample_now(self, t_s: float | None = None) -> PowerSample:
        """Take one sample into the running window (the background thread calls this)."""
        sample = self._read_sample(self._clock() - self._t0_s if t_s is None else t_s)
        with self._lock:
            self._samples.append(sample)
        return sample

    def start(self) -> None:
        if self._sampler is not None:
            raise EnergyMeterError("start() called twice: call stop() first")
        if not self._initialised:
            raise EnergyMeterError("the NVML meter is closed: open a new one")
        self._samples = []
        self._sample_warnings = []
        self._t0_s = self._clock()
        if self.has_counter:
            self._e0_mj = self.read_counter_mj()
        self.sample_now(0.0)
        self._sampler = PeriodicSampler(
            self.sample_now, self.sample_interval_s, name="ecoinfer-nvml-sampler"
        )
        self._sampler.start()

    def stop(self) -> EnergyReading:
        """End the window.

        The counter is read at both ends, and it only moves about every 100 ms: each end is
        off by up to one update (~0.1 s x power, ~70 J on a 700 W GPU), so windows shorter
        than `min_window_s` (3 s) get a warning. The sampling integral in
        ``alt["nvml_power_sampling_j"]`` has its own bias: on recent GPUs
        nvmlDeviceGetPowerUsage returns power averaged over about 1 s, so it lags load
        changes; the two agree on windows of steady load.
        """
        if self._sampler is None:
            raise EnergyMeterError("stop() called without start()")
        sampler, self._sampler = self._sampler, None
        sampler.stop()  # before the final sample, so none lands after it
        e1_mj = self.read_counter_mj() if self.has_counter else 0
        t1_s = self._clock()
        duration_s = t1_s - self._t0_s
        self.sample_now(duration_s)

        with self._lock:
            samples = list(self._samples)
        warnings = list(self._idle_warnings) + list(self._sample_warnings)
        if sampler.error is not None:
            warnings.append(f"power sampling stopped early: {sampler.error}")
        sampling_j = trapezoid_energy_j(samples)
        alt: dict[str, float] = {}
        method = self.method

        if self.has_counter:
            delta_mj = e1_mj - self._e0_mj
            if delta_mj < 0:
                # a 64-bit mJ counter does not wrap in practice; going back means a reset
                if sampling_j is None:
                    raise EnergyMeterError(
                        f"NVML energy counter went backwards ({self._e0_mj} -> {e1_mj} mJ; "
                        "driver reload or GPU reset?) and no power samples to fall back on: "
                        "run again"
                    )
                warnings.append(
                    f"NVML energy counter went backwards ({self._e0_mj} -> {e1_mj} mJ; driver "
                    "reload or GPU reset?): this window uses the power-sampling integral"
                )
                method, energy_j = "nvml_power_sampling", sampling_j
            else:
                energy_j = delta_mj / 1000.0  # mJ -> J
                if sampling_j is not None:
                    alt["nvml_power_sampling_j"] = sampling_j
                if delta_mj == 0 and duration_s > 0:
                    warnings.append(
                        f"NVML energy counter did not move in {duration_s:.3f} s (it updates "
                        "about every 100 ms): the energy is unknown, not zero; use a longer window"
                    )
                elif sampling_j is not None and duration_s >= self.min_window_s and energy_j > 0:
                    rel = sampling_j / energy_j - 1.0
                    if abs(rel) > COMPARE_TOLERANCE:
                        warnings.append(
                            f"NVML counter ({energy_j:.1f} J) and power-sampling integral "
                            f"({sampling_j:.1f} J) differ by {rel:+.0%}: power readings are "
                            "averaged over ~1 s on recent GPUs, so load changes in the window "
                            "skew the sampled figure"
                        )
            if duration_s < self.min_window_s:
                warnings.append(
                    f"window {duration_s:.2f} s is shorter than the {self.min_window_s:g} s the "
                    "NVML energy counter needs (it updates about every 100 ms, so each end is "
                    "off by up to ~0.1 s of power): use a longer duration"
                )
        else:
            if sampling_j is None:
                raise EnergyMeterError(
                    f"{self.device}: no power samples in the window (nvmlDeviceGetPowerUsage "
                    "failed throughout): see the warnings, or declare a power figure"
                )
            energy_j = sampling_j
            if duration_s < self.min_window_s:
                warnings.append(
                    f"window {duration_s:.2f} s is shorter than {self.min_window_s:g} s: the "
                    "sampled power is averaged over ~1 s on recent GPUs, so a short window's "
                    "energy is rough; use a longer duration"
                )

        return make_reading(
            method=method,
            measured=True,
            energy_j=energy_j,
            duration_s=duration_s,
            idle_power_w=self._idle_w,
            samples=samples,
            device=self.device,
            warnings=warnings,
            alt=alt,
        )

    def idle_power_w(self, seconds: float = 1.0) -> float | None:
        """Mean sampled power over `seconds` with nothing running (the counter over the same
        time where power readings are unsupported). After a run a GPU stays in a high power
        state for a few seconds, so measure before the run, not between runs."""
        if self._sampler is not None:
            raise EnergyMeterError(
                "idle_power_w() measures with nothing running: call it before start()"
            )
        if not self._initialised:
            raise EnergyMeterError("the NVML meter is closed: open a new one")
        self._sample_warnings = []
        t0_s = self._clock()
        e0_mj = self.read_counter_mj() if not self._has_power else 0
        samples: list[PowerSample] = []
        while True:
            samples.append(self._read_sample(self._clock() - t0_s))
            elapsed_s = self._clock() - t0_s
            if elapsed_s >= seconds:
                break
            self._sleep(min(self.sample_interval_s, seconds - elapsed_s))
        self.last_idle_samples = samples
        self._idle_warnings = []
        if self._has_power:
            idle_w = mean_or_none([s.power_w for s in samples])
        else:
            idle_w = (
                (self.read_counter_mj() - e0_mj) / 1000.0 / elapsed_s if elapsed_s > 0 else None
            )
        util = mean_or_none([s.gpu_util_pct for s in samples])
        if util is not None and util > IDLE_BUSY_UTIL_PCT:
            self._idle_warnings.append(
                f"GPU utilisation was {util:.0f}% while idle power was measured: another "
                "process may be using the GPU, so the idle power (and energy above idle) is off"
            )
        self._idle_w = idle_w
        return idle_w

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        if self._initialised:
            self._initialised = False
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - nothing useful to do at shutdown
                pass

    def __del__(self) -> None:
        # nvmlInit is reference counted: give ours back if the caller forgot close()
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
