#!/usr/bin/env bash
# The robustness evidence, Table 6 and Figure 2's JacReg curve, in the order that shares the most:
# `robust` first (its unregularized runs are the transfer attack's surrogates), then Table 6 (its
# runs are robust's FrobReg and JacReg), Figure 2 (JacReg at 2000 points is Table 6's), the trade-off.
# Both cores: GRADREG_RUN_ARGS="--executor ray --max-members 1" scripts/robust_sweep.sh
# Restartable like scripts/evidence.sh, which it calls.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/evidence.sh robust table6 fig2 robust_tradeoff
