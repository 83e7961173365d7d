#!/usr/bin/env bash
# LiTS main job (va_maskrcnn_lits bundle) on a CPU: environment, phantom LiTS volumes (LAS, HU, varied slice
# thickness), a short VA Mask R-CNN training, evaluation on the validation quarter (LiTS Dice per case, global Dice,
# lesion Dice by size, CSV + overlay PNG), and inference on the test volume in the input's space.
#
# Demo sizes (64 px slices, anchors 8-128 px, bag of 3 images = 9 slices, ResNet-18 FPN without pre-training, few steps)
# only show that every stage runs; bundles/va_maskrcnn_lits/docs/README.md gives the full-scale command (1024 px,
# N = 9, ResNet-50, COCO/DeepLesion pre-training, GPU). WORK, EPOCHS and SAMPLES (per epoch) can be set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# one thread per process: 2 threads on a busy 2-core machine were 3-5x slower (spin-waiting threads)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORK=${WORK:-/tmp/lits_job}
EPOCHS=${EPOCHS:-3}
SAMPLES=${SAMPLES:-32}
PY=.venv/bin/python
BUNDLE=bundles/va_maskrcnn_lits
rm -rf "$WORK"
mkdir -p "$WORK/test_volumes"
start=$(date +%s)

echo "== phantom LiTS (8 labelled volumes + 1 test volume, 64 x 64 px, 48 slices at 1.5 mm)"
$PY -c "from shared.data.lits import make_phantoms; make_phantoms('$WORK/LiTS', num_cases=8, shape=(64, 64, 48))"
$PY -m shared validate lits "$WORK/LiTS"
ln -s "$WORK/LiTS/test-volume-0.nii" "$WORK/test_volumes/test-volume-0.nii"

DEMO=(--image_size 64 --bag_size 3 --backbone resnet18 --proposals_train 300 --proposals_test 100
      --roi_samples 64 --detections_per_image 20 --anchor_sizes "[8,16,32,64,128]" --ckpt_dir "$WORK/models")

echo "== training ($EPOCHS epochs of $SAMPLES slices, lesion slices over-sampled 3x)"
$PY -m monai.bundle run training --config_file $BUNDLE/configs/train.json "${DEMO[@]}" \
    --dataset_dir "$WORK/LiTS" --output_dir "$WORK/runs" --epochs "$EPOCHS" --samples_per_epoch "$SAMPLES" \
    --val_interval "$EPOCHS" --learning_rate 0.01 --num_workers 0

echo "== evaluation (validation quarter of the VA paper's 75/25 split, in each volume's own space)"
$PY -m monai.bundle run evaluating --config_file $BUNDLE/configs/evaluate.json "${DEMO[@]}" \
    --dataset_dir "$WORK/LiTS" --output_dir "$WORK/eval"

echo "== inference (test volume -> label NIfTI in its space)"
$PY -m monai.bundle run inference --config_file $BUNDLE/configs/inference.json "${DEMO[@]}" \
    --dataset_dir "$WORK/test_volumes" --output_dir "$WORK/output"

echo "== results"
cat "$WORK/eval/lits_metrics.csv"
ls -l "$WORK/eval/overlay.png" "$WORK/output"
echo "lits job finished in $(( $(date +%s) - start )) s; metrics table, overlay PNG and predictions under $WORK"
