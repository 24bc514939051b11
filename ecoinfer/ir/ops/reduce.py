"""Shape/dtype inference for this op category."""

from __future__ import annotations
