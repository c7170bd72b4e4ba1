#!/usr/bin/env bash
# Every GPU check bnflow owes, in one call on a GPU machine (device tool: run from the repo root; $OUT comes back).
# Needs only torch, numpy, pandas, scipy, pillow, pyyaml, matplotlib and pytest there (no snakemake, no dvc):
#   PYTHONUNBUFFERED=1 bash benchmarks/gpu_check.sh
# 1. the GPU-marked tests: CUDA-graph step == eager step, noise on CUDA generators, benchmark sanity, and the probes
#    on the GPU (fp32, TF32 switched on around them) against a float64 CPU reference;
# 2. the training benchmark and the probe-step cost per checkpoint, recorded with device, date and commit
#    (copy $OUT/RESULTS.md over benchmarks/RESULTS.md).
set -uo pipefail
OUT=${OUT:-/tmp/bnflow-gpu-check}
mkdir -p "$OUT"
export PYTHONPATH=.
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_train.py tests/test_norms.py tests/test_benchmarks.py \
  tests/test_probe_step.py tests/test_packed.py 2>&1 | tee "$OUT/gpu_tests.log"
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
python3 benchmarks/bench_train.py --device cuda --record "$OUT/RESULTS.md" --json "$OUT/bench.json" \
  2>&1 | tee "$OUT/bench.log"
python3 benchmarks/bench_probe_step.py --device cuda --record "$OUT/RESULTS.md" 2>&1 | tee "$OUT/bench_probe.log"
