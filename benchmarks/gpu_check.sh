#!/usr/bin/env bash
# Every GPU check bnflow owes, in one call on a GPU machine (device tool: run from the repo root; $OUT comes back).
# Needs only torch, numpy, pandas, scipy, pillow, pyyaml, matplotlib and pytest there (no snakemake, no dvc):
#   PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh
# 1. the GPU-marked tests (CUDA-graph step == eager step; noise on CUDA generators; benchmark sanity);
# 2. the probes' fp32-vs-float64 check with TF32 on around them (tests/test_probes.py and tests/test_curvature.py);
# 3. the training benchmark, recorded with device, date and commit (append $OUT/RESULTS.md to benchmarks/RESULTS.md).
set -uo pipefail
OUT=${OUT:-/tmp/bnflow-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_train.py tests/test_norms.py tests/test_benchmarks.py \
  2>&1 | tee "$OUT/gpu_tests.log"
python3 -m pytest -q -p no:cacheprovider tests/test_probes.py tests/test_curvature.py 2>&1 | tee "$OUT/probe_tests.log"
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
python3 benchmarks/bench_train.py --device cuda --record "$OUT/RESULTS.md" --json "$OUT/bench.json" \
  2>&1 | tee "$OUT/bench.log"
