#!/usr/bin/env bash
# The measurements that need a GPU, as one script whose parts each have a time limit, so that each step fits
# one command (at most 10 minutes) and train and speed together 15 minutes of a GPU machine's time (pool is
# for the time left, or in place of train: it runs on the repository's checkpoint). Four steps:
#
#   experiments/device.sh prepare     here: CamVid into .carry/camvid, the wheels the device lacks into .whl
#   experiments/device.sh train       there (~7 min): the default checkpoint at full scale (train source's
#                               defaults: 360x480, 4000 iterations), then bench accuracy on every stream
#   experiments/device.sh speed       there (~6 min), after copying the new checkpoint to
#                               models/checkpoints/camvid-lraspp.pt: raw model eager vs compiled, the
#                               compiled server under load, precision, the GPU decode test
#   experiments/device.sh pool        there (~5 min, the checkpoint in the repository will do): compiled, the
#                               streams' states stacked per frame against the device pool, and the pool's
#                               test under CUDA graphs
#
# The device tool runs the last three, e.g. (carry .carry and .whl; $OUT is the folder that comes back;
# the copy there has no .git, so the checkpoint's commit comes from here):
#   run(command="DRIFTSEG_GIT_COMMIT=<git rev-parse HEAD> experiments/device.sh train", carry=[".carry", ".whl"],
#       timeout_s=600)
# Each step writes its logs and results under $OUT (runs/device/STEP here) and goes on past a failed
# part, so a short run still brings back what it measured. PY=.venv/bin/python DEVICE=cpu ITERS=20
# SCALE=small runs the same steps on this machine in minutes, to check the script before device time
# is spent on it.
set -uo pipefail
cd "$(dirname "$0")/.."

step=${1:-}
case $step in prepare|train|speed|pool) ;; *) echo "usage: experiments/device.sh prepare|train|speed|pool" >&2; exit 2 ;; esac
DEVICE=${DEVICE:-cuda}
ITERS=${ITERS:-4000}
SCALE=${SCALE:-full}
OUT=${OUT:-runs/device/$step}
mkdir -p "$OUT"

if [ "$step" = prepare ]; then
    set -e
    rm -rf .carry/camvid && mkdir -p .carry && cp -r ../shared/data/camvid .carry/camvid
    # what the device's python (3.12, torch, torchvision, numpy, httpx, prometheus-client there) lacks,
    # at the versions this checkout's venv runs
    wheels=$(.venv/bin/pip list --format=freeze | grep -i -E '^(fastapi|starlette|uvicorn|pydantic|pydantic.core|pydantic.settings|python.dotenv|annotated.types|annotated.doc|typing.inspection|python.multipart|imagecorruptions)==')
    rm -rf .whl && python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl $wheels
    du -sh .carry .whl
    exit 0
fi

PY=${PY:-python3}
if [ "$PY" = python3 ] && [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
fi
# the package as pyproject.toml's package-dir installs it (driftseg/ with the top-level folders as its
# subpackages), linked rather than installed; -P keeps the checkout's own driftseg/ off sys.path
rm -rf /tmp/pkg && mkdir -p /tmp/pkg && cp -r driftseg /tmp/pkg/
for sub in models adapters data bench training service; do ln -s "$PWD/$sub" "/tmp/pkg/driftseg/$sub"; done
export PYTHONPATH=/tmp/pkg:/tmp/site PYTHONUNBUFFERED=1
export DRIFTSEG_DATA=${DRIFTSEG_DATA:-$PWD/.carry/camvid} DRIFTSEG_CACHE=${DRIFTSEG_CACHE:-/tmp/driftseg-cache}
D="$PY -P -m driftseg"
if [ "$SCALE" = small ]; then
    TRAIN_SIZE="--input-size 90 120 --crop 80 112 --batch-size 4"; FRAMES="--max-frames 4 --streams day fog continual"
    BATCH=2; CAMERAS="1 2"; DURATION=3; STEPS=3; PRECISION_FRAMES=3
else
    TRAIN_SIZE=""; FRAMES=""; BATCH=32; CAMERAS="1 8 32"; DURATION=15; STEPS=50; PRECISION_FRAMES=60
fi

# one log for all parts (at most 8 files come back from the device); the end of each part's output
# and its time and exit status on stdout
LOG=$OUT/log.txt
part() {
    local name=$1 limit=$2; shift 2
    local start=$SECONDS rc
    echo "=== $name: $*" >> "$LOG"
    timeout "$limit" "$@" > "$OUT/.part" 2>&1
    rc=$?
    cat "$OUT/.part" >> "$LOG"
    tail -n 20 "$OUT/.part"; rm -f "$OUT/.part"
    echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$LOG"
}

{ nvidia-smi -L; $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"; } \
    2>&1 | tee "$LOG"

case $step in
train)
    part train 420 $D train source --out "$OUT/camvid-lraspp.pt" --iters "$ITERS" --device "$DEVICE" --log-every 250 $TRAIN_SIZE
    part accuracy 240 $D bench accuracy --checkpoint "$OUT/camvid-lraspp.pt" --methods source ptbn tent auto \
        --device "$DEVICE" $FRAMES --out "$OUT/methods.json"
    ;;
speed)
    # adapted (auto: all 47 layers, the cost issue's goal; and the first 12) vs frozen at batch 1 and 32, eager and
    # compiled, same run
    part model 280 $D bench model --device "$DEVICE" --engines torch compiled \
        --methods source auto "auto(m=1,floor=0.8,switch=2,layers=12)+lc" --batches 1 $BATCH --steps "$STEPS" --out "$OUT/model.json"
    # the others: a compiled server (batches up to 32) under 1, 8 and 32 cameras, against the raw pipeline
    export DRIFTSEG_COMPILE=true DRIFTSEG_MAX_BATCH=$BATCH DRIFTSEG_MAX_PENDING=64 DRIFTSEG_STATE_DIR=/tmp/driftseg-state
    $D serve --device "$DEVICE" --port 8126 --log-level warning > "$OUT/serve.log" 2>&1 &
    server=$!
    ready="import httpx; httpx.get('http://127.0.0.1:8126/readyz').raise_for_status()"
    part load 240 sh -c "until $PY -c \"$ready\" 2>/dev/null; do kill -0 $server || exit 1; sleep 2; done;
        $D bench load --url http://127.0.0.1:8126 --streams $CAMERAS --duration $DURATION --raw-batch $BATCH --out $OUT/load.json"
    kill "$server"; wait "$server"
    part precision 90 $D bench precision --device "$DEVICE" --max-frames "$PRECISION_FRAMES" --out "$OUT/precision.json"
    [ "$DEVICE" = cuda ] && part decode 60 $PY -P -m pytest -q -p no:cacheprovider -m gpu tests/service/test_imaging.py
    ;;
pool)
    # the streams' states stacked per frame against a device pool (adapters/pool.py: gathered and scattered inside
    # the compiled graph, nothing read back), compiled, at batch 1 and 32, same run; then the pool's CUDA-graph test
    part pool 420 $D bench model --device "$DEVICE" --engines compiled --pool --methods source auto \
        "auto(m=1,floor=0.8,far=8,low=0.5,reach=1,switch=2,layers=0)+lc(stride=0)" --batches 1 $BATCH --steps "$STEPS" --out "$OUT/pool.json"
    [ "$DEVICE" = cuda ] && part pool-test 120 $PY -P -m pytest -q -p no:cacheprovider -m gpu tests/adapters/test_pool.py
    ;;
esac
grep "^=== .*: exit" "$LOG"
