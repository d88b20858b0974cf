#!/usr/bin/env bash
# The chain of examples/quick-kvasir-cpu.toml as plain commands, the way a CI job runs them.
# Every command continues a half-done output of the same run, so rerunning the script after a
# failure picks up where it stopped (finished stages return quickly).
#
#   KVASIR=../shared/data/kvasir-seg RUN=runs/quick-kvasir-cpu bash examples/pipeline.sh
#
# On a multi-GPU box, prefix the training, sample and attack lines with
#   torchrun --nproc_per_node=N -m
# (e.g. `torchrun --nproc_per_node=4 -m augforge train-image-diffusion ...`).
set -euo pipefail
KVASIR=${KVASIR:-../shared/data/kvasir-seg}
RUN=${RUN:-runs/quick-kvasir-cpu}
DEVICE=${DEVICE:-auto}
SEG="--arch unet --encoder resnet18 --epochs 20 --batch-size 16 --aug basic --device $DEVICE"
DIFF="--model-size tiny --lr 1e-3 --ema-decay 0.995 --device $DEVICE"

augforge prepare "$KVASIR" "$RUN/data" --size 64 --split 0.8,0.1,0.1
augforge train-seg "$RUN/data" --out "$RUN/seg-real" $SEG
augforge train-mask-diffusion "$RUN/data" --out "$RUN/mask-model" --steps 2000 $DIFF
augforge train-image-diffusion "$RUN/data" --out "$RUN/image-model" --steps 3000 $DIFF
augforge sample --mask-model "$RUN/mask-model" --image-model "$RUN/image-model" --out "$RUN/generated" \
    --n 800 --sampler ddim --sample-steps 50 --mask-sample-steps 50 --batch-size 32 --device "$DEVICE"
augforge attack "$RUN/generated" --segmenter "$RUN/seg-real" --image-model "$RUN/image-model" --out "$RUN/attacked" \
    --method diff-pgd --weighted --steps 10 --step-size 1 --sdedit-steps 3 --sigma2 4 --batch-size 32 --device "$DEVICE"
augforge train-seg "$RUN/data" --extra "$RUN/generated" --extra "$RUN/attacked" --out "$RUN/seg-dasp" $SEG
augforge evaluate "$RUN/data" --segmenter "$RUN/seg-real" --out "$RUN/eval-seg-real.json" --device "$DEVICE"
augforge evaluate "$RUN/data" --segmenter "$RUN/seg-dasp" --out "$RUN/eval-seg-dasp.json" --device "$DEVICE"
augforge report "$RUN"
