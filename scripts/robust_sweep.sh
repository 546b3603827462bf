#!/usr/bin/env bash
# The robustness evidence and Table 6, in the order that shares the most: `robust` first (its
# unregularized runs are the transfer attack's surrogates), then Table 6, then the trade-off.
# Restartable like scripts/evidence.sh, which it calls.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/evidence.sh robust table6 robust_tradeoff
