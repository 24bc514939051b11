"""Small Hugging Face transformers built from configs, random weights, fixed seeds."""

from __future__ import annotations

import torch
from torch import nn


class ViT(nn.Module):
    """transformers.ViTModel; returns (last_hidden_state, pooler_output) as a tuple."""

    def __init__(self, seed: int = 0):
        super().__init__()
        from transformers import ViTConfig, ViTModel  # noqa: PLC0415

        torch.manual_seed(seed)
        cfg = ViTConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            image_size=32,
            patch_size=8,
            num_channels=3,
            attn_implementation="eager",
        )
        self.model = ViTModel(cfg).eval()

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=pixel_values, return_dict=False)
        return out[0], out[1]


class GPT2(nn.Module):
    """transformers.GPT2LMHeadModel without KV cache; returns logits (causal + padding mask)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel  # noqa: PLC0415

        torch.manual_seed(seed)
        cfg = GPT2Config(
            n_layer=2,
            n_embd=64,
            n_head=4,
            vocab_size=1000,
            n_positions=64,
            use_cache=False,
            bos_token_id=0,
            eos_token_id=0,
            attn_implementation="eager",
        )
        self.model = GPT2LMHeadModel(cfg).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # an explicit padding mask: without it transformers' packed-sequence check uses
        # torch.diff, which the TorchScript exporter cannot export
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, return_dict=False
        )
        return out[0]


def vit(seed: int = 0) -> nn.Module:
    return ViT(seed).eval()


def gpt2(seed: int = 0) -> nn.Module:
    return GPT2(seed).eval()
