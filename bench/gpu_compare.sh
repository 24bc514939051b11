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
bash bench/carry_minilm.sh && export ECOINFER_MINILM_DIR=/tmp/minilm
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
