#!/bin/bash
# `train self-training --target-frames DIR` with nothing but its default recipe (dacs-tau05) on a camera's
# recording: the first half of target_dusk (target_dusk[:31], 31 frames) copied into a plain folder
# outside the repository, 300 iterations on the CPU (one thread, niced: the machine was shared), then
# scored on day and on the held-out second half (experiments/results/st-folder-dusk300.md; the training
# log is st-folder-dusk300.jsonl). Compare dacs-tau05-first-half in uda-heldout-second-half.md (600
# iterations of the same recipe on the split). Skips the training if its checkpoint exists and continues
# it from its state file if one was cut off.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${D:-.venv/bin/driftseg} DATA=${DRIFTSEG_DATA:-../shared/data/camvid} FRAMES=${FRAMES:-/tmp/dusk-first}
OUT=runs/st-folder/dusk300.pt RESULT=experiments/results/st-folder-dusk300
mkdir -p "$FRAMES"
python3 -c 'import json, shutil, sys
data, frames = sys.argv[1:]
for name in json.load(open(f"{data}/splits.json"))["target_dusk"][:31]:
    shutil.copy(f"{data}/images/{name}.jpg", frames)' "$DATA" "$FRAMES"
if [ ! -f $OUT ]; then
    resume=()
    if [ -f ${OUT%.pt}.state.pt ]; then resume=(--resume ${OUT%.pt}.state.pt); fi
    nice -n 19 env OMP_NUM_THREADS=1 $D train self-training --target-frames "$FRAMES" --iters 300 --out $OUT "${resume[@]}"
fi
cp ${OUT%.pt}.jsonl $RESULT.jsonl
$D bench checkpoints $OUT --streams day "target_dusk[31:]" --gap-stream "target_dusk[31:]" --out $RESULT.json
