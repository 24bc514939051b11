#!/usr/bin/env bash
# Issues 4 and 6 on an H100/H200 (device tool): for each "MODEL BATCH [int8] [fp8]" spec, FP16,
# INT8 and FP8 engines (the default calibrators, entropy for INT8 and min-max for FP8, on random
# inputs; float layers FP16) built with a
# timing cache, then `ecoinfer compare` in one run: PyTorch eager FP32/FP16, torch.compile FP16,
# the FP16 engine and the quantized engine files, with the error of each row against eager FP32.
#   bash bench/gpu_quant.sh [tests] [cold] "bert-base 64 int8 fp8" "resnet50 128 int8" ...
# Environment: BUDGET_S (seconds in all), COMPARE_S (kept for compare), PEERS (PyTorch peers,
# default torch-fp32,torch-fp16,torch-compile-fp16), PROFILE=1 (per-layer profile per engine),
# GPU_TESTS / GPU_TEST_TIMEOUT / SELFTEST_TIMEOUT (with "tests"), SKIP_FP16=1 (only the
# quantized engines: the FP16 engine's build left out where the device time is short).
# TC_DIR: a folder of timing caches (tc_MODEL_bBATCH.json) from an earlier run on the same GPU
# model and software, copied in first (builds then time only what is new; e.g. .carry/tc);
# the caches this run ends with are copied to $OUT. QFLAGS: extra flags for the quantized builds
# (e.g. "--sustained-tuning 1"). QVARIANTS: "NAME:FLAGS;NAME:FLAGS": each quantized engine also
# built with those flags (e.g. "base:--no-skip-layernorm"), as ${tag}_${q}_NAME.eng, and
# compared in the same run: an A/B of one build option on one GPU.
# Everything lands in $OUT/quant.tar.gz (the device tool returns at most 8 files) plus
# $OUT/summary.txt.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; WORK=/tmp/ecoinfer-bench; mkdir -p "$WORK" "$WORK/res"
RES=$WORK/res; S=$OUT/summary.txt
# BUDGET_S: seconds this script may take in all; quantized builds leave COMPARE_S for compare
END=$(( $(date +%s) + ${BUDGET_S:-100000} )); left() { echo $(( END - $(date +%s) - ${1:-0} )); }
export ECOINFER_TIMING_CACHE=$WORK/timing_cache.json
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader | tee -a "$S"
[ -d .carry/minilm ] && bash bench/carry_minilm.sh && export ECOINFER_MINILM_DIR=/tmp/minilm
pack() { tar czf "$OUT/quant.tar.gz" -C "$WORK" res 2>/dev/null; cp "$WORK"/tc_*.json "$OUT"/ 2>/dev/null; }
[ -n "${TC_DIR:-}" ] && cp "$TC_DIR"/tc_*.json "$WORK"/ 2>/dev/null
trap pack EXIT

if [ "${1:-}" = "tests" ]; then
  shift
  timeout ${GPU_TEST_TIMEOUT:-240} bash bench/gpu_tests.sh ${GPU_TESTS:-} \
    > "$RES/gpu_tests.txt" 2>&1; grep -E "passed|failed" "$RES/gpu_tests.txt" | tee -a "$S"
  grep -E "^FAILED|^ERROR" "$RES/gpu_tests.txt" | head -10 | tee -a "$S"
  timeout ${SELFTEST_TIMEOUT:-120} python bench/gpu_qgemm_selftest.py --json "$RES/qgemm_selftest.json" > "$RES/qgemm_selftest.txt" 2>&1
  tail -25 "$RES/qgemm_selftest.txt" | tee -a "$S"
fi
cold=0; if [ "${1:-}" = "cold" ]; then cold=1; shift; fi

for spec in "$@"; do
  set -- $spec; m=$1; b=$2; shift 2; quants="$*"; tag="${m}_b${b}"
  onnx=$(python -c "from ecoinfer.bench.peers import export_torch_model as e; print(e('$m'))" 2>/dev/null | tail -1)
  if [ "$m" = "resnet50" ]; then shp=(--shapes "x:${b}x3x224x224"); else
    shp=(--shapes input_ids:${b}x128 attention_mask:${b}x128 token_type_ids:${b}x128); fi
  # calibration / validation batches: random inputs of the build shapes' kind
  python bench/make_calib_data.py "$m" "$WORK/calib_$m" "$WORK/val_$m"
  peers=${PEERS:-torch-fp32,torch-fp16,torch-compile-fp16}
  builds="fp16 $quants"; [ -n "${SKIP_FP16:-}" ] && builds="$quants"
  IFS=';' read -ra variants <<< "${QVARIANTS:-}"
  for v in "${variants[@]}"; do for q in $quants; do builds="$builds $q@${v%%:*}"; done; done
  for qv in $builds; do
    q=${qv%%@*}; vn=""; vflags=""
    if [ "$qv" != "$q" ]; then vn=${qv#*@}
      for v in "${variants[@]}"; do [ "${v%%:*}" = "$vn" ] && vflags=${v#*:}; done; fi
    qa=(); [ "$q" != fp16 ] && qa=(--$q --calib-data "$WORK/calib_$m" ${QFLAGS:-} $vflags)
    [ -n "$vn" ] && q="${q}_$vn"
    lim=300; [ "$q" != fp16 ] && lim=$(left ${COMPARE_S:-0}); [ $lim -gt 300 ] && lim=300
    [ $lim -lt 30 ] && { echo "$tag $q build skipped: no time left" | tee -a "$S"; continue; }
    t0=$(date +%s.%N)
    timeout $lim python -m ecoinfer.cli build "$onnx" -o "$WORK/${tag}_$q.eng" --fp16 "${qa[@]}" "${shp[@]}" \
      --timing-cache "$WORK/tc_$tag.json" --verbose > "$RES/build_${tag}_$q.log" 2>&1; rc=$?
    t1=$(date +%s.%N)
    echo "$tag $q build rc=$rc $(python -c "print(round($t1-$t0,1))") s" | tee -a "$S"
    [ $rc -eq 0 ] || { grep -vE "^\s*$" "$RES/build_${tag}_$q.log" | tail -3 | tee -a "$S"; continue; }
    peers="$peers,engine:$WORK/${tag}_$q.eng"
    python - "$WORK/${tag}_$q.eng" <<'PY' 2>&1 | tee -a "$S"
import sys, collections
from ecoinfer.engine.format import read_engine
h, _ = read_engine(sys.argv[1])
tac = collections.Counter((c.get("tactic"), c.get("precision")) for c in h["choices"].values())
q = h["report"].get("quantization") or {}
tb = h["report"].get("triton_binaries") or {}
print("  tactics:", ", ".join(f"{t}/{p} x{n}" for (t, p), n in tac.most_common(8)))
if q:
    print(f"  quantized {len(q.get('quantized_layers', []))} layers, float {len(q.get('float_layers', []))};"
          f" on 8-bit kernels {q.get('eight_bit')}, on their float twin {len(q.get('float_for_speed') or [])}, emulated={q.get('emulated')}")
print(f"  carried Triton kernels: {tb.get('entries')} entries, {tb.get('bytes')} bytes, {tb.get('seconds', 0):.1f} s to collect")
pdl = h["report"].get("pdl")
if pdl:
    print(f"  PDL {'on' if pdl['enabled'] else 'off'}: {pdl['on_ms']:.4f} ms with, {pdl['off_ms']:.4f} ms without ({pdl['timing']})")
print(f"  norm links: {len(h['report'].get('norm_residual') or [])}; skip-layernorm pairs: {len(h['report'].get('skip_layernorm') or [])}")
PY
  done
  if [ -n "${PROFILE:-}" ]; then  # per-layer GPU time of each engine: what explains a miss
    for q in fp16 $quants; do
      [ -f "$WORK/${tag}_$q.eng" ] || continue
      timeout 120 python -m ecoinfer.cli bench "$WORK/${tag}_$q.eng" --profile --duration 1 --no-energy \
        --export-json "$RES/profile_${tag}_$q.json" > "$RES/profile_${tag}_$q.txt" 2>&1
    done
  fi
  lim=$(left 10); [ $lim -gt 420 ] && lim=420
  timeout $lim python -m ecoinfer.cli compare --torch-model "$m" --batch "$b" --seq 128 --device cuda --duration 3 --warmup 1 \
    --peers "$peers" --json "$RES/compare_$tag.json" > "$RES/compare_$tag.txt" 2>&1
  grep -E "^(PyTorch|torch\.compile|ecoinfer) |skipped" "$RES/compare_$tag.txt" | tee -a "$S"
  if [ $cold = 1 ] && [ -f "$WORK/${tag}_fp16.eng" ]; then
    python bench/cold_start.py "$WORK/${tag}_fp16.eng" --model "$m" --batch "$b" --profile 40 \
      --json "$RES/cold_$tag.json" > "$RES/cold_$tag.txt" 2>&1
    echo "== cold start $tag, Triton cache as after the build" | tee -a "$S"; sed -n 2,9p "$RES/cold_$tag.txt" | tee -a "$S"
    TRITON_CACHE_DIR=$(mktemp -d) python bench/cold_start.py "$WORK/${tag}_fp16.eng" --model "$m" --batch "$b" \
      --json "$RES/cold_empty_$tag.json" > "$RES/cold_empty_$tag.txt" 2>&1
    echo "== cold start $tag, empty Triton cache (kernels from the engine file)" | tee -a "$S"; sed -n 2,9p "$RES/cold_empty_$tag.txt" | tee -a "$S"
    cold=0
  fi
done
cp "$S" "$RES/summary.txt"
