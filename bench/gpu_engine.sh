#!/usr/bin/env bash
# Issue 4 on an H100/H200 (device tool): GPU tests, then per model an FP16 engine built cold and
# with a warm timing cache, its accuracy against onnxruntime FP32, its cold start in a fresh
# process, and `ecoinfer compare` of that engine file against PyTorch eager FP32/FP16 and
# torch.compile FP16.
#   bash bench/gpu_engine.sh [tests] ["bert-base 64" "bert-base 1" "minilm 64" "resnet50 128" ...]
#   (carry .carry: MiniLM's files with fp16-stored weights)
# Environment: OUT, WORK (scratch, default /tmp/ecoinfer-bench), COMPARE=0 (builds, accuracy
# and cold start only, no `ecoinfer compare`), ECOINFER_MINILM_DIR (set: the
# MiniLM carry is already unpacked there). bench/gpu_engine_parallel.sh runs groups of specs
# on several GPUs at once.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; WORK=${WORK:-/tmp/ecoinfer-bench}; mkdir -p "$WORK"
export ECOINFER_TIMING_CACHE=$WORK/timing_cache.json
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
[ -n "${ECOINFER_MINILM_DIR:-}" ] || { bash bench/carry_minilm.sh && export ECOINFER_MINILM_DIR=/tmp/minilm; }
if [ "${1:-}" = "tests" ]; then
  shift
  timeout ${GPU_TEST_TIMEOUT:-420} bash bench/gpu_tests.sh tests/tune tests/engine tests/ir \
    2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
fi
[ $# -gt 0 ] || set -- "bert-base 64" "bert-base 1" "minilm 64"
for spec in "$@"; do
  set -- $spec; m=$1; b=$2; tag="${m}_b${b}"
  onnx=$(python -c "from ecoinfer.bench.peers import export_torch_model as e; print(e('$m'))" 2>/dev/null | tail -1)
  if [ "$m" = "resnet50" ]; then shapes=(--shapes "x:${b}x3x224x224"); else
    shapes=(--shapes input_ids:${b}x128 attention_mask:${b}x128 token_type_ids:${b}x128); fi
  rm -f "$WORK/tc_$tag.json"
  t0=$(date +%s.%N)
  python -m ecoinfer.cli build "$onnx" -o "$WORK/$tag.eng" --fp16 "${shapes[@]}" --timing-cache "$WORK/tc_$tag.json" \
    > "$WORK/build_$tag.log" 2>&1; rc=$?
  t1=$(date +%s.%N)
  python -m ecoinfer.cli build "$onnx" -o "$WORK/$tag.eng" --fp16 "${shapes[@]}" --timing-cache "$WORK/tc_$tag.json" \
    > "$WORK/build_warm_$tag.log" 2>&1; rc2=$?
  t2=$(date +%s.%N)
  # the accuracy check in a third (warm) build, so the warm rebuild above is timed alone
  python -m ecoinfer.cli build "$onnx" -o "$WORK/$tag.eng" --fp16 "${shapes[@]}" --timing-cache "$WORK/tc_$tag.json" \
    --check-accuracy > "$WORK/build_check_$tag.log" 2>&1; rc3=$?
  echo "$tag build rc=$rc cold $(python -c "print(round($t1-$t0,1))") s, warm-cache rebuild rc=$rc2 $(python -c "print(round($t2-$t1,1))") s, accuracy check rc=$rc3" | tee -a "$OUT/summary.txt"
  grep -E "^accuracy|^warning|^built|Error|error" "$WORK/build_check_$tag.log" | head -8 | tee -a "$OUT/summary.txt"
  grep -E "ecoinfer\.|LayerNorm" "$WORK/build_$tag.log" | awk '{print $2, $4}' | sort | uniq -c | sort -rn | head -8 | tee -a "$OUT/summary.txt"
  python - "$WORK/$tag.eng" "$m" "$b" <<'PY' 2>&1 | tee -a "$OUT/summary.txt"
import sys, time
t0 = time.perf_counter()
import numpy as np, torch
from ecoinfer.engine.builder import load_engine
path, m, b = sys.argv[1], sys.argv[2], int(sys.argv[3])
t1 = time.perf_counter()
eng = load_engine(path)
feeds = ({"x": np.random.randn(b, 3, 224, 224).astype(np.float32)} if m == "resnet50" else
         {k: (np.random.randint(0, 1000, (b, 128)) if k == "input_ids" else np.ones((b, 128))).astype(np.int64)
          for k in ("input_ids", "attention_mask", "token_type_ids")})
out = eng.run(feeds); torch.cuda.synchronize()
t2 = time.perf_counter()
print(f"cold start {path.split('/')[-1]}: import {t1-t0:.2f} s, load + first inference {t2-t1:.2f} s, total {t2-t0:.2f} s")
PY
  cp "$WORK/build_check_$tag.log" "$OUT/build_$tag.log" 2>/dev/null
  # torch.compile max-autotune alone takes about 4 minutes on ResNet-50; COMPARE=0: builds only
  [ "${COMPARE:-1}" = "0" ] && continue
  if [ "$m" = "resnet50" ]; then ct=450; else ct=300; fi
  timeout $ct python -m ecoinfer.cli compare --torch-model "$m" --batch "$b" --seq 128 --device cuda --duration 3 --warmup 1 \
    --peers torch-fp32,torch-fp16,torch-compile-fp16 "engine:$WORK/$tag.eng" --json "$OUT/compare_$tag.json" \
    2>&1 | grep -E "^(PyTorch|torch\.compile|ecoinfer) " | tee -a "$OUT/summary.txt"
done
