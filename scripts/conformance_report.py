"""Count the ONNX node conformance results for the README.

python scripts/conformance_report.py [--json out.json]

Runs the same cases as tests/test_onnx_conformance.py (CPU) in-process and prints the
pass / expected-failure / failure / skipped counts, and why cases were skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
import unittest
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import test_onnx_conformance as conf  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the counts here")
    ap.add_argument("-k", default="", help="only cases whose name contains this")
    args = ap.parse_args()
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for name, cls in conf.backend_test.test_cases.items():
        if name.startswith("OnnxBackendNodeModelTest"):
            for t in loader.loadTestsFromTestCase(cls):
                if t.id().endswith("_cpu") and args.k in t.id():
                    suite.addTest(t)
    result = unittest.TestResult()
    suite.run(result)
    skipped = Counter()
    for _, reason in result.skipped:
        skipped[
            reason.split(":", 1)[1].strip() if reason.startswith("unsupported") else reason
        ] += 1
    n_skip = len(result.skipped)
    failed = [t.id().rsplit(".", 1)[1] for t, _ in result.failures + result.errors]
    xfail = len(result.expectedFailures)
    xpass = [t.id().rsplit(".", 1)[1] for t in result.unexpectedSuccesses]
    supported = result.testsRun - n_skip
    passed = supported - len(failed) - xfail - len(xpass)
    counts = {
        "cases": result.testsRun,
        "skipped_unsupported": n_skip,
        "supported": supported,
        "passed": passed + len(xpass),
        "expected_failures": xfail,
        "unexpected_failures": failed,
        "unexpected_passes": xpass,
        "pass_rate": (passed + len(xpass)) / supported if supported else 0.0,
        "skip_reasons": dict(skipped.most_common()),
    }
    print(
        f"cases {counts['cases']}, supported {supported}, passed {counts['passed']} "
        f"({100 * counts['pass_rate']:.2f}%), expected failures {xfail}, "
        f"unexpected failures {len(failed)}, skipped (unsupported op/dtype) {n_skip}"
    )
    for f in failed:
        print("  FAILED", f)
    for f in xpass:
        print("  XPASS", f)
    print("skipped by reason:", ", ".join(f"{k} {v}" for k, v in skipped.most_common(25)))
    if args.json:
        Path(args.json).write_text(json.dumps(counts, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
