#!/usr/bin/env bash
# Main job: the msan_kits bundle end to end on phantom KiTS19 data, CPU-sized (about 10 minutes on 2 cores).
#   bash scripts/main_job.sh [OUT_DIR]        (default: outputs/main_job)
# Steps: environment -> phantom KiTS19 root -> train (monai.bundle run training) -> evaluate the test split with the
# trained and with an untrained network -> inference on the test images -> metrics table, overlay PNG.
# Every step is a `python -m monai.bundle` call on bundles/msan_kits/configs; the demo sizes are one args file.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-outputs/main_job}")
EPOCHS=${EPOCHS:-24}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
B=bundles/msan_kits/configs
PY=.venv/bin/python

bash scripts/setup_env.sh
mkdir -p "$OUT"
start=$(date +%s)

echo "== phantom KiTS19 data -> $OUT/kits19"
$PY -m shared phantoms kits19 "$OUT/kits19" --seed 0

# CPU demo sizes (the paper's are in bundles/msan_kits/docs/README.md): 5 mm grid, 48x48x16 patches, narrow MSAN-V1
cat > "$OUT/demo_args.json" <<JSON
{
    "dataset_dir": "$OUT/kits19",
    "ckpt_dir": "$OUT/models",
    "output_dir": "$OUT/runs",
    "spacing": [5.0, 5.0, 5.0],
    "patch_size": [48, 48, 16],
    "network_def#channels": [8, 16, 32, 64],
    "network_def#norm": "instance",
    "learning_rate": 0.005,
    "num_workers": 0,
    "sw_batch_size": 2
}
JSON

echo "== training ($EPOCHS epochs)"
$PY -m monai.bundle run training --config_file $B/train.json --args_file "$OUT/demo_args.json" \
  --epochs "$EPOCHS" --val_interval 8 --lr_step_epochs 1000

echo "== untrained network (the baseline the trained one must beat)"
$PY -m monai.bundle run save_untrained --config_file $B/train.json --args_file "$OUT/demo_args.json" \
  --save_untrained "\$torch.save({'model': @network_def.state_dict()}, '$OUT/untrained.pt')"

echo "== evaluation of the test split: untrained, then trained"
$PY -m monai.bundle run evaluating --config_file "['$B/train.json','$B/evaluate.json']" \
  --args_file "$OUT/demo_args.json" --ckpt_path "$OUT/untrained.pt" --eval_dir "$OUT/eval_untrained"
$PY -m monai.bundle run evaluating --config_file "['$B/train.json','$B/evaluate.json']" \
  --args_file "$OUT/demo_args.json" --eval_dir "$OUT/eval"

echo "== inference on the test images (a folder of .nii.gz, as a user would give it)"
mkdir -p "$OUT/test_images"
for case in $($PY -c "from shared.data.kits19 import make_datalist; print(' '.join(e['case'] for e in make_datalist('$OUT/kits19')['test']))"); do
  ln -sf "$OUT/kits19/$case/imaging.nii.gz" "$OUT/test_images/$case.nii.gz"
done
$PY -m monai.bundle run inference --config_file $B/inference.json --args_file "$OUT/demo_args.json" \
  --dataset_dir "$OUT/test_images" --ckpt_path "$OUT/models/model.pt" --output_dir "$OUT/predictions"

echo
echo "== KiTS19 Dice on the phantom test cases: untrained network"
cat "$OUT/eval_untrained/kits19_metrics.txt"
echo "== KiTS19 Dice on the phantom test cases: trained MSAN-V1 ($EPOCHS epochs)"
cat "$OUT/eval/kits19_metrics.txt"
echo "predictions: $OUT/predictions   metrics: $OUT/eval/kits19_metrics.csv   overlay: $OUT/eval/overlay.png"
echo "main job took $(( $(date +%s) - start )) s after the environment setup"
