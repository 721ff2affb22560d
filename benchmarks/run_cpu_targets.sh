#!/usr/bin/env bash
# Run the cpu-targets preset (the issue's CPU targets) and keep its JSON report.
#
#   benchmarks/run_cpu_targets.sh [extra manntk bench options, e.g. --repeats 7]
#
# Writes benchmarks/results/cpu-targets-<host>-<UTC timestamp>.json and prints the table
# (with the PASS/FAIL target lines). Run it on an otherwise idle machine when you can: the
# ratios hold under load (interleaved repeats), the absolute rates do not.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .venv/bin/activate ] && [ -z "${VIRTUAL_ENV:-}" ]; then
    . .venv/bin/activate
fi
mkdir -p benchmarks/results
out="benchmarks/results/cpu-targets-$(hostname -s 2>/dev/null || echo host)-$(date -u +%Y%m%dT%H%M%SZ).json"
manntk bench --preset cpu-targets --device cpu --dtype float32 --json "$out" "$@"
echo "JSON: $out"
