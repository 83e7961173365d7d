"""The DeepLesion evaluation report (cs_att_deeplesion evaluate.json): detections, FROC table, Table 2 groups,
pictures of detections and of the CS-Att attention maps."""

import math
from pathlib import Path

import torch

from shared.data.atomic import atomic_path
from shared.engines.inferers.deeplesion import detect_entries
from shared.transforms.deeplesion import LoadDeepLesionSampled, prepare_entries, read_hu_png, slice_files

__all__ = ["evaluate_detector"]


def _attention_pictures(model, sample: dict, out_dir: Path) -> list[Path]:
    """CS-Att Fig. 2/3 for the first lesion of a sample, over the middle slice of each 3-slice image: contextual
    attention (mean over channels) on the lesion's neighbourhood, spatial attention on the whole slices."""
    from shared.visualize import save_attention_png

    if not hasattr(model, "attention_maps") or not len(sample["boxes"]):
        return []
    stride = 8  # the attention modules work on the stride 8 feature maps
    maps = model.attention_maps([sample["image"].to(next(model.parameters()).device)])
    slices = sample["image"][1::3].cpu().numpy()  # (M, H, W): the middle slice of each 3-slice image
    box = sample["boxes"][0].tolist()
    margin = max(2 * stride, box[2] - box[0], box[3] - box[1])
    around = (box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin)
    saved = []
    for name, title, crop in (
        ("contextual", "contextual attention C'' around the lesion", around),
        ("spatial", "spatial attention S''", None),
    ):
        if name in maps:
            shown = maps[name][0].mean(dim=1).cpu().numpy()  # (M, h, w): mean over the D channels
            out = out_dir / f"{name}_attention.png"
            saved.append(save_attention_png(shown, slices, out, title, stride=stride, box=box, crop=crop))
    return saved


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
    per image), ``froc.png``, ``detections_<series>_<slice>.png`` (GT blue, TP green, FP red) and the attention
    heatmaps. Prints the sensitivity table; returns the ``MetricTable``. ``amp``: detection in float16 autocast on a
    GPU.
    """
    import json

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

    save_froc_png(result.curve, out_dir / "froc.png", title=f"FROC, DeepLesion {split}")
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
    with_lesion = next((e for e in entries if e.get("boxes")), None)
    if with_lesion is not None:
        _attention_pictures(model, loader(with_lesion), out_dir)
    return table
