"""The torch-free runtime: run an engine file built with `--lean` without importing torch.

    from ecoinfer.lean import load
    engine = load("bert.eng")             # checks the file, the GPU, loads kernels and weights
    out = engine.run({"input_ids": ids, ...})   # numpy in, numpy out

It replays the launches recorded at build time (engine/lean_record.py) through libcuda, so a
fresh process needs Python, numpy and the NVIDIA driver, not torch or Triton. It runs the
input shapes that were recorded (each profile's opt shapes); ecoinfer.load_engine runs any
shape within the profiles.
"""

from ecoinfer.lean.cuda import LeanCudaError
from ecoinfer.lean.runtime import LeanEngine, LeanEngineError, load

__all__ = ["LeanCudaError", "LeanEngine", "LeanEngineError", "load"]
