"""Torch kernels for this op category."""

from __future__ import annotations
