#!/usr/bin/env bash
# DeepLesion main job (cs_att_deeplesion bundle) on a CPU: environment, phantom DeepLesion (PNG + DL_info.csv),
# evaluation of the untrained network, a short 3DCE + CS-Att training, evaluation of the trained network on the test
# split ending with the sensitivity table (0.5-16 FPs per image) and the CS-Att Table 2 groups. About 11-14 minutes on
# 2 shared cores (docs/README.md, "Demo run").
#
# Demo overrides (the paper's settings stay the config defaults; docs/README.md gives the full-scale commands and the
# measured figures): 144 phantom series at 128 px (2.75 mm pixels) rescaled to 1.8 mm pixels (192 px) instead of
# 0.8 mm; HU window [-200, 300] instead of [-1024, 3071] (phantom lesions differ from their surroundings by 10-50 HU,
# about 1 % of the paper's window); anchors 8-48 px instead of 16-96 px (the paper's anchors in mm at these
# pixels); a ResNet-18 backbone (conv1..layer2, stride 8, random weights) instead of ImageNet VGG-16; 7 epochs of
# 58 iterations at lr 0.02 (paper: 6 epochs at 1e-3), milestones scaled to the epochs, gradient norm clipped at 10;
# 2000/500 RPN proposals before/after NMS in training (paper 12000/2000: NMS over 12000 boxes costs about a second
# per image on a CPU).
# WORK, EPOCHS, NUM_CASES and OMP_NUM_THREADS can be set; one thread is the default because the 2 cores are
# shared (two threads fighting other jobs ran 2-3x slower per iteration); use 2 on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
WORK=${WORK:-/tmp/deeplesion_job}
EPOCHS=${EPOCHS:-7}
NUM_CASES=${NUM_CASES:-144}
PY=.venv/bin/python
BUNDLE=bundles/cs_att_deeplesion
rm -rf "$WORK"
mkdir -p "$WORK"

echo "== phantom DeepLesion ($NUM_CASES series, 128 px)"
$PY -m shared phantoms deeplesion "$WORK/DeepLesion" --num_cases "$NUM_CASES" --image_size 128
$PY -m shared validate deeplesion "$WORK/DeepLesion"

DEMO=(--dataset_dir "$WORK/DeepLesion" --cache_dir "$WORK/cache" --num_workers 0 --spacing_mm 1.8 --max_size 192
    --hu_window "[-200, 300]" --backbone resnet18 --network_def#anchor_sizes "[8, 12, 16, 24, 48]")

echo "== evaluation of the untrained network (random weights, seed 0; test split)"
$PY - "$WORK/untrained.pt" <<'EOF'
import sys

import torch
from monai.utils import set_determinism

from shared.networks.three_dce import ThreeDCE

set_determinism(seed=0)  # as train.json's initialize: the weights training starts from
torch.save(ThreeDCE(backbone="resnet18", anchor_sizes=(8, 12, 16, 24, 48)).state_dict(), sys.argv[1])
EOF
$PY -m monai.bundle run evaluating --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/evaluate.json']" "${DEMO[@]}" \
    --ckpt_path "$WORK/untrained.pt" --output_dir "$WORK/eval_untrained" --split test --num_pictures 0

echo "== training (3DCE + CS-Att, $EPOCHS epochs, milestones scaled to the epochs)"
$PY -m monai.bundle run training --config_file $BUNDLE/configs/train.json "${DEMO[@]}" \
    --ckpt_dir "$WORK/models" --output_dir "$WORK/runs" --epochs "$EPOCHS" \
    --lr_milestones "[$((EPOCHS * 4 / 6)), $((EPOCHS * 5 / 6))]" --learning_rate 0.02 --val_interval "$EPOCHS" \
    --train#trainer#grad_clip_norm 10 --network_def#rpn_pre_nms_top_n_train 2000 --network_def#rpn_post_nms_top_n_train 500

echo "== the same trained network on its training split (how much it learned vs how much it generalises)"
$PY -m monai.bundle run evaluating --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/evaluate.json']" "${DEMO[@]}" \
    --ckpt_path "$WORK/models/model.pt" --output_dir "$WORK/eval_training" --split training --num_pictures 0

echo "== evaluation of the trained network (test split)"
$PY -m monai.bundle run evaluating --config_file "['$BUNDLE/configs/train.json','$BUNDLE/configs/evaluate.json']" "${DEMO[@]}" \
    --ckpt_path "$WORK/models/model.pt" --output_dir "$WORK/eval" --split test
echo "pictures, CSV tables and detections in $WORK/eval (untrained network: $WORK/eval_untrained)"
