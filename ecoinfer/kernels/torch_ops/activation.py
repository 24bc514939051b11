"""Activations that fused ops (FusedConv, FusedGemm, ...) apply in their epilogue.

A fused node stores `activation` (the ONNX op it absorbed: "Relu", "Clip", "Sigmoid",
"HardSigmoid", "HardSwish", "Swish", "Gelu", "LeakyRelu", "Tanh", "Elu"; "" for none) and
`activation_params` (floats: Clip [min, max]; HardSigmoid [alpha, beta]; LeakyRelu/Elu/Swish
[alpha]; Gelu [0] exact erf or [1] tanh approximation), with the ONNX op's semantics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = (
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Swish",
    "Gelu",
    "LeakyRelu",
    "Tanh",
    "Elu",
)


def apply_activation(
    x: torch.Tensor, name: str, params: list[float] | tuple[float, ...] = ()
) -> torch.Tensor:
    if not name:
        return x
    p = list(params)
    if name == "Relu":
        return torch.relu(x)
    if name == "Clip":
        lo = p[0] if len(p) > 0 and not math.isnan(p[0]) else None
        hi = p[1] if len(p) > 1 and not math.isnan(p[1]) else None
        return torch.clamp(x, lo, hi)
    if name == "Sigmoid":
        return torch.sigmoid(x)
    if name == "HardSigmoid":
        alpha, beta = (p + [0.2, 0.5][len(p) :])[:2]
        return torch.clamp(alpha * x + beta, 0.0, 1.0)
    if name == "HardSwish":
        return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)
    if name == "Swish":
        alpha = p[0] if p else 1.0
        return x * torch.sigmoid(alpha * x)
    if name == "Gelu":
        return F.gelu(x, approximate="tanh" if p and p[0] else "none")
    if name == "LeakyRelu":
        return F.leaky_relu(x, p[0] if p else 0.01)
    if name == "Tanh":
        return torch.tanh(x)
    if name == "Elu":
        return F.elu(x, p[0] if p else 1.0)
    raise ValueError(f"unknown fused activation '{name}'")


def activation_of(
    op_type: str, attrs: dict, consts: list[torch.Tensor | None] = ()
) -> tuple[str, list[float]] | None:
    """(name, params) for an ONNX activation node that can be fused, or None if it can't."""
    if op_type in ("Relu", "Sigmoid", "HardSwish", "Tanh"):
        return op_type, []
    if op_type == "Clip":
        # min/max must be known scalars to fuse
        vals: list[float] = []
        for c in list(consts)[:2] + [None] * (2 - len(list(consts)[:2])):
            if c is None:
                vals.append(float("nan"))
            elif c.numel() == 1:
                vals.append(float(c.reshape(-1)[0]))
            else:
                return None
        return "Clip", vals
    if op_type == "HardSigmoid":
        return "HardSigmoid", [float(attrs.get("alpha", 0.2)), float(attrs.get("beta", 0.5))]
    if op_type == "LeakyRelu":
        return "LeakyRelu", [float(attrs.get("alpha", 0.01))]
    if op_type == "Elu":
        return "Elu", [float(attrs.get("alpha", 1.0))]
    if op_type == "Swish":
        return "Swish", [float(attrs.get("alpha", 1.0))]
    if op_type == "Gelu":
        return "Gelu", [1.0 if attrs.get("approximate", "none") == "tanh" else 0.0]
    return None
