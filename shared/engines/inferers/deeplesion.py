"""Box inference of the DeepLesion bundle (``cs_att_deeplesion/configs/inference.json``, :func:`run_inference`).

- DeepLesion roots (``DL_info.csv`` + ``Images_png``): every key slice of the chosen datalist split is preprocessed
  as 3DCE (``shared.transforms.deeplesion``) and detected alone; boxes go back to the PNG's pixels.
- CT volumes (``.nii``, ``.nii.gz`` or a folder holding one DICOM series): every axial slice is a key slice
  (:func:`shared.engines.inferers.volume_boxes.detect_volume`).

Every input volume is checked (``volume_entries``) and the output folder probed before the first detection. The
inference config builds :class:`DetectionInputs` as its ``dataset`` and :func:`detect_inputs` as its ``evaluator``
(MONAI's inference workflow properties).
Output, each file written atomically: ``detections.json`` in the format of ``shared.metrics.deeplesion`` (``series``
is the volume name for volumes), optionally ``<volume>_boxes.nii.gz`` (``output_postfix``, ``output_ext``,
``output_dtype``) with the box outlines drawn as label 1 in the input's space.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from shared.engines.inferers.volume_boxes import VolumeDetectionInferer, box_volume_name, detect_volume
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


class DetectionInputs(Dataset):
    """What :func:`detect_inputs` detects on, listed on first use (so a config can build it before the data exists).

    A DeepLesion root (with ``DL_info.csv``): the key slices of ``split`` (``shared.data.deeplesion.make_datalist``)
    that ``loader`` can load (``prepare_entries``); otherwise the CT volumes of ``dataset_dir``, every one checked
    (``volume_entries``: all problems named, nothing written). Items are the datalist entries.
    """

    def __init__(self, dataset_dir: str | Path, split: str = "test", loader: LoadDeepLesionSampled | None = None):
        self.root = Path(dataset_dir)
        self.split = split
        self.loader = loader or LoadDeepLesionSampled()

    @property
    def is_deeplesion(self) -> bool:
        return (self.root / "DL_info.csv").is_file()

    @cached_property
    def entries(self) -> list[dict]:
        if self.is_deeplesion:
            from shared.data.deeplesion import make_datalist

            return prepare_entries(make_datalist(self.root)[self.split], self.loader)
        return volume_entries(str(self.root))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict:
        return self.entries[index]


def detect_inputs(
    model: torch.nn.Module,
    inputs: DetectionInputs,
    output_dir: str | Path,
    batch_size: int = 4,
    label_threshold: float | None = 0.5,
    min_score: float = 0.05,
    amp: bool = False,
    output_postfix: str = "boxes",
    output_ext: str = ".nii.gz",
    output_dtype: np.dtype | type = np.uint8,
) -> Path:
    """Detect on ``inputs`` and write ``<output_dir>/detections.json``: on DeepLesion key slices all boxes (for FROC
    scoring), on volumes the boxes scoring >= ``min_score``, with the label NIfTIs of boxes scoring >=
    ``label_threshold`` unless it is None (``<volume>_<output_postfix><output_ext>`` in ``output_dtype``). ``amp``:
    the model runs in float16 autocast on a GPU."""
    from shared.metrics.deeplesion import write_detections

    out_dir = Path(output_dir)
    box_volume_name("volume", output_postfix, output_ext)  # a bad output_ext stops the run before any work
    entries = inputs.entries  # every input checked before the output folder is touched
    writable_output_dir(out_dir)
    if inputs.is_deeplesion:
        detections = detect_entries(model, entries, inputs.loader, amp)
        logger.info("detected %d boxes on %d DeepLesion key slices", len(detections), len(entries))
    else:
        inferer = VolumeDetectionInferer(inputs.loader.params, batch_size, amp)
        detections = []
        for path in (Path(entry["image"]) for entry in entries):
            written = (output_postfix, output_ext, output_dtype)
            detections += detect_volume(model, path, inferer, out_dir, label_threshold, min_score, *written)
            logger.info("%s: %s", path.name, inferer.stats)
    with writing_to(out_dir):
        return write_detections(out_dir / "detections.json", detections)


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
    **written,
) -> Path:
    """:func:`detect_inputs` on the :class:`DetectionInputs` of ``dataset_dir`` (a DeepLesion root's ``split``, or
    CT volumes); ``written``: its ``output_postfix``, ``output_ext``, ``output_dtype``."""
    inputs = DetectionInputs(dataset_dir, split, loader)
    return detect_inputs(model, inputs, output_dir, batch_size, label_threshold, min_score, amp, **written)
