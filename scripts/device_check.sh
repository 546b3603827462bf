#!/usr/bin/env bash
# One call on a lent GPU machine (see /work/.library/device/README.md): CUDA tests, the
# benchmark, and short real ensemble trainings, all written under $OUT.
# The GPU machine has torch but no internet: run from source, and carry the MNIST files, e.g.
#   mkdir -p .data && cp -r ../shared/data/mnist .data/   (then carry ".data")
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src
export GRADREG_DATA_DIR="${GRADREG_DATA_DIR:-$PWD/.data}"
OUT="${OUT:-/tmp/gradreg-device}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/torch.txt"
# 1. every test, CUDA ones included (no pytest on the device: skip if absent)
python3 -m pytest -q tests/test_penalties.py tests/test_engine.py > "$OUT/pytest.txt" 2>&1 || true
# 2. the benchmark: regularizer cost, batched vs loop FrobReg/JacReg, ensemble speed, Table 1 projection
timeout 240 python3 -m gradreg.cli bench --device cuda --json "$OUT/bench_cuda.json" > "$OUT/bench_cuda.txt" 2>&1
# 3. short real ensemble trainings on the GPU
timeout 120 python3 -m gradreg.cli run table7 --profile paper --device cuda --out "$OUT/table7" --quiet > "$OUT/table7.txt" 2>&1
[ -d "$GRADREG_DATA_DIR/mnist" ] && timeout 200 python3 -m gradreg.cli run table1 --profile paper --device cuda --out "$OUT/table1" --quiet > "$OUT/table1.txt" 2>&1
tail -n 5 "$OUT"/*.txt
