"""Registers the Triton tactics (imported by ecoinfer.tune.library).

  triton_codegen    ecoinfer.FusedElementwise       elementwise.py: one generated kernel
  triton_layernorm  LayerNormalization              norms.py (Y only; Mean/InvStdDev: None)
  triton_layernorm_codes  ecoinfer.LayerNormCodes   norms.py (Y and its int8/FP8 codes)
  triton_skip_layernorm   ecoinfer.SkipLayerNorm    norms.py (LayerNorm of X + Skip)
  triton_rmsnorm    RMSNormalization                norms.py
  triton_softmax    Softmax, LogSoftmax             softmax.py (last axis)
  triton_maxpool    ecoinfer.MaxPool (NHWC, 2-D)    pool.py (Y only; Indices: the reference)

plus, when present, ecoinfer.kernels.triton.gemm_tactics (Triton GEMM, flash attention and
implicit-GEMM conv), ecoinfer.kernels.triton.qtactics (INT8/FP8 QGemm and QConv),
ecoinfer.kernels.triton.tma_tactics (the TMA GEMM for FusedGemm and QGemm, Hopper) and
ecoinfer.kernels.triton.embed_layernorm (ecoinfer.EmbedLayerNorm), which register their own
tactics on import.

Every tactic is registered for "cuda" only. Their make() also accepts a CPU build while
TRITON_INTERPRET=1, so the tests can drive them on CPU tensors through Triton's interpreter.
"""

from __future__ import annotations

import importlib
import logging

from ecoinfer.kernels.triton import elementwise, norms, pool, softmax
from ecoinfer.tune.tactics import tactic

log = logging.getLogger("ecoinfer.tune")

_DTYPES = ("float32", "float16", "bfloat16")

tactic(
    "FusedElementwise",
    name="triton_codegen",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=elementwise.configs,
    doc="the body generated into one Triton kernel (broadcast through strides, fp32 math)",
)(elementwise.make)

tactic(
    "LayerNormalization",
    name="triton_layernorm",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=norms.norm_configs,
    doc="Triton row kernel, float32 statistics",
)(norms.make_layernorm)

tactic(
    "LayerNormCodes",
    name="triton_layernorm_codes",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=norms.codes_configs,
    doc="the LayerNormalization row kernel also writing Y's codes for a quantized reader",
)(norms.make_layernorm_codes)

tactic(
    "SkipLayerNorm",
    name="triton_skip_layernorm",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=norms.norm_configs,
    doc="the LayerNormalization row kernel adding the skip input first (float32 sum)",
)(norms.make_skip_layernorm)

tactic(
    "RMSNormalization",
    name="triton_rmsnorm",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=norms.norm_configs,
    doc="Triton row kernel, float32 statistics",
)(norms.make_rmsnorm)

tactic(
    ["Softmax", "LogSoftmax"],
    name="triton_softmax",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=softmax.softmax_configs,
    doc="Triton row kernel over the last axis, float32 accumulation",
)(softmax.make_softmax)

tactic(
    "MaxPool",
    name="triton_maxpool",
    domain="ecoinfer",
    devices=("cuda",),
    dtypes=_DTYPES,
    configs=pool.configs,
    doc="channels-last 2-D max pool, one coalesced load per window tap",
)(pool.make)


# Tactic modules of the other Triton kernels register themselves on import. A missing module
# is normal (not written yet); one that fails to import is logged and skipped, so the
# tactics above stay available.
_OPTIONAL = (
    "ecoinfer.kernels.triton.gemm_tactics",
    "ecoinfer.kernels.triton.qtactics",
    "ecoinfer.kernels.triton.tma_tactics",
    "ecoinfer.kernels.triton.embed_layernorm",
)

for _name in _OPTIONAL:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as e:
        if e.name != _name:
            log.warning("tactics from %s unavailable: %s", _name, e)
    except Exception as e:  # noqa: BLE001 - a broken optional module must not hide ours
        log.warning("tactics from %s failed to load: %s: %s", _name, type(e).__name__, e)
