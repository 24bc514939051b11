"""Test model builders: small code-built models with random weights and fixed seeds.

CASES maps a model name to (builder, example-input maker); the input maker takes a batch size
and returns {input name: tensor} in forward() order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import cnn, hf


@dataclass(frozen=True)
class ModelCase:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[int], dict[str, torch.Tensor]]


def _image(size: int) -> Callable[[int], dict[str, torch.Tensor]]:
    def make(batch: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1234 + batch)
        return {"x": torch.randn(batch, 3, size, size, generator=g)}

    return make


def _pixels(batch: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234 + batch)
    return {"pixel_values": torch.randn(batch, 3, 32, 32, generator=g)}


def _tokens(batch: int, seq: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234 + batch)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[1:, seq - 4 :] = 0  # right padding on all but the first row
    return {"input_ids": torch.randint(0, 1000, (batch, seq), generator=g), "attention_mask": mask}


CASES: dict[str, ModelCase] = {
    c.name: c
    for c in [
        ModelCase("resnet", cnn.resnet, _image(64)),
        ModelCase("mobilenet_v2", cnn.mobilenet_v2, _image(64)),
        ModelCase("mobilenet_v3", cnn.mobilenet_v3, _image(64)),
        ModelCase("vit", hf.vit, _pixels),
        ModelCase("gpt2", hf.gpt2, _tokens),
    ]
}
