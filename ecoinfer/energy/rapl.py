"""RAPL meter: CPU package energy from the Linux powercap counters (Intel, and AMD Zen,
whose driver registers under the same intel-rapl name; amd-rapl is accepted too).

The counters cover whole packages (every process on them, not just ours), so the idle
power measured before the run matters more here than on a GPU. DRAM and psys domains are
left out: psys overlaps the packages, and DRAM is not on every machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ecoinfer.energy.estimate import cpu_model
from ecoinfer.energy.meters import (
    EnergyMeter,
    EnergyReading,
    PeriodicSampler,
    PowerSample,
    make_reading,
)
from ecoinfer.errors import EnergyMeterError

# read at call time, so tests can point it at a fake tree
POWERCAP_ROOT = "/sys/class/powercap"
# RAPL counters update about every 1 ms; 50 ms keeps the trace useful and catches every
# wrap (the smallest ranges seen wrap after ~60 s at full load)
DEFAULT_RAPL_INTERVAL_S = 0.05
_PREFIXES = ("intel-rapl:", "amd-rapl:")


@dataclass
class RaplDomain:
    name: str  # "package-0"
    energy_path: Path  # .../intel-rapl:0/energy_uj
    max_energy_range_uj: int  # the counter wraps to 0 past this

    def read_uj(self) -> int:
        try:
            return int(self.energy_path.read_text().strip())
        except PermissionError as err:
            raise EnergyMeterError(
                f"{self.energy_path} is not readable (root only since Linux 5.10): run as "
                f"root or `sudo chmod a+r {self.energy_path.parent.parent}/*/energy_uj`, or "
                "declare a power figure for an estimate"
            ) from err
        except (OSError, ValueError) as err:
            raise EnergyMeterError(f"cannot read {self.energy_path}: {err}") from err


def find_package_domains(root: str | Path) -> list[RaplDomain]:
    """The top-level package domains under `root` (e.g. intel-rapl:0, intel-rapl:1), each
    checked readable; EnergyMeterError saying why when there are none."""
    root = Path(root)
    if not root.is_dir():
        raise EnergyMeterError(f"{root} does not exist: no RAPL counters on this machine")
    domains: list[RaplDomain] = []
    for zone in sorted(root.iterdir()):
        # top level is "intel-rapl:N"; "intel-rapl:N:M" are sub-domains inside a package
        prefix = next((p for p in _PREFIXES if zone.name.startswith(p)), None)
        if prefix is None or not zone.name[len(prefix) :].isdigit():
            continue
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        if not name.startswith("package"):
            continue  # psys overlaps the packages; dram etc. are not package energy
        try:
            max_uj = int((zone / "max_energy_range_uj").read_text().strip())
        except (OSError, ValueError) as err:
            raise EnergyMeterError(
                f"cannot read {zone / 'max_energy_range_uj'} ({err}): without it counter "
                "wrap-around cannot be handled"
            ) from err
        domain = RaplDomain(name=name, energy_path=zone / "energy_uj", max_energy_range_uj=max_uj)
        domain.read_uj()  # fail now, with advice, if it is root-only
        domains.append(domain)
    if not domains:
        raise EnergyMeterError(f"no RAPL package domains under {root}")
    return domains


def wrapped_delta_uj(before_uj: int, after_uj: int, max_energy_range_uj: int) -> int:
    """Counter difference allowing one wrap past max_energy_range_uj."""
    delta = after_uj - before_uj
    return delta + max_energy_range_uj if delta < 0 else delta


class RaplMeter(EnergyMeter):
    """Energy of the CPU packages over a window (sum of the package domains).

    A background thread reads the counters every `sample_interval_s`; each read adds the
    wrap-corrected difference to a running total, so a window may span many wraps (reading
    only the two ends would miss all but one). Each sample's power is the mean power since
    the previous one.
    """

    method = "rapl"

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        sample_interval_s: float = DEFAULT_RAPL_INTERVAL_S,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.root = Path(POWERCAP_ROOT if root is None else root)
        self.domains = find_package_domains(self.root)
        self.device = cpu_model()
        self.sample_interval_s = sample_interval_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._sampler: PeriodicSampler | None = None
        self._last_uj: list[int] = []
        self._total_uj = 0
        self._t0_s = 0.0
        self._last_t_s = 0.0
        self._samples: list[PowerSample] = []
        self._idle_w: float | None = None

    def _reset(self) -> None:
        self._last_uj = [d.read_uj() for d in self.domains]
        self._total_uj = 0

    def _accumulate(self) -> int:
        """Read every domain and add the wrap-corrected differences; returns this step's µJ."""
        now_uj = [d.read_uj() for d in self.domains]
        step_uj = sum(
            wrapped_delta_uj(before, after, d.max_energy_range_uj)
            for d, before, after in zip(self.domains, self._last_uj, now_uj)
        )
        self._last_uj = now_uj
        self._total_uj += step_uj
        return step_uj

    def sample_now(self) -> PowerSample:
        with self._lock:
            step_uj = self._accumulate()
            t_s = self._clock() - self._t0_s
            dt_s = t_s - self._last_t_s
            self._last_t_s = t_s
            power_w = step_uj / 1e6 / dt_s if dt_s > 0 else None
            sample = PowerSample(
                t_s=t_s, power_w=power_w, gpu_util_pct=None, sm_clock_mhz=None, temp_c=None
            )
            self._samples.append(sample)
        return sample

    def start(self) -> None:
        if self._sampler is not None:
            raise EnergyMeterError("start() called twice: call stop() first")
        with self._lock:
            self._samples = []
            self._t0_s = self._clock()
            self._last_t_s = 0.0
            self._reset()
            self._samples.append(PowerSample(0.0, None, None, None, None))
        self._sampler = PeriodicSampler(
            self.sample_now, self.sample_interval_s, "ecoinfer-rapl-sampler"
        )
        self._sampler.start()

    def stop(self) -> EnergyReading:
        if self._sampler is None:
            raise EnergyMeterError("stop() called without start()")
        sampler, self._sampler = self._sampler, None
        sampler.stop()
        warnings: list[str] = []
        if sampler.error is not None:
            # a missed wrap would undercount by a whole range: say so rather than guess
            warnings.append(
                f"RAPL sampling stopped early ({sampler.error}); wraps after it may be missed"
            )
        last = self.sample_now()
        with self._lock:
            samples = list(self._samples)
            energy_j = self._total_uj / 1e6  # µJ -> J
        return make_reading(
            method=self.method,
            measured=True,
            energy_j=energy_j,
            duration_s=last.t_s,
            idle_power_w=self._idle_w,
            samples=samples,
            device=self.device,
            warnings=warnings,
        )

    def idle_power_w(self, seconds: float = 1.0) -> float | None:
        """Package energy over `seconds` with nothing of ours running, divided by the time
        (other processes on the machine are included, as they are in the window)."""
        if self._sampler is not None:
            raise EnergyMeterError(
                "idle_power_w() measures with nothing running: call it before start()"
            )
        with self._lock:
            self._reset()
            t0_s = self._clock()
        while True:
            elapsed_s = self._clock() - t0_s
            if elapsed_s >= seconds:
                break
            self._sleep(min(self.sample_interval_s, seconds - elapsed_s))
            with self._lock:
                self._accumulate()  # every interval, so a wrap is not missed
        with self._lock:
            self._accumulate()
            elapsed_s = self._clock() - t0_s
            self._idle_w = self._total_uj / 1e6 / elapsed_s if elapsed_s > 0 else None
        return self._idle_w
