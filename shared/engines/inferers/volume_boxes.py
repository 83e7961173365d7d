"""Box inference of 2.5D slice-bag detectors (3DCE/CS-Att, VA Faster R-CNN) on every axial slice of a CT volume.

:class:`VolumeDetectionInferer` builds each 3-slice image of the 2 mm context by linear interpolation in the volume,
computes its backbone features once and keeps them while neighbouring key slices need them. :func:`detect_volume`
gives the detections of one volume file with the slice index and box in the input's array, and world coordinates,
optionally writing ``<volume>_boxes.nii.gz`` (``<volume>_<output_postfix><output_ext>`` in ``output_dtype``, the model
zoo's inference knobs) with the box outlines drawn as label 1 in the input's space.

:class:`BoxLabelInferer` draws the same box volume as a MONAI ``Inferer`` (``inferer(inputs, network)``), the form
MONAI Label serves (inference.json's ``preprocessing`` / ``inferer`` / ``postprocessing``, docs/monailabel.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.inferers import Inferer
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from shared.data.atomic import atomic_path
from shared.engines.inferers.feature_cache import ImageFeatureCache
from shared.engines.precision import autocast
from shared.engines.volume_io import load_volume, volume_name, writing_to
from shared.transforms.deeplesion import DeepLesionPreprocessing, LoadDeepLesionSampled, rescale_factor

# Slices are shown as DeepLesion's PNGs are (radiological view: rows anterior -> posterior, columns patient right ->
# left), so the volume is reoriented to L, P and a z axis; we take z inferior-ward, assuming DeepLesion's slice
# numbers run head to feet as CT series are usually numbered.
WORKING_AXCODES = ("L", "P", "I")


class VolumeDetectionInferer:
    """Detections on every axial slice of a volume with a per-image backbone feature cache (``ImageFeatureCache``).

    Args:
        preprocessing: 3DCE parameters (window, 2 mm context interval, 0.8 mm pixels, max size).
        batch_size: key slices detected together.
        amp: the model runs in float16 autocast on a GPU (boxes come back as float32).

    ``__call__(model, volume, spacing)``: ``volume`` HU ``(X, Y, Z)`` reoriented to :data:`WORKING_AXCODES`,
    ``spacing`` ``(sx, sy, sz)`` in mm; returns for every slice ``k`` ``{"boxes" (N, 4) in the slice's pixels
    (x along X, y along Y), "scores", "labels"}``. The image of a bag member centred ``c`` context slices from key
    slice ``k`` holds the volume at ``k + (c - 1, c, c + 1) * 2 mm / sz`` (linear interpolation, ends replicated);
    the cache is keyed by those positions, so an image shared by key slices is computed once (exactly shared when
    3 x 2 mm is a multiple of ``sz``; otherwise neighbouring key slices need images at different positions).
    ``self.stats`` counts images requested and computed in the last call.
    """

    def __init__(
        self, preprocessing: DeepLesionPreprocessing | None = None, batch_size: int = 4, amp: bool = False
    ) -> None:
        self.preprocessing = preprocessing or DeepLesionPreprocessing()
        self.batch_size = batch_size
        self.amp = amp
        self.stats = {"images_requested": 0, "images_computed": 0}

    def _image(self, volume: np.ndarray, positions: Sequence[float], pixel_spacing: float) -> np.ndarray:
        """Windowed, rescaled ``(3, H', W')`` image of the slices at fractional z ``positions``."""
        z = volume.shape[2]
        slices = []
        for pos in positions:
            pos = min(max(pos, 0.0), z - 1.0)
            lo = int(math.floor(pos))
            hi, frac = min(lo + 1, z - 1), pos - lo
            slices.append(((1.0 - frac) * volume[:, :, lo] + frac * volume[:, :, hi]).T)
        return self.preprocessing.window_and_rescale(np.stack(slices).astype(np.float32), pixel_spacing)[0]

    @staticmethod
    def _positions(centre: float, step: float, num_slices: int) -> tuple[float, float, float]:
        """z positions of the three slices of an image centred at ``centre``, clamped to the volume (cache key)."""
        return tuple(round(min(max(centre + d * step, 0.0), num_slices - 1.0), 4) for d in (-1, 0, 1))

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, volume: np.ndarray, spacing: Sequence[float]) -> list[dict]:
        model.eval()
        device = next(model.parameters()).device
        pixel_spacing, sz = float(spacing[0]), float(spacing[2])
        p = self.preprocessing
        scale = rescale_factor((volume.shape[1], volume.shape[0]), pixel_spacing, p.spacing_mm, p.max_size)
        step = p.slice_interval_mm / sz if math.isfinite(sz) and sz > 0 else 0.0
        offsets = list(model.backbone.image_offsets)
        reach = (max(abs(c) for c in offsets) + 1) * step
        num_slices = volume.shape[2]

        def used_from(key: int):
            """Whether an image (its z positions) lies within the reach of key slice ``key`` or a later one."""
            return lambda pos: pos[1] >= key - reach - 1e-6

        def load(positions: list[tuple[float, float, float]]) -> list[torch.Tensor]:
            return [torch.from_numpy(self._image(volume, pos, pixel_spacing)).to(device) for pos in positions]

        cache = ImageFeatureCache(model, load)
        results: list[dict] = []
        for start in range(0, num_slices, self.batch_size):
            keys = list(range(start, min(start + self.batch_size, num_slices)))
            with autocast(device, self.amp):
                bags = cache.bags([[self._positions(k + c * step, step, num_slices) for c in offsets] for k in keys])
                features = model.backbone.attend(bags.features)
                _, detections = model.detect(bags.images, features, bags.original_image_sizes)
            for det in detections:
                results.append({k: v.cpu() for k, v in det.items()} | {"boxes": det["boxes"].float().cpu() / scale})
            cache.retain(used_from(keys[-1] + 1))  # drop images no later key slice can use
        self.stats = {"images_requested": cache.images_requested, "images_computed": cache.images_computed}
        return results


def _box_outlines(shape: Sequence[int], detections: list[dict], threshold: float) -> np.ndarray:
    """uint8 volume (working orientation) with the outline of every box scoring >= ``threshold`` set to 1."""
    label = np.zeros(shape, dtype=np.uint8)
    for k, det in enumerate(detections):
        for box, score in zip(det["boxes"].tolist(), det["scores"].tolist()):
            if score < threshold:
                continue
            x1, y1 = max(int(math.floor(box[0])), 0), max(int(math.floor(box[1])), 0)
            x2, y2 = min(int(math.ceil(box[2])) - 1, shape[0] - 1), min(int(math.ceil(box[3])) - 1, shape[1] - 1)
            if x2 < x1 or y2 < y1:
                continue
            label[x1 : x2 + 1, [y1, y2], k] = 1
            label[[x1, x2], y1 : y2 + 1, k] = 1
    return label


class BoxLabelInferer(Inferer):
    """MONAI inferer drawing a detector's boxes into a label volume (MONAI Label's ``inferer(inputs, network)``).

    ``inputs``: ``(1, 1, X, Y, Z)`` HU ``MetaTensor`` reoriented to :data:`WORKING_AXCODES` (``LoadImaged``,
    ``EnsureChannelFirstd``, ``Orientationd(axcodes="LPI")``); its affine gives the voxel spacing. Returns a
    ``(1, 1, X, Y, Z)`` float ``MetaTensor`` (``Invertd`` skips plain tensors) with the outline of every box scoring
    >= ``label_threshold`` set to 1: the array :func:`detect_volume` writes as ``<volume>_boxes.nii.gz``.

    Args:
        loader: its 3DCE preprocessing parameters (window, 2 mm context, pixel size) are used.
        batch_size: key slices detected together (:class:`VolumeDetectionInferer`).
        label_threshold: lowest score of a drawn box.
        amp: the detector runs in float16 autocast on a GPU.
    """

    def __init__(
        self, loader: LoadDeepLesionSampled, batch_size: int = 4, label_threshold: float = 0.5, amp: bool = False
    ) -> None:
        super().__init__()
        self.inferer = VolumeDetectionInferer(loader.params, batch_size, amp)
        self.label_threshold = label_threshold

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> MetaTensor:
        if inputs.ndim != 5 or inputs.shape[:2] != (1, 1):
            raise ValueError(f"expected one single-channel CT volume (1, 1, X, Y, Z), got {tuple(inputs.shape)}")
        affine = inputs.affine if isinstance(inputs, MetaTensor) else torch.eye(4)
        affine = affine[0] if affine.ndim == 3 else affine
        spacing = [float(s) for s in affine_to_spacing(affine, r=3)]
        volume = inputs[0, 0].detach().cpu().numpy().astype(np.float32)
        outlines = _box_outlines(volume.shape, self.inferer(network, volume, spacing), self.label_threshold)
        return MetaTensor(torch.from_numpy(outlines.astype(np.float32))[None, None], affine=affine)


NIFTI_EXTS = (".nii", ".nii.gz")


def box_volume_name(volume: str, output_postfix: str = "boxes", output_ext: str = ".nii.gz") -> str:
    """``<volume>_<output_postfix><output_ext>`` (no ``_`` for an empty postfix, as MONAI's ``SaveImage``); an
    ``output_ext`` other than NIfTI's is an InputError (the box volume is written by nibabel as NIfTI)."""
    from shared.errors import InputError

    ext = "." + str(output_ext).lstrip(".")
    if ext not in NIFTI_EXTS:
        raise InputError(
            f"output_ext {output_ext!r}: the box volume is a NIfTI file, give one of {', '.join(NIFTI_EXTS)}"
        )
    return f"{volume}_{output_postfix}{ext}" if output_postfix else f"{volume}{ext}"


def detect_volume(
    model: torch.nn.Module,
    path: Path,
    inferer: VolumeDetectionInferer,
    output_dir: Path | None = None,
    label_threshold: float | None = None,
    min_score: float = 0.05,
    output_postfix: str = "boxes",
    output_ext: str = ".nii.gz",
    output_dtype: np.dtype | type = np.uint8,
) -> list[dict]:
    """Detections scoring >= ``min_score`` of one volume as JSON-ready dicts; with ``label_threshold`` also the box
    volume ``<name>_<output_postfix><output_ext>`` (default ``<name>_boxes.nii.gz``) in ``output_dtype``.

    Each dict: ``series`` (volume name), ``slice`` (index along the input array's axial axis ``axis``), ``box``
    (pixels of that slice shown radiologically: x towards patient left, y towards posterior), ``score``,
    ``label``, ``world_corners`` (RAS mm of the box corners (x1, y1) and (x2, y2)).
    """
    array, affine = load_volume(path)
    to_working = ornt_transform(io_orientation(affine), axcodes2ornt(WORKING_AXCODES))
    volume = apply_orientation(array, to_working)
    working_affine = affine @ inv_ornt_aff(to_working, array.shape)
    spacing = np.linalg.norm(working_affine[:3, :3], axis=0)
    detections = inferer(model, volume, spacing)
    axis = int(np.argmax(np.abs(np.linalg.inv(affine)[:3, :3] @ working_affine[:3, 2])))
    to_input = np.linalg.inv(affine) @ working_affine
    name, out = volume_name(path), []
    for k, det in enumerate(detections):
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
            if score < min_score:
                continue
            # box edges are pixel borders: voxel index = box coordinate - 0.5
            corners = np.array([[box[0] - 0.5, box[1] - 0.5, k, 1.0], [box[2] - 0.5, box[3] - 0.5, k, 1.0]])
            world = (working_affine @ corners.T).T[:, :3]
            slice_index = int(round(float((to_input @ np.array([0.0, 0.0, k, 1.0]))[axis])))
            out.append(
                {
                    "series": name,
                    "slice": slice_index,
                    "axis": axis,
                    "box": [round(v, 2) for v in box],
                    "score": float(score),
                    "label": int(label),
                    "world_corners": np.round(world, 3).tolist(),
                }
            )
    if output_dir is not None and label_threshold is not None:
        outlines = _box_outlines(volume.shape, detections, label_threshold)
        label_volume = apply_orientation(
            outlines, ornt_transform(axcodes2ornt(WORKING_AXCODES), io_orientation(affine))
        )
        target = Path(output_dir) / box_volume_name(name, output_postfix, output_ext)
        with writing_to(output_dir), atomic_path(target) as tmp:
            nib.save(nib.Nifti1Image(label_volume.astype(output_dtype), affine), str(tmp))
    return out
