#!/bin/bash
# Does adversarial adaptation add anything on top of a better-trained parent at CPU scale? From the
# control of the 180x240 chain (dusk-uda.sh as of commit be4c389; source-more.pt: 600 more iterations
# of source training), the adversarial job against the same budget of source training alone. Run after
# that chain, from the repository root; the table is experiments/results/uda-from-control.md.
set -ex
D=.venv/bin/driftseg
P=runs/uda/final/source-more.pt
R=runs/uda/exp
$D train adversarial --parent $P --out $R/adv-sm.pt --iters 600 --lr 5e-4 --log-every 100
$D train source --init $P --out $R/sm2.pt --iters 600 --batch-size 8 --lr 5e-4 --warmup 50 --crop 176 224 --log-every 100
$D bench checkpoints $R/sm2.pt $R/adv-sm.pt --baseline $P --oracle runs/uda/final/oracle-dusk.pt \
    --out experiments/results/uda-from-control.json
