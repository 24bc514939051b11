#!/usr/bin/env bash
# Diagnostics on an H100/H200 (device tool) for what the engine benchmark leaves unexplained:
# GPU tests, the cold start split into phases (Triton disk cache warm, as after a build on the
# same machine, and cold, as on a fresh machine), the per-layer profile of engines, ResNet-50
# build times (cold / warm timing cache) and accuracy.
#   bash bench/gpu_probe.sh [tests] [cold] [profile] [resnet]
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; WORK=/tmp/ecoinfer-bench; mkdir -p "$WORK"
export ECOINFER_TIMING_CACHE=$WORK/timing_cache.json
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
want() { [[ " $* " == *" $1 "* ]]; }
args=" $* "
shapes_bert() { echo "input_ids:${1}x128 attention_mask:${1}x128 token_type_ids:${1}x128"; }
export_model() { python -c "from ecoinfer.bench.peers import export_torch_model as e; print(e('$1'))" 2>/dev/null | tail -1; }

if [[ $args == *" tests "* ]]; then
  timeout 300 bash bench/gpu_tests.sh tests/tune tests/engine tests/ir tests/quant \
    2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"
fi
if [[ $args == *" cold "* || $args == *" profile "* ]]; then
  bert=$(export_model bert-base)
  for b in 1 64; do
    python -m ecoinfer.cli build "$bert" -o "$WORK/bert_b$b.eng" --fp16 --shapes $(shapes_bert $b) \
      > "$WORK/build_bert_b$b.log" 2>&1 || tail -5 "$WORK/build_bert_b$b.log"
  done
fi
if [[ $args == *" cold "* ]]; then
  echo "== cold start, Triton disk cache warm (same machine as the build)" | tee -a "$OUT/summary.txt"
  python bench/cold_start.py "$WORK/bert_b1.eng" --model bert-base --batch 1 --profile 45 \
    --json "$OUT/cold_warm_triton.json" > "$OUT/cold_start_profile.txt" 2>&1
  head -12 "$OUT/cold_start_profile.txt" | tee -a "$OUT/summary.txt"
  echo "== cold start, empty Triton cache (a fresh machine)" | tee -a "$OUT/summary.txt"
  TRITON_CACHE_DIR=$(mktemp -d) python bench/cold_start.py "$WORK/bert_b1.eng" --model bert-base --batch 1 \
    --json "$OUT/cold_empty_triton.json" 2>&1 | head -12 | tee -a "$OUT/summary.txt"
fi
if [[ $args == *" profile "* ]]; then
  for b in 1 64; do
    python -m ecoinfer.cli bench "$WORK/bert_b$b.eng" --profile --duration 2 --no-energy \
      --export-json "$OUT/bench_profile_bert_b$b.json" > "$OUT/bench_profile_bert_b$b.txt" 2>&1
    grep -E "throughput|latency|^layer" -A0 "$OUT/bench_profile_bert_b$b.txt" | head -4 | tee -a "$OUT/summary.txt"
  done
  python - "$OUT" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys, collections
for b in (1, 64):
    r = json.load(open(f"{sys.argv[1]}/bench_profile_bert_b{b}.json"))
    prof = r.get("profile") or []
    by = collections.defaultdict(float)
    for row in prof:
        by[(row["op"], row.get("tactic", ""))] += row["mean_ms"]
    tot = sum(by.values())
    print(f"bert b{b}: per-layer sum {tot:.3f} ms; by op/tactic:")
    for (op, t), ms in sorted(by.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {op:34s} {t:28s} {ms:8.3f} ms {100 * ms / tot:5.1f}%")
PY
fi
if [[ $args == *" resnet "* ]]; then
  rn=$(export_model resnet50)
  rm -f "$WORK/tc_resnet.json"
  t0=$(date +%s.%N)
  python -m ecoinfer.cli build "$rn" -o "$WORK/resnet_b128.eng" --fp16 --shapes x:128x3x224x224 \
    --timing-cache "$WORK/tc_resnet.json" > "$WORK/build_resnet.log" 2>&1; rc=$?
  t1=$(date +%s.%N)
  python -m ecoinfer.cli build "$rn" -o "$WORK/resnet_b128.eng" --fp16 --shapes x:128x3x224x224 \
    --timing-cache "$WORK/tc_resnet.json" > "$WORK/build_resnet_warm.log" 2>&1; rc2=$?
  t2=$(date +%s.%N)
  echo "resnet50 b128 build rc=$rc cold $(python -c "print(round($t1-$t0,1))") s; warm cache rc=$rc2 $(python -c "print(round($t2-$t1,1))") s" | tee -a "$OUT/summary.txt"
  cp "$WORK/build_resnet.log" "$OUT/build_resnet.log"
  grep -E "ecoinfer\.|Conv" "$WORK/build_resnet.log" | awk '{print $2, $4}' | sort | uniq -c | sort -rn | head -8 | tee -a "$OUT/summary.txt"
  python -m ecoinfer.cli bench "$WORK/resnet_b128.eng" --profile --duration 3 \
    --export-json "$OUT/bench_resnet_b128.json" > "$OUT/bench_resnet_b128.txt" 2>&1
  grep -iE "throughput|latency|energy|J/" "$OUT/bench_resnet_b128.txt" | head -6 | tee -a "$OUT/summary.txt"
  timeout 200 python -m ecoinfer.cli compare --torch-model resnet50 --batch 128 --device cuda --duration 3 --warmup 1 \
    --peers torch-fp16 --json "$OUT/compare_resnet_fp16.json" 2>&1 | grep -E "^(PyTorch|torch|ecoinfer) " | tee -a "$OUT/summary.txt"
  python - "$rn" "$WORK/resnet_b128.eng" <<'PY' 2>&1 | tail -3 | tee -a "$OUT/summary.txt"
import sys, numpy as np, onnxruntime as ort
from ecoinfer.engine.builder import load_engine
x = np.random.RandomState(0).randn(8, 3, 224, 224).astype(np.float32)
ref = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
xb = np.concatenate([x] * 16)
got = list(load_engine(sys.argv[2]).run({"x": xb}).values())[0][:8].astype(np.float32)
print(f"resnet50 fp16 engine vs onnxruntime fp32: max rel err {np.abs(got - ref).max() / np.abs(ref).max():.2e}")
PY
fi
echo "== summary"; cat "$OUT/summary.txt" 2>/dev/null | tail -60
