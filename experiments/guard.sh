#!/usr/bin/env bash
# auto's guard (adapters/auto.py): whether adapting pays, judged on 1 frame in N by comparing the information
# maximisation of the adapted and the frozen model's predictions, falling back to the source where it does not
# (the issue on online adaptation that never loses to the frozen model). On the CPU with the default checkpoint;
# a part whose JSON exists is skipped unless FORCE=1 (experiments/common.sh).
#   whole        every protocol stream whole, both protocols: source, auto, the 12-layer auto of before (floor 0.2)
#                guarded every 8 and every 16 frames, and the all-layer one at floor 0.2 guarded every 8
#                                                                       -> experiments/results/guard.{json,md}
#   continual10  the continual segments 10 rounds without reset, 4 frames a segment (as peers.sh continual10)
#                                                                       -> experiments/results/guard-continual10.{json,md}
#
#   experiments/guard.sh [PART ...]      parts: whole continual10 (both, in that order, without arguments)
set -uo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
GUARDED="auto(m=1,floor=0.2,switch=2,layers=12,guard=8)+lc auto(m=1,floor=0.2,switch=2,layers=12,guard=16)+lc"
ALL_LAYERS_GUARDED="auto(m=1,floor=0.2,switch=2,layers=0,guard=8)+lc"  # every BN layer (the issue on adaptation cost)
parts=${*:-whole continual10}

for part in $parts; do
    echo "== $part ($(date +%H:%M:%S))"
    case $part in
    whole) accuracy_part $R/guard.json "--realtime" source auto $GUARDED "$ALL_LAYERS_GUARDED" ;;
    continual10) accuracy_part $R/guard-continual10.json "--streams continual10 --max-frames 4" source auto $GUARDED ;;
    *) echo "unknown part $part (whole continual10)"; exit 2 ;;
    esac
done
echo "== done ($(date +%H:%M:%S))"
