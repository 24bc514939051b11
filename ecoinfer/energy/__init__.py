"""Energy meters (NVML counter and power sampling, RAPL, declared-power estimate) behind one
interface; see docs/measurement-api.md. Submodules other helpers own (datacenter.py) are
not imported here."""

from __future__ import annotations

from ecoinfer.energy.estimate import DEFAULT_CPU_POWER_W, EstimateMeter
from ecoinfer.energy.meters import (
    MIN_WINDOW_S,
    EnergyMeter,
    EnergyReading,
    PowerSample,
    open_meter,
    trapezoid_energy_j,
)
from ecoinfer.energy.nvml import NvmlMeter
from ecoinfer.energy.rapl import RaplMeter

__all__ = [
    "DEFAULT_CPU_POWER_W",
    "MIN_WINDOW_S",
    "EnergyMeter",
    "EnergyReading",
    "EstimateMeter",
    "NvmlMeter",
    "PowerSample",
    "RaplMeter",
    "open_meter",
    "trapezoid_energy_j",
]
