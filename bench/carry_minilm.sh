#!/usr/bin/env bash
# On the GPU machine: MiniLM's real weights travel as fp16 in .carry/minilm (the 87 MB fp32
# file is over the transfer limit); widen them to fp32 into /tmp/minilm (each weight is its
# fp16 rounding; speed and energy do not depend on the values).
[ -d .carry/minilm ] || exit 1
python - <<'PY'
import shutil
from pathlib import Path
from safetensors.torch import load_file, save_file
src, dst = Path(".carry/minilm"), Path("/tmp/minilm")
dst.mkdir(exist_ok=True)
for f in src.iterdir():
    if f.is_dir():  # e.g. 1_Pooling
        shutil.copytree(f, dst / f.name, dirs_exist_ok=True)
    elif f.name != "model_fp16.safetensors":
        shutil.copy(f, dst / f.name)
sd = load_file(src / "model_fp16.safetensors")
save_file({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, dst / "model.safetensors")
PY
