"""Post-training quantization: calibration data, calibrators, the calibration cache, Q/DQ
insertion (quantize.py) and the accuracy budget with per-layer sensitivity (budget.py).

The builder fuses the Q/DQ layers into ecoinfer.QGemm/QConv (passes/fuse_quantized.py), which
quantized tactics run (tune/quant_tactics.py); the reference kernels emulate them exactly.
"""

from __future__ import annotations

from ecoinfer.quant.cache import CalibrationCache, CalibrationCacheError, model_fingerprint
from ecoinfer.quant.calibrators import (
    CALIBRATORS,
    Calibrator,
    EntropyCalibrator,
    HistogramCalibrator,
    MinMaxCalibrator,
    MSECalibrator,
    PercentileCalibrator,
    fp8_scale,
    int_scale,
    make_calibrator,
    per_channel_amax,
    per_channel_minmax,
    per_channel_scale,
)
from ecoinfer.quant.data import (
    CalibrationDataError,
    DataReader,
    LimitedReader,
    NpyFolderReader,
    NpzFolderReader,
    ScriptReader,
    ValidatedReader,
    allocate_strata,
    open_calibration_data,
    stratified_sample,
    validate_batch,
)

__all__ = [
    "CALIBRATORS",
    "CalibrationCache",
    "CalibrationCacheError",
    "CalibrationDataError",
    "Calibrator",
    "DataReader",
    "EntropyCalibrator",
    "HistogramCalibrator",
    "LimitedReader",
    "MSECalibrator",
    "MinMaxCalibrator",
    "NpyFolderReader",
    "NpzFolderReader",
    "PercentileCalibrator",
    "ScriptReader",
    "ValidatedReader",
    "allocate_strata",
    "fp8_scale",
    "int_scale",
    "make_calibrator",
    "model_fingerprint",
    "open_calibration_data",
    "per_channel_amax",
    "per_channel_minmax",
    "per_channel_scale",
    "stratified_sample",
    "validate_batch",
]

# Q/DQ insertion needs torch and the runtime: loaded on first use, so importing the data and
# calibrator half of the package stays light
_QUANTIZE_EXPORTS = frozenset(
    {
        "QuantizationError",
        "calibrate",
        "calibrate_methods",
        "quant_targets",
        "quantize_graph",
        "quantize_weight",
    }
)


def __getattr__(name: str):  # noqa: ANN202
    if name in _QUANTIZE_EXPORTS:
        from ecoinfer.quant import quantize  # noqa: PLC0415

        return getattr(quantize, name)
    raise AttributeError(f"module 'ecoinfer.quant' has no attribute '{name}'")
