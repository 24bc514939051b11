#!/usr/bin/env bash
# Issue 4's remaining rows on an H100/H200 (device tool, carry [".carry"] for MiniLM's weights):
# for each "MODEL BATCH", one `ecoinfer compare` run with PyTorch eager FP32/FP16,
# torch.compile FP16 and an FP16 engine built in the run (the device's default level).
#   bash bench/gpu_small_batches.sh ["bert-base 1" "minilm 64" "minilm 1" ...]
# Writes $OUT/r.tar.gz (JSON + text per spec) and $OUT/summary.txt; ~2 min a spec on an H200.
set -uo pipefail
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/r"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/summary.txt"
bash bench/carry_minilm.sh && export ECOINFER_MINILM_DIR=/tmp/minilm
[ $# -gt 0 ] || set -- "bert-base 1" "minilm 64" "minilm 1"
for spec in "$@"; do
  set -- $spec; m=$1; b=$2
  timeout ${SPEC_TIMEOUT:-150} python -m ecoinfer.cli compare --torch-model "$m" --batch "$b" --seq 128 \
    --device cuda --duration 2 --warmup 1 \
    --peers torch-fp32,torch-fp16,torch-compile-fp16,ecoinfer-engine \
    --json "$OUT/r/compare_${m}_b$b.json" > "$OUT/r/compare_${m}_b$b.txt" 2>&1
  echo "== $spec rc=$?" | tee -a "$OUT/summary.txt"
  grep -E "^(PyTorch|torch\.compile|ecoinfer) " "$OUT/r/compare_${m}_b$b.txt" | tee -a "$OUT/summary.txt"
done
(cd "$OUT" && tar czf r.tar.gz r && rm -rf r)
