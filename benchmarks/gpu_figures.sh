#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md in one time-boxed run, for a lent GPU machine.
#
#   bash benchmarks/gpu_figures.sh REFERENCE_CHECKOUT OUT_DIR [SECONDS]
#
# REFERENCE_CHECKOUT: a checkout of TIML-Group/Mode-Connectivity-Unlearning (never committed
# here). OUT_DIR receives one JSON record and one log per benchmark, plus nvidia-smi's view.
# SECONDS (default 540) bounds the whole run; each step gets what the earlier ones left, in
# RESULTS.md's priority order, and a step without enough time left is skipped and says so.
# The exit status is that of the last step that failed (124: it ran out of time), else 0.
set -uo pipefail
usage="usage: gpu_figures.sh REFERENCE_CHECKOUT OUT_DIR [SECONDS]"
REF=$(realpath "${1:?$usage}")
OUT=$(realpath -m "${2:?$usage}")
BUDGET=${3:-540}
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "SECONDS must be a whole number, got '$BUDGET'" >&2; exit 2; }
[[ -d $REF ]] || { echo "no reference checkout at $REF" >&2; exit 2; }
cd "$(dirname "$0")/.."
START=$(date +%s)
STATUS=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT"

left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME MIN_SECONDS RESERVE_SECONDS COMMAND...: runs COMMAND with a timeout of what is left
# minus RESERVE (time kept for later steps), when at least MIN_SECONDS remain for it.
step() {
  local name=$1 need=$2 reserve=$3
  shift 3
  local limit=$(($(left) - reserve))
  if ((limit < need)); then
    echo "== $name: skipped: ${limit}s would be left for it (it needs ${need}s)" \
      | tee -a "$OUT/summary.log"
    return
  fi
  echo "== $name (timeout ${limit}s): $*" | tee -a "$OUT/summary.log"
  timeout -k 15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local status=${PIPESTATUS[0]}
  ((status == 0)) || STATUS=$status
  echo "== $name: exit $status after $(($(date +%s) - START))s" | tee -a "$OUT/summary.log"
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
python3 -c 'import jax, torch; print(jax.__version__, jax.devices(), torch.__version__)' \
  2>&1 | tee "$OUT/versions.txt"

# 1. headline: curve vs reference, curve vs plain, fp32 and bf16 (+ training check).
step step_throughput 120 200 python3 benchmarks/step_throughput.py --model preresnet110 \
  --batch-size 128 --steps 50 --warmup 5 --precision fp32,bf16 --reference "$REF" \
  --out "$OUT/step_throughput.json"
# 2. end to end, shortened (2 epochs, 5 points); per-part ratios stay meaningful.
step end_to_end_short 150 20 python3 benchmarks/end_to_end.py --epochs 2 --points 5 \
  --reference "$REF" --out "$OUT/end_to_end_short.json"
# 3. larger per-device batches, curve step only, fp32 and bf16.
step step_batch512 60 0 python3 benchmarks/step_throughput.py --model preresnet110 \
  --batch-size 512 --steps 20 --warmup 3 --precision fp32,bf16 --skip-plain \
  --out "$OUT/step_batch512.json"
echo "total $(($(date +%s) - START))s" | tee -a "$OUT/summary.log"
exit "$STATUS"
