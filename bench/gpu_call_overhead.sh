#!/usr/bin/env bash
# On an H100/H200 (device tool): bench/gpu_call_overhead.py on the given engine files, or (none
# given) on BERT-base b64 FP8 and FP16 engines built here on the carried timing cache
# (.carry/tc): graph replay alone, ctx.run back to back, the harness's synchronous loop with
# the host time of each step of a call, and that loop around less and less of a call.
#   [TRACE=1] bash bench/gpu_call_overhead.sh [ENGINE.eng ...]   (JSON in $OUT/call_overhead.json;
#   TRACE=1: Chrome traces of three calls per engine in $OUT)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1; W=/tmp/w; mkdir -p $W
nvidia-smi --query-gpu=name --format=csv,noheader
if [ $# -eq 0 ]; then
  onnx=$(python -c "from ecoinfer.bench.peers import export_torch_model as e; print(e('bert-base'))" 2>/dev/null | tail -1)
  python bench/make_calib_data.py bert-base $W/calib $W/val > /dev/null 2>&1
  shp="--shapes input_ids:64x128 attention_mask:64x128 token_type_ids:64x128"
  python -m ecoinfer.cli build $onnx -o $W/fp8.eng --fp16 --fp8 --calib-data $W/calib $shp --timing-cache .carry/tc/tc_bert-base_b64.json > $W/b8.log 2>&1; echo "fp8 build rc=$?"
  python -m ecoinfer.cli build $onnx -o $W/fp16.eng --fp16 $shp --timing-cache .carry/tc/tc_bert-base_b64.json > $W/b16.log 2>&1; echo "fp16 build rc=$?"
  set -- $W/fp8.eng $W/fp16.eng
fi
python bench/gpu_call_overhead.py "$@" --json $OUT/call_overhead.json ${TRACE:+--trace-dir $OUT} 2>&1 | tail -40
