#!/bin/bash
# The self-improving loop end to end (issue 32's measures), on a server that records every frame, with the
# labelled source data and a job budget of ITERS iterations (default 300). Writes
# experiments/results/self-improving-<case>.{json,md} and the job's training log beside them.
#   dusk       a camera posts its first 31 dusk frames, the server adapts a model to them by itself (POST
#              /adaptation/jobs), gates and promotes it; the remaining dusk frames are scored on that stream
#              against a stream on the base model (`auto`) sent the same frames, and the job's model on
#              `day` against the base. The job has both cores (JOB_THREADS=2): serving is idle meanwhile.
#   day        the same for a camera that never leaves the source domain (day frames 1-50, scored on 51-101):
#              a promotion must not lose on `day`.
#   dusk-load  dusk with the default one job thread, and what the job costs 4 other cameras on the base
#              model at 2 frames/s each: their latency for 60 s before the job and 60 s while it trains.
set -euo pipefail
cd "$(dirname "$0")/.."
CASE=${1:-dusk}
case $CASE in
    dusk) THREADS=2 ARGS=() ;;
    day) THREADS=2 ARGS=(--record "source_val[:50]" --score "source_val[50:]" --check day --prefix loopday) ;;
    dusk-load) THREADS=1 ARGS=(--load-cameras 4 --prefix loopload) ;;
    *) echo "usage: $0 dusk|day|dusk-load" >&2; exit 2 ;;
esac
D=${D:-.venv/bin/driftseg} DATA=${DRIFTSEG_DATA:-../shared/data/camvid}
PORT=${PORT:-8126} STATE=$(mktemp -d) OUT=experiments/results/self-improving-$CASE.json
DRIFTSEG_STATE_DIR=$STATE DRIFTSEG_RECORD=all DRIFTSEG_SOURCE_DATA=$DATA DRIFTSEG_ADAPT_ITERS=${ITERS:-300} \
    DRIFTSEG_JOB_THREADS=$THREADS DRIFTSEG_RECORD_MAX_FRAMES=1000 $D serve --port $PORT > "$STATE/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2> /dev/null; wait $SERVER 2> /dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do
    kill -0 $SERVER 2> /dev/null || { cat "$STATE/serve.log"; exit 1; }
    sleep 2
done
$D bench loop --url "http://127.0.0.1:$PORT" --data "$DATA" --out "$OUT" "${ARGS[@]}"
cp "$STATE"/jobs/*/candidate.jsonl "${OUT%.json}-train.jsonl"
