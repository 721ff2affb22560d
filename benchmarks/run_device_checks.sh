#!/usr/bin/env bash
# The checks that need a machine this workplace lends only now and then (a CUDA GPU, and
# whatever CPU it has), as one script that fits one call of ten minutes:
#
#   benchmarks/run_device_checks.sh OUT_DIR
#
# 1. the machine: CPU model and vendor, GPU, torch and CUDA versions;
# 2. `manntk bench --preset paper-table4 --device cuda`, bfloat16 and float32 (ARMIN 500
#    N=5 B384 T50 against cuDNN's torch.nn.LSTM 1000 B128 T100; the paper's ratio is 1.38);
#    without the torch.compile case, whose compilation alone takes minutes;
# 3. the CUDA tests (`pytest -m cuda`: CPU/CUDA parity of every composition, compiled
#    layers on CUDA, the testing kit);
# 4. on an Intel CPU only: the README's test suite, timed on two cores with the GPU
#    hidden (as on CI; torch is the machine's, not the README's pinned one), and the ARMIN-vs-LSTM training ratio of `cpu-targets` at 1 and 2
#    threads.
#
# Seen on 2026-12-04 (one H200, Intel Xeon host, torch 2.11.0+cu130 built with GCC 13.3):
# paper-table4 ran (benchmarks/results/INDEX.md); 2 of the CUDA tests failed (Inductor's
# backward of armin-soft and armin-hard-squashed-ln in float64 multiplies a float32 tensor,
# "expected scalar type Float but found Double"); and any exception thrown by a C++
# extension's operator killed the process with a segmentation fault there, also for a
# three-line extension built without manntk's flags, so the two tests that expect a
# kernel's shape error crash the suite. The suite therefore runs in one pytest-xdist
# worker (-n 1: a crash fails its test and a new worker goes on).
#
# Every step has its own time limit, and its output goes to OUT_DIR/<step>.log, so that a
# step cut short still leaves the others' results. Offline: the packages the machine
# lacks are installed from wheels in .whl/ (cattrs, latex2mathml, attrs, typing_extensions;
# benchmarks/README.md says how they were fetched).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: benchmarks/run_device_checks.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run COMMAND with a time limit, its output to NAME.log
    local name=$1 seconds=$2
    shift 2
    echo "== $name (limit ${seconds}s)"
    local start=$SECONDS
    timeout "$seconds" "$@" >"$out/$name.log" 2>&1
    local status=$?
    echo "== $name: exit $status after $((SECONDS - start))s"
    tail -n 30 "$out/$name.log"
}

{ lscpu | grep -E "Model name|Vendor ID|^CPU\(s\)"; nvidia-smi -L; } | tee "$out/machine.txt"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1
python3 -c "import torch, manntk; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name())" | tee -a "$out/machine.txt"

table4="--preset paper-table4 --device cuda --models armin,armin-fused,lstm,torch-lstm"
step gpu-bf16 110 manntk bench $table4 --dtype bfloat16 --json "$out/paper-table4-cuda-bf16.json"
step gpu-fp32 110 manntk bench $table4 --dtype float32 --json "$out/paper-table4-cuda-fp32.json"
step cuda-tests 120 python3 -m pytest -q -m cuda -p no:cacheprovider tests

if grep -qi "GenuineIntel" "$out/machine.txt"; then
    step intel-suite 300 env CUDA_VISIBLE_DEVICES= taskset -c 0,1 python3 -m pytest -q -p no:cacheprovider -n 1
    step intel-cpu 100 env CUDA_VISIBLE_DEVICES= taskset -c 0,1 bash -c 'for threads in 1 2; do
        manntk bench --preset cpu-targets --device cpu --models armin,armin-fused,torch-lstm --threads $threads --repeats 3 --no-memory
    done'
fi
