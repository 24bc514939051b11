#!/usr/bin/env bash
# Issue 6's comparison on a host with 2 GPUs of one model (device kind nvidia-h200-x2), in
# about half the wall time of bench/gpu_quant.sh: the FP16 engine builds on GPU 0 while the
# quantized one builds on GPU 1 (an engine is bound to the GPU model and software, not to a
# device index, so either loads on either), then `ecoinfer compare` times every row (PyTorch
# peers, both engines) on GPU 0 alone: each ratio is still same-run, same-GPU.
#   bash bench/gpu_quant_parallel.sh MODEL BATCH QUANT      e.g. bert-base 64 fp8
# Environment: PEERS (default torch-fp16,torch-compile-fp16), BUILD_S (limit per build, default
# 300), COMPARE_S (default 240), GPUS (the two device indices, default "0 1": two instances on a
# 4-GPU host run side by side with GPUS="0 1" and GPUS="2 3"). Results in
# $OUT/quant_parallel_MODEL_bBATCH.tar.gz and $OUT/summary_MODEL_bBATCH.txt. AFTER_BUILDS: a
# command run on the second GPU, which is free once the builds end, beside the compare (its
# output in res/after_builds.txt).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
m=$1; b=$2; q=$3; tag="${m}_b${b}"; read -r g0 g1 <<< "${GPUS:-0 1}"
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; WORK=${WORK:-/tmp/ecoinfer-qp-$tag}; RES=$WORK/res
mkdir -p "$RES"; S=$OUT/summary_$tag.txt
nvidia-smi -i "$g0,$g1" --query-gpu=index,name,driver_version,power.limit --format=csv,noheader | tee -a "$S"
[ "$m" = minilm ] && [ -d .carry/minilm ] && bash bench/carry_minilm.sh && export ECOINFER_MINILM_DIR=/tmp/minilm
pack() { cp "$S" "$RES/summary.txt"; tar czf "$OUT/quant_parallel_$tag.tar.gz" -C "$WORK" res; }
trap pack EXIT
onnx=$(python -c "from ecoinfer.bench.peers import export_torch_model as e; print(e('$m'))" 2>/dev/null | tail -1)
if [ "$m" = "resnet50" ]; then shp=(--shapes "x:${b}x3x224x224"); else
  shp=(--shapes input_ids:${b}x128 attention_mask:${b}x128 token_type_ids:${b}x128); fi
python bench/make_calib_data.py "$m" "$WORK/calib_$m" "$WORK/val_$m"
build() {  # GPU, precision tag, extra build flags...
  local gpu=$1 p=$2; shift 2
  local t0; t0=$(date +%s.%N)
  CUDA_VISIBLE_DEVICES=$gpu XDG_CACHE_HOME=/tmp/xdg-g$gpu timeout "${BUILD_S:-300}" \
    python -m ecoinfer.cli build "$onnx" -o "$WORK/${tag}_$p.eng" --fp16 "$@" "${shp[@]}" \
    --timing-cache "$WORK/tc_${tag}_$p.json" --verbose > "$RES/build_${tag}_$p.log" 2>&1
  local rc=$?
  echo "$tag $p build on GPU $gpu rc=$rc $(python -c "print(round($(date +%s.%N)-$t0,1))") s" >> "$S"
  grep -E "^(built|phases|$q:)" "$RES/build_${tag}_$p.log" >> "$S"
}
build "$g0" fp16 &
build "$g1" "$q" "--$q" --calib-data "$WORK/calib_$m" &
wait
cat "$S"
if [ -n "${AFTER_BUILDS:-}" ]; then
  CUDA_VISIBLE_DEVICES=$g1 bash -c "$AFTER_BUILDS" > "$RES/after_builds.txt" 2>&1 &
fi
peers=${PEERS:-torch-fp16,torch-compile-fp16}
for p in fp16 "$q"; do [ -f "$WORK/${tag}_$p.eng" ] && peers="$peers,engine:$WORK/${tag}_$p.eng"; done
CUDA_VISIBLE_DEVICES=$g0 timeout "${COMPARE_S:-240}" python -m ecoinfer.cli compare --torch-model "$m" \
  --batch "$b" --seq 128 --device cuda --duration 3 --warmup 1 --peers "$peers" \
  --json "$RES/compare_$tag.json" > "$RES/compare_$tag.txt" 2>&1
grep -E "^(PyTorch|torch\.compile|ecoinfer) |skipped|error" "$RES/compare_$tag.txt" | tee -a "$S"
wait
