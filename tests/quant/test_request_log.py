"""`ecoinfer calib-sample`: a calibration set drawn from a request log, stratified by sequence
length or a per-sample key, written as .npz batches that hold only values from the log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ecoinfer.cli import main
from ecoinfer.quant.data import CalibrationDataError, open_calibration_data
from ecoinfer.quant.request_log import _bucket, split_samples, strata_key


def _log(root: Path, seq: int = 32) -> Path:
    """12 files of 8 requests: real lengths 3 (rare), 10 and 30 tokens, and a source id."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for f in range(12):
        lens = [3] * (f == 0) + [10] * 4 + [30] * (4 - (f == 0))
        mask = np.zeros((8, seq), np.int64)
        for i, n in enumerate(lens):
            mask[i, :n] = 1
        ids = rng.integers(100, 1000, (8, seq)).astype(np.int64) * mask
        src = np.full(8, f % 3, np.int64)
        np.savez(root / f"r{f:03d}.npz", input_ids=ids, attention_mask=mask, source=src)
    return root


def _read(folder: Path) -> list[dict[str, np.ndarray]]:
    return split_samples(open_calibration_data(folder), str(folder))


def test_buckets_are_powers_of_two() -> None:
    assert [_bucket(n) for n in (0, 1, 2, 3, 10, 16, 17, 30)] == [1, 1, 2, 4, 16, 16, 32, 32]


def test_sample_by_sequence_length_keeps_the_tail_and_the_values(tmp_path, capsys) -> None:  # noqa: ANN001
    log = _log(tmp_path / "log")
    out = tmp_path / "calib"
    assert main(["calib-sample", str(log), "-o", str(out), "-n", "20", "--batch", "8"]) == 0
    text = capsys.readouterr().out
    assert "drew 20 of 96 samples" in text
    got = _read(out)
    assert len(got) == 20
    buckets = [_bucket(int(s["attention_mask"].sum())) for s in got]
    # the 3-token request is 1 of 96 in the log; the tail share (10% of 20) draws it
    assert buckets.count(4) == 1
    assert abs(buckets.count(16) - buckets.count(32)) <= 2  # 48 : 47 in the log
    # every written request is one of the log's, unchanged
    every = {s["input_ids"].tobytes() for s in _read(log)}
    assert all(s["input_ids"].tobytes() in every for s in got)
    assert sorted(p.name for p in out.iterdir())[0] == "batch0000.npz"
    # the same log, n and seed draw the same set
    again = tmp_path / "again"
    assert main(["calib-sample", str(log), "-o", str(again), "-n", "20", "--batch", "8"]) == 0
    assert [s["input_ids"].tobytes() for s in _read(again)] == [
        s["input_ids"].tobytes() for s in got
    ]


def test_sample_by_a_key_array_and_drop_it(tmp_path, capsys) -> None:  # noqa: ANN001
    log = _log(tmp_path / "log")
    out = tmp_path / "calib"
    args = ["calib-sample", str(log), "-o", str(out), "-n", "30", "--by", "source"]
    assert main([*args, "--drop-key"]) == 0
    got = _read(out)
    assert len(got) == 30 and all(set(s) == {"input_ids", "attention_mask"} for s in got)
    text = capsys.readouterr().out
    rows = [ln.split() for ln in text.splitlines()[2:]]
    assert [r[0] for r in rows] == ["0", "1", "2"] and all(r[3] == "10" for r in rows)
    kept = tmp_path / "kept"
    assert main(["calib-sample", str(log), "-o", str(kept), "-n", "30", "--by", "source"]) == 0
    assert all("source" in s for s in _read(kept))
    # by length, dropping the array the model does not take
    by_len = tmp_path / "by_len"
    assert main(["calib-sample", str(log), "-o", str(by_len), "-n", "30", "--drop", "source"]) == 0
    assert all(set(s) == {"input_ids", "attention_mask"} for s in _read(by_len))
    assert main(["calib-sample", str(log), "-o", str(tmp_path / "x"), "--drop", "nope"]) == 2
    assert "--drop nope: no such array" in capsys.readouterr().err


def test_requests_of_other_shapes_go_to_files_of_their_own(tmp_path) -> None:  # noqa: ANN001
    log = tmp_path / "log"
    log.mkdir()
    for k, seq in enumerate((16, 64, 16, 64)):
        np.savez(log / f"r{k}.npz", x=np.full((4, seq), k, np.int64))
    out = tmp_path / "calib"
    assert main(["calib-sample", str(log), "-o", str(out), "-n", "16"]) == 0
    shapes = sorted(np.load(p)["x"].shape for p in out.glob("*.npz"))
    assert shapes == [(8, 16), (8, 64)]  # nothing padded or cut


def test_bad_request_logs_and_options_are_one_line_errors(tmp_path, capsys) -> None:  # noqa: ANN001
    log = _log(tmp_path / "log")

    def err(*extra: str, out: str = "o") -> str:
        assert main(["calib-sample", str(log), "-o", str(tmp_path / out), *extra]) == 2
        line = capsys.readouterr().err.strip()
        assert "\n" not in line
        return line

    assert "holds only 96 samples" in err("-n", "97")
    assert "-n 0: give at least 1 sample" in err("-n", "0")
    assert "--tail-fraction 1.0" in err("--tail-fraction", "1")
    assert "no array of that name" in err("--by", "label")
    assert "sample 0 has 32 values of 'input_ids'" in err("--by", "input_ids")
    assert "--by seq-len names none" in err("--drop-key")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert "not empty" in err(out="full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    ragged = tmp_path / "ragged"
    ragged.mkdir()
    np.savez(ragged / "r.npz", a=np.zeros((4, 2)), b=np.zeros((3, 2)))
    with pytest.raises(CalibrationDataError, match="different batch sizes"):
        split_samples(open_calibration_data(ragged), str(ragged))
    for flat in ({"x": np.zeros((1,), np.int64)}, {"x": np.zeros((1, 16), np.float32)}):
        with pytest.raises(CalibrationDataError, match="needs token inputs"):
            strata_key("seq-len", [flat], "log")  # a feature width is no sequence length
    # the output may not go inside the log (it would become part of it), nor under a file
    assert "inside the request log" in err(out="log/sub")
    (tmp_path / "afile").write_text("x")
    assert "is a file, so no folder can be made" in err(out="afile/sub")
    assert not (log / "sub").exists() and (tmp_path / "afile").read_text() == "x"


def test_logs_whose_batches_disagree_are_named(tmp_path) -> None:  # noqa: ANN001
    log = tmp_path / "log"
    log.mkdir()
    np.savez(log / "a.npz", ids=np.zeros((2, 4), np.int64), src=np.zeros(2))
    np.savez(log / "b.npz", ids=np.zeros((2, 4), np.int64))
    with pytest.raises(CalibrationDataError, match=r"b.npz\[src\].*the same arrays"):
        split_samples(open_calibration_data(log), str(log))
    np.savez(log / "b.npz", ids=np.zeros((2, 4), np.int64), src=np.zeros((2, 2)))
    samples = split_samples(open_calibration_data(log), str(log))
    with pytest.raises(CalibrationDataError, match="sample 2 has 2 values of 'src'"):
        strata_key("src", samples, str(log))  # every sample's key is checked, not the first
    np.savez(log / "b.npz", ids=np.zeros((2, 4), np.int64), src=np.float64(3))
    with pytest.raises(CalibrationDataError, match=r"b.npz\[src\]: 'src' is a scalar"):
        split_samples(open_calibration_data(log), str(log))
    # NaN keys are one stratum, not one per sample
    np.savez(log / "a.npz", ids=np.zeros((3, 4), np.int64), src=np.full(3, np.nan))
    np.savez(log / "b.npz", ids=np.zeros((1, 4), np.int64), src=np.ones(1))
    samples = split_samples(open_calibration_data(log), str(log))
    key = strata_key("src", samples, str(log))
    assert [key(s) for s in samples] == ["nan", "nan", "nan", 1.0]
