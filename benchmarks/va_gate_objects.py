"""What VA's spatial gate does to lesions and look-alikes, in a finished ``benchmarks/va_ablation.py`` run: for every
seed of an arm with spatial attention, its trained network's backbone reads the bag of each held-out volume's object
level (where its lesions and its look-alike lie, on one axial slice), and the spatial gate S_s of every FPN level
is averaged over each object (weighted by the share of each feature cell the object covers) and divided by its
mean over the liver on that slice.

    PYTHONPATH=. .venv/bin/python benchmarks/va_gate_objects.py --run outputs/va_ablation [--arm full] [--out out.json]

A gate that tells look-alikes from lesions, as context should, would weigh look-alikes less than the lesions beside
them (a ratio below the lesions'); equal ratios say the gate treats them alike. Reported per level, mean +- sd over
seeds of the mean over volumes: lesions, look-alikes, and look-alike minus the lesions of the same volume (paired).
The objects come from the phantoms' own draws (``va_ablation.drawn_phantom``), the image through the bundle's
preprocessing, the bag as the bundle cuts it (``shared.transforms.slice_bags.bag_slice_indices``).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import va_ablation  # noqa: E402
from benchmarks.va_block_stats import recorded_block_stats  # noqa: E402
from shared.phantoms import ct  # noqa: E402
from shared.transforms.slice_bags import bag_slice_indices  # noqa: E402

KINDS = ("lesion", "lookalike", "lookalike_minus_lesion")


def object_gate(gate: np.ndarray, mask: np.ndarray) -> float:
    """Mean of a (h, w) gate over a (H, W) object mask, each gate cell weighted by the share of it the mask covers."""
    weights = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None], gate.shape)[0]
    weights = weights.numpy()
    return float((gate * weights).sum() / weights.sum())


def gate_ratios(gates: dict[str, np.ndarray], objects: list[np.ndarray], liver: np.ndarray) -> dict[str, list]:
    """Per level, each object's gate (:func:`object_gate`) over the liver's."""
    return {level: [object_gate(g, m) / object_gate(g, liver) for m in objects] for level, g in gates.items()}


def spatial_gates(network, bag: torch.Tensor) -> dict[str, np.ndarray]:
    """The spatial gate S_s (h, w) of each FPN level's VA block when the backbone reads one bag (1, 3N, H, W), as
    ``benchmarks/va_block_stats.py`` records it."""
    blocks = dict(network.backbone.attention.items())
    with recorded_block_stats(blocks) as stats, torch.no_grad():
        features = network.backbone(bag)
    return {level: stats[level].spatial_gates[-1][0].reshape(features[level].shape[-2:]) for level in blocks}


def arm_parts(settings: dict, record: dict, data: Path, arm_dir: Path):
    """The arm's trained network (its last model, as the ablation evaluated it) and the bundle's preprocessing."""
    from monai.bundle import ConfigParser

    from shared.networks.pretrained import read_state_dict

    overrides = va_ablation.arm_overrides(
        record["arm"], record["seed"], data, arm_dir, settings["epochs"], settings["overrides"]
    )
    overrides["pretrained"] = "false"  # the trained weights are loaded below
    parser = ConfigParser()
    parser.read_config(str(va_ablation.CONFIGS / "train.json"))
    parser.update(overrides)
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(read_state_dict(va_ablation.last_checkpoint(arm_dir, settings["epochs"])))
    return network.eval(), parser.get_parsed_content("preprocessing"), int(parser["bag_size"])


def object_level(preprocessing, bag_size: int, data: Path, case: str, shape, options: dict) -> dict:
    """One held-out volume's object level: the bag the bundle cuts there (1, 3N, H, W), the kind (lesion or
    look-alike) and in-plane mask of each object on it, and the liver's mask."""
    phantom, lookalikes = va_ablation.drawn_phantom(case, shape, options)
    level = float(phantom.lesion_list[0].shape.center[2])
    k = round((level - phantom.affine[2, 3]) / phantom.affine[2, 2])
    ids = phantom.lesions[:, :, k]
    present = [i for i in range(len(phantom.lesion_list)) if (ids == i + 1).any()]
    image = preprocessing({"image": str(data / f"{case}.nii")})["image"]
    target = round(float((level - image.affine[2, 3]) / image.affine[2, 2]))
    indices = bag_slice_indices(target, image.shape[-1], bag_size)
    return {
        "bag": image[0][..., indices].permute(2, 0, 1)[None].float(),  # (1, 3N, X, Y), as the cache lays slices out
        "objects": ["lookalike" if i in lookalikes else "lesion" for i in present],
        "masks": [ids == i + 1 for i in present],
        "liver": phantom.organs[:, :, k] == ct.ORGAN["liver"],
    }


def summarize_volume(volume: dict) -> dict[str, dict]:
    """Per level: mean ratio of the lesions, of the look-alikes, and look-alike minus lesions (None where absent)."""
    out = {}
    for level, ratios in volume["ratios"].items():
        lesion = [r for r, kind in zip(ratios, volume["objects"]) if kind == "lesion"]
        lookalike = [r for r, kind in zip(ratios, volume["objects"]) if kind == "lookalike"]
        mean = lambda v: float(np.mean(v)) if v else None  # noqa: E731
        paired = mean(lookalike) - mean(lesion) if lesion and lookalike else None
        out[level] = {"lesion": mean(lesion), "lookalike": mean(lookalike), "lookalike_minus_lesion": paired}
    return out


def run_gates(run: Path, arm: str) -> dict:
    """Every seed of ``arm`` in the run: per volume the objects' gate ratios, per level their means. Each volume's
    object level is prepared once, for the first seed, and read by every seed's network."""
    from shared.data.lits import make_datalist

    report = json.loads((run / "ablation.json").read_text())
    settings = report["settings"]
    data = run / "lits_context"
    cases = [e["case"] for e in make_datalist(data, seed=va_ablation.SPLIT_SEED)["validation"]]
    seeds, levels_of = [], None
    for record in (r for r in report["runs"] if r["arm"] == arm):
        network, preprocessing, bag_size = arm_parts(settings, record, data, run / f"{arm}_seed{record['seed']}")
        if levels_of is None:
            shape, options = settings["phantom_shape"], settings["phantom_context"]
            levels_of = {case: object_level(preprocessing, bag_size, data, case, shape, options) for case in cases}
        volumes = {
            case: {
                "objects": v["objects"],
                "ratios": gate_ratios(spatial_gates(network, v["bag"]), v["masks"], v["liver"]),
            }
            for case, v in levels_of.items()
        }
        per_volume = [summarize_volume(v) for v in volumes.values()]
        levels = {
            level: {
                key: float(np.mean([p[level][key] for p in per_volume if p[level][key] is not None])) for key in KINDS
            }
            for level in per_volume[0]
        }
        seeds.append({"seed": record["seed"], "levels": levels, "volumes": volumes})
        print(f"seed {record['seed']}: {json.dumps(levels)}", flush=True)
    return {"run": str(run), "arm": arm, "commit": settings.get("commit"), "seeds": seeds}


def table(result: dict) -> str:
    """Markdown: per level, mean +- sd over seeds of the lesions', look-alikes' and paired ratios."""
    lines = [
        "| level | lesions | look-alikes | look-alike minus lesions (same volume) |",
        "|---|---|---|---|",
    ]
    for level in result["seeds"][0]["levels"]:
        cells = []
        for key in KINDS:
            values = [s["levels"][level][key] for s in result["seeds"]]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} +- {sd:.3f}")
        lines.append(f"| {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a finished va_ablation.py output folder")
    parser.add_argument("--arm", default="full", help="an arm with spatial attention")
    parser.add_argument("--out", type=Path, help="write the readings as JSON here")
    args = parser.parse_args()
    result = run_gates(args.run, args.arm)
    print(table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
