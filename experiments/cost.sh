#!/usr/bin/env bash
# What adapting every BN layer costs, and what the ways to make it cheaper change (the issue on adaptation
# cost), on the CPU with the default checkpoint. A part whose JSON exists is skipped unless FORCE=1 (as
# experiments/common.sh says).
#   model      `bench model` at batch 1, 8 and 32, one process per engine (torch, compiled, onnx: all three in
#              one outgrew the 24 GiB): the frozen model, the 12-layer auto, all-layer auto without and with
#              label calibration, all-layer auto (with lc) with its frame statistics from every 4th pixel and
#              row, all-layer auto with lc on the classifier's own grid (stride 0), and `ema(m=0.1)` (all
#              layers) without and with a one-frame lag folded into the convolutions
#                                                                      -> experiments/results/cost-model-ENGINE.{json,md}
#   accuracy   what those strides change in mIoU, every protocol stream whole
#                                                                      -> experiments/results/cost-stride.{json,md}
#   lag        what the lag changes in mIoU, at the EMA momenta it is allowed (m <= 0.25), every stream whole
#                                                                      -> experiments/results/cost-lag.{json,md}
#   lc         label calibration on a coarser grid (its stride, 2 by default; the network's logits come from a
#              grid 8x coarser, which stride 0 takes as they are): what it changes in mIoU, every stream whole, for
#              the all-layer auto before its stream reach and for the recommended one
#                                                                      -> experiments/results/cost-lc.{json,md}
#              and in cost on compiled at batch 1 and 8        -> experiments/results/cost-lc-compiled.{json,md}
#   pool       each of the frozen model, the 12-layer auto and the all-layer auto without and with lc, with its streams'
#              states stacked by the pipeline and kept in a device pool (adapters/pool.py), torch and compiled,
#              batch 1, 8 and 32, one process per engine      -> experiments/results/cost-pool-ENGINE.{json,md}
#   recommended the recommended `auto` as of its stream reach (written out, so that the row keeps its meaning), with lc
#              at its default stride and on the classifier's grid (stride 0), on compiled at batch 1 and 8
#                                                                      -> experiments/results/cost-recommended-compiled.{json,md}
#
#   floor      the least any adaptation of every BN layer costs in eager and on onnx, batch 1 and 8: the frozen
#              model with only the passes over the activations that the statistics need (their mean; both
#              moments; and the normalisation by them), none of a method's arithmetic (experiments/cost_floor.py;
#              not on compiled, where inductor runs that construction slower than the adapted network itself)
#                                                                      -> experiments/results/cost-floor-ENGINE.{json,md}
#
#   experiments/cost.sh [PART ...]      parts: model accuracy lag lc pool recommended floor (all, in that order, without
#                                       arguments)
set -uo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
NO_LC="auto(m=1,floor=0.2,switch=2,layers=0)"
ALL_LAYERS="$NO_LC+lc"
STRIDE4="auto(m=1,floor=0.2,switch=2,layers=0,stride=4)+lc"
STRIDED="$ALL_LAYERS auto(m=1,floor=0.2,switch=2,layers=0,stride=2)+lc $STRIDE4"
LAGGED="ema(m=0.1) ema(m=0.1,lag=1)"
LC0="$NO_LC+lc(stride=0)"
TWELVE="auto(m=1,floor=0.2,switch=2,layers=12)+lc"  # `auto` until every layer was adapted
LC_STRIDES="$ALL_LAYERS $NO_LC+lc(stride=4) $NO_LC+lc(stride=8) $LC0"
REACH="auto(m=1,floor=0.8,far=8,low=0.5,reach=1,switch=2,layers=0)"
parts=${*:-model accuracy lag lc pool recommended floor}

for part in $parts; do
    echo "== $part ($(date +%H:%M:%S))"
    case $part in
    model) for engine in torch compiled onnx; do
        # onnx without the lag, which the export runs unfolded (as `ema`): eight onnxruntime sessions at batch 32
        # outgrew the 24 GiB
        methods=(source "$TWELVE" "$NO_LC" "$ALL_LAYERS" "$STRIDE4" "$LC0" $LAGGED)
        [ $engine = onnx ] && unset 'methods[-1]'
        done_already $R/cost-model-$engine.json || $D bench model --engines $engine --batches 1 8 32 --steps 10 \
            --methods "${methods[@]}" --out $R/cost-model-$engine.json
    done ;;
    accuracy) accuracy_part $R/cost-stride.json "" source auto $STRIDED ;;
    lag) accuracy_part $R/cost-lag.json "" source $LAGGED "ema(m=0.1,lag=1,stride=4)" "ema(m=0.25)" "ema(m=0.25,lag=1)" ;;
    lc) accuracy_part $R/cost-lc.json "" source "$NO_LC" $LC_STRIDES "$REACH+lc" "$REACH+lc(stride=0)"
        done_already $R/cost-lc-compiled.json || $D bench model --engines compiled --batches 1 8 --steps 10 \
            --methods source "$NO_LC" $LC_STRIDES --out $R/cost-lc-compiled.json ;;
    pool) for engine in torch compiled; do
        done_already $R/cost-pool-$engine.json || $D bench model --engines $engine --pool --batches 1 8 32 --steps 10 \
            --methods source "$TWELVE" "$NO_LC" "$ALL_LAYERS" --out $R/cost-pool-$engine.json
    done ;;
    recommended) done_already $R/cost-recommended-compiled.json || $D bench model --engines compiled --batches 1 8 \
        --steps 10 --methods source "$REACH+lc" "$REACH+lc(stride=0)" --out $R/cost-recommended-compiled.json ;;
    floor) for engine in torch onnx; do
        done_already $R/cost-floor-$engine.json || ${PY:-.venv/bin/python} experiments/cost_floor.py --engine $engine \
            --out $R/cost-floor-$engine.json
    done ;;
    *) echo "unknown part $part (model accuracy lag lc pool recommended floor)"; exit 2 ;;
    esac
done
echo "== done ($(date +%H:%M:%S))"
