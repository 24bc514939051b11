import sys, time, tempfile
from pathlib import Path
sys.path.insert(0, "tests")
import numpy as np
import test_models as T
from models import CASES
import ecoinfer
from ecoinfer.frontend.torch import export_module
d = Path(tempfile.mkdtemp())
DEV = sys.argv[1] if len(sys.argv) > 1 else "cpu"
import torch, onnx, onnxscript, onnxruntime, transformers; print(torch.__version__, onnx.__version__, onnxscript.__version__, onnxruntime.__version__, transformers.__version__, DEV)
for name, c in CASES.items():
    for ex, dyn in T.EXPORTERS.items():
        t = time.perf_counter()
        p = export_module(c.build(), c.inputs(2), d / f"{name}_{ex}.onnx", dynamo=dyn)
        te = time.perf_counter() - t
        inputs = c.inputs(3)
        if name == "gpt2":
            inputs = {k: v[:, :12].contiguous() for k, v in inputs.items()}
        feeds = T.numpy_feeds(inputs)
        refs = T.run_onnxruntime(p, feeds)
        t = time.perf_counter()
        m = ecoinfer.load(p); outs = m.run(feeds, device=DEV)
        tr = time.perf_counter() - t
        errs = {k: "rel %.2e max %.2e" % T.rel_error(outs[k], refs[k]) for k in refs}
        print(f"{name:13s} {ex:11s} export {te:5.2f}s ecoinfer load+run {tr:5.2f}s {errs}", flush=True)
try:
    from ecoinfer.models import minilm as mm; mm.minilm_dir()
except Exception as e:
    print("minilm skipped:", e); sys.exit(0)
from ecoinfer.models import minilm as mm
tok = mm.load_minilm_tokenizer()
t = time.perf_counter()
p = mm.export_minilm_onnx(d / "minilm.onnx", dynamo=True, tokenizer=tok)
te = time.perf_counter() - t
feeds = mm.sample_inputs(T.SENTENCES, tok)
ref = T.run_onnxruntime(p, feeds)
t = time.perf_counter()
out = ecoinfer.load(p).run(feeds, device=DEV)
tr = time.perf_counter() - t
print("minilm", feeds["input_ids"].shape, f"export {te:.2f}s run {tr:.2f}s", {k: "rel %.2e max %.2e" % T.rel_error(out[k], ref[k]) for k in ref})
