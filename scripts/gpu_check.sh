#!/usr/bin/env bash
# Every GPU check in one run, for the device machine (see the device tool's README): real-size
# pipeline timings and memory, the masker on CUDA, the preview cost against a UNet step, the `gpu`
# tests. Results land in $OUT.
#
# The device image has torch but not diffusers. Prepare the wheels once, here, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl diffusers importlib_metadata
# then run this script on the device with `carry: [".whl"]` and a timeout of about 540 s.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
nvidia-smi | tee "$OUT/nvidia-smi.txt"
step() {  # name, command...: run one check, keep its output, go on if it fails
  local name=$1; shift
  echo "== $name: $*"
  timeout 240 "$@" 2>&1 | tee "$OUT/$name.txt"
}
step pipeline_fp16 python3 scripts/benchmark.py --random-real-size --runs 3 --warmup 1
step pipeline_fp16_channels_last python3 scripts/benchmark.py --random-real-size --runs 3 \
  --warmup 1 --channels-last
step masker_cuda python3 scripts/benchmark_masker.py --device cuda --repeats 5
step previews_cuda python3 scripts/benchmark_previews.py --device cuda
# Upload once, try many (README): a try-on of a stored person whose mask is kept skips the whole
# masker call, so the masker's 768x1024 "whole call" time above is the saving per reuse on CUDA
# (read from its output: no second masker run on the device's limited time).
step images_masker_skip_saving sed -n 's/^ *whole call: median \([0-9.]*\) s.*/masker skipped per reuse at 768x1024 on CUDA: \1 s/p' "$OUT/masker_cuda.txt"
step pytest_gpu python3 -m pytest -q -m gpu tests/catvton -p no:cacheprovider
