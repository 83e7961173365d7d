"""What CS-Att's spatial attention weighs, per channel, in a finished ``benchmarks/csatt_ablation.py`` run: for every
arm with spatial attention and every seed, the key image's map S'' (eq. 6-7) of the trained network and of the same
network with untrained weights, read on the test key slices in the boxes of the lesions (ground truth) and of the
false boxes the trained detector keeps at its 4 FPs per image operating point.

    PYTHONPATH=. .venv/bin/python benchmarks/csatt_spatial_channels.py --run outputs/csatt_ablation [--out out.json]
        [--pictures DIR]

Per box and channel: the mean of S'' over the feature cells the box covers over its mean outside them (the ratio; 1
is no preference), and whether the channel's largest value lies in the box (its peak). Reported per arm, weights and
kind of box, mean +- sd over seeds: the median ratio over channels (averaged over boxes), the share of channels whose
ratio is above 1, the share whose peak is in the box against the box's share of the cells (what a peak drawn at
random would give), and the ratio of the channel mean (what the attention pictures show, ``reports/deeplesion.py``).
A spatial attention that raises true boxes above clutter would give lesion boxes ratios above 1 and more peaks than
chance, and false boxes less. ``--pictures DIR``: for the first seed of each arm, the attention picture (the channel
mean of S'' over the key slice, ``shared.visualize.save_object_attention_png``) of the trained network on the first
test key slice that holds both a lesion and a false box: ``<arm>_true_box.png``, ``<arm>_false_box.png``.
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import csatt_ablation  # noqa: E402

MEASURES = ("median_ratio", "share_above_1", "share_peaks_in_box", "chance_peaks_in_box", "channel_mean_ratio")


def box_mask(box, cells_hw: tuple[int, int]) -> np.ndarray:
    """Boolean (h, w) mask of the feature cells a pixel box (x1, y1, x2, y2) overlaps, at least one cell."""
    from shared.engines.reports.deeplesion import box_cells

    inside = np.zeros(cells_hw, dtype=bool)
    inside[box_cells(list(box), cells_hw)] = True
    return inside


def channel_preference(spatial: np.ndarray, inside: np.ndarray) -> dict:
    """One box on one key image: ``spatial`` S'' as (D, h, w), ``inside`` the box's cells (h, w). Returns the
    :data:`MEASURES` of that box (see the module docstring)."""
    flat = spatial.reshape(spatial.shape[0], -1)
    box = inside.reshape(-1)
    ratios = flat[:, box].mean(axis=1) / flat[:, ~box].mean(axis=1)
    peaks = box[flat.argmax(axis=1)]
    mean = flat.mean(axis=0)
    return {
        "median_ratio": float(np.median(ratios)),
        "share_above_1": float((ratios > 1).mean()),
        "share_peaks_in_box": float(peaks.mean()),
        "chance_peaks_in_box": float(box.mean()),
        "channel_mean_ratio": float(mean[box].mean() / mean[~box].mean()),
    }


def false_boxes(detection: dict, truth: np.ndarray, threshold: float) -> list[list[float]]:
    """The boxes of one key slice's ``detection`` (torchvision's output, the sample's pixels) scored at least
    ``threshold`` that overlap no ground-truth box of ``truth`` with IoU >= 0.5 (3DCE's hit)."""
    from shared.metrics.deeplesion import box_overlaps

    kept = detection["boxes"][detection["scores"] >= threshold].numpy()
    if not len(kept) or not len(truth):
        return kept.tolist()
    return kept[box_overlaps(kept, truth, pixel_inclusive=True).max(axis=1) < 0.5].tolist()


def mean_over(records: list[dict]) -> dict:
    """The mean of each of :data:`MEASURES` over boxes (NaN-free; None when there is no box) and the box count."""
    return {"boxes": len(records), **{k: statistics.mean(r[k] for r in records) if records else None for k in MEASURES}}


def measure_network(network, loader, entries, threshold: float | None, pictures: Path | None = None) -> dict:
    """:func:`channel_preference` of every lesion box (``lesion``) and, given the 4-FP ``threshold``, every false box
    the network keeps (``false``) on the key slices ``entries``, averaged (:func:`mean_over`). ``pictures``: a path
    prefix; the first key slice with a lesion and a false box is drawn for each (``<prefix>_true_box.png``, ...)."""
    import torch

    from shared.engines.reports.deeplesion import STRIDE

    network.eval()
    found = {"lesion": [], "false": []}
    with torch.no_grad():
        for entry in entries:
            sample = loader(entry)
            image = sample["image"]
            spatial = network.attention_maps([image])["spatial"][0]  # (M, D, h, w)
            cells = (math.ceil(image.shape[1] / STRIDE), math.ceil(image.shape[2] / STRIDE))
            key = spatial[spatial.shape[0] // 2, :, : cells[0], : cells[1]].numpy()
            truth = np.asarray(sample["boxes"], dtype=float).reshape(-1, 4)
            boxes = {"lesion": truth.tolist()}
            if threshold is not None:
                boxes["false"] = false_boxes(network([image])[0], truth, threshold)
            for kind, kind_boxes in boxes.items():
                for box in kind_boxes:
                    inside = box_mask(box, cells)
                    if (~inside).any():
                        found[kind].append(channel_preference(key, inside))
            if pictures is not None and all(boxes.get(kind) for kind in ("lesion", "false")):
                draw(sample, key, boxes, pictures)
                pictures = None
    return {kind: mean_over(records) for kind, records in found.items() if threshold is not None or kind == "lesion"}


def draw(sample: dict, spatial: np.ndarray, boxes: dict, prefix: Path) -> None:
    """The channel mean of ``spatial`` (D, h, w) over the key slice of ``sample`` with the first lesion box and the
    first false box: ``<prefix>_true_box.png`` and ``<prefix>_false_box.png``."""
    from shared.engines.reports.deeplesion import STRIDE
    from shared.visualize import save_object_attention_png

    image = sample["image"]
    images = image.shape[0] // 3  # M three-slice images
    key_slice = image[3 * (images // 2) + 1].numpy()  # the middle image's middle channel
    for kind, name in (("lesion", "true"), ("false", "false")):
        title = f"{name} box: {sample['file_name']}"
        path = Path(f"{prefix}_{name}_box.png")
        save_object_attention_png(None, spatial.mean(axis=0), key_slice, path, title, STRIDE, boxes[kind][0])
        print(f"wrote {path}", flush=True)


def arm_network(run_settings: dict, record: dict, data: Path, arm_dir: Path):
    """The arm's network (untrained, drawn with its seed) and loader, built from the bundle's configs with the run's
    overrides, as the ablation built them."""
    import monai
    from monai.bundle import ConfigParser

    overrides = csatt_ablation.arm_overrides(
        record["arm"], record["seed"], data, arm_dir, run_settings["epochs"], run_settings["overrides"]
    )
    parser = ConfigParser()
    parser.read_config([str(csatt_ablation.CONFIGS / "train.json"), str(csatt_ablation.CONFIGS / "evaluate.json")])
    parser.update(overrides)
    monai.utils.set_determinism(seed=record["seed"])
    return parser.get_parsed_content("network_def"), parser.get_parsed_content("loader")


def run_channels(run: Path, pictures: Path | None = None) -> dict:
    """Every spatial-attention arm and seed of the run at ``run``: trained and untrained measurements; ``pictures``: a
    folder for the pictures of the first seed of each arm (:func:`draw`)."""
    from shared.data.deeplesion import make_datalist
    from shared.networks.pretrained import read_state_dict
    from shared.transforms.deeplesion import prepare_entries

    report = json.loads((run / "ablation.json").read_text())
    settings = report["settings"]
    data = run / f"deeplesion_{settings.get('phantoms', 'context')}"
    out = {"run": str(run), "settings": {k: settings.get(k) for k in ("command", "commit", "phantoms")}, "runs": []}
    drawn = set()  # arms already pictured: the records come by arm, then seed
    for record in report["runs"]:
        if "spatial" not in record["blocks"]:
            continue
        arm_dir = run / f"{record['arm']}_seed{record['seed']}"
        network, loader = arm_network(settings, record, data, arm_dir)
        entries = prepare_entries(make_datalist(data)["test"], loader)
        threshold = csatt_ablation.scored_detections(Path(record["eval_dir"]), data)[2].threshold_at(4.0)  # 4 FPs
        untrained = measure_network(network, loader, entries, None)
        network.load_state_dict(read_state_dict(arm_dir / "models" / "model.pt"))
        prefix = pictures / record["arm"] if pictures is not None and record["arm"] not in drawn else None
        drawn.add(record["arm"])
        trained = measure_network(network, loader, entries, threshold, prefix)
        row = {"arm": record["arm"], "seed": record["seed"], "threshold_at_4fp": threshold}
        out["runs"].append({**row, "untrained": untrained, "trained": trained})
        print(json.dumps(out["runs"][-1]), flush=True)
    out["table"] = summarize(out["runs"])
    return out


def summarize(runs: list[dict]) -> list[dict]:
    """Mean +- sd over seeds of each measure, per arm, weights (untrained, trained) and box kind."""
    rows = []
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        for weights, kind in (("untrained", "lesion"), ("trained", "lesion"), ("trained", "false")):
            per_seed = [r[weights][kind] for r in mine if r[weights][kind]["boxes"]]
            row = {"arm": arm, "weights": weights, "boxes": kind, "seeds": len(per_seed)}
            for k in ("boxes", *MEASURES):
                values = [p[k] for p in per_seed]
                name = "box_count" if k == "boxes" else k
                row[name] = [statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0]
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """The table of :func:`summarize` in markdown."""
    header = "| arm | weights | boxes | boxes per seed | " + " | ".join(MEASURES) + " |"
    lines = [header, "|" + "---|" * (4 + len(MEASURES))]
    for r in rows:
        cells = [f"{r[k][0]:.3f} +- {r[k][1]:.3f}" for k in MEASURES]
        lines.append(
            f"| {r['arm']} | {r['weights']} | {r['boxes']} | {r['box_count'][0]:.0f} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the --out folder of benchmarks/csatt_ablation.py")
    parser.add_argument("--out", type=Path, help="write the measurements as JSON here")
    parser.add_argument("--pictures", type=Path, help="folder for the true- and false-box attention pictures")
    args = parser.parse_args()
    if args.pictures:
        args.pictures.mkdir(parents=True, exist_ok=True)
    result = run_channels(args.run.resolve(), args.pictures)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(result["table"]))


if __name__ == "__main__":
    main()
