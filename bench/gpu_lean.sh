#!/usr/bin/env bash
# The torch-free runtime on an H100/H200 (device tool): its GPU tests, then an engine built with
# --lean (BERT-base b64 FP16 by default): the build's lean report, the cold start of three fresh
# processes through ecoinfer.lean against one through the torch runtime, `ecoinfer run --lean`,
# and the call latency of both runtimes on the same file.
#   bash bench/gpu_lean.sh [MODEL] [BATCH] [PRECISION FLAGS...]
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; WORK=/tmp/ecoinfer-lean; mkdir -p "$WORK"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
timeout 240 python -m pytest -q -m gpu -p no:cacheprovider --tb=short tests/engine/test_lean.py 2>&1 \
  | tail -40 | tee "$OUT/lean_tests.txt"
m=${1:-bert-base}; b=${2:-64}; if [ $# -ge 2 ]; then shift 2; else set --; fi
if [ $# -gt 0 ]; then prec=("$@"); else prec=(--fp16); fi; tag="${m}_b${b}"
onnx=$(python -c "from ecoinfer.bench.peers import export_torch_model as e; print(e('$m'))" 2>/dev/null | tail -1)
if [ "$m" = "resnet50" ]; then shapes=(--shapes "x:${b}x3x224x224"); else
  shapes=(--shapes input_ids:${b}x128 attention_mask:${b}x128 token_type_ids:${b}x128); fi
t0=$(date +%s.%N)
timeout 400 python -m ecoinfer.cli build "$onnx" -o "$WORK/$tag.eng" "${prec[@]}" "${shapes[@]}" --lean \
  --timing-cache "$WORK/tc_$tag.json" > "$WORK/build_$tag.log" 2>&1; rc=$?
t1=$(date +%s.%N)
echo "$tag lean build ${prec[*]} rc=$rc $(python -c "print(round($t1-$t0,1))") s" | tee -a "$OUT/summary.txt"
grep -E "^lean|^built|^warning|Error" "$WORK/build_$tag.log" | head -8 | tee -a "$OUT/summary.txt"
cp "$WORK/build_$tag.log" "$OUT/build_$tag.log"
for i in 1 2 3; do
  s=$(date +%s.%N)
  python bench/cold_start.py "$WORK/$tag.eng" --lean --model "$m" --batch "$b" --json "$OUT/cold_lean_${tag}_$i.json" \
    > "$OUT/cold_lean_${tag}_$i.txt" 2>&1
  e=$(date +%s.%N)
  echo "cold start (torch-free) $i: process wall $(python -c "print(round($e-$s,3))") s" | tee -a "$OUT/summary.txt"
  tail -8 "$OUT/cold_lean_${tag}_$i.txt" | tee -a "$OUT/summary.txt"
done
s=$(date +%s.%N)
python bench/cold_start.py "$WORK/$tag.eng" --model "$m" --batch "$b" --json "$OUT/cold_torch_$tag.json" \
  > "$OUT/cold_torch_$tag.txt" 2>&1
e=$(date +%s.%N)
echo "cold start (torch runtime): process wall $(python -c "print(round($e-$s,3))") s" | tee -a "$OUT/summary.txt"
tail -9 "$OUT/cold_torch_$tag.txt" | tee -a "$OUT/summary.txt"
python -m ecoinfer.cli run "$WORK/$tag.eng" --lean 2>&1 | tail -4 | tee -a "$OUT/summary.txt"
timeout 120 python bench/lean_calls.py "$WORK/$tag.eng" --model "$m" --batch "$b" --json "$OUT/lean_calls_$tag.json" \
  2>&1 | tail -5 | tee -a "$OUT/summary.txt"
