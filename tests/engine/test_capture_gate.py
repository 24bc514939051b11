"""The runtime's process-wide capture gate: CUDA-graph captures run alone, other GPU work of
any context overlaps freely (the GPU test in test_streams.py drives it for real)."""

from __future__ import annotations

import threading
import time

from ecoinfer.engine.runtime import _CaptureGate


def test_readers_overlap_and_a_writer_runs_alone() -> None:
    gate = _CaptureGate()
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    lock = threading.Lock()
    two_readers_in = threading.Barrier(2, timeout=5)

    def enter(kind: str) -> None:
        with lock:
            inside.append(kind)
            overlaps.append(tuple(sorted(inside)))

    def leave(kind: str) -> None:
        with lock:
            inside.remove(kind)

    def reader(wait_for_other: bool) -> None:
        with gate.shared():
            enter("r")
            if wait_for_other:
                two_readers_in.wait()  # both readers inside at once, or this times out
            time.sleep(0.02)
            leave("r")

    def writer() -> None:
        with gate.exclusive():
            enter("w")
            time.sleep(0.02)
            leave("w")

    first = [threading.Thread(target=reader, args=(True,)) for _ in range(2)]
    for t in first:
        t.start()
    for t in first:
        t.join()
    assert ("r", "r") in overlaps
    overlaps.clear()
    threads = [threading.Thread(target=writer) for _ in range(3)]
    threads += [threading.Thread(target=reader, args=(False,)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o == ("w",) for o in overlaps if "w" in o), overlaps
    assert sum(o == ("w",) for o in overlaps) == 3 and inside == []
