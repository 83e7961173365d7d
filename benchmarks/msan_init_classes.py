"""What the MSAN members predict before any training: per arm and seed, with ``benchmarks/msan_ablation.py``'s paired
initial weights and demo sizes, the share of one phantom case's voxels whose arg max is background, kidney and tumour
(the class the untrained network starts out calling each voxel) and the mean softmax probability of each class.

    PYTHONPATH=. .venv/bin/python benchmarks/msan_init_classes.py --case outputs/msan_ablation/kits19/case_00000
        [--arms unet v1 v2 v2_ds v1_ds] [--seeds 0 1 2]

The case is read as the bundle reads it (RAS, the config's HU window to [0, 1], the native grid as the demo) and run
whole through each untrained network.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.msan_ablation import ARMS, CONFIGS, DEMO_OVERRIDES, paired_init  # noqa: E402


def class_shares(logits) -> dict:
    """Of logits (classes, ...): the share of positions whose arg max is each class, and each class's mean softmax."""
    return {
        "argmax_share": [float((logits.argmax(0) == c).float().mean()) for c in range(logits.shape[0])],
        "mean_probability": [float(p.mean()) for p in logits.softmax(0)],
    }


def untrained_classes(case: Path, arms: list[str], seeds: list[int]) -> list[dict]:
    """:func:`class_shares` of every arm's untrained network at every seed on ``case``'s ``imaging.nii.gz``."""
    import nibabel as nib
    import torch

    from shared.networks.msan import MSAN

    low, high = json.loads((CONFIGS / "train.json").read_text())["hu_window"]
    hu = np.asarray(nib.as_closest_canonical(nib.load(case / "imaging.nii.gz")).dataobj, np.float32)
    image = torch.from_numpy(np.clip((hu - low) / (high - low), 0.0, 1.0))[None, None]
    rows = []
    for arm in arms:
        variant, deep_supervision, _ = ARMS[arm]
        for seed in seeds:
            network = MSAN(
                variant=variant,
                channels=DEMO_OVERRIDES["network_def#channels"],
                norm=DEMO_OVERRIDES["network_def#norm"],
                deep_supervision=deep_supervision,
            )
            paired_init(seed, network)
            with torch.no_grad():
                logits = network.eval()(image)[0]
            rows.append({"arm": arm, "seed": seed, **class_shares(logits)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", type=Path, required=True, help="a KiTS19 case folder (imaging.nii.gz)")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    print("| arm | seed | arg max background / kidney / tumour | mean probability |")
    print("|---|---:|---|---|")
    for row in untrained_classes(args.case, args.arms, args.seeds):
        shares = " / ".join(f"{x:.3f}" for x in row["argmax_share"])
        probabilities = " / ".join(f"{x:.3f}" for x in row["mean_probability"])
        print(f"| {row['arm']} | {row['seed']} | {shares} | {probabilities} |")


if __name__ == "__main__":
    main()
