"""Schemas and shape inference of fused ops in the "ecoinfer" domain (see docs/fused-ops.md)."""

from __future__ import annotations
