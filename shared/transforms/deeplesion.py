"""DeepLesion preprocessing as 3DCE (Yan et al. 2018), used by CS-Att sec. 3 "Dataset", with a sample cache.

For a key slice of a series (``Images_png/<pat>_<study>_<series>/<slice>.png``, uint16, HU = value - 32768):

1. 3M slices around the key slice at a 2 mm interval: slice ``key + t * 2 mm / slice_interval`` for
   ``t = -(3M-1)/2 .. (3M-1)/2``, linearly interpolated between the two existing slices around it (3DCE); a missing
   file is replaced by the nearest existing slice towards the key slice (3DCE's ``get_slice_name``), which also
   replicates the end slices beyond the series ends. Without a valid slice interval the key slice is repeated.
2. HU window [-1024, 3071] mapped to [0, 1] with clipping. 3DCE mapped the window to [0, 255] and subtracted a
   pixel mean of 50 for its Caffe ImageNet VGG-16; the detectors normalise each 3-channel image themselves for
   their pretrained weights (``ThreeDCE``'s ``image_mean``/``image_std``: ImageNet's for torchvision's VGG-16).
3. Black-border clipping (3DCE ``IMG_DO_CLIP``, on by default): all slices are cropped to the bounding box of the
   body on the key slice (HU > -768, i.e. 3DCE's raw threshold 32000, after a 7 x 7 binary opening that removes thin
   structures such as the table; the whole image when nothing is left); boxes are shifted by the crop's ``origin``.
4. Rescale to 0.8 mm/pixel, the longest side (of the cropped image) capped at 512 pixels (3DCE), bilinear; boxes
   scaled alike. A detection maps back to the PNG's pixels as ``box / scale + origin``.
5. 3M slices grouped into M 3-channel images, key slice in the middle image's middle channel (CS-Att sec. 2).

Decoded samples are cached as ``.npz`` (float16 image, scale, origin) named by a hash of the series path, key slice and
parameters, so training reads one file per sample instead of 3M PNGs. :func:`prepare_entries` builds the cache up
front and drops entries that cannot be read (with a warning naming them), so no epoch stops half-way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform, Resize, ScaleIntensityRange
from monai.transforms.utils import generate_spatial_bounding_box
from PIL import Image
from scipy.ndimage import binary_opening

from shared.data.atomic import atomic_path
from shared.data.deeplesion import HU_OFFSET

logger = logging.getLogger(__name__)

BODY_HU_THRESHOLD = -768.0  # 3DCE get_mask: raw PNG value > 32000, i.e. HU > 32000 - 32768
BODY_OPENING_SIZE = 7  # 3DCE get_mask: binary opening with a 7 x 7 structure ("roughly remove bed")


@lru_cache(maxsize=4096)
def _slice_files_cached(series_dir: str) -> dict[int, Path]:
    files: dict[int, Path] = {}
    for path in Path(series_dir).glob("*.png"):
        if path.stem.isdigit():
            files[int(path.stem)] = path
    return files


def slice_files(series_dir: str | Path) -> dict[int, Path]:
    """``{slice index: png path}`` of a DeepLesion series folder (``001.png`` and ``1.png`` both read as 1)."""
    return _slice_files_cached(str(series_dir))


def read_hu_png(path: str | Path) -> np.ndarray:
    """HU values (float32, H x W) of a DeepLesion 16-bit PNG."""
    with Image.open(path) as img:
        arr = np.asarray(img)
    if arr.ndim != 2 or arr.dtype not in (np.uint16, np.int32, np.uint32):
        raise ValueError(f"{path}: expected a single-channel 16-bit PNG (HU + 32768), got {arr.dtype} {arr.shape}")
    return arr.astype(np.float32) - HU_OFFSET


def existing_slice(files: dict[int, int | Path], index: int, key: int) -> int:
    """``index`` if its file exists, else the nearest existing slice stepping towards ``key`` (3DCE)."""
    step = -1 if index > key else 1
    while index not in files and index != key:
        index += step
    if index not in files:
        raise FileNotFoundError(f"key slice {key} has no file")
    return index


def context_positions(key: int, num_slices: int, slice_interval: float, target_interval: float = 2.0) -> np.ndarray:
    """Fractional slice indices of ``num_slices`` slices ``target_interval`` mm apart centred on ``key``.

    A missing, non-finite or non-positive ``slice_interval`` gives the key slice ``num_slices`` times (3DCE).
    """
    half = (num_slices - 1) / 2
    steps = np.arange(num_slices, dtype=np.float64) - half
    if not (math.isfinite(slice_interval) and slice_interval > 0):
        return np.full(num_slices, float(key))
    return key + steps * (target_interval / slice_interval)


def interpolate_slices(read, files: dict, key: int, positions: Sequence[float]) -> np.ndarray:
    """Slices at fractional ``positions``, linear between the neighbouring existing slices (3DCE).

    ``read(index) -> (H, W)`` loads a slice, ``files`` holds the existing indices. Returns ``(len(positions), H, W)``.
    """
    cache: dict[int, np.ndarray] = {}

    def load(index: int) -> np.ndarray:
        index = existing_slice(files, index, key)
        if index not in cache:
            cache[index] = read(index)
        return cache[index]

    out = []
    for pos in positions:
        lo, frac = math.floor(pos), pos - math.floor(pos)
        lo_img = load(lo)
        if frac < 1e-6:
            out.append(lo_img)
            continue
        hi_img = load(lo + 1)
        if hi_img.shape != lo_img.shape:
            raise ValueError(f"slices {lo} and {lo + 1} around key slice {key} differ in size")
        out.append((1.0 - frac) * lo_img + frac * hi_img)
    return np.stack(out).astype(np.float32)


def rescale_factor(shape_hw: Sequence[int], pixel_spacing: float, spacing_mm: float, max_size: int) -> float:
    """3DCE's image scale: to ``spacing_mm`` per pixel, reduced so the longest side is at most ``max_size``."""
    scale = pixel_spacing / spacing_mm if pixel_spacing and pixel_spacing > 0 else 1.0
    if round(scale * max(shape_hw)) > max_size:
        scale = max_size / max(shape_hw)
    return float(scale)


def body_box(hu: np.ndarray) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``, end exclusive: bounding box of the body on a HU slice as 3DCE's black-border clipping
    finds it (HU > -768, 7 x 7 binary opening); the whole slice when no pixel is left."""
    mask = binary_opening(hu > BODY_HU_THRESHOLD, structure=np.ones((BODY_OPENING_SIZE, BODY_OPENING_SIZE)))
    if not mask.any():
        return 0, hu.shape[0], 0, hu.shape[1]
    (y0, x0), (y1, x1) = generate_spatial_bounding_box(mask[None])
    return int(y0), int(y1), int(x0), int(x1)


@dataclass(frozen=True)
class DeepLesionPreprocessing:
    """Parameters of the 3DCE preprocessing; ``num_images`` is M (3M slices); ``clip_black_border``: crop to the
    body first (3DCE ``IMG_DO_CLIP``)."""

    num_images: int = 5
    slice_interval_mm: float = 2.0
    hu_window: tuple[float, float] = (-1024.0, 3071.0)
    spacing_mm: float = 0.8
    max_size: int = 512
    clip_black_border: bool = True

    def window_and_rescale(self, slices: np.ndarray, pixel_spacing: float) -> tuple[np.ndarray, float]:
        """Window ``(S, H, W)`` HU slices to [0, 1] and rescale them; returns ``(image, scale)``."""
        lo, hi = self.hu_window
        image = ScaleIntensityRange(lo, hi, 0.0, 1.0, clip=True)(slices)
        scale = rescale_factor(slices.shape[1:], pixel_spacing, self.spacing_mm, self.max_size)
        size = tuple(max(1, round(s * scale)) for s in slices.shape[1:])
        if size != tuple(slices.shape[1:]):
            image = Resize(size, mode="bilinear", anti_aliasing=False)(image)
        return np.asarray(image, dtype=np.float32), scale

    def series_sample(self, series_dir: str | Path, key_slice: int, spacing: Sequence[float]):
        """``(image, scale, origin)`` for ``key_slice`` of a PNG series (``spacing`` as the datalist's): the
        ``(3M, H', W')`` image in [0, 1] and the ``(x, y)`` PNG pixel of its crop's corner (``(0, 0)`` unclipped)."""
        files = slice_files(series_dir)
        if key_slice not in files:
            raise FileNotFoundError(f"{Path(series_dir) / f'{key_slice:03d}.png'}: key slice file is missing")
        positions = context_positions(key_slice, 3 * self.num_images, float(spacing[2]), self.slice_interval_mm)
        slices = interpolate_slices(lambda i: read_hu_png(files[i]), files, key_slice, positions)
        y0, y1, x0, x1 = body_box(slices[len(slices) // 2]) if self.clip_black_border else (0, None, 0, None)
        image, scale = self.window_and_rescale(slices[:, y0:y1, x0:x1], float(spacing[0]))
        return image, scale, (x0, y0)

    def cache_name(self, series_dir: str | Path, key_slice: int, spacing: Sequence[float]) -> str:
        """File name of a cached sample: hash of the series path, key slice, spacing and these parameters."""
        text = json.dumps([str(Path(series_dir).resolve()), int(key_slice), [float(s) for s in spacing], asdict(self)])
        return hashlib.sha1(text.encode()).hexdigest()[:20] + ".npz"


def scale_boxes(
    boxes, scale: float, image_hw: Sequence[int], name: str = "", origin: Sequence[float] = (0, 0)
) -> np.ndarray:
    """Boxes ``(N, 4)`` (x1, y1, x2, y2, 0-based PNG pixels) minus the crop ``origin`` ``(x, y)``, times ``scale``,
    clipped to the image; empty ones dropped."""
    x0, y0 = origin
    arr = (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) - np.float32([x0, y0, x0, y0])) * scale
    h, w = image_hw
    clipped = arr.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, h)
    if not np.allclose(clipped, arr):
        warnings.warn(f"{name}: box(es) outside the {w}x{h} image clipped to it", stacklevel=2)
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    if not keep.all():
        warnings.warn(f"{name}: {int((~keep).sum())} box(es) with no area inside the image dropped", stacklevel=2)
    return clipped[keep]


class LoadDeepLesionSampled(MapTransform):
    """Load a DeepLesion datalist entry as a detection sample (3DCE preprocessing, cached).

    Reads ``image`` (series folder), ``key_slice``, ``spacing`` and ``boxes`` of the entry; writes ``image``
    (``(3M, H', W')`` float32 tensor in [0, 1]), ``boxes`` (float32 ``(N, 4)`` in the rescaled pixels), ``labels``
    (int64 ones), ``scale`` and ``origin`` (the ``(x, y)`` PNG pixel of the black-border crop's corner). With
    ``cache_dir`` the preprocessed image is stored there on first use and read from there afterwards.
    """

    def __init__(
        self,
        keys: str = "image",
        num_images: int = 5,
        slice_interval_mm: float = 2.0,
        hu_window: Sequence[float] = (-1024.0, 3071.0),
        spacing_mm: float = 0.8,
        max_size: int = 512,
        cache_dir: str | Path | None = None,
        clip_black_border: bool = True,
    ) -> None:
        super().__init__(keys)
        self.params = DeepLesionPreprocessing(
            num_images, slice_interval_mm, tuple(hu_window), spacing_mm, max_size, clip_black_border
        )
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def sample(self, entry: dict) -> tuple[np.ndarray, float, tuple[int, int]]:
        """Preprocessed ``(image, scale, origin)`` of an entry, from the cache when there."""
        key = self.keys[0]
        args = (entry[key], int(entry["key_slice"]), entry["spacing"])
        if self.cache_dir is None:
            return self.params.series_sample(*args)
        path = self.cache_dir / self.params.cache_name(*args)
        if path.is_file():
            with np.load(path) as npz:
                origin = tuple(int(v) for v in npz["origin"])
                return npz["image"].astype(np.float32), float(npz["scale"]), origin
        image, scale, origin = self.params.series_sample(*args)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, image=image.astype(np.float16), scale=np.float32(scale), origin=np.int64(origin))
        return image, scale, origin

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        image, scale, origin = self.sample(d)
        name = f"{d.get('file_name', d[self.keys[0]])} (key slice {d['key_slice']})"
        boxes = scale_boxes(d.get("boxes", []), scale, image.shape[1:], name, origin)
        d[self.keys[0]] = torch.from_numpy(image)
        d["boxes"] = torch.from_numpy(boxes)
        d["labels"] = torch.ones(len(boxes), dtype=torch.int64)
        d["scale"] = scale
        d["origin"] = origin
        return d


def prepare_entries(entries: Sequence[dict], loader: LoadDeepLesionSampled) -> list[dict]:
    """Build the cache for every entry and return the entries that load; each failure is skipped with a warning.

    Run before training/evaluation so a missing key slice, an unreadable PNG or a bad spacing is reported once,
    naming the entry, instead of stopping an epoch.
    """
    good = []
    for entry in entries:
        try:
            loader.sample(entry)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as err:
            name = entry.get("file_name", entry.get("image"))
            msg = f"skipping DeepLesion entry {name} (key slice {entry.get('key_slice')}): {err}"
            logger.warning(msg)
            warnings.warn(msg, stacklevel=2)
            continue
        good.append(entry)
    if entries and not good:
        raise ValueError("no DeepLesion entry could be loaded: check the dataset root (python -m shared validate)")
    return good
