#!/usr/bin/env bash
# DeepLesion main job (cs_att_deeplesion bundle) on a CPU: environment, phantom DeepLesion (PNG + DL_info.csv),
# a short 3DCE + CS-Att training, evaluation on the test split ending with the sensitivity table (0.5-16 FPs per
# image) and the CS-Att Table 2 groups. About 10 minutes on 2 cores.
#
# The demo sizes (128 px phantoms at their own pixel size, M = 3, VGG-16 without pretrained weights, 6 epochs)
# only show that every stage runs; docs/README.md gives the full-scale commands. WORK and EPOCHS can be set.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
WORK=${WORK:-/tmp/deeplesion_job}
EPOCHS=${EPOCHS:-6}
PY=.venv/bin/python
BUNDLE=bundles/cs_att_deeplesion
rm -rf "$WORK"
mkdir -p "$WORK"

echo "== phantom DeepLesion"
$PY -m shared phantoms deeplesion "$WORK/DeepLesion" --num_cases 16 --image_size 128
$PY -m shared validate deeplesion "$WORK/DeepLesion"

# demo sizes: phantom pixels kept (spacing_mm = their 2.75 mm-ish pixels are not upsampled: max_size 128)
DEMO=(--dataset_dir "$WORK/DeepLesion" --cache_dir "$WORK/cache" --max_size 128 --num_workers 0)

echo "== training (3DCE + CS-Att, $EPOCHS epochs, milestones scaled to the epochs)"
$PY -m monai.bundle run training --config_file $BUNDLE/configs/train.json "${DEMO[@]}" \
    --ckpt_dir "$WORK/models" --output_dir "$WORK/runs" --epochs "$EPOCHS" \
    --lr_milestones "[$((EPOCHS * 4 / 6)), $((EPOCHS * 5 / 6))]" --learning_rate 0.01 --val_interval "$EPOCHS"

echo "== evaluation (test split)"
$PY -m monai.bundle run evaluating --config_file $BUNDLE/configs/evaluate.json "${DEMO[@]}" \
    --ckpt_path "$WORK/models/model.pt" --output_dir "$WORK/eval" --split test
echo "pictures, CSV tables and detections in $WORK/eval"
