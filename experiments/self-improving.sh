#!/bin/bash
# The self-improving loop end to end (issue 32's measure): a server that records every frame, with the
# labelled source data and a job budget of ITERS iterations (default 300), takes a camera's first 31 dusk
# frames, adapts a model to them by itself (POST /adaptation/jobs), gates and promotes it, then scores the
# remaining dusk frames on that stream against a stream on the base model (`auto`) sent the same frames,
# and the job's model on `day` against the base. Writes experiments/results/self-improving-dusk.{json,md}.
# The job runs niced with JOB_THREADS threads (default 2: the machine's cores, serving is idle meanwhile).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${D:-.venv/bin/driftseg} DATA=${DRIFTSEG_DATA:-../shared/data/camvid}
PORT=${PORT:-8126} STATE=$(mktemp -d) OUT=${OUT:-experiments/results/self-improving-dusk.json}
DRIFTSEG_STATE_DIR=$STATE DRIFTSEG_RECORD=all DRIFTSEG_SOURCE_DATA=$DATA DRIFTSEG_ADAPT_ITERS=${ITERS:-300} \
    DRIFTSEG_JOB_THREADS=${JOB_THREADS:-2} DRIFTSEG_RECORD_MAX_FRAMES=1000 $D serve --port $PORT > "$STATE/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2> /dev/null; wait $SERVER 2> /dev/null || true' EXIT
until curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null; do
    kill -0 $SERVER 2> /dev/null || { cat "$STATE/serve.log"; exit 1; }
    sleep 2
done
$D bench loop --url "http://127.0.0.1:$PORT" --data "$DATA" --out "$OUT"
cp "$STATE"/jobs/*/candidate.jsonl "${OUT%.json}-train.jsonl"
