"""`ecoinfer report RESULTS.json`: project benchmark results onto a datacenter fleet.

Reads the JSON that bench/compare write (a list of BenchResult dicts), builds a Fleet from
the options, prints one column per configuration with GPUs needed, kWh, PUE, cost, CO2 and
savings against the baseline, then the model and every assumption.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ecoinfer.energy import datacenter as dc

# Without --load-rps the fleet is assumed to serve what the baseline would at this utilisation
# (shared/USERS.md: today's FP32 fleet runs its GPUs under 40%).
DEFAULT_BASELINE_UTILISATION = 0.4


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `ecoinfer report` (cli.py creates the subparser)."""
    p.description = (
        "Project measured J/inference and throughput onto a datacenter fleet: GPUs needed, "
        "kWh, PUE (computed from the facility model), cost, CO2 and savings against a "
        "baseline. Every assumption is printed with the result."
    )
    p.add_argument("results", metavar="RESULTS.json", help="results written by bench or compare")
    p.add_argument("--baseline", metavar="NAME", help="result to compare against (default: first)")
    f = p.add_argument_group("fleet")
    f.add_argument("--servers", type=int, default=dc.DEFAULT_SERVERS)
    f.add_argument("--gpus-per-server", type=int, default=dc.DEFAULT_GPUS_PER_SERVER)
    f.add_argument(
        "--host-power-w",
        type=float,
        default=dc.DEFAULT_HOST_POWER_W,
        help="power of one server without its GPUs (W)",
    )
    f.add_argument(
        "--gpu-idle-w",
        type=float,
        default=dc.DEFAULT_GPU_IDLE_POWER_W,
        help="GPU idle power for results that did not measure it (W)",
    )
    load = f.add_mutually_exclusive_group()
    load.add_argument("--load-rps", type=float, help="requests per second the fleet serves")
    load.add_argument("--load-per-year", type=float, help="requests per year the fleet serves")
    f.add_argument("--slo-ms", type=float, help="p99 latency bound; slower results are infeasible")
    f.add_argument("--hours-per-year", type=float, default=dc.HOURS_PER_YEAR)
    f.add_argument(
        "--max-utilisation",
        "--max-utilization",
        dest="max_utilisation",
        type=float,
        default=1.0,
        help="fraction of a GPU's benchmark throughput to plan for (headroom)",
    )
    f.add_argument(
        "--keep-fleet",
        action="store_true",
        help="keep every server on (idle GPUs draw power) instead of right-sizing",
    )
    fac = p.add_argument_group("facility (a fixed PUE, or fixed plus proportional overhead)")
    fac.add_argument("--pue", type=float, help=f"fixed PUE (default {dc.DEFAULT_PUE})")
    fac.add_argument("--facility-fixed-kw", type=float, help="overhead that does not scale (kW)")
    fac.add_argument(
        "--facility-proportional", type=float, help="overhead as a fraction of IT power"
    )
    fac.add_argument("--price", type=float, default=dc.DEFAULT_PRICE_USD_PER_KWH, help="$/kWh")
    fac.add_argument(
        "--grid-kgco2-per-kwh",
        type=float,
        help=f"grid carbon intensity (default {dc.DEFAULT_GRID_KGCO2_PER_KWH}: "
        f"{dc.DEFAULT_GRID_SOURCE})",
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="OUT.json", help="also write the projection as JSON")
    out.add_argument("--markdown", metavar="OUT.md", help="also write it as Markdown")


def _facility(args: argparse.Namespace) -> tuple[float | dc.FacilityModel, str]:
    model = args.facility_fixed_kw is not None or args.facility_proportional is not None
    if model and args.pue is not None:
        raise dc.ProjectionInputError(
            "give either --pue or a facility model (--facility-fixed-kw, "
            "--facility-proportional), not both: the model computes PUE"
        )
    if model:
        opts = []
        if args.facility_fixed_kw is not None:
            opts.append("--facility-fixed-kw")
        if args.facility_proportional is not None:
            opts.append("--facility-proportional")
        if len(opts) == 1:
            opts.append("the other term 0")
        fm = dc.FacilityModel(
            fixed_overhead_kw=args.facility_fixed_kw or 0.0,
            proportional_overhead=args.facility_proportional or 0.0,
        )
        return fm, ", ".join(opts)
    if args.pue is not None:
        return args.pue, "--pue"
    return dc.DEFAULT_PUE, "default; give --pue or a facility model"


def build_fleet(args: argparse.Namespace, baseline: dc.Measurement) -> dc.Fleet:
    facility, facility_src = _facility(args)
    sources = {
        "servers": "--servers" if args.servers != dc.DEFAULT_SERVERS else "default",
        "gpus_per_server": "--gpus-per-server"
        if args.gpus_per_server != dc.DEFAULT_GPUS_PER_SERVER
        else "default",
        "host_power_w": "--host-power-w"
        if args.host_power_w != dc.DEFAULT_HOST_POWER_W
        else "default assumption, measure yours and give --host-power-w",
        "gpu_idle_power_w": "--gpu-idle-w"
        if args.gpu_idle_w != dc.DEFAULT_GPU_IDLE_POWER_W
        else "default assumption, --gpu-idle-w",
        "hours_per_year": "--hours-per-year"
        if args.hours_per_year != dc.HOURS_PER_YEAR
        else "default: all year, 24x7",
        "max_gpu_utilisation": "--max-utilisation" if args.max_utilisation != 1.0 else "default",
        "facility": facility_src,
        "electricity_usd_per_kwh": "--price"
        if args.price != dc.DEFAULT_PRICE_USD_PER_KWH
        else "default, --price",
        "grid_kgco2_per_kwh": "--grid-kgco2-per-kwh"
        if args.grid_kgco2_per_kwh is not None
        else "default",
        "p99_slo_ms": "--slo-ms",
        "load_rps": "--load-rps",
        "load_requests_per_year": "--load-per-year",
    }
    load_rps, load_year = args.load_rps, args.load_per_year
    if load_rps is None and load_year is None:
        dc.check_number(args.servers, "--servers", positive=True)
        dc.check_number(args.gpus_per_server, "--gpus-per-server", positive=True)
        load_rps = (
            args.servers
            * args.gpus_per_server
            * baseline.throughput_per_gpu_per_s
            * DEFAULT_BASELINE_UTILISATION
        )
        sources["load_rps"] = (
            f"default: the fleet's {args.servers * args.gpus_per_server} GPUs at "
            f"{DEFAULT_BASELINE_UTILISATION:.0%} of the baseline's throughput; give --load-rps"
        )
    grid_given = args.grid_kgco2_per_kwh is not None
    return dc.Fleet(
        servers=args.servers,
        gpus_per_server=args.gpus_per_server,
        host_power_w=args.host_power_w,
        load_rps=load_rps,
        load_requests_per_year=load_year,
        p99_slo_ms=args.slo_ms,
        hours_per_year=args.hours_per_year,
        electricity_usd_per_kwh=args.price,
        grid_kgco2_per_kwh=args.grid_kgco2_per_kwh if grid_given else dc.DEFAULT_GRID_KGCO2_PER_KWH,
        grid_source="stated by the user" if grid_given else dc.DEFAULT_GRID_SOURCE,
        facility=facility,
        gpu_idle_power_w=args.gpu_idle_w,
        max_gpu_utilisation=args.max_utilisation,
        keep_all_servers_on=args.keep_fleet,
        sources=sources,
    )


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise dc.ProjectionInputError(f"cannot write '{path}': {e.strerror}") from None


def _pick_baseline(args: argparse.Namespace, loaded: dc.ResultsFile) -> tuple[dc.Measurement, str]:
    """--baseline, else the baseline the file names (compare's), else the first result."""
    if args.baseline:
        return dc.find_measurement(loaded.measurements, args.baseline), "--baseline"
    names = [m.name for m in loaded.measurements]
    if loaded.baseline in names:
        m = loaded.measurements[names.index(loaded.baseline)]
        return m, "the baseline the results file names; choose another with --baseline"
    return loaded.measurements[0], "the first result; choose another with --baseline"


def cmd_report(args: argparse.Namespace) -> int:
    loaded = dc.load_measurements(args.results)
    baseline, baseline_source = _pick_baseline(args, loaded)
    fleet = build_fleet(args, baseline)
    report = dc.project_fleet(
        fleet,
        loaded.measurements,
        baseline=baseline.name,
        skipped=loaded.skipped,
        baseline_source=baseline_source,
    )
    print(dc.format_text(report), end="")
    if args.json:
        _write(args.json, json.dumps(report.to_dict(), indent=2) + "\n")
    if args.markdown:
        _write(args.markdown, dc.format_markdown(report))
    return 0
