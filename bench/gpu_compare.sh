#!/usr/bin/env bash
# Issue 5 on an H100/H200 (device tool): NVML self-check, then `ecoinfer compare` on
# MiniLM-L6 and BERT-base (seq 128, batch 64 and 1), JSON/Markdown/HTML under $OUT.
#   run: bash bench/gpu_compare.sh ["minilm 64" "bert-base 1" ...]
#   (carry .carry: MiniLM's files with fp16-stored weights)
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,power.limit,clocks.sm --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, onnx, onnxruntime, transformers; print('torch', torch.__version__, 'onnx', onnx.__version__, 'ort', onnxruntime.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
# MiniLM's real weights travel as fp16 (the 87 MB fp32 file is over the transfer limit):
# widen them back to fp32 (each weight is its fp16 rounding; speed and energy are unaffected)
if [ -d .carry/minilm ]; then
  python - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(".carry/minilm"), Path("/tmp/minilm")
dst.mkdir(exist_ok=True)
for f in src.iterdir():
    if f.name != "model_fp16.safetensors":
        shutil.copy(f, dst / f.name)
sd = load_file(src / "model_fp16.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, dst / "model.safetensors")
PY
  export ECOINFER_MINILM_DIR=/tmp/minilm
fi
HTML=""; python -c "import matplotlib" 2>/dev/null && HTML=1
timeout 60 python bench/energy_selfcheck.py 2>&1 | tee "$OUT/energy_selfcheck.txt"
[ $# -gt 0 ] || set -- "minilm 64" "bert-base 64"
for spec in "$@"; do
  set -- $spec; m=$1; b=$2; tag="${m}_b${b}"
  extra=(); [ -n "$HTML" ] && extra=(--html "$OUT/$tag.html")
  timeout 280 python -m ecoinfer.cli compare --torch-model "$m" --batch "$b" --seq 128 --device cuda \
    --duration 3 --warmup 1 --json "$OUT/$tag.json" --markdown "$OUT/$tag.md" "${extra[@]}" \
    2>&1 | tee "$OUT/$tag.log" | grep -v "^\[" | tail -25
done
