#!/usr/bin/env bash
# The evidence committed in results/: every experiment this CPU can afford, at the
# `published` profile (the paper's steps and settings, lambda fixed at the published choice).
# Restartable: finished runs are in results/records/runs.jsonl (imported on start), running
# chunks are checkpointed in results/checkpoints/, so rerunning this script, on this machine
# or a fresh one, trains only what is missing.
#   usage: scripts/evidence.sh [experiment ...]     (default: all of them, cheapest first)
#   GRADREG_RUN_ARGS: more `gradreg run` options, e.g. "--executor ray --max-members 1" to train
#   one run per core (a run's result is the same either way).
# Committing records mid-experiment? Run `gradreg index --out results --readme README.md` first:
# tests/test_index.py checks that README's headline table is what the committed records give.
set -euo pipefail
cd "$(dirname "$0")/.."
GRADREG=${GRADREG:-.venv/bin/gradreg}
if [ -z "${GRADREG_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  GRADREG_DATA_DIR="$(cd ../shared/data && pwd)"  # the datasets beside the checkout
  export GRADREG_DATA_DIR
fi
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(table7 fig5 fig6 sin2 table1 table2 table4 fastgr_sin fig4 fig2 fig2_lambda fastgr hidden)
fi
for name in "${names[@]}"; do
  echo "== $name $(date -u +%FT%TZ)"
  "$GRADREG" run "$name" --profile published --out results --quiet ${GRADREG_RUN_ARGS:-}
  "$GRADREG" index --out results --readme README.md  # the index and README's headline table
done
echo "== done $(date -u +%FT%TZ)"
