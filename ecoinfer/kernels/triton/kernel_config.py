"""The base of the Triton kernels' tile configurations (GemmConfig, QGemmConfig, ConvConfig,
FlashConfig, TmaGemmConfig, PoolConfig): integer launch parameters that timing caches and
engine files store as a dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Self


@dataclass(frozen=True)
class KernelConfig:
    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Self:
        """The configuration `d` names; keys this configuration does not have are ignored."""
        known = cls.__dataclass_fields__
        return cls(**{k: int(v) for k, v in d.items() if k in known})
