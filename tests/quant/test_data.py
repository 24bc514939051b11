"""Calibration data readers, validation against the model, and the stratified sampler."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ecoinfer.ir.graph import Graph, Node, Value
from ecoinfer.quant import (
    CalibrationDataError,
    DataReader,
    NpyFolderReader,
    NpzFolderReader,
    ScriptReader,
    ValidatedReader,
    allocate_strata,
    open_calibration_data,
    stratified_sample,
)


def _graph() -> Graph:
    # a BERT-like signature: symbolic batch and seq shared by both inputs, fixed hidden 4
    ids = Value("input_ids", "int64", ("batch", "seq"))
    emb = Value("extra", "float32", ("batch", "seq", 4))
    out = Value("y", "float32", ("batch", "seq", 4))
    g = Graph(inputs=[ids, emb], outputs=[out])
    g.nodes = [Node("Identity", ["extra"], ["y"], name="id")]
    return g


def _batch(b: int = 2, s: int = 3) -> dict[str, np.ndarray]:
    return {
        "input_ids": np.arange(b * s, dtype=np.int64).reshape(b, s),
        "extra": np.ones((b, s, 4), np.float32),
    }


def _write_npz(root: Path, n: int) -> Path:
    root.mkdir(exist_ok=True)
    for i in range(n):
        np.savez(root / f"batch_{i:03d}.npz", **_batch(s=i + 1))
    return root


def _write_npy(root: Path, n: int) -> Path:
    for name in ("input_ids", "extra"):
        (root / name).mkdir(parents=True)
    for i in range(n):
        for name, a in _batch(s=i + 1).items():
            np.save(root / name / f"{i:03d}.npy", a)
    return root


# ---------------------------------------------------------------------------- readers
def test_npz_folder(tmp_path: Path) -> None:
    reader = open_calibration_data(_write_npz(tmp_path / "d", 3))
    assert isinstance(reader, NpzFolderReader) and isinstance(reader, DataReader)
    batches = list(reader)
    assert [b["input_ids"].shape for b in batches] == [(2, 1), (2, 2), (2, 3)]
    assert list(reader)[0].keys() == {"input_ids", "extra"}  # re-iterable
    assert len(list(ValidatedReader(reader, _graph()))) == 3


def test_npy_folder_per_input(tmp_path: Path) -> None:
    reader = open_calibration_data(_write_npy(tmp_path / "d", 2))
    assert isinstance(reader, NpyFolderReader)
    batches = list(ValidatedReader(reader, _graph()))
    assert len(batches) == 2
    np.testing.assert_array_equal(batches[1]["input_ids"], _batch(s=2)["input_ids"])


def test_npy_folders_with_different_counts(tmp_path: Path) -> None:
    root = _write_npy(tmp_path / "d", 2)
    (root / "extra" / "001.npy").unlink()
    with pytest.raises(CalibrationDataError, match="different numbers.*extra/ has 1"):
        open_calibration_data(root)


def test_calib_batches_limits(tmp_path: Path) -> None:
    reader = open_calibration_data(_write_npz(tmp_path / "d", 5), batches=2)
    assert len(list(reader)) == 2
    with pytest.raises(CalibrationDataError, match="--calib-batches must be at least 1"):
        open_calibration_data(tmp_path / "d", batches=0)


def test_python_script(tmp_path: Path) -> None:
    script = tmp_path / "calib.py"
    script.write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    for s in (1, 2):\n"
        "        yield {'input_ids': np.zeros((2, s), np.int64),\n"
        "               'extra': np.zeros((2, s, 4), np.float32)}\n"
    )
    reader = open_calibration_data(script)
    assert isinstance(reader, ScriptReader)
    assert [b["extra"].shape for b in ValidatedReader(reader, _graph())] == [(2, 1, 4), (2, 2, 4)]
    assert len(list(reader)) == 2  # batches() is called afresh each time


def test_python_script_errors(tmp_path: Path) -> None:
    no_fn = tmp_path / "a.py"
    no_fn.write_text("x = 1\n")
    with pytest.raises(CalibrationDataError, match="a.py: defines no function batches"):
        open_calibration_data(no_fn)
    boom = tmp_path / "b.py"
    boom.write_text("raise RuntimeError('no GPU here')\n")
    with pytest.raises(CalibrationDataError, match="b.py: running.*RuntimeError: no GPU here"):
        open_calibration_data(boom)
    bad = tmp_path / "c.py"
    bad.write_text("def batches():\n    yield [1, 2]\n")
    with pytest.raises(CalibrationDataError, match="c.py: batch 0 is a list"):
        list(open_calibration_data(bad))
    # sys.exit() in a script ended the whole build with exit code 0 and no word
    quits = tmp_path / "d.py"
    quits.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(CalibrationDataError, match=r"d.py: .*called sys.exit\(0\)"):
        open_calibration_data(quits)
    quits_later = tmp_path / "e.py"
    quits_later.write_text("import sys\ndef batches():\n    sys.exit(3)\n    yield {}\n")
    with pytest.raises(CalibrationDataError, match=r"e.py: batches\(\) failed: .*sys.exit\(3\)"):
        list(open_calibration_data(quits_later))


def test_unreadable_files(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir()
    (root / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(
        CalibrationDataError, match="broken.npz: not a .npz archive \\(not a zip file\\)"
    ):
        list(open_calibration_data(root))
    # object arrays need pickle, which calibration data may not use
    np.savez(root / "broken.npz", input_ids=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CalibrationDataError, match="broken.npz"):
        list(open_calibration_data(root))


# ---------------------------------------------------------------------------- empty, missing
def test_missing_and_empty_data(tmp_path: Path) -> None:
    with pytest.raises(CalibrationDataError, match="does not exist"):
        open_calibration_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationDataError, match="'.*empty' is empty"):
        open_calibration_data(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(CalibrationDataError, match="x.txt: calibration data must be"):
        open_calibration_data(tmp_path / "x.txt")


def test_script_with_no_batches_is_empty(tmp_path: Path) -> None:
    script = tmp_path / "none.py"
    script.write_text("def batches():\n    return iter(())\n")
    with pytest.raises(CalibrationDataError, match="none.py' is empty: it yields no batches"):
        list(ValidatedReader(open_calibration_data(script), _graph()))


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda b: b.update(mask=b["input_ids"]),
            r"batch_000.npz\[mask\]: the model has no input 'mask'",
        ),
        (lambda b: b.pop("extra"), r"batch_000.npz\[extra\]: input 'extra' is missing"),
        (
            lambda b: b.update(input_ids=b["input_ids"].astype(np.int32)),
            r"\[input_ids\]: input 'input_ids' is int32, the model expects int64",
        ),
        (
            lambda b: b.update(extra=b["extra"][0]),
            r"\[extra\]: input 'extra' has shape \[1, 4\] \(rank 2\), the model expects rank 3",
        ),
        (
            lambda b: b.update(extra=np.ones((2, 1, 5), np.float32)),
            r"input 'extra' has shape \[2, 1, 5\].*dim 2 must be 4",
        ),
        (
            lambda b: b.update(extra=np.ones((3, 1, 4), np.float32)),
            r"dim 'batch' is 3 in input 'extra' but 2 in input 'input_ids'",
        ),
    ],
)
def test_validation_errors_name_file_and_input(tmp_path: Path, change, message: str) -> None:
    b = _batch(s=1)
    change(b)
    (tmp_path / "d").mkdir()
    np.savez(tmp_path / "d" / "batch_000.npz", **b)
    with pytest.raises(CalibrationDataError, match=message):
        list(ValidatedReader(open_calibration_data(tmp_path / "d"), _graph()))


def test_validation_names_npy_file(tmp_path: Path) -> None:
    root = _write_npy(tmp_path / "d", 1)
    np.save(root / "extra" / "000.npy", np.ones((2, 1, 4), np.float64))
    with pytest.raises(CalibrationDataError, match=r"extra/000.npy: input 'extra' is float64"):
        list(ValidatedReader(open_calibration_data(root), _graph()))


def test_error_is_one_line(tmp_path: Path) -> None:
    root = _write_npy(tmp_path / "d", 1)
    np.save(root / "extra" / "000.npy", np.ones((2, 1, 4), np.float64))
    with pytest.raises(CalibrationDataError) as e:
        list(ValidatedReader(open_calibration_data(root), _graph()))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------- sampler
def test_allocation_by_hand() -> None:
    counts = {"short": 900, "medium": 90, "long": 10}
    # no tail share: 90 / 9 / 1, exactly proportional
    assert allocate_strata(counts, 100, tail_fraction=0.0) == {"short": 90, "medium": 9, "long": 1}
    # tail 0.1: 10 slots for the strata rarer than average (medium, long): 5 each; the other
    # 90 proportional: quotas 81 / 8.1 / 0.9 -> floors 81 / 8 / 0, the spare slot goes to the
    # largest remainder (long, .9)
    assert allocate_strata(counts, 100, tail_fraction=0.1) == {"short": 81, "medium": 13, "long": 6}


def test_small_sample_keeps_a_tail_case() -> None:
    counts = {"short": 900, "long": 10}
    # 0.1 * 4 rounds to no slot; a share was asked, so the tail still gets one
    assert allocate_strata(counts, 4, tail_fraction=0.1) == {"short": 3, "long": 1}
    assert allocate_strata(counts, 4, tail_fraction=0.0) == {"short": 4, "long": 0}
    assert allocate_strata(counts, 1, tail_fraction=0.1) == {"short": 1, "long": 0}


def test_largest_remainder_rounding() -> None:
    # quotas .67 each with n = 2: floors 0, the two spare slots go by order (a, b)
    assert allocate_strata({"a": 1, "b": 1, "c": 1}, 2, 0.0) == {"a": 1, "b": 1, "c": 0}
    # quotas 5.5 / 3.3 / 1.2 -> 5 / 3 / 1 + spare to a (.5)
    assert allocate_strata({"a": 55, "b": 33, "c": 12}, 10, 0.0) == {"a": 6, "b": 3, "c": 1}


def test_tail_capped_by_what_exists() -> None:
    # the rarest stratum has 2 samples: its tail share is capped and the rest re-split
    alloc = allocate_strata({"big": 1000, "mid": 50, "rare": 2}, 100, tail_fraction=0.2)
    assert alloc["rare"] == 2
    assert sum(alloc.values()) == 100
    assert alloc["mid"] >= 10


def test_stratified_sample_proportions_tail_and_seed() -> None:
    log = [
        {"id": i, "len": "short" if i % 100 < 90 else "medium" if i % 100 < 99 else "long"}
        for i in range(10_000)
    ]
    got = stratified_sample(log, 100, key="len", tail_fraction=0.1, seed=7)
    assert Counter(s["len"] for s in got) == {"short": 81, "medium": 13, "long": 6}
    assert len({s["id"] for s in got}) == 100  # no sample drawn twice
    assert [s["id"] for s in got] == sorted(s["id"] for s in got)  # log order
    again = stratified_sample(log, 100, key="len", tail_fraction=0.1, seed=7)
    assert again == got
    other = stratified_sample(log, 100, key="len", tail_fraction=0.1, seed=8)
    assert other != got


def test_stratified_sample_key_function_and_small_log() -> None:
    lengths = [3, 7, 12, 40, 41, 90]

    def bucket(n: int) -> int:
        return min(n // 32, 2)  # sequence-length buckets 0-31, 32-63, 64+

    assert stratified_sample(lengths, 10, key=bucket) == lengths  # n >= log: all of it
    got = stratified_sample(lengths, 3, key=bucket, tail_fraction=0.0)
    # proportional: 1.5 / 1.0 / 0.5 -> 1 / 1 / 0 + spare to bucket 0 (tie with 2, first)
    assert Counter(map(bucket, got)) == {0: 2, 1: 1}


def test_stratified_sample_errors() -> None:
    with pytest.raises(CalibrationDataError, match="request log to sample from is empty"):
        stratified_sample([], 5, key=len)
    with pytest.raises(CalibrationDataError, match="n >= 1"):
        stratified_sample([1], 0, key=str)
