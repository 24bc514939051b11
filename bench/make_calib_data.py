"""Calibration and validation batches for the GPU quantization benchmarks: random inputs of the
kind each benchmark model takes (random-weight models have no data distribution to follow;
token models get token ids), as folders of .npz files, the --calib-data / --val-data reader.

    python bench/make_calib_data.py MODEL CALIB_DIR VAL_DIR   (MODEL: resnet50, bert-base, minilm)
"""

from __future__ import annotations

import os
import sys

import numpy as np


def main(model: str, calib: str, val: str) -> None:
    rs = np.random.RandomState(0)
    for folder, n in ((calib, 16), (val, 4)):
        os.makedirs(folder, exist_ok=True)
        for i in range(n):
            if model == "resnet50":
                feeds = {"x": rs.randn(8, 3, 224, 224).astype(np.float32)}
            else:
                ids = rs.randint(1000, 20000, (8, 128)).astype(np.int64)
                feeds = {
                    "input_ids": ids,
                    "attention_mask": np.ones_like(ids),
                    "token_type_ids": np.zeros_like(ids),
                }
            np.savez(f"{folder}/b{i:03d}.npz", **feeds)


if __name__ == "__main__":
    main(*sys.argv[1:4])
