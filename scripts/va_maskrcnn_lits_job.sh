#!/usr/bin/env bash
# va_maskrcnn_lits end to end on phantom LiTS data, CPU-sized (about 4 minutes on 2 cores):
#   bash scripts/va_maskrcnn_lits_job.sh [OUT_DIR]     (default: outputs/va_maskrcnn_lits_job; a new or empty folder)
# Environment: EPOCHS (3), SAMPLES (32 slices per epoch), SEED (0: phantoms and network initialisation),
# OMP_NUM_THREADS (1: 2 threads on a busy 2-core machine were 3-5x slower, spin-waiting).
# Steps: environment -> phantom LiTS volumes (LAS, HU, varied slice thickness) -> a short VA Mask R-CNN training ->
# evaluation on the validation quarter (LiTS Dice per case, global Dice, lesion Dice by size, CSV + overlay PNG) ->
# inference on the test volume in the input's space.
#
# Demo sizes (64 px slices, anchors 8-128 px, bag of 3 images = 9 slices, ResNet-18 FPN, --pretrained false, few steps)
# only show that every stage runs; bundles/va_maskrcnn_lits/docs/README.md gives the full-scale command (1024 px,
# N = 9, ResNet-50, COCO/DeepLesion pre-training, GPU).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=$(realpath -m "${1:-$REPO/outputs/va_maskrcnn_lits_job}")
EPOCHS=${EPOCHS:-3}
SAMPLES=${SAMPLES:-32}
SEED=${SEED:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
CONFIGS=bundles/va_maskrcnn_lits/configs
PY=.venv/bin/python
if [ -e "$OUT_DIR" ] && { [ ! -d "$OUT_DIR" ] || [ -n "$(ls -A "$OUT_DIR")" ]; }; then
  echo "$0: $OUT_DIR exists and is not an empty folder; give a new one (the job deletes nothing)" >&2
  exit 1
fi
cd "$REPO"
bash scripts/setup_env.sh
mkdir -p "$OUT_DIR/test_volumes"
start=$(date +%s)

echo "== phantom LiTS (8 labelled volumes + 1 test volume, 64 x 64 px, 48 slices at 1.5 mm)"
$PY -m shared phantoms lits "$OUT_DIR/LiTS" --num_cases 8 --shape "[64, 64, 48]" --seed "$SEED"
$PY -m shared validate lits "$OUT_DIR/LiTS"
ln -s "$OUT_DIR/LiTS/test-volume-0.nii" "$OUT_DIR/test_volumes/test-volume-0.nii"

DEMO=(--image_size 64 --bag_size 3 --backbone resnet18 --proposals_train 300 --proposals_test 100
      --roi_samples 64 --detections_per_image 20 --anchor_sizes "[8,16,32,64,128]" --ckpt_dir "$OUT_DIR/models"
      --pretrained false --frozen_batchnorm false)  # no pre-training on CPU demos (the full-scale default starts from COCO)

echo "== training ($EPOCHS epochs of $SAMPLES slices, lesion slices over-sampled 3x)"
$PY -m monai.bundle run training --config_file $CONFIGS/train.json "${DEMO[@]}" \
    --dataset_dir "$OUT_DIR/LiTS" --output_dir "$OUT_DIR/runs" --epochs "$EPOCHS" --samples_per_epoch "$SAMPLES" \
    --val_interval "$EPOCHS" --learning_rate 0.01 --num_workers 0 --seed "$SEED"

echo "== evaluation (validation quarter of the VA paper's 75/25 split, in each volume's own space)"
$PY -m monai.bundle run evaluating --config_file "['$CONFIGS/train.json','$CONFIGS/evaluate.json']" "${DEMO[@]}" \
    --dataset_dir "$OUT_DIR/LiTS" --output_dir "$OUT_DIR/eval"

echo "== inference (test volume -> label NIfTI in its space)"
$PY -m monai.bundle run inference --config_file $CONFIGS/inference.json "${DEMO[@]}" \
    --dataset_dir "$OUT_DIR/test_volumes" --output_dir "$OUT_DIR/output"

echo "== results"
cat "$OUT_DIR/eval/lits_metrics.csv"
ls -l "$OUT_DIR/eval/overlay.png" "$OUT_DIR/output"
echo "metrics: $OUT_DIR/eval/lits_metrics.csv   overlay: $OUT_DIR/eval/overlay.png   predictions: $OUT_DIR/output"
echo "va_maskrcnn_lits job took $(( $(date +%s) - start )) s after the environment setup"
