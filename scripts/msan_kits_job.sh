#!/usr/bin/env bash
# msan_kits end to end on phantom KiTS19 data, CPU-sized (about 10 minutes on 2 cores):
#   bash scripts/msan_kits_job.sh [OUT_DIR]     (default: outputs/msan_kits_job; a new or empty folder)
# Environment: ITERATIONS (1600), SEED (0: phantoms and network initialisation), OMP_NUM_THREADS (2).
# Steps: environment -> phantom KiTS19 root -> train (monai.bundle run training) -> evaluate the test split with the
# trained and with an untrained network -> inference on the test images -> metrics table, overlay PNG, training curves
# (training_curves.png) -> one summary (`python -m shared summary`: untrained vs trained Dice, time, paths), last.
# Every step is a `python -m monai.bundle` call on bundles/msan_kits/configs; the demo sizes are one args file.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
source "$REPO/scripts/job_out_dir.sh"
OUT_DIR=$(new_out_dir "${1:-$REPO/outputs/msan_kits_job}")
ITERATIONS=${ITERATIONS:-1600}
SEED=${SEED:-0}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
CONFIGS=bundles/msan_kits/configs
PY=.venv/bin/python
cd "$REPO"
bash scripts/setup_env.sh
mkdir -p "$OUT_DIR"
start=$(date +%s)

echo "== phantom KiTS19 data -> $OUT_DIR/kits19"
$PY -m shared phantoms kits19 "$OUT_DIR/kits19" --seed "$SEED" --num_cases 60
$PY -c "import json; t = json.load(open('$OUT_DIR/kits19/phantom_tumours.json')); d = [x for c in t.values() for x in c['tumours']]; print(f\"{len(d)} tumours, long axis {min(x['diameters_mm'][0] for x in d):.0f}-{max(x['diameters_mm'][0] for x in d):.0f} mm = {min(x['long_axis_voxels'] for x in d):.1f}-{max(x['long_axis_voxels'] for x in d):.1f} voxels\")"

# CPU demo sizes (the paper's defaults are in bundles/msan_kits/docs/README.md): the phantoms' native grid (about
# 3.5 mm), 64x64x16 patches, half of them centred on tumour, a narrow MSAN-V1 (channels 8-64, instance norm), Adam
# 3e-3 divided by 10 after three quarters of the iterations
cat > "$OUT_DIR/demo_args.json" <<JSON
{
    "dataset_dir": "$OUT_DIR/kits19",
    "ckpt_dir": "$OUT_DIR/models",
    "output_dir": "$OUT_DIR/runs",
    "seed": $SEED,
    "spacing": null,
    "patch_size": [64, 64, 16],
    "crop_ratios": [1, 1, 2],
    "network_def#channels": [8, 16, 32, 64],
    "network_def#norm": "instance",
    "learning_rate": 0.003,
    "num_workers": 0,
    "sw_batch_size": 2,
    "amp": false
}
JSON

echo "== training ($ITERATIONS iterations)"
$PY -m monai.bundle run training --config_file $CONFIGS/train.json --args_file "$OUT_DIR/demo_args.json" \
  --iterations "$ITERATIONS" --lr_step_iterations $(( ITERATIONS * 3 / 4 )) \
  --val_every_iterations $(( ITERATIONS / 4 ))

echo "== untrained network (the weights training starts from: the baseline the trained one must beat)"
$PY -m monai.bundle run save_untrained --config_file $CONFIGS/train.json --args_file "$OUT_DIR/demo_args.json" \
  --save_untrained "\$torch.save(@network_def.state_dict(), '$OUT_DIR/untrained.pt')"

echo "== evaluation of the test split: untrained, then trained"
$PY -m monai.bundle run evaluating --config_file "['$CONFIGS/train.json','$CONFIGS/evaluate.json']" \
  --args_file "$OUT_DIR/demo_args.json" --ckpt_path "$OUT_DIR/untrained.pt" --eval_dir "$OUT_DIR/eval_untrained"
$PY -m monai.bundle run evaluating --config_file "['$CONFIGS/train.json','$CONFIGS/evaluate.json']" \
  --args_file "$OUT_DIR/demo_args.json" --eval_dir "$OUT_DIR/eval"

echo "== inference on the test images (a folder of .nii.gz, as a user would give it)"
mkdir -p "$OUT_DIR/test_images"
for case in $($PY -c "from shared.data.kits19 import make_datalist; print(' '.join(e['case'] for e in make_datalist('$OUT_DIR/kits19')['test']))"); do
  ln -s "$OUT_DIR/kits19/$case/imaging.nii.gz" "$OUT_DIR/test_images/$case.nii.gz"
done
$PY -m monai.bundle run inference --config_file $CONFIGS/inference.json --args_file "$OUT_DIR/demo_args.json" \
  --dataset_dir "$OUT_DIR/test_images" --ckpt_path "$OUT_DIR/models/model.pt" --output_dir "$OUT_DIR/predictions"

echo
echo "== KiTS19 Dice on the phantom test cases: untrained network"
cat "$OUT_DIR/eval_untrained/kits19_metrics.txt"
echo "== KiTS19 Dice on the phantom test cases: trained MSAN-V1 ($ITERATIONS iterations)"
cat "$OUT_DIR/eval/kits19_metrics.txt"
$PY -m shared show curves "$OUT_DIR/runs" "$OUT_DIR/training_curves.png"
echo
$PY -m shared summary kits19 "$OUT_DIR/eval" "$OUT_DIR/eval_untrained" --name msan_kits \
  --seconds $(( $(date +%s) - start )) --predictions "$OUT_DIR/predictions" --pictures "$OUT_DIR/training_curves.png"
