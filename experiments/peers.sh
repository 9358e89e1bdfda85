#!/usr/bin/env bash
# The published peers beside the project's methods, on the CPU, at budgets a 2-core machine affords
# at the 360x480 checkpoint: DUA runs 17 forwards a frame and CoTTA ~30 (39x and 49x the frozen model in
# speed-peers.md), so those two set the budget. With one thread, beside a training job, the whole script
# took 87 minutes (peers 34, continual10 41, instance 8; proto 3 more); UPDATE (below) reruns one method's
# rows in a few minutes. FRAMES, ROUND_FRAMES and SPEED_FRAMES override the budgets.
#   peers         every protocol stream x every method, the first $FRAMES frames of each stream (of each
#                 segment of `continual`)                                    -> experiments/results/peers.{json,md}
#   continual10   the continual segments 10 rounds without reset, $ROUND_FRAMES frames a segment, the
#                 methods that keep state across frames (and source)         -> experiments/results/continual10.{json,md,png}
#   speed         per-frame cost of every method on `day`, round robin       -> experiments/results/speed-peers.{json,md}
#   variance      why norm_alpha beats auto on snow and noise: linear vs mixture variance, per frame vs EMA
#                                                                            -> experiments/results/peers-variance.{json,md}
#   instance      auto (each frame's own statistics, m=1: DIGA's instance-level lesson) against the EMA
#                 over frames it replaced (m=0.1) and against all BN layers, on the whole streams
#                                                                            -> experiments/results/auto-instance.{json,md}
#   proto         auto with DIGA's prototype output in place of label calibration, on 12 and on all BN
#                 layers, the first $FRAMES frames as `peers`               -> experiments/results/auto-proto.{json,md}
#   realtime12    the standard and the real-time protocol (`bench accuracy --realtime`, Alfarra et al. 2024) side
#                 by side, the first $FRAMES frames as `peers`, every method but dua and cotta (40-50x the frozen
#                 model: under the real-time protocol they adapt on the first frame of a stream and on none after,
#                 and their other frames still cost their full step here)  -> experiments/results/realtime-12.{json,md}
#   realtime      the same on the whole streams, for the backprop-free peers that keep or mix statistics (ptbn, diga,
#                 adamixbn, unmixtns; rdumb resets only on the long streams: continual10)
#                                                                            -> experiments/results/realtime.{json,md}
#   layers        why re-estimating statistics loses on natural drift: auto adapting the first 1, 3, 6, 12 and all
#                 BN layers on the whole dusk and day streams               -> experiments/results/auto-layers.{json,md}
#   floor         how much of the source statistics the all-layer auto must keep for dusk to hold: its alpha
#                 floored at 0.2 (every layer free to follow the frame), 0.5, 0.6, 0.7 and 0.8, beside source,
#                 diga, auto, the 12-layer auto it replaced and that at floor 0.8, the whole streams, both protocols
#                                                                            -> experiments/results/auto-floor.{json,md}
#   far           where the floor falls: auto's alpha floor held at 0.8 up to a shift of `far` tau and falling to `low`
#                 at twice it (auto.AlphaCurve), `far` and `low` around auto's (8, 0.5), beside source, diga and the
#                 floor that never falls, the whole streams, the standard protocol
#                                                                            -> experiments/results/auto-far.{json,md}
#   layershift    how far each stream moves each BN layer under auto (experiments/layer_shift.py)
#                                                                            -> experiments/results/layer-shift.{json,md,png}
#   reach         the floor falling with the stream's reach (its largest layer shift) as well as the layer's own: auto
#                 (reach=1) beside the same without it, with low 0.35, and without it at floor 0.7 (a lower floor in every
#                 stream instead), source and diga, the whole streams, both protocols
#                                                                            -> experiments/results/auto-reach.{json,md}
# A part whose JSON exists already is skipped unless FORCE=1; UPDATE="METHOD ..." reruns only those methods
# of the accuracy parts (all but speed) into their JSON, as experiments/common.sh says.
#
#   experiments/peers.sh [PART ...]       parts: peers continual10 speed variance instance proto realtime12 realtime
#                                   layers floor far layershift reach (all, in that order, without arguments)
set -uo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
FRAMES=${FRAMES:-12}
ROUND_FRAMES=${ROUND_FRAMES:-4}
SPEED_FRAMES=${SPEED_FRAMES:-20}
METHODS="source ptbn tent diga dua lame norm_alpha rbn cotta adamixbn unmixtns auto"
# `auto` written out (inside a spec it is the component), as it was before reach=1: the tables keep its rows
RDUMB_AUTO="rdumb+auto(m=1,floor=0.8,far=8,low=0.5,switch=2,layers=0)+lc"
STATEFUL="source ptbn tent diga dua rbn cotta adamixbn unmixtns $RDUMB_AUTO auto"  # lame and norm_alpha keep nothing
REALTIME_WHOLE="source ptbn diga adamixbn unmixtns auto"  # the backprop-free peers that keep or mix statistics
parts=${*:-peers continual10 speed variance instance proto realtime12 realtime layers floor far layershift reach}

for part in $parts; do
    echo "== $part ($(date +%H:%M:%S))"
    case $part in
    peers) accuracy_part $R/peers.json "--max-frames $FRAMES" $METHODS ;;
    continual10) accuracy_part $R/continual10.json "--streams continual10 --max-frames $ROUND_FRAMES" $STATEFUL
        [ -f $R/continual10-continual10-rounds.png ] && mv $R/continual10-continual10-rounds.png $R/continual10.png ;;
    speed) done_already $R/speed-peers.json || $D bench speed --frames "$SPEED_FRAMES" --warmup 2 \
        --methods $METHODS --out $R/speed-peers.json ;;
    variance) accuracy_part $R/peers-variance.json "--streams day snow gaussian_noise dusk --max-frames $FRAMES" \
        norm_alpha "ema(m=1,alpha=0.9)" "ema(m=0.1,alpha=0.9)" "auto(m=0.1,floor=0.2,switch=2,layers=12)" auto ;;
    instance) accuracy_part $R/auto-instance.json "" auto "auto(m=0.1,floor=0.2,switch=2,layers=12)+lc" \
        "auto(m=1,floor=0.2)+lc" ;;
    proto) accuracy_part $R/auto-proto.json "--max-frames $FRAMES" auto "auto(m=1,floor=0.2,switch=2,layers=12)+proto" \
        "auto(m=1,floor=0.2)+lc" "auto(m=1,floor=0.2)+proto" ;;
    realtime12) accuracy_part $R/realtime-12.json "--realtime --max-frames $FRAMES" source ptbn tent diga lame norm_alpha \
        rbn adamixbn unmixtns "$RDUMB_AUTO" auto ;;
    realtime) accuracy_part $R/realtime.json "--realtime" $REALTIME_WHOLE ;;
    layers) accuracy_part $R/auto-layers.json "--streams day dusk" source \
        $(for n in 1 3 6 12 0; do echo "auto(m=1,floor=0.2,switch=2,layers=$n)+lc"; done) ;;
    floor) accuracy_part $R/auto-floor.json "--realtime" source diga auto "auto(m=1,floor=0.2,switch=2,layers=12)+lc" \
        "auto(m=1,floor=0.8,switch=2,layers=12)+lc" \
        $(for f in 0.2 0.5 0.6 0.7 0.8; do echo "auto(m=1,floor=$f,switch=2,layers=0)+lc"; done) ;;
    far) accuracy_part $R/auto-far.json "" source diga auto "auto(m=1,floor=0.8,switch=2,layers=0)+lc" \
        $(for fl in 4,0.5 6,0.35 8,0.2 8,0.65 12,0.4; do echo "auto(m=1,floor=0.8,far=${fl%,*},low=${fl#*,},switch=2,layers=0)+lc"; done) ;;
    layershift) done_already $R/layer-shift.json || ${PY:-.venv/bin/python} experiments/layer_shift.py --out $R/layer-shift.json ;;
    reach) accuracy_part $R/auto-reach.json "--realtime" source diga auto "auto(m=1,floor=0.8,far=8,low=0.5,switch=2,layers=0)+lc" \
        "auto(m=1,floor=0.8,far=8,low=0.35,reach=1,switch=2,layers=0)+lc" "auto(m=1,floor=0.7,far=8,low=0.5,switch=2,layers=0)+lc" ;;
    *) echo "unknown part $part (peers continual10 speed variance instance proto realtime12 realtime layers floor far layershift reach)"; exit 2 ;;
    esac
done
echo "== done ($(date +%H:%M:%S))"
