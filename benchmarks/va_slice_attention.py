"""Where a trained VA arm of ``benchmarks/va_ablation.py`` looks along z: the slice attention of its VA blocks
(softmax over the N images of the bag; eq. 2 for the channel attention, eq. 3 for the spatial one) on the held-out
context phantoms, per FPN level: the weight the target image gets, and the weight of the images two or more places
away (6+ slices), where the look-alikes differ from lesions.

    PYTHONPATH=. .venv/bin/python benchmarks/va_slice_attention.py --run outputs/va_ablation [--arms full spatial]
        [--seeds 0 1 2] [--out outputs/va_ablation/slice_attention.json]

Each arm and seed is evaluated again through the bundle (``evaluate.json``, the ablation's overrides and last
checkpoint), with the blocks' ``channel_attention`` and ``spatial_attention`` wrapped to keep their slice weights.
A weight of 1 on the target image means the block attends to the target alone and ignores the bag.
"""

import argparse
import contextlib
import json
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ablation, va_ablation  # noqa: E402
from shared.networks.blocks.volumetric_attention import VolumetricAttention  # noqa: E402

FAR = 2  # images from the target: 2 images = 6 slices (9 mm at 1.5 mm) and beyond


@contextlib.contextmanager
def recorded_slice_weights(weights: dict) -> Iterator[None]:
    """Within the block, each call of a :class:`VolumetricAttention`'s channel or spatial attention adds its slice
    weights (B, N) to ``weights[(block, "channel" | "spatial")]``; the class is restored on exit."""
    originals = {kind: getattr(VolumetricAttention, f"{kind}_attention") for kind in ("channel", "spatial")}

    def recording(kind: str):
        def wrapped(self, *args, **kwargs):
            att, gate = originals[kind](self, *args, **kwargs)
            weights[(self, kind)].append(att.detach().cpu().numpy())
            return att, gate

        return wrapped

    try:
        for kind in originals:
            setattr(VolumetricAttention, f"{kind}_attention", recording(kind))
        yield
    finally:
        for kind, original in originals.items():
            setattr(VolumetricAttention, f"{kind}_attention", original)


def summarize(weights: dict, levels: dict) -> list[dict]:
    """Per level and attention: the mean weight of the target image and of the images ``FAR`` or more away."""
    rows = []
    for (block, kind), batches in weights.items():
        att = np.concatenate(batches)  # (targets, N)
        n = att.shape[1]
        offsets = np.abs(np.arange(n) - n // 2)
        rows.append(
            {
                "level": levels[block],
                "attention": kind,
                "targets": len(att),
                "target_weight": float(att[:, offsets == 0].sum(1).mean()),
                "far_weight": float(att[:, offsets >= FAR].sum(1).mean()),
                "uniform_far_weight": float((offsets >= FAR).mean()),
            }
        )
    return sorted(rows, key=lambda r: (r["attention"], r["level"]))


def arm_weights(run: Path, arm: str, seed: int) -> list[dict]:
    """Evaluate ``arm``/``seed`` of the ablation in ``run`` again, recording its slice weights."""
    settings = json.loads((run / "ablation.json").read_text())["settings"]
    arm_dir = run / f"{arm}_seed{seed}"
    overrides = va_ablation.arm_overrides(
        arm, seed, run / "lits_context", arm_dir, settings["epochs"], settings["overrides"]
    )
    weights = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp, recorded_slice_weights(weights):
        evaluation = {**overrides, **va_ablation.held_out_evaluation(arm_dir, settings["epochs"], tmp)}
        evaluating = ablation.evaluation_workflow(va_ablation.CONFIGS, evaluation)
        network = evaluating.parser.get_parsed_content("network")
        levels = {block: name for name, block in network.backbone.attention.items()}
        evaluating.run()
    return [{"arm": arm, "seed": seed, **row} for row in summarize(weights, levels)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the --out folder of a finished va_ablation run")
    parser.add_argument("--arms", nargs="+", default=["full"], choices=["channel", "spatial", "full"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="JSON of every row (default: <run>/slice_attention.json)")
    args = parser.parse_args()
    rows = [row for arm in args.arms for seed in args.seeds for row in arm_weights(args.run, arm, seed)]
    (args.out or args.run / "slice_attention.json").write_text(json.dumps(rows, indent=1))
    print("| arm | seed | attention | level | target image | images >= 2 away (uniform) |")
    print("|---|---:|---|---|---:|---:|")
    for r in rows:
        far = f"{r['far_weight']:.3f} ({r['uniform_far_weight']:.3f})"
        print(f"| {r['arm']} | {r['seed']} | {r['attention']} | {r['level']} | {r['target_weight']:.3f} | {far} |")


if __name__ == "__main__":
    main()
