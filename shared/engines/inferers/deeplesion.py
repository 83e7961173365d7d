"""Box inference of the DeepLesion bundle (``cs_att_deeplesion/configs/inference.json``, :func:`run_inference`).

- DeepLesion roots (``DL_info.csv`` + ``Images_png``): every key slice of the chosen datalist split is preprocessed
  as 3DCE (``shared.transforms.deeplesion``) and detected alone; boxes go back to the PNG's pixels.
- CT volumes (``.nii``, ``.nii.gz`` or a folder holding one DICOM series): every axial slice is a key slice
  (:func:`shared.engines.inferers.volume_boxes.detect_volume`).

Every input volume is checked (``volume_entries``) and the output folder probed before the first detection.
Output, each file written atomically: ``detections.json`` in the format of ``shared.metrics.deeplesion`` (``series``
is the volume name for volumes), optionally ``<volume>_boxes.nii.gz`` with the box outlines drawn as label 1 in the
input's space.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from shared.engines.inferers.volume_boxes import VolumeDetectionInferer, detect_volume
from shared.engines.precision import autocast
from shared.engines.volume_io import volume_entries, writable_output_dir, writing_to
from shared.transforms.deeplesion import LoadDeepLesionSampled, prepare_entries

logger = logging.getLogger(__name__)


@torch.no_grad()
def detect_entries(
    model: torch.nn.Module, entries: Sequence[dict], loader: LoadDeepLesionSampled, amp: bool = False
) -> list[dict]:
    """Detections on DeepLesion key slices (datalist entries) in the PNG's pixels, as JSON-ready dicts; ``amp``:
    the model runs in float16 autocast on a GPU."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for entry in entries:
        sample = loader(entry)
        with autocast(device, amp):
            det = model([sample["image"].to(device)])[0]
        series = Path(entry["image"]).name
        x0, y0 = sample["origin"]
        boxes = det["boxes"].float().cpu() / sample["scale"] + torch.tensor([x0, y0, x0, y0], dtype=torch.float32)
        for box, score in zip(boxes.tolist(), det["scores"].tolist()):
            out.append({"series": series, "slice": int(entry["key_slice"]), "box": box, "score": float(score)})
    return out


def run_inference(
    model: torch.nn.Module,
    dataset_dir: str | Path,
    output_dir: str | Path,
    loader: LoadDeepLesionSampled,
    split: str = "test",
    batch_size: int = 4,
    label_threshold: float | None = 0.5,
    min_score: float = 0.05,
    amp: bool = False,
) -> Path:
    """Detect on ``dataset_dir`` (a DeepLesion root, or CT volumes) and write ``<output_dir>/detections.json``.

    A DeepLesion root (with ``DL_info.csv``) is read with ``shared.data.deeplesion.make_datalist`` and the entries
    of ``split`` are detected (all boxes, for FROC scoring); otherwise every volume of ``dataset_dir`` is (boxes
    scoring >= ``min_score``; with the label NIfTIs of boxes scoring >= ``label_threshold`` unless it is None).
    ``amp``: the model runs in float16 autocast on a GPU.
    """
    from shared.metrics.deeplesion import write_detections

    root, out_dir = Path(dataset_dir), Path(output_dir)
    if (root / "DL_info.csv").is_file():
        from shared.data.deeplesion import make_datalist

        entries = prepare_entries(make_datalist(root)[split], loader)
        writable_output_dir(out_dir)
        detections = detect_entries(model, entries, loader, amp)
        logger.info("detected %d boxes on %d DeepLesion key slices", len(detections), len(entries))
    else:
        paths = [Path(entry["image"]) for entry in volume_entries(str(root))]
        writable_output_dir(out_dir)
        inferer = VolumeDetectionInferer(loader.params, batch_size, amp)
        detections = []
        for path in paths:
            detections += detect_volume(model, path, inferer, out_dir, label_threshold, min_score)
            logger.info("%s: %s", path.name, inferer.stats)
    with writing_to(out_dir):
        return write_detections(out_dir / "detections.json", detections)
