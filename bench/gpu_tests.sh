#!/usr/bin/env bash
# The GPU tests (marker `gpu`) of the given test folders, then those of tests/triton in a pytest
# process of its own: its modules switch a session to Triton's CPU interpreter, and the GPU tests
# elsewhere, which need the compiled kernels, skip themselves in such a session
# (tests/conftest.py). Exits non-zero if either run fails.
#   bash bench/gpu_tests.sh [DIR...]   (default: every folder of tests/ but tests/triton)
#   SKIP_TRITON=1: leave out the tests/triton run
set -u
# MiniLM's real weights, where carried (.carry/minilm, bench/carry_minilm.sh), for its tests;
# a caller that set them up already (gpu_engine.sh, gpu_quant.sh) is not repeated
[ -z "${ECOINFER_MINILM_DIR:-}" ] && [ -d .carry/minilm ] && bash bench/carry_minilm.sh \
  && export ECOINFER_MINILM_DIR=/tmp/minilm
[ $# -gt 0 ] || set -- tests --ignore=tests/triton
python -m pytest -q -m gpu -p no:cacheprovider -rs --durations=10 "$@"; rc=$?
[ "${SKIP_TRITON:-0}" = 1 ] || python -m pytest -q -m gpu -p no:cacheprovider -rs --durations=10 tests/triton || rc=1
exit $rc
