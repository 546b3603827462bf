#!/usr/bin/env bash
# One call on a CUDA machine: the CUDA tests, the benchmark (regularizer cost incl. the
# finite-difference and lazy rows, engine vs. loop / split loop / torch.func, FrobReg batched
# vs. loop), and real ensemble trainings against the brief's GPU targets (paper Table 1 in at
# most 60 s of device time; the engine at least 50x the eager one-run loop). Everything is
# written under $OUT.
#
# Needs: a CUDA GPU with torch (>= 2.1) and numpy/scipy/matplotlib/tqdm; the repository as
# the working directory (run from source, PYTHONPATH=src; nothing is installed); MNIST in the
# official IDX files under $GRADREG_DATA_DIR/mnist (default: ./.data; copy the four
# *-ubyte.gz files there first when the machine has no internet). pytest is optional: a machine
# without it (and without internet) can take it from ./.device-deps, made here beforehand with
# `pip install --target .device-deps pytest` and carried along with .data.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PWD:+:$PWD/.device-deps}
export GRADREG_DATA_DIR="${GRADREG_DATA_DIR:-$PWD/.data}"
OUT="${OUT:-/tmp/gradreg-device}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/torch.txt"
# 1. the tests that have CUDA variants (skipped where pytest is absent)
python3 -m pytest -q tests/test_penalties.py tests/test_engine.py tests/test_finite_difference.py tests/test_amp.py tests/test_dropin.py > "$OUT/pytest.txt" 2>&1 || true
# 2. the benchmark, side by side, interleaved medians
timeout 300 python3 -m gradreg.cli bench --device cuda --json "$OUT/bench_cuda.json" > "$OUT/bench_cuda.txt" 2>&1
# 3. real ensemble trainings: SIN Table 7 and paper-profile Table 1, timed by the command
( time timeout 120 python3 -m gradreg.cli run table7 --profile paper --device cuda --out "$OUT/table7" --quiet --no-records ) > "$OUT/table7.txt" 2>&1
[ -d "$GRADREG_DATA_DIR/mnist" ] && ( time timeout 240 python3 -m gradreg.cli run table1 --profile published --device cuda --out "$OUT/table1" --quiet --no-records ) > "$OUT/table1.txt" 2>&1
tail -n 8 "$OUT"/*.txt
