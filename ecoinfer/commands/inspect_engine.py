"""`ecoinfer inspect model.eng`: what an engine file holds, read from its verified header.

Polygraphy's `inspect model x.engine` in spirit: the machine and software it was built for,
its precision and quantization, its profiles, inputs and outputs, and per layer the op,
precision, chosen tactic, its time and the runner-up. Nothing is loaded onto a device, so a
GPU engine can be inspected on any machine (and one that would not load here says why).
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import torch

from ecoinfer.commands.common import print_layer_table
from ecoinfer.engine.fingerprint import differences, fingerprint
from ecoinfer.engine.format import read_engine


def _cc(cc: Any) -> str:
    return ".".join(map(str, cc)) if isinstance(cc, list | tuple) else str(cc)


def _shape(s: list) -> str:
    return "x".join(str(d) for d in s) if s else "scalar"


def engine_summary(path: str | os.PathLike) -> dict[str, Any]:
    header, tensors = read_engine(path)  # checksum and weights table verified
    plan = header.get("plan") or {}
    choices = header.get("choices") or {}
    report = header.get("report") or {}
    quant = report.get("quantization") or {}
    labels = quant.get("layer_precision") or {}  # a quantized layer's 8-bit type
    layers = []
    for n in plan.get("nodes", []):
        ch = choices.get(n["name"], {})
        op = f"{n['domain']}.{n['op']}" if n.get("domain") else n["op"]
        layers.append(
            {
                "layer": n["name"],
                "op": op,
                "precision": labels.get(n["name"], ch.get("precision", header.get("precision"))),
                "tactic": ch.get("tactic", "reference"),
                "time_ms": ch.get("time_ms"),
                "runner_up": ch.get("runner_up"),
                "runner_up_ms": ch.get("runner_up_ms"),
            }
        )
    # later profiles' own tactics (where they differ from profile 0's), per layer
    profile_layers = [
        {
            "profile": k + 1,
            "layer": name,
            "tactic": ch.get("tactic", "reference"),
            "time_ms": ch.get("time_ms"),
        }
        for k, over in enumerate(header.get("profile_choices") or [])
        for name, ch in over.items()
    ]
    built = header.get("fingerprint") or {}
    device = "cuda" if built.get("device_type") == "cuda" else "cpu"
    here = None if device == "cuda" and not torch.cuda.is_available() else fingerprint(device)
    weights = [t for k, t in tensors.items() if not k.startswith("lean/")]
    return {
        "file": str(path),
        "bytes": Path(path).stat().st_size,
        "format_version": header.get("format_version"),
        "source": header.get("source"),
        "built_for": built,
        # what keeps it from loading on this machine (None: no such device here to compare)
        "differences_here": None if here is None else differences(built, here),
        "precision": header.get("precision"),
        "quantization": quant.get("precision"),
        # how many quantized layers run 8-bit kernels, emulate, or run their float twin
        "quantized_layers": {
            "eight_bit": quant.get("eight_bit", 0),
            "emulated": len(labels) - quant.get("eight_bit", 0),
            "float_twin": len(quant.get("float_for_speed") or []),
        }
        if "layer_precision" in quant  # engine files from before these labels lack it
        else None,
        "inputs": plan.get("inputs", []),
        "outputs": plan.get("outputs", []),
        "profiles": header.get("profiles", []),
        "profile_tactics": report.get("profile_tactics", []),
        "profile_layers": profile_layers,
        "weight_bytes": sum(t.numel() * t.element_size() for t in weights),
        "layers": layers,
        "tactics": dict(collections.Counter(r["tactic"] for r in layers).most_common()),
        "build_seconds": report.get("build_seconds"),
        "phases_s": report.get("phases_s"),
        "carried_kernels": len(header.get("triton_binaries") or {}),
        "lean_section": bool(header.get("lean")),
        "pdl": bool(header.get("pdl")),
    }


def print_engine(info: dict[str, Any], as_json: bool = False) -> None:
    from ecoinfer.commands.inspect import _human  # noqa: PLC0415

    if as_json:
        print(json.dumps(info, indent=2))
        return
    b = info["built_for"]
    prec = info["precision"] + (
        f", {info['quantization']} quantized" if info["quantization"] else ""
    )
    n = info.get("quantized_layers")
    if n and not n["eight_bit"] and not n["emulated"]:
        prec = f"{info['precision']} ({info['quantization']} asked: no layer runs in it)"
    elif n:
        prec += (
            f" ({n['eight_bit']} layers on 8-bit kernels, {n['emulated']} emulated,"
            f" {n['float_twin']} on their faster float twin)"
        )
    print(
        f"engine  {info['file']}  ({_human(info['bytes'], 'B')}, format {info['format_version']})"
    )
    print(f"source  {info['source']}")
    print(
        f"built   for {b.get('device_name')} ({b.get('device_type')}"
        + (
            f", compute capability {_cc(b['compute_capability'])}"
            if b.get("compute_capability")
            else ""
        )
        + f"), torch {b.get('torch')}, triton {b.get('triton')}, ecoinfer {b.get('ecoinfer')}"
        + (f", driver {b['driver']}, CUDA {b['cuda']}" if b.get("driver") else "")
    )
    diff = info["differences_here"]
    if diff is None:
        print("here    no GPU on this machine: the engine cannot run here")
    elif diff:
        print("here    would be refused: " + "; ".join(diff))
    else:
        print("here    loads on this machine")
    print(
        f"precision {prec}; {len(info['layers'])} layers; weights {_human(info['weight_bytes'], 'B')}"
    )
    for v in info["inputs"]:
        print(f"  input  {v['name']:<24} {v.get('dtype')}[{_shape(v.get('shape') or [])}]")
    for v in info["outputs"]:
        print(f"  output {v['name']:<24} {v.get('dtype')}[{_shape(v.get('shape') or [])}]")
    for k, p in enumerate(info["profiles"]):
        dims = ", ".join(
            f"{n}: min {_shape(p['min'][n])} opt {_shape(p['opt'][n])} max {_shape(p['max'][n])}"
            for n in p["opt"]
        )
        print(f"profile {k}: {dims}")
    for pt in info["profile_tactics"]:
        print(
            f"  profile {pt['profile']}: {pt['layers_differing']} layer(s) with tactics of their own"
        )
        for r in info["profile_layers"]:
            if r["profile"] == pt["profile"]:
                t = f" {r['time_ms']:.4f} ms" if r["time_ms"] is not None else ""
                print(f"    {r['layer']}: {r['tactic']}{t}")
    extras = [f"{info['carried_kernels']} carried GPU kernel(s)"] if info["carried_kernels"] else []
    if info["lean_section"]:
        extras.append("lean section (runs without torch)")
    if info["pdl"]:
        extras.append("programmatic dependent launch")
    if info["build_seconds"] is not None:
        extras.append(f"built in {info['build_seconds']:.1f} s")
    if extras:
        print("        " + "; ".join(extras))
    print("tactics " + ", ".join(f"{k} {v}" for k, v in info["tactics"].items()))
    print_layer_table(info["layers"])
