"""The DeepLesion evaluation report (cs_att_deeplesion evaluate.json): detections, FROC table, Table 2 groups,
pictures of detections and of the CS-Att attention maps."""

import json
import math
from pathlib import Path

import numpy as np
import torch

from shared.data.atomic import atomic_path
from shared.engines.inferers.deeplesion import detect_entries
from shared.transforms.deeplesion import LoadDeepLesionSampled, prepare_entries, read_hu_png, scale_boxes, slice_files

__all__ = ["evaluate_detector"]

STRIDE = 8  # CS-Att works on the backbone's stride 8 features: cell (r, c) covers pixels [8r, 8r + 8) x [8c, 8c + 8)


def _attention_objects(root: Path, entries: list[dict], loader: LoadDeepLesionSampled) -> dict[str, tuple]:
    """``{"lesion": (sample, box), "lookalike": (sample, box)}``: the first lesion of the first key slice with one
    and, when ``root`` holds the context phantoms' look-alikes, the first look-alike of the first key slice with one
    (mapped into the sample's pixels as the loader maps DL_info.csv's boxes); absent when there is none."""
    from shared.phantoms.deeplesion import LOOKALIKES_NAME

    objects = {}
    for entry in entries:
        sample = loader(entry)
        if len(sample["boxes"]):
            objects["lesion"] = (sample, sample["boxes"][0].tolist())
            break
    path = root / LOOKALIKES_NAME
    lookalikes = json.loads(path.read_text()) if path.is_file() else {}
    for entry in (e for e in entries if lookalikes.get(e["file_name"])):
        sample = loader(entry)
        one_based = np.asarray(lookalikes[entry["file_name"]], dtype=np.float32)
        boxes = scale_boxes(one_based - 1.0, sample["scale"], sample["image"].shape[1:], str(path), sample["origin"])
        if len(boxes):
            objects["lookalike"] = (sample, boxes[0].tolist())
            break
    return objects


def box_cells(box: list[float], cells_hw: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the feature cells that a pixel box (x1, y1, x2, y2) overlaps, at least one of each."""

    def span(low: float, high: float, size: int) -> slice:
        first = min(int(low // STRIDE), size - 1)
        return slice(first, max(first + 1, min(size, math.ceil(high / STRIDE))))

    return span(box[1], box[3], cells_hw[0]), span(box[0], box[2], cells_hw[1])


def _attention_pictures(model, objects: dict[str, tuple], out_dir: Path) -> dict:
    """CS-Att Fig. 3 for each object ``(sample, box)``: the contextual weight of each of the M images (C'' averaged
    over the channels and the feature cells the box covers) and the spatial map S'' of the key image (channel mean)
    over the key slice. Writes ``attention_<name>.png`` and ``attention.json``, prints one line per object and
    returns the JSON's content; nothing for a network without CS-Att maps (3DCE)."""
    from shared.visualize import save_object_attention_png

    if not hasattr(model, "attention_maps"):
        return {}
    device = next(model.parameters()).device
    report = {}
    for name, (sample, box) in objects.items():
        maps = model.attention_maps([sample["image"].to(device)])
        if not maps:
            return {}
        height, width = sample["image"].shape[1:]
        cells = (math.ceil(height / STRIDE), math.ceil(width / STRIDE))  # the image's cells, without the padding
        means = {k: v[0, :, :, : cells[0], : cells[1]].mean(dim=1).cpu().numpy() for k, v in maps.items()}
        rows, cols = box_cells(box, cells)
        key = next(iter(maps.values())).shape[1] // 2  # M // 2: the key slice is the middle image's middle channel
        record = {"file": sample["file_name"], "box": box}
        record |= dict.fromkeys(("contextual_per_image", "spatial_mean_in_box", "spatial_mean_outside_box"))
        if "contextual" in means:
            record["contextual_per_image"] = means["contextual"][:, rows, cols].mean(axis=(1, 2)).tolist()
        spatial = means["spatial"][key] if "spatial" in means else None
        if spatial is not None:
            inside = np.zeros(cells, dtype=bool)
            inside[rows, cols] = True
            record["spatial_mean_in_box"] = float(spatial[inside].mean())
            record["spatial_mean_outside_box"] = float(spatial[~inside].mean()) if (~inside).any() else None
        key_slice = sample["image"][3 * key + 1].cpu().numpy()
        title = f"{name}: {sample['file_name']}"
        weights = record["contextual_per_image"]
        save_object_attention_png(weights, spatial, key_slice, out_dir / f"attention_{name}.png", title, STRIDE, box)
        report[name] = record
        offsets = f"K{-key:+d}..K{key:+d}"
        line = f"CS-Att attention, {title}, box {[round(v, 1) for v in box]}:"
        if weights is not None:
            line += f" contextual weight per image ({offsets}) {' '.join(f'{w:.3f}' for w in weights)};"
        if spatial is not None:
            outside = record["spatial_mean_outside_box"]
            line += f" spatial S'' in the box {record['spatial_mean_in_box']:.3f}, outside"
            line += " n/a" if outside is None else f" {outside:.3f}"
        print(line.rstrip(";"))
    if report:
        with atomic_path(out_dir / "attention.json") as tmp:
            tmp.write_text(json.dumps(report, indent=1))
    return report


def _text_table(header: list[str], row: list) -> str:
    """Two aligned lines: a header and a row of numbers (3 decimals, NaN as n/a)."""
    cells = [v if isinstance(v, str) else ("n/a" if math.isnan(v) else f"{v:.3f}") for v in row]
    widths = [max(len(h), len(c)) for h, c in zip(header, cells)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in (header, cells))


def evaluate_detector(
    model: torch.nn.Module,
    dataset_dir: str | Path,
    output_dir: str | Path,
    loader: LoadDeepLesionSampled,
    split: str = "validation",
    num_pictures: int = 4,
    amp: bool = False,
):
    """Detect on the key slices of ``split`` of a DeepLesion root, score them and draw the paper's pictures.

    Writes into ``output_dir``: ``detections.json``, ``sensitivity.csv`` (per key slice rows of
    ``shared.metrics.deeplesion.score_detections``), ``summary.json``, ``table2.csv`` (CS-Att Table 2 groups at 4 FPs
    per image), ``froc.png``, ``detections_<series>_<slice>.png`` (GT blue, TP green, FP red) of the first
    ``num_pictures`` key slices and, when ``num_pictures > 0`` and the network has CS-Att blocks, the attention
    pictures of a lesion and a look-alike (``attention.json``, ``attention_<object>.png``). Prints the
    sensitivity table; returns the ``MetricTable``. ``amp``: detection in float16 autocast on a GPU.
    """
    from shared.data.deeplesion import make_datalist, read_annotations
    from shared.metrics.deeplesion import FP_RATES, key_slices, score_detections, write_detections
    from shared.visualize import save_detection_png, save_froc_png

    root, out_dir = Path(dataset_dir), Path(output_dir)
    entries = prepare_entries(make_datalist(root)[split], loader)
    detections = detect_entries(model, entries, loader, amp)
    path = write_detections(out_dir / "detections.json", detections)
    truth = key_slices(read_annotations(root), split)
    table, result = score_detections(detections, truth, source=str(path))
    table.write_csv(out_dir / "sensitivity.csv")
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(table.to_dict()["summary"], indent=1))
    groups = [(k.split("_", 1)[1], v) for k, v in table.summary.items() if k.startswith("sens@4_")]
    with atomic_path(out_dir / "table2.csv") as tmp:
        rows = "".join(f"{g},{'' if math.isnan(v) else f'{v:.4f}'}\n" for g, v in groups)
        tmp.write_text("group,sensitivity_at_4fp\n" + rows)

    save_froc_png(result, out_dir / "froc.png", title=f"FROC, DeepLesion {split}")
    print(f"\nDeepLesion {split}: {result.num_images} key slices, {result.num_lesions} lesions")
    print(_text_table(["FPs per image", *(f"{r:g}" for r in FP_RATES)], ["sensitivity", *result.sensitivities]))
    print("CS-Att Table 2 groups, sensitivity at 4 FPs per image")
    print(_text_table(["group", *(g for g, _ in groups)], ["sensitivity", *(v for _, v in groups)]))

    threshold = result.threshold_at(4.0)
    for k in truth[:num_pictures]:
        hu = read_hu_png(slice_files(root / "Images_png" / k.series)[k.slice])
        ds = [d for d in detections if (d["series"], d["slice"]) == (k.series, k.slice)]
        save_detection_png(
            hu,
            k.boxes,
            [d["box"] for d in ds],
            [d["score"] for d in ds],
            out_dir / f"detections_{k.series}_{k.slice:03d}.png",
            score_threshold=min(threshold, 1.0),
        )
    if num_pictures > 0:
        _attention_pictures(model, _attention_objects(root, entries, loader), out_dir)
    return table
