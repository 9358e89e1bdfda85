#!/usr/bin/env bash
# Every CPU result in the README that rests on the default checkpoint, rerun in order with the
# README's own commands (run it after the default checkpoint changes), and the training speed
# (`training`, which trains from scratch: rerun it after the training code changes). Each part writes its JSON and
# Markdown table (and plots) under experiments/results/; a part whose JSON exists already is skipped unless
# FORCE=1, so a run that was cut off goes on where it stopped. The load tests start their own server
# on a free port with a fresh state folder and stop it afterwards.
#
#   experiments/rerun-cpu.sh [PART ...]      parts: methods drift speed model model-compiled precision load
#                                      load-concurrency load-compiled training (all, in that order, without arguments)
# FORCE=1 and UPDATE="METHOD ..." as experiments/common.sh says. UPDATE applies to `methods` only: `drift` is there
# for its per-frame picture, which an update cannot redraw, and reruns whole in minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
source experiments/common.sh
ALL="methods drift speed model model-compiled precision load load-concurrency load-compiled training"
parts=${*:-$ALL}

start_server() {  # $1: extra server environment (e.g. DRIFTSEG_COMPILE=true); sets URL and SERVER
    local port=8124 state
    state=$(mktemp -d)
    env $1 DRIFTSEG_STATE_DIR="$state" $D serve --port $port > "$state/serve.log" 2>&1 &
    SERVER=$! URL="http://127.0.0.1:$port"
    until curl -sf "$URL/readyz" > /dev/null; do
        kill -0 $SERVER 2> /dev/null || { cat "$state/serve.log"; return 1; }
        sleep 2
    done
}

stop_server() { kill $SERVER; wait $SERVER; }

serve_and_load() {  # $1: output name, $2: extra server environment (e.g. DRIFTSEG_COMPILE=true)
    start_server "$2" || return 1
    $D bench load --url "$URL" --streams 1 8 32 --duration 20 --raw-batch 8 --out "$R/$1.json"
    # open loop, one camera, at rates around what this CPU serves at the checkpoint's input size
    $D bench load --url "$URL" --streams 1 --rate 2 4 6 8 10 --duration 20 --out "$R/${1/load/load-open}.json"
    stop_server
}

for part in $parts; do
    echo "== $part ($(date +%H:%M:%S))"
    case $part in
    methods) accuracy_part $R/methods.json "" source ptbn tent "ema(m=0.1)" \
        "ema(m=0.1,alpha=0.5)" lc "ema(m=0.1)+lc" "fda(mode=swap)" "fda(mode=ratio)" "auto(m=0.1,floor=0.2)" \
        "auto(m=0.1,floor=0.2)+lc" "auto(m=0.1,floor=0.2)+lc+fda(mode=ratio)" \
        "auto(m=0.1,floor=0.2,switch=2,layers=20)+lc" auto ;;
    drift) done_already $R/drift.json || $D bench accuracy --streams continual \
        --methods source ptbn tent "ema(m=0.1)+lc" auto --out $R/drift.json ;;
    speed) done_already $R/speed.json || $D bench speed --frames 200 --repeats 5 --methods source ptbn \
        "ema(m=0.1)+lc" "auto(m=0.1,floor=0.2)+lc" "auto(m=0.1,floor=0.2,switch=2,layers=20)+lc" tent auto \
        --out $R/speed.json ;;
    model) done_already $R/model-cpu.json || $D bench model --batches 1 8 32 --engines torch onnx --steps 10 \
        --out $R/model-cpu.json ;;
    model-compiled) done_already $R/model-cpu-compiled.json || $D bench model --engines torch compiled \
        --methods source auto --batches 1 8 32 --steps 20 --out $R/model-cpu-compiled.json ;;
    precision) done_already $R/precision-cpu.json || $D bench precision --out $R/precision-cpu.json ;;
    load) done_already $R/load-cpu.json || serve_and_load load-cpu "" ;;
    # 1 camera sends its frames in a row; 2, 4 and 8 at once: whether throughput holds under concurrency
    # (a quiet machine only: other processes on the cores make concurrency look worse than it is), with the
    # default batches and again with one frame a batch (-batch1). LOAD_SECONDS=2 for a short check of the part.
    load-concurrency) for batch in "" 1; do
        out=$R/load-concurrency${batch:+-batch$batch}.json
        done_already $out || { start_server "${batch:+DRIFTSEG_MAX_BATCH=$batch}" && $D bench load --url "$URL" \
            --streams 1 2 4 8 --duration "${LOAD_SECONDS:-20}" --out $out; stop_server; }
    done ;;
    load-compiled) done_already $R/load-cpu-compiled.json || serve_and_load load-cpu-compiled DRIFTSEG_COMPILE=true ;;
    training) done_already $R/training-cpu.json || $D bench training --threads 2 1 --out $R/training-cpu.json ;;
    *) echo "unknown part $part (parts: $ALL)" >&2; exit 2 ;;
    esac
done
