#!/usr/bin/env bash
# Does --sustained-tuning pay in a whole engine? (device tool, H100/H200) BERT-base b64 FP16
# built twice with one timing cache (the default build, then with --sustained-tuning: only the
# sustained timings are new), then `ecoinfer compare` of both engines and torch.compile in one
# run. About 5 minutes on an H200.
#   bash bench/gpu_sustained.sh [SECONDS]
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; W=/tmp/ecoinfer-sustained; mkdir -p "$W"
# TC=FILE starts from an earlier run's timing cache (used only where its fingerprint matches)
[ -n "${TC:-}" ] && [ -f "$TC" ] && cp "$TC" "$W/tc.json"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
onnx=$(python -c "from ecoinfer.bench.peers import export_torch_model as e; print(e('bert-base'))" 2>/dev/null | tail -1)
S=(--shapes input_ids:64x128 attention_mask:64x128 token_type_ids:64x128)
for v in default sustained; do
  extra=(); [ $v = sustained ] && extra=(--sustained-tuning "${1:-1}")
  t0=$(date +%s)
  timeout 280 python -m ecoinfer.cli build "$onnx" -o "$W/$v.eng" --fp16 "${S[@]}" --timing-cache "$W/tc.json" \
    "${extra[@]}" > "$OUT/build_$v.log" 2>&1
  echo "$v build rc=$? $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
  grep -E "FusedGemm|MultiHead" "$OUT/build_$v.log" | awk '{print $4}' | sort | uniq -c | tee -a "$OUT/summary.txt"
done
timeout 300 python -m ecoinfer.cli compare --torch-model bert-base --batch 64 --seq 128 --device cuda --duration 4 \
  --warmup 1 --peers "torch-compile-fp16,engine:$W/default.eng,engine:$W/sustained.eng" \
  --json "$OUT/compare_sustained.json" 2>&1 | grep -vE "\[#|^\s*$" | tail -7 | tee -a "$OUT/summary.txt"
cp "$W/tc.json" "$OUT/timing_cache.json" 2>/dev/null
