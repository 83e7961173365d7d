"""Preprocess each CT volume once and keep it uncompressed on disk, read back by memory map (VA paper sec. 3.2).

Preprocessing (reorientation, HU window, 1.5 mm slice thickness, in-plane scaling; a MONAI transform given by the
bundle config) is slow on compressed NIfTI; a training step needs only the 3N slices of one bag. :class:`VolumeCache`
runs the transform once per (image, label) pair and stores ``image.npy`` (float32) and ``label.npy`` (uint8)
slice-first, (D, H, W), so a bag is 3N contiguous slices of a memory-mapped file. An entry's folder is named by a
hash of the files' absolute paths, sizes and modification times and of the preprocessing parameters: editing a file
or a parameter gives a new entry; stale entries are never reused.
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import MapTransform
from tqdm import tqdm

from shared.data.atomic import atomic_path

logger = logging.getLogger(__name__)

META = "meta.json"


def _file_stamp(path: str) -> list:
    stat = os.stat(path)
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def to_slice_first(volume) -> np.ndarray:
    """Channel-first (1, H, W, D) array/tensor -> (D, H, W) numpy array."""
    array = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    if array.ndim != 4 or array.shape[0] != 1:
        raise ValueError(f"expected a single-channel volume (1, H, W, D), got shape {array.shape}")
    return np.moveaxis(array[0], -1, 0)


class VolumeCache:
    """Cache of preprocessed volumes in ``cache_dir``.

    Args:
        cache_dir: folder for the cache (created).
        transform: preprocessing of a datalist entry ``{"image": path, "label": path}`` to channel-first volumes
            (1, H, W, D) with axial slices along the last axis (e.g. LoadImaged, Orientationd RAS,
            ScaleIntensityRanged, Spacingd, Resized).
        params: the preprocessing parameters (HU window, thickness, size, ...), part of each entry's key.
        label_values: allowed label values (LiTS: 0, 1, 2); other values are refused with the file named.
        required_label: a label that each labelled volume should contain (LiTS: 1, the liver); a warning otherwise.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        transform: Callable,
        params: Mapping,
        image_key: str = "image",
        label_key: str = "label",
        label_values: Sequence[int] = (0, 1, 2),
        required_label: int | None = 1,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.transform = transform
        self.params = json.loads(json.dumps(dict(params)))  # plain JSON values (config objects become lists/floats)
        self.image_key, self.label_key = image_key, label_key
        self.label_values = tuple(int(v) for v in label_values)
        self.required_label = required_label

    def entry_dir(self, entry: Mapping) -> Path:
        """Folder of an entry: named by a hash of its files (path, size, mtime) and the preprocessing parameters."""
        files = [_file_stamp(entry[k]) for k in (self.image_key, self.label_key) if entry.get(k)]
        key = json.dumps({"files": files, "params": self.params}, sort_keys=True)
        return self.cache_dir / hashlib.sha1(key.encode()).hexdigest()[:20]

    def _write(self, entry: Mapping, folder: Path) -> None:
        name = entry.get("case", entry[self.image_key])
        try:
            data = self.transform(dict(entry))
        except Exception as err:
            raise ValueError(
                f"case {name}: cannot read or preprocess {entry[self.image_key]} ({type(err).__name__}: {err}); "
                "check the file (re-export it) or remove the case from the dataset"
            ) from err
        image = to_slice_first(data[self.image_key]).astype(np.float32)
        meta = {"case": str(name), "shape": list(image.shape), "source": dict(entry)}
        arrays = {"image": image}
        if entry.get(self.label_key):
            label = np.rint(to_slice_first(data[self.label_key])).astype(np.int64)
            bad = sorted(set(np.unique(label).tolist()) - set(self.label_values))
            if bad:
                raise ValueError(
                    f"case {name}: label file {entry[self.label_key]} has values {bad} outside "
                    f"{list(self.label_values)} (LiTS: 0 background, 1 liver, 2 lesion); fix the labels or remove "
                    "the case"
                )
            present = label.reshape(label.shape[0], -1)
            if self.required_label is not None and not (present == self.required_label).any():
                logger.warning("case %s: no voxel of label %s in %s", name, self.required_label, entry[self.label_key])
            meta["label_slices"] = {
                str(v): np.flatnonzero((present == v).any(axis=1)).tolist() for v in self.label_values
            }
            arrays["label"] = label.astype(np.uint8)
        folder.mkdir(parents=True, exist_ok=True)
        for key, array in arrays.items():
            with atomic_path(folder / f"{key}.npy") as tmp:
                np.save(tmp, array)
        with atomic_path(folder / META) as tmp:  # written last: its presence marks a complete entry
            tmp.write_text(json.dumps(meta))

    def prepare(self, entry: Mapping) -> dict:
        """Preprocess ``entry`` unless cached; return it with ``image``/``label`` replaced by the ``.npy`` paths and
        ``depth``, ``label_slices`` (label value -> slices containing it) added."""
        folder = self.entry_dir(entry)
        if not (folder / META).is_file():
            self._write(entry, folder)
        meta = json.loads((folder / META).read_text())
        out = {**entry, self.image_key: str(folder / "image.npy"), "depth": meta["shape"][0]}
        if "label_slices" in meta:
            out[self.label_key] = str(folder / "label.npy")
            out["label_slices"] = {int(k): v for k, v in meta["label_slices"].items()}
        return out

    def prepare_all(self, entries: Sequence[Mapping]) -> list[dict]:
        """:meth:`prepare` every entry (with a progress bar)."""
        return [self.prepare(e) for e in tqdm(entries, desc=f"preprocessing cache {self.cache_dir}", leave=False)]

    def slices(self, entries: Sequence[Mapping]) -> list[dict]:
        """One training item per slice of every entry: ``{**entry, "slice": z}`` (image/label as cached paths)."""
        return [{**e, "slice": z} for e in self.prepare_all(entries) for z in range(e["depth"])]


def oversampling_weights(items: Sequence[Mapping], ratio: float, label: int = 2) -> torch.Tensor:
    """Sampling weight per slice item: ``ratio`` for slices containing ``label`` (LiTS lesion), 1 for the others.

    For a ``torch.utils.data.WeightedRandomSampler``; the paper gives no ratio, it is a config value.
    """
    with_label = {item["image"]: set(item["label_slices"].get(label, ())) for item in items}
    weights = [ratio if item["slice"] in with_label[item["image"]] else 1.0 for item in items]
    return torch.tensor(weights, dtype=torch.double)


class LoadCachedVolumed(MapTransform):
    """Load cached slice-first ``.npy`` volumes back to channel-first (1, H, W, D) float tensors (for whole-volume
    validation from the cache)."""

    def __call__(self, data: Mapping) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = torch.from_numpy(np.moveaxis(np.load(out[key]), 0, -1)[None].astype(np.float32))
        return out
