#!/usr/bin/env bash
# bench/gpu_engine.sh on several GPUs of one host at once (device kinds nvidia-h200-x2/x4):
# each argument is a group of specs separated by commas, run on its own GPU (group i on GPU
# i) with its own scratch, ONNX cache and output folder ($OUT/g<i>, all packed into
# $OUT/engine_results.tar.gz at the end); every comparison is still
# within one GPU, so each ratio is a same-run, same-GPU ratio.
#   bash bench/gpu_engine_parallel.sh "bert-base 64" "bert-base 1,minilm 1" "resnet50 128"
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD
[ -n "${ECOINFER_MINILM_DIR:-}" ] || { bash bench/carry_minilm.sh && export ECOINFER_MINILM_DIR=/tmp/minilm; }
i=0
for group in "$@"; do
  IFS=, read -ra specs <<< "$group"
  mkdir -p "$OUT/g$i"
  CUDA_VISIBLE_DEVICES=$i OUT=$OUT/g$i WORK=/tmp/ecoinfer-bench-g$i XDG_CACHE_HOME=/tmp/xdg-g$i \
    bash bench/gpu_engine.sh "${specs[@]}" > "$OUT/g$i/log.txt" 2>&1 &
  i=$((i + 1))
done
wait
# the device tool returns a few files: everything travels in one archive
tar czf "$OUT/engine_results.tar.gz" -C "$OUT" $(cd "$OUT" && ls -d g*)
for d in "$OUT"/g*; do echo "== $d"; head -1 "$d/gpu.txt"; cat "$d/summary.txt" 2>/dev/null; done
