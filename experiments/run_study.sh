#!/bin/sh
# The whole study in the background-friendly form used for experiments/results/: the main table
# and, beside it, the ablations (which wait for each (scenario, seed)'s RL cell of the main
# table instead of making it); then the mask timing check and the final tables. Every step
# skips finished cells, so rerunning this script continues an interrupted study.
# Usage: sh experiments/run_study.sh [experiments/configs/<study>.yaml]
set -e
cd "$(dirname "$0")/.."
CONFIG=${1:-experiments/configs/fashion_mnist.yaml}
NAME=$(basename "$CONFIG" .yaml)
mkdir -p experiments/runs
LOG=experiments/runs/$NAME
echo "study $CONFIG started $(date -u +%FT%TZ)" >> "$LOG.log"
python3 experiments/main_table.py --config "$CONFIG" >> "$LOG.log" 2>&1 &
MAIN=$!
python3 experiments/ablations.py --config "$CONFIG" --follow 14400 >> "$LOG.ablations.log" 2>&1 || true
wait $MAIN
python3 experiments/ablations.py --config "$CONFIG" --time-mask >> "$LOG.ablations.log" 2>&1
python3 experiments/main_table.py --config "$CONFIG" --report-only >> "$LOG.log" 2>&1
echo "study $CONFIG finished $(date -u +%FT%TZ)" >> "$LOG.log"
