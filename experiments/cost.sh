#!/usr/bin/env bash
# What adapting every BN layer costs, and what the ways to make it cheaper change (the issue on adaptation
# cost), on the CPU with the default checkpoint. A part whose JSON exists is skipped unless FORCE=1 (as
# experiments/common.sh says).
#   model      `bench model` on the torch, compiled and onnx engines at batch 1, 8 and 32: the frozen model,
#              `auto` (12 layers), all-layer auto without and with label calibration, and all-layer auto
#              (with lc) with its frame statistics taken from
#              every 2nd and every 4th pixel and row                  -> experiments/results/cost-model.{json,md}
#              and `ema(m=0.1)` (all layers) against the same with a one-frame lag folded into the
#              convolutions, with and without strided statistics
#   accuracy   what those strides change in mIoU, every protocol stream whole
#                                                                      -> experiments/results/cost-stride.{json,md}
#   lag        what the lag changes in mIoU, at the EMA momenta it is allowed (m <= 0.25), every stream whole
#                                                                      -> experiments/results/cost-lag.{json,md}
#
#   experiments/cost.sh [PART ...]      parts: model accuracy lag (all, in that order, without arguments)
set -uo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
NO_LC="auto(m=1,floor=0.2,switch=2,layers=0)"
ALL_LAYERS="$NO_LC+lc"
STRIDED="$ALL_LAYERS auto(m=1,floor=0.2,switch=2,layers=0,stride=2)+lc auto(m=1,floor=0.2,switch=2,layers=0,stride=4)+lc"
LAGGED="ema(m=0.1) ema(m=0.1,lag=1) ema(m=0.1,lag=1,stride=4)"
parts=${*:-model accuracy lag}

for part in $parts; do
    echo "== $part ($(date +%H:%M:%S))"
    case $part in
    model) done_already $R/cost-model.json || $D bench model --engines torch compiled onnx --batches 1 8 32 --steps 10 \
        --methods source auto "$NO_LC" $STRIDED $LAGGED --out $R/cost-model.json ;;
    accuracy) accuracy_part $R/cost-stride.json "" source auto $STRIDED ;;
    lag) accuracy_part $R/cost-lag.json "" source $LAGGED "ema(m=0.25)" "ema(m=0.25,lag=1)" ;;
    *) echo "unknown part $part (model accuracy lag)"; exit 2 ;;
    esac
done
echo "== done ($(date +%H:%M:%S))"
