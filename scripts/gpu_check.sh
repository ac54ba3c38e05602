#!/usr/bin/env bash
# Everything a session lent a GPU machine checks, as one command (about 8 minutes on one H100):
# the figures of `benchmarks/gpu.py --quick` (seed-mlp's captured step, LeNet captured and not,
# TF32, the speedrun over five seeds), then the whole test suite with CUDA visible.
#
#   bash scripts/gpu_check.sh [DATA_DIR] [OUT_DIR]
#
# DATA_DIR holds full MNIST's four IDX files (default ../shared/data/mnist; the bundled sample
# when there is none). A GPU machine gets only the repository: copy the files into a folder
# that .git/info/exclude ignores and carry it, e.g. `.gpu-data/mnist`. OUT_DIR (default $OUT,
# else gpu-check) receives card.txt, gpu.json, gpu.log and tests.log.
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
timeout "${GPU_CHECK_BENCH_SECONDS:-300}" python benchmarks/gpu.py "${bench[@]}" 2>&1 | tee "$out/gpu.log"
echo "benchmarks/gpu.py exit: ${PIPESTATUS[0]}" | tee -a "$out/gpu.log"

if [ "${GPU_CHECK_TESTS:-1}" != 0 ]; then
    timeout "${GPU_CHECK_TEST_SECONDS:-420}" python -m pytest -q -rfE -p no:cacheprovider \
        >"$out/tests.log" 2>&1
    echo "pytest exit: $?" >>"$out/tests.log"
    tail -40 "$out/tests.log"
fi
