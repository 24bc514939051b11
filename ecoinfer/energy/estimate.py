"""Estimated energy: a declared power figure times the window, for machines with neither
NVML nor readable RAPL counters. Always labelled ``estimated`` with ``measured=False``."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

from ecoinfer.energy.meters import EnergyMeter, EnergyReading, make_reading
from ecoinfer.errors import EnergyMeterError

# Used when no figure is declared. The CPU's real TDP cannot be read portably, so this is a
# typical desktop / per-socket server TDP; every reading says it was assumed.
DEFAULT_CPU_POWER_W = 65.0


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 9654 96-Core Processor"), or a generic label."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


class EstimateMeter(EnergyMeter):
    """Energy = power x duration, from `declared_power_w` or `DEFAULT_CPU_POWER_W`.

    `reasons` (why no meter could measure) are repeated in every reading's warnings, after
    the one that says it is an estimate.
    """

    method = "estimated"

    def __init__(
        self,
        declared_power_w: float | None = None,
        *,
        device: str | None = None,
        reasons: list[str] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if declared_power_w is not None and not declared_power_w > 0:
            raise EnergyMeterError(f"declared power must be positive, got {declared_power_w} W")
        self.declared_power_w = declared_power_w
        self.power_w = DEFAULT_CPU_POWER_W if declared_power_w is None else float(declared_power_w)
        self.device = device or cpu_model()
        self.reasons = list(reasons or [])
        self._clock = clock
        self._t0_s: float | None = None

    def _source(self) -> str:
        if self.declared_power_w is not None:
            return f"the declared {self.power_w:g} W"
        return (
            f"an assumed {self.power_w:g} W (no power figure was declared and the CPU's TDP "
            "is unknown; declare one for a better estimate)"
        )

    def start(self) -> None:
        if self._t0_s is not None:
            raise EnergyMeterError("start() called twice: call stop() first")
        self._t0_s = self._clock()

    def stop(self) -> EnergyReading:
        if self._t0_s is None:
            raise EnergyMeterError("stop() called without start()")
        duration_s = self._clock() - self._t0_s
        self._t0_s = None
        warnings = [
            f"estimated, not measured: energy = {self._source()} x {duration_s:.2f} s",
            *self.reasons,
        ]
        return make_reading(
            method=self.method,
            measured=False,
            energy_j=self.power_w * duration_s,
            duration_s=duration_s,
            idle_power_w=None,  # nothing was measured, so there is no idle to subtract
            samples=[],
            device=self.device,
            warnings=warnings,
        )

    def idle_power_w(self, seconds: float = 1.0) -> float | None:
        """Unknown: an estimate has no idle measurement (returns None without waiting)."""
        return None
