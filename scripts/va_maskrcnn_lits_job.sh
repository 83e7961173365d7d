#!/usr/bin/env bash
# va_maskrcnn_lits end to end on phantom LiTS data, CPU-sized (about 13 minutes on 2 idle cores):
#   bash scripts/va_maskrcnn_lits_job.sh [OUT_DIR]     (default: outputs/va_maskrcnn_lits_job; a new or empty folder)
# Environment: EPOCHS (12), SAMPLES (240 slices per epoch), NUM_CASES (32 labelled phantom volumes), SEED (0: phantoms
# and network initialisation), OMP_NUM_THREADS (2; use 1 when other jobs share the 2 cores).
# Steps: environment -> phantom LiTS volumes (LAS, HU, varied slice thickness) -> evaluation of the untrained network
# -> VA Mask R-CNN training -> evaluation of the trained network on the validation quarter (LiTS Dice per case,
# global Dice, lesion Dice by size, CSV + overlay PNG) -> inference on the test volume in the input's space -> training
# curves (training_curves.png) -> one summary (`python -m shared summary`: untrained vs trained Dice, time, paths), last.
#
# Demo overrides, one args file given to every step (scripts/va_maskrcnn_lits_demo_args.json, which
# benchmarks/va_ablation.py also reads; the paper's settings stay the config defaults;
# bundles/va_maskrcnn_lits/docs/README.md gives the full-scale command and the measured figures): 128 px slices instead
# of 1024, on phantom slices that span the liver's box (--fov liver, as a liver region crop gives: pixels 1.3-1.9 mm
# instead of the whole body's 2.1-3.0 mm, so lesions of 6-60 mm are 3-45 px: small < 15 mm 3-11 px, large > 30 mm 16-45 px);
# anchors 4-64 px (about 10-160 mm here) instead of torchvision's 32-512 px; a bag of N = 3 images instead of 9; a
# ResNet-18 FPN with random weights instead of the COCO-pretrained ResNet-50 (no weights offline: --pretrained false
# --frozen_batchnorm false), its FPN 64 channels wide instead of 256 (1.9x faster per iteration; 12 epochs keep the job
# within 15 minutes on a machine 1.6x slower than the one it was sized on); HU window [-100, 200] instead of
# [-200, 300]; 300/100 RPN proposals, 64 RoIs per image, 20 detections per slice; AdamW (lr 0.001, weight decay
# 1e-4, fused) instead of the paper's SGD (lr 0.02 x 2 / 16), with the config's warm-up and steps at 8/12 and 11/12
# of the iterations: from random weights it learns the lesions about twice as fast
# (docs/experiments/va_maskrcnn_lits.md); lesion slices over-sampled 10x instead of 3x; epochs of 240 sampled slices
# instead of a pass over the ~1500 training slices; no data-loading workers.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
source "$REPO/scripts/job_out_dir.sh"
OUT_DIR=$(new_out_dir "${1:-$REPO/outputs/va_maskrcnn_lits_job}")
EPOCHS=${EPOCHS:-12}
SAMPLES=${SAMPLES:-240}
NUM_CASES=${NUM_CASES:-32}
SEED=${SEED:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
CONFIGS=bundles/va_maskrcnn_lits/configs
PY=.venv/bin/python
cd "$REPO"
bash scripts/setup_env.sh
mkdir -p "$OUT_DIR/test_volumes"
start=$(date +%s)

echo "== phantom LiTS ($NUM_CASES labelled volumes + 1 test volume, 128 x 128 px over the liver's box, 64 slices at 1.5 mm)"
$PY -m shared phantoms lits "$OUT_DIR/LiTS" --num_cases "$NUM_CASES" --shape "[128, 128, 64]" --seed "$SEED" --fov liver
$PY -m shared validate lits "$OUT_DIR/LiTS"
ln -s "$OUT_DIR/LiTS/test-volume-0.nii" "$OUT_DIR/test_volumes/test-volume-0.nii"

DEMO=(--args_file scripts/va_maskrcnn_lits_demo_args.json)  # the demo sizes (header), every step
LABELLED=(--dataset_dir "$OUT_DIR/LiTS" --cache_dir "$OUT_DIR/cache")  # training and evaluation

echo "== evaluation of an untrained network (random weights drawn with the seed; validation quarter)"
$PY -m monai.bundle run save_untrained --config_file $CONFIGS/train.json "${DEMO[@]}" --seed "$SEED" \
    --save_untrained "\$torch.save(@network_def.state_dict(), '$OUT_DIR/untrained.pt')"
$PY -m monai.bundle run evaluating --config_file "['$CONFIGS/train.json','$CONFIGS/evaluate.json']" "${DEMO[@]}" "${LABELLED[@]}" \
    --ckpt_path "$OUT_DIR/untrained.pt" --output_dir "$OUT_DIR/eval_untrained"

echo "== training ($EPOCHS epochs of $SAMPLES slices, lesion slices over-sampled 10x)"
$PY -m monai.bundle run training --config_file $CONFIGS/train.json "${DEMO[@]}" "${LABELLED[@]}" --seed "$SEED" \
    --ckpt_dir "$OUT_DIR/models" --output_dir "$OUT_DIR/runs" --epochs "$EPOCHS" --samples_per_epoch "$SAMPLES" \
    --val_interval "$EPOCHS"

echo "== evaluation of the trained network (validation quarter of the VA paper's 75/25 split, each volume's own space)"
$PY -m monai.bundle run evaluating --config_file "['$CONFIGS/train.json','$CONFIGS/evaluate.json']" "${DEMO[@]}" "${LABELLED[@]}" \
    --ckpt_path "$OUT_DIR/models/model.pt" --output_dir "$OUT_DIR/eval"

echo "== inference (test volume -> label NIfTI in its space)"
$PY -m monai.bundle run inference --config_file $CONFIGS/inference.json "${DEMO[@]}" \
    --ckpt_path "$OUT_DIR/models/model.pt" --dataset_dir "$OUT_DIR/test_volumes" --output_dir "$OUT_DIR/output"

$PY -m shared show curves "$OUT_DIR/runs" "$OUT_DIR/training_curves.png"
echo
$PY -m shared summary lits "$OUT_DIR/eval" "$OUT_DIR/eval_untrained" --name va_maskrcnn_lits \
    --seconds $(( $(date +%s) - start )) --predictions "$OUT_DIR/output" --pictures "$OUT_DIR/training_curves.png"
