#!/bin/bash
# The offline jobs on CamVid day -> dusk, from the default checkpoint, at the scale a 2-core CPU
# allows (600 iterations each); the bench tables in bench/results/uda*.md and the card in
# models/checkpoints/README.md come from this script. Run from the repository root. They were made
# from the earlier 180x240 default (P at commit 4696549); run now, it starts from the current default.
set -ex
D=.venv/bin/driftseg
P=models/checkpoints/camvid-lraspp.pt
R=runs/uda/final
mkdir -p $R
# an upper bound, never served: the same fine-tuning with the target_dusk labels
$D train source --init $P --train-split source_train target_dusk --out $R/oracle-dusk.pt --iters 600 \
    --batch-size 8 --lr 1e-3 --warmup 30 --crop 176 224 --log-every 50
# a control: the same budget of source training alone, no target frames
$D train source --init $P --out $R/source-more.pt --iters 600 --batch-size 8 --lr 5e-4 --warmup 50 \
    --crop 176 224 --log-every 50
for beta in 05 01 09; do
    $D train adversarial --parent $P --out $R/fda$beta.pt --fda-beta 0.$beta --iters 600 --lr 5e-4 --log-every 50
done
$D train self-training --parent $R/fda05.pt --teachers $R/fda01.pt $R/fda05.pt $R/fda09.pt --out $R/mbt-st.pt \
    --fda-beta 0.05 --iters 600 --lr 5e-4 --log-every 50
$D train seat --parent $P --out $R/seat.pt --iters 600 --lr 5e-4 --log-every 50
$D train adversarial --parent $P --out $R/adv.pt --iters 600 --lr 5e-4 --log-every 50

$D bench checkpoints $R/source-more.pt $R/adv.pt $R/fda01.pt $R/fda05.pt $R/fda09.pt $R/seat.pt $R/mbt-st.pt \
    --oracle $R/oracle-dusk.pt --out bench/results/uda.json
cp $R/mbt-st.pt models/checkpoints/dusk-uda.pt  # the best chain: FDA-adversarial teachers, MBT self-training
$D bench accuracy --checkpoint models/checkpoints/dusk-uda.pt --methods source auto --out bench/results/uda-auto.json
