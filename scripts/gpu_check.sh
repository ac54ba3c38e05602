#!/usr/bin/env bash
# Everything a session lent a GPU machine checks, as one command that fits one device call of
# 600 s: the figures of `benchmarks/gpu.py --quick` (the whole seed-mlp command, seed-mlp's
# captured step, LeNet captured and not, TF32, the speedrun over five seeds), the tests that only
# run with CUDA, then as much of the whole test suite as the time left allows (its log names
# every test as it passes or fails, so a cut-off run still says what it reached).
#
#   bash scripts/gpu_check.sh [DATA_DIR] [OUT_DIR]
#
# DATA_DIR holds full MNIST's four IDX files (default ../shared/data/mnist; the bundled sample
# when there is none). A GPU machine gets only the repository: copy the files into a folder
# that .git/info/exclude ignores and carry it, e.g. `.gpu-data/mnist`. OUT_DIR (default $OUT,
# else gpu-check) receives card.txt, gpu.json, gpu.log, cuda-tests.log and tests.log.
# Time limits in seconds (a part that runs over is stopped, and killed 15 s later: a test that
# trains in-process treats SIGTERM as a stop at its next boundary, and pytest goes on):
# GPU_CHECK_BENCH_SECONDS (200), GPU_CHECK_CUDA_SECONDS (50), GPU_CHECK_TEST_SECONDS (290);
# GPU_CHECK_TESTS=0 skips the whole suite.
set -uo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data/mnist}
out=${2:-${OUT:-gpu-check}}
mkdir -p "$out"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/card.txt"
else
    echo "no nvidia-smi: no GPU here" | tee "$out/card.txt"
fi
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/card.txt"

bench=(--quick --json "$out/gpu.json")
[ -f "$data/train-images-idx3-ubyte.gz" ] && bench+=(--data-dir "$data")
timeout -k 15 "${GPU_CHECK_BENCH_SECONDS:-200}" python benchmarks/gpu.py "${bench[@]}" 2>&1 | tee "$out/gpu.log"
echo "benchmarks/gpu.py exit: ${PIPESTATUS[0]}" | tee -a "$out/gpu.log"

# The tests written for a GPU first (skipped without CUDA, so never run in CI).
timeout -k 15 "${GPU_CHECK_CUDA_SECONDS:-50}" python -m pytest -v -rfEs -p no:cacheprovider \
    -k "cuda" tests/test_engines.py tests/test_api.py >"$out/cuda-tests.log" 2>&1
echo "pytest (CUDA tests) exit: $?" >>"$out/cuda-tests.log"
tail -15 "$out/cuda-tests.log"

if [ "${GPU_CHECK_TESTS:-1}" != 0 ]; then
    timeout -k 15 "${GPU_CHECK_TEST_SECONDS:-290}" python -m pytest -v -rfE -p no:cacheprovider \
        >"$out/tests.log" 2>&1
    echo "pytest exit: $? (124 or 137: cut off by the time limit)" >>"$out/tests.log"
    grep -E "FAILED|ERROR" "$out/tests.log" | head -40
    tail -5 "$out/tests.log"
fi
