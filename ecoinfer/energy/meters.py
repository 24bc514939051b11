"""Energy meters: one interface (`EnergyMeter`), several sources, each reading labelled
with the method that produced it (docs/measurement-api.md).

Sources, in the order `open_meter` tries them:

- ``nvml_counter``: NVML's total-energy counter (Volta and newer), with power, utilisation,
  SM clock and temperature sampled by a background thread; the trapezoid integral of the
  sampled power over the same window is reported in ``alt["nvml_power_sampling_j"]``.
- ``nvml_power_sampling``: the integral of the sampled power, where the counter is missing.
- ``rapl``: Intel/AMD RAPL package counters from /sys/class/powercap (CPU runs).
- ``estimated``: a declared power figure times the window; ``measured`` is False.

Units are in names: ``_j`` joules, ``_w`` watts, ``_s`` seconds, ``_mj`` millijoules.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

from ecoinfer.errors import EnergyMeterError

# The NVML counter updates about every 100 ms (measured on an H200), so a window needs
# ~3 s for the quantisation at both ends to stay within a few percent.
MIN_WINDOW_S = 3.0
# 20-50 ms is fine enough for plots and the trapezoid integral, and cheap: each sample is
# a handful of ctypes calls that release the GIL.
DEFAULT_SAMPLE_INTERVAL_S = 0.025


@dataclass
class PowerSample:
    """One background-thread sample."""

    t_s: float  # seconds since the window started
    power_w: float | None
    gpu_util_pct: float | None
    sm_clock_mhz: float | None
    temp_c: float | None


@dataclass
class EnergyReading:
    """One measured (or estimated) window."""

    method: str  # "nvml_counter" | "nvml_power_sampling" | "rapl" | "estimated"
    measured: bool  # False only for "estimated"
    energy_j: float  # whole window
    duration_s: float
    mean_power_w: float
    idle_power_w: float | None  # measured before the run (same meter), None if unknown
    energy_above_idle_j: float | None
    gpu_util_pct: float | None  # mean over the window
    samples: list[PowerSample]  # the trace (for plots)
    device: str  # "NVIDIA H200", CPU model, ...
    warnings: list[str] = field(default_factory=list)
    alt: dict[str, float] = field(default_factory=dict)  # same window, another method


class EnergyMeter(ABC):
    """Measures the energy of one window at a time: ``start()`` ... ``stop()``.

    Call ``idle_power_w()`` before ``start()`` (with nothing running) so readings carry the
    idle power and the energy above idle. Meters only read; none changes clocks or limits.
    """

    method: str
    device: str

    @abstractmethod
    def start(self) -> None:
        """Begin a window."""

    @abstractmethod
    def stop(self) -> EnergyReading:
        """End the window and return its reading."""

    @abstractmethod
    def idle_power_w(self, seconds: float = 1.0) -> float | None:
        """Measure the idle power for `seconds` (nothing must be running); None if unknown.
        The value is remembered and put into every later reading."""

    def close(self) -> None:  # noqa: B027 - optional hook: most meters hold nothing
        """Release the meter's resources (NVML handle, thread); safe to call twice."""

    def __enter__(self) -> EnergyMeter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PeriodicSampler:
    """Calls `take()` every `interval_s` on a daemon thread until `stop()`.

    A failure inside `take()` ends the sampling and is kept in `error` rather than killing
    the benchmark: the meter turns it into a warning on the reading.
    """

    def __init__(self, take: Callable[[], None], interval_s: float, name: str) -> None:
        if interval_s <= 0:
            raise EnergyMeterError(f"sample interval must be positive, got {interval_s} s")
        self._take = take
        self.interval_s = interval_s
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        # wait() first: the caller takes the t=0 sample itself, synchronously
        while not self._stop.wait(self.interval_s):
            try:
                self._take()
            except Exception as err:  # noqa: BLE001 - reported on the reading instead
                self.error = err
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(1.0, 4 * self.interval_s))


def trapezoid_energy_j(samples: list[PowerSample]) -> float | None:
    """Trapezoid integral of the sampled power over time; None with fewer than two power
    values. Samples without a power value are skipped (their neighbours are joined)."""
    points = [(s.t_s, s.power_w) for s in samples if s.power_w is not None]
    if len(points) < 2:
        return None
    energy_j = 0.0
    for (t0, p0), (t1, p1) in zip(points, points[1:]):
        energy_j += 0.5 * (p0 + p1) * (t1 - t0)
    return energy_j


def mean_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def make_reading(
    *,
    method: str,
    measured: bool,
    energy_j: float,
    duration_s: float,
    idle_power_w: float | None,
    samples: list[PowerSample],
    device: str,
    warnings: list[str],
    alt: dict[str, float] | None = None,
) -> EnergyReading:
    """Fill in the derived fields (mean power, energy above idle, mean utilisation) the same
    way for every meter."""
    warnings = list(warnings)
    if duration_s > 0:
        mean_power_w = energy_j / duration_s
    else:
        # only a broken or injected clock gets here; 0 keeps the JSON valid (no NaN)
        mean_power_w = 0.0
        warnings.append(f"window duration is {duration_s} s; mean power not computed")
    above_j = None
    if idle_power_w is not None:
        above_j = energy_j - idle_power_w * duration_s
        if above_j < 0:
            warnings.append(
                f"energy above idle is negative ({above_j:.1f} J): the idle power "
                f"({idle_power_w:.1f} W) exceeds the window's mean power ({mean_power_w:.1f} W);"
                " was something running while idle_power_w() measured?"
            )
    return EnergyReading(
        method=method,
        measured=measured,
        energy_j=energy_j,
        duration_s=duration_s,
        mean_power_w=mean_power_w,
        idle_power_w=idle_power_w,
        energy_above_idle_j=above_j,
        gpu_util_pct=mean_or_none([s.gpu_util_pct for s in samples]),
        samples=samples,
        device=device,
        warnings=warnings,
        alt=dict(alt or {}),
    )


def _parse_device(device: str, gpu_index: int) -> tuple[str, int]:
    """ "auto" | "cpu" | "cuda" | "gpu" | "cuda:N" -> (kind, gpu index)."""
    text = str(device).strip().lower()
    if text in ("auto", "cpu"):
        return text, gpu_index
    if text in ("cuda", "gpu"):
        return "cuda", gpu_index
    if text.startswith("cuda:") and text[5:].isdigit():
        return "cuda", int(text[5:])
    raise EnergyMeterError(
        f"unknown device {device!r} for the energy meter: use auto, cpu, cuda or cuda:N"
    )


def open_meter(
    device: str = "auto", declared_power_w: float | None = None, gpu_index: int = 0
) -> EnergyMeter:
    """The best meter for `device`.

    - ``cuda``/``cuda:N``: the NVML meter (counter, or power sampling where the counter is
      missing). If NVML fails, an estimate from `declared_power_w` when one is given,
      otherwise the `EnergyMeterError` saying what failed and what to do.
    - ``cpu``: RAPL when /sys/class/powercap is readable, otherwise an estimate from
      `declared_power_w` (or ``estimate.DEFAULT_CPU_POWER_W``, said so in the warnings).
      A measurement beats a declared figure, so RAPL wins over `declared_power_w`.
    - ``auto``: the NVML meter when a GPU answers, else as ``cpu``.
    """
    # imported here: those modules import the dataclasses above
    from ecoinfer.energy.estimate import EstimateMeter, cpu_model
    from ecoinfer.energy.nvml import NvmlMeter
    from ecoinfer.energy.rapl import RaplMeter

    kind, index = _parse_device(device, gpu_index)
    reasons: list[str] = []
    if kind in ("cuda", "auto"):
        try:
            return NvmlMeter(index)
        except EnergyMeterError as err:
            if kind == "cuda":
                if declared_power_w is None:
                    raise
                return EstimateMeter(
                    declared_power_w, device=f"cuda:{index}", reasons=[f"no GPU meter: {err}"]
                )
            reasons.append(f"no GPU meter: {err}")
    try:
        return RaplMeter()
    except EnergyMeterError as err:
        reasons.append(f"no CPU meter: {err}")
    return EstimateMeter(declared_power_w, device=cpu_model(), reasons=reasons)
