#!/usr/bin/env bash
# GPU benchmark of mtl-litmus (issue 10): step time per method on NYUv2-sized dense inputs and on CelebA's
# 40 tasks, fp32 vs bf16 autocast, and how many fractional-GPU trials fit on one GPU.
#
#   bash benchmarks/gpu.sh            # on a GPU machine: < 8 minutes (budget 420 s of measurements + start-up)
#   bash benchmarks/gpu.sh --smoke    # tiny shapes on CPU: checks that the script runs (~30 s)
#
# Extra arguments go to benchmarks/gpu_bench.py (see its --help). Results: printed, and written to
# $OUT/gpu_bench.md when OUT is set (else benchmarks/gpu_results.md).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/.."
python="${PYTHON:-python}"
out="${OUT:-$here}/gpu_bench.md"
if [ "${OUT:-}" = "" ]; then out="$here/gpu_results.md"; fi
if [ "${1:-}" != "--smoke" ]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
fi
exec timeout 470 "$python" benchmarks/gpu_bench.py --out "$out" "$@"
