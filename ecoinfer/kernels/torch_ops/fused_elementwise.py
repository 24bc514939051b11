"""Torch reference kernels of fused ops in the "ecoinfer" domain."""

from __future__ import annotations
