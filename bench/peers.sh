#!/usr/bin/env bash
# The published peers (issue 15) beside the project's methods, on the CPU, at budgets that keep the whole
# script near half an hour on a 2-core machine (a 360x480 forward is ~70 ms there; DUA runs 17 forwards a
# frame and CoTTA ~30, so those two set the budget):
#   peers         every protocol stream x every method, the first $FRAMES frames of each stream (of each
#                 segment of `continual`)                                    -> bench/results/peers.{json,md}
#   continual10   the continual segments 10 rounds without reset, $ROUND_FRAMES frames a segment, the
#                 methods that keep state across frames (and source)         -> bench/results/continual10.{json,md,png}
#   speed         per-frame cost of every method on `day`, round robin       -> bench/results/speed-peers.{json,md}
# A part whose JSON exists already is skipped unless FORCE=1.
#
#   bench/peers.sh [PART ...]       parts: peers continual10 speed (all, in that order, without arguments)
set -uo pipefail
cd "$(dirname "$0")/.."
D=${D:-.venv/bin/driftseg}
R=bench/results
FRAMES=${FRAMES:-12}
ROUND_FRAMES=${ROUND_FRAMES:-4}
SPEED_FRAMES=${SPEED_FRAMES:-10}
METHODS="source ptbn tent diga dua lame norm_alpha rbn cotta auto"
STATEFUL="source ptbn tent diga dua rbn cotta auto"  # lame and norm_alpha keep nothing: every round alike
parts=${*:-peers continual10 speed}

done_already() { [ -z "${FORCE:-}" ] && [ -f "$1" ] && echo "== $1 exists: skipped (FORCE=1 reruns it)"; }

for part in $parts; do
    echo "== $part ($(date +%H:%M:%S))"
    case $part in
    peers) done_already $R/peers.json || $D bench accuracy --max-frames "$FRAMES" --methods $METHODS \
        --out $R/peers.json ;;
    continual10) done_already $R/continual10.json || { $D bench accuracy --streams continual10 \
        --max-frames "$ROUND_FRAMES" --methods $STATEFUL --out $R/continual10.json &&
        mv $R/continual10-continual10-rounds.png $R/continual10.png; } ;;
    speed) done_already $R/speed-peers.json || $D bench speed --frames "$SPEED_FRAMES" --warmup 2 \
        --methods $METHODS --out $R/speed-peers.json ;;
    *) echo "unknown part $part (peers continual10 speed)"; exit 2 ;;
    esac
done
echo "== done ($(date +%H:%M:%S))"
