"""How often VA's training sees what it must learn: over the training slices of ``benchmarks/va_ablation.py``'s
context phantoms, drawn as its sampler draws them (slices holding a lesion ``lesion_oversampling`` times as often as
the others), the expected share of sampled slices that show a lesion and that show a look-alike, and of the lesion-
like pixels they show, the share that are look-alikes: the only training signal that asks the bag to tell the two
apart (a look-alike is labelled liver).

    PYTHONPATH=. .venv/bin/python benchmarks/va_lookalike_share.py [--out outputs/va_ablation] [--fov liver]
        [--cases 32] [--shape 128 128 64] [--oversampling 10] [--samples 200] [--json share.json]

The volumes are those ``va_ablation.py`` writes with the same ``--out``, ``--cases``, ``--shape`` and context options
(written once, reused), split as it splits them; each is counted on its drawn phantom's own slices, each slice
weighted by its thickness over the bundle's 1.5 mm (the cache resamples every volume to that), so a volume counts as
many slices as training reads from it.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ablation  # noqa: E402
from benchmarks.va_ablation import CONFIGS, DEMO_OVERRIDES, SPLIT_SEED, drawn_phantom, make_data  # noqa: E402
from shared.phantoms.lits import FIELDS_OF_VIEW  # noqa: E402
from shared.transforms.volume_cache import oversampling_weights  # noqa: E402

SLICE_MM = json.loads((CONFIGS / "train.json").read_text())["slice_thickness"]  # what the volume cache resamples to


def slice_counts(phantom, lookalikes: set[int]) -> dict:
    """Per axial slice of one phantom: its lesion and look-alike pixels (liver lesions only) and its weight in
    resampled slices (thickness / the bundle's ``slice_thickness``)."""
    liver = [i for i, lesion in enumerate(phantom.lesion_list) if lesion.site == "liver"]
    lookalike = np.isin(phantom.lesions, [i + 1 for i in liver if i in lookalikes])
    lesion = np.isin(phantom.lesions, [i + 1 for i in liver if i not in lookalikes])
    return {
        "lesion_px": lesion.sum(axis=(0, 1)),
        "lookalike_px": lookalike.sum(axis=(0, 1)),
        "weight": np.full(phantom.lesions.shape[2], np.linalg.norm(phantom.affine[:3, 2]) / SLICE_MM),
    }


def sampled_share(volumes: list[dict], oversampling: float) -> dict:
    """Expected shares over slices drawn as the bundle's sampler draws them (its ``oversampling_weights``)."""
    lesion_px = np.concatenate([v["lesion_px"] for v in volumes])
    lookalike_px = np.concatenate([v["lookalike_px"] for v in volumes])
    items = [
        {"image": n, "slice": z, "label_slices": {2: np.flatnonzero(v["lesion_px"]).tolist()}}
        for n, v in enumerate(volumes)
        for z in range(len(v["lesion_px"]))
    ]
    p = np.concatenate([v["weight"] for v in volumes]) * oversampling_weights(items, oversampling).numpy()
    p /= p.sum()
    lesion_seen, lookalike_seen = float(p @ lesion_px), float(p @ lookalike_px)
    return {
        "slices_with_lesion": float(p[lesion_px > 0].sum()),
        "slices_with_lookalike": float(p[lookalike_px > 0].sum()),
        "slices_with_both": float(p[(lookalike_px > 0) & (lesion_px > 0)].sum()),
        "lookalike_share_of_lesion_like_px": lookalike_seen / (lesion_seen + lookalike_seen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "va_ablation")
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64])
    parser.add_argument("--context_bag", type=int, default=DEMO_OVERRIDES["bag_size"])
    parser.add_argument("--max_lookalikes", type=int, default=1)
    parser.add_argument("--fov", choices=FIELDS_OF_VIEW, default="body")
    parser.add_argument("--oversampling", type=float, default=DEMO_OVERRIDES["lesion_oversampling"])
    parser.add_argument("--samples", type=int, default=200, help="slices per epoch")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    from shared.data.lits import make_datalist

    context = {"context_bag": args.context_bag, "max_lookalikes": args.max_lookalikes, "fov": args.fov}
    data = make_data(args.out, args.cases, args.shape, context)
    cases = [e["case"] for e in make_datalist(data, seed=SPLIT_SEED)["training"]]
    volumes = [slice_counts(*drawn_phantom(case, args.shape, context)) for case in cases]
    share = {
        "oversampled": sampled_share(volumes, args.oversampling),
        "uniform": sampled_share(volumes, 1.0),
    }
    for name, figures in share.items():
        line = ", ".join(f"{key} {value:.3f}" for key, value in figures.items())
        print(
            f"{name}: {line}; per epoch of {args.samples}: {figures['slices_with_lookalike'] * args.samples:.1f} "
            f"slices with a look-alike, {figures['slices_with_lesion'] * args.samples:.1f} with a lesion"
        )
    if args.json:
        settings = {**vars(args), "out": str(args.out), "json": None, "training_volumes": len(cases)}
        machine = ablation.machine_settings(1)
        run = {key: machine[key] for key in ("command", "commit")}
        args.json.write_text(json.dumps({"settings": {**settings, **run}, **share}, indent=1))


if __name__ == "__main__":
    main()
