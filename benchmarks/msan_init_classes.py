"""What the MSAN members predict before any training: per arm and seed, with ``benchmarks/msan_ablation.py``'s paired
initial weights and demo sizes, the share of one phantom case's voxels whose arg max is background, kidney and tumour
(the class the untrained network starts out calling each voxel) and the mean softmax probability of each class.

    PYTHONPATH=. .venv/bin/python benchmarks/msan_init_classes.py --case outputs/msan_ablation/kits19/case_00000
        [--arms unet v1 v2 v2_ds v1_ds] [--seeds 0 1 2]

The case is read by the bundle's own deterministic transforms (RAS, the HU window to [0, 1], the native grid as the
demo) and run whole through each untrained ``network_def``.
"""

import argparse
import sys
from pathlib import Path

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
    """:func:`class_shares` of every arm's untrained network at every seed on ``case`` (``imaging.nii.gz`` and
    ``segmentation.nii.gz``, read by the bundle's deterministic transforms); networks from the bundle's
    ``network_def`` with the demo sizes."""
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(DEMO_OVERRIDES)
    read = Compose(parser.get_parsed_content("train#deterministic_transforms"))
    image = read({"image": str(case / "imaging.nii.gz"), "label": str(case / "segmentation.nii.gz")})["image"]
    rows = []
    for arm in arms:
        variant, deep_supervision, _ = ARMS[arm]
        for seed in seeds:
            parser.update({"network_def#variant": variant, "network_def#deep_supervision": deep_supervision})
            network = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
            paired_init(seed, network)
            with torch.no_grad():
                logits = network.eval()(image[None].as_tensor())[0]
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
