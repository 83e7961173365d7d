"""DeepLesion phantoms: PNG series with key slices, RECIST marks, noisy rows and a patient split, as in DL_info.csv.

``context=True`` adds look-alikes that only the slices around the key slice tell from lesions
(:class:`shared.phantoms.context.Tube`).
"""

import csv
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from shared.data.atomic import atomic_path
from shared.data.deeplesion import COLUMNS, CSV_NAME, HU_OFFSET, IMAGES, LESION_TYPES, UNKNOWN_LESION_TYPE, split_code
from shared.phantoms import context, ct
from shared.phantoms.context import LOOKALIKES_NAME

_TYPE_CODES = {name: code for code, name in LESION_TYPES.items()}
_SITE_TYPES = {  # phantom lesion site -> DeepLesion Coarse_lesion_type
    "liver": _TYPE_CODES["liver"],
    "kidney": _TYPE_CODES["kidney"],
    "spleen": _TYPE_CODES["abdomen"],
    "abdomen": _TYPE_CODES["abdomen"],
    "bone": _TYPE_CODES["bone"],
    "soft_tissue": _TYPE_CODES["soft tissue"],
}
_TRAINING = split_code("training")
_SITE_WEIGHTS = {"liver": 0.25, "kidney": 0.15, "spleen": 0.05, "abdomen": 0.3, "bone": 0.1, "soft_tissue": 0.15}
_WINDOWS = [(-175, 275), (-160, 240), (-135, 215), (-150, 250), (-1350, 150), (-500, 1300)]
_INTERVALS_MM = (1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
DEMO_NUM_CASES = 12
DEMO_IMAGE_SIZE = 128
KEY_IMAGE_MM = 2.0  # the key 3-slice image's slices are 2 mm apart (3DCE), interpolated between the series' slices


def key_band_mm(interval: float) -> float:
    """Half-thickness (mm) of the slab in which a context lesion and its look-alike are the same: the farthest
    slice of the series that the key 3-slice image reads, plus one slice, so that the phantom's blur across slices
    (0.6 voxel at most) carries less than 0.5 % of what differs beyond into the slices it reads."""
    return context.band_mm(interval, KEY_IMAGE_MM, 1)


def _recist(mask: np.ndarray) -> tuple[list[float], float, float]:
    """RECIST of a 2D lesion mask (rows, cols): long-axis endpoints (longest chord between pixel centres), then the
    longest chord perpendicular to it; returns 1-based (x1, y1, x2, y2, x3, y3, x4, y4) and both lengths (px)."""
    points = np.argwhere(mask)[:, ::-1].astype(float)  # (x, y) = (col, row)
    dist = np.linalg.norm(points[:, None] - points[None], axis=-1)
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    p, q = points[i], points[j]
    long = float(dist[i, j])
    if long == 0:
        return [*(p + 1), *(q + 1), *(p + 1), *(q + 1)], 0.0, 0.0
    u = (q - p) / long
    v = np.array([-u[1], u[0]])
    along, across = np.rint((points - p) @ u), (points - p) @ v
    best = (0.0, p, p)
    for t in np.unique(along):
        sel = np.flatnonzero(along == t)
        lo, hi = sel[np.argmin(across[sel])], sel[np.argmax(across[sel])]
        if across[hi] - across[lo] > best[0]:
            best = (float(across[hi] - across[lo]), points[lo], points[hi])
    return [*(p + 1), *(q + 1), *(best[1] + 1), *(best[2] + 1)], long, best[0]


def _patients(num_cases: int) -> list[tuple[int, int]]:
    """(patient, study) per series: patients 1..P with a first study, the rest second studies of patients P, P-1,
    ... (the validation and test patients come last, so they get two series when there are enough)."""
    num_patients = max(3, math.ceil(num_cases * 2 / 3))
    return [(i + 1, 1) if i < num_patients else (2 * num_patients - i, 2) for i in range(num_cases)]


def _split_of(patient: int, num_patients: int) -> int:
    """Official-style patient split, ~70/15/15 with at least one validation and one test patient."""
    n_small = max(1, round(0.15 * num_patients))
    if patient > num_patients - n_small:
        return split_code("test")
    return split_code("validation" if patient > num_patients - 2 * n_small else "training")


def _draw_lesion(rng, anatomy: ct.Anatomy, z_mm: float, placed: list[ct.Lesion]) -> ct.Lesion | None:
    """One lesion centred at ``z_mm``: a size class (6-15, 15-30, 30-60 mm), then sites by their weights until one
    has room (bone lesions at most 25 mm); None if none has."""
    diameter = rng.uniform(*[(6, 15), (15, 30), (30, 60)][rng.choice(3, p=[0.45, 0.35, 0.2])])
    sites = rng.choice(list(_SITE_WEIGHTS), size=len(_SITE_WEIGHTS), replace=False, p=list(_SITE_WEIGHTS.values()))
    for site in sites:
        request = ct.LesionRequest(str(site), min(diameter, 25) if site == "bone" else diameter, z_mm)
        lesion = ct.place_lesion(rng, anatomy, request, placed)
        if lesion is not None:
            return lesion
    return None


def context_objects(rng, anatomy: ct.Anatomy, z_mm: float, interval: float) -> tuple[list[ct.Lesion], set[int]]:
    """2-5 objects on the key slice at ``z_mm``, drawn as lesions, then some of them (at least one, never all) turned
    into look-alikes at random; returns the objects and the indices of the look-alikes.

    Every object is flattened along z to end 1.45-1.6 times :func:`key_band_mm` from its centre (a lesion ending
    within a few slices); a look-alike is that same object as a tube running 30-60 mm each way
    (:func:`shared.phantoms.context.make_lookalikes`). So site,
    size, HU, texture and shape on the slices the key 3-slice image reads come from the same draws for both."""
    placed: list[ct.Lesion] = []
    for _ in range(int(rng.integers(2, 6))):
        lesion = _draw_lesion(rng, anatomy, z_mm, placed)
        if lesion is not None:
            placed.append(lesion)
    return context.make_lookalikes(rng, placed, key_band_mm(interval))


def _tight_box(mask: np.ndarray) -> list[float]:
    """1-based pixel box (x1, y1, x2, y2) around a 2D mask (rows, cols)."""
    rr, cc = np.nonzero(mask)
    return [cc.min() + 1.0, rr.min() + 1.0, cc.max() + 1.0, rr.max() + 1.0]


def _series_rows(
    rng,
    root: Path,
    patient: int,
    study: int,
    split: int,
    image_size,
    seed: int,
    context: bool = False,
    key_slices: int | None = None,
) -> tuple[list[dict], dict[str, list[list[float]]]]:
    """Render one phantom series, write its PNG slices, return its DL_info rows (values per column) and the boxes of
    the look-alikes on its key slices (``{File_name: [box, ...]}``, context series only)."""
    patient_rng = np.random.default_rng([seed, 1_000_000 + patient])
    anatomy = ct.sample_anatomy(patient_rng)  # the same body in every study of a patient
    gender, age = ("M", "F")[int(patient_rng.integers(2))], int(patient_rng.integers(25, 86))
    width, height = image_size
    pixel = 2 * anatomy.body.radii[0] * rng.uniform(1.1, 1.3) / width
    interval = float(rng.choice(_INTERVALS_MM))
    num_slices, first = int(rng.integers(20, 41)), int(rng.integers(1, 80))
    last, z_center = first + num_slices - 1, rng.uniform(-60, 90)
    z_of = lambda number: z_center + ((num_slices - 1) / 2 - (number - first)) * interval  # noqa: E731 - numbers go down
    keys = [first + num_slices // 2 + int(rng.integers(-2, 3))]
    if rng.random() < 0.3:
        keys = [first + num_slices // 3, first + 2 * num_slices // 3]
    if key_slices:
        keys = [first + round((j + 1) * (num_slices - 1) / (key_slices + 1)) for j in range(key_slices)]
    half = max(2, round(rng.uniform(25, 35) / interval))
    if context:
        keys = keys[:1]
        placed, lookalikes = context_objects(rng, anatomy, z_of(keys[0]), interval)
    else:
        placed, lookalikes = [], set()
        for key in keys:
            for _ in range(int(rng.integers(1, 4))):
                lesion = _draw_lesion(rng, anatomy, z_of(key), placed)
                if lesion is not None:
                    placed.append(lesion)
    case = ct.make_abdomen(rng, (width, height, num_slices), (pixel, pixel, interval), z_center, placed, anatomy)
    series = f"{patient:06d}_{study:02d}_{1:02d}"
    pngs = (ct.to_hu_int16(case.hu).astype(np.int32) + HU_OFFSET).astype(np.uint16)
    for number in range(first, last + 1):
        k = num_slices - 1 - (number - first)  # RAS z index: slice numbers increase toward the feet
        with atomic_path(root / IMAGES / series / f"{number:03d}.png") as tmp:
            # rows -> P, cols -> L; zlib level 1: 8x faster to write than PIL's default 6, files 8 % larger, same pixels
            Image.fromarray(pngs[::-1, ::-1, k].T.copy()).save(tmp, format="PNG", compress_level=1)
    window = _WINDOWS[int(rng.integers(len(_WINDOWS)))]
    rows, lookalike_boxes = [], {}
    for key in keys:
        k = num_slices - 1 - (key - first)
        on_key = [i for i in range(len(case.lesion_list)) if (case.lesions[..., k] == i + 1).any()]  # visible
        masks = {i: case.lesions[::-1, ::-1, k].T == i + 1 for i in on_key}
        boxes = [_tight_box(masks[i]) for i in on_key if i in lookalikes and masks[i].sum() >= 2]
        if boxes:
            lookalike_boxes[f"{series}_{key:03d}.png"] = boxes
        for order, i in enumerate(i for i in on_key if i not in lookalikes):
            mask = masks[i]
            if mask.sum() < 2:
                continue
            coords, long, short = _recist(mask)
            if short == 0:  # the edge of a lesion drawn for another key slice, one pixel thick here
                continue
            rr, cc = np.nonzero(mask)
            box = _tight_box(mask)
            noisy = int(order > 0 and rng.random() < 0.35)
            if noisy:  # a wrong annotation: the marks are shifted off the lesion, staying inside the image
                shift = rng.uniform(-8, 8, 2)
                shift = np.clip(shift, [1 - box[0], 1 - box[1]], [width - box[2], height - box[3]])
                box = [box[0] + shift[0], box[1] + shift[1], box[2] + shift[0], box[3] + shift[1]]
                coords = [c + shift[n % 2] for n, c in enumerate(coords)]
            site = case.lesion_list[i].site
            rows.append(
                {
                    "File_name": f"{series}_{key:03d}.png",
                    "Patient_index": patient,
                    "Study_index": study,
                    "Series_ID": 1,
                    "Key_slice_index": key,
                    "Measurement_coordinates": coords,
                    "Bounding_boxes": box,
                    "Lesion_diameters_Pixel_": [long, short],
                    "Normalized_lesion_location": [
                        (cc.mean() + 1) / width,
                        (rr.mean() + 1) / height,
                        float(np.clip((150 - z_of(key)) / 400, 0, 1)),
                    ],
                    "Coarse_lesion_type": UNKNOWN_LESION_TYPE
                    if split == _TRAINING
                    else _SITE_TYPES[site],  # real train rows: untyped
                    "Possibly_noisy": noisy,
                    "Slice_range": [max(first, key - half), min(last, key + half)],
                    "Spacing_mm_px_": [pixel, pixel, interval],
                    "Image_size": [width, height],
                    "DICOM_windows": list(window),
                    "Patient_gender": gender,
                    "Patient_age": age,
                    "Train_Val_Test": split,
                }
            )
    return rows, lookalike_boxes


def _csv_text(value) -> str:
    if isinstance(value, list):
        return ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def make_phantoms(
    out_dir,
    num_cases: int = DEMO_NUM_CASES,
    seed: int = 0,
    image_size=DEMO_IMAGE_SIZE,
    context: bool = False,
    key_slices: int | None = None,
) -> Path:
    """Write ``num_cases`` phantom series (Images_png) and their DL_info.csv in the DeepLesion layout; return root.

    Each series has 20-40 axial slices of ``image_size`` pixels (int or (w, h); the body is ~300 mm wide), a slice
    interval of 1-5 mm, one or two key slices with 1-3 lesions each (liver, kidney, spleen, abdomen, bone, soft
    tissue, of 6-60 mm), some extra lesions per key slice flagged ``Possibly_noisy`` with shifted marks. Patients
    (about 2 series per 3; the rest are second studies) are split ~70/15/15, every split populated. PNG rows run
    anterior -> posterior, columns patient right -> left (radiological view), slice numbers head -> feet. Boxes are
    the tight 1-based pixel boxes of each lesion visible on a key slice. The same seed gives byte-identical files.
    ``key_slices``: that many key slices per series instead, evenly spread (lesions drawn on each), so a demo gets
    more annotated slices per rendered series (DeepLesion has about 3 key slices per study).

    ``context``: series where the neighbouring slices decide. Each has one key slice with 2-5 objects drawn as
    lesions, of which 1 to all but one are look-alikes (:func:`context_objects`): on the slices the key 3-slice
    image reads (:func:`key_band_mm`) a look-alike is its lesion (same draws of site, size, HU, texture, noise), but
    it runs on through the slices as a tube, while lesions end a few slices from the key slice. Only lesions are in
    DL_info.csv (noisy ones as above); the look-alikes' key-slice boxes are in ``context_lookalikes.json``
    (``{File_name: [[x1, y1, x2, y2], ...]}``, 1-based like DL_info.csv).
    """
    if num_cases < 3:
        raise ValueError(f"num_cases must be >= 3 to populate the train, val and test splits, got {num_cases}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    root = Path(out_dir)
    series = _patients(num_cases)
    num_patients = max(p for p, _ in series)
    rows, lookalikes = [], {}
    for index, (patient, study) in enumerate(tqdm(series, desc="deeplesion phantoms", unit="series", disable=None)):
        split = _split_of(patient, num_patients)
        rng = np.random.default_rng([seed, index])
        series_rows, boxes = _series_rows(rng, root, patient, study, split, size, seed, context, key_slices)
        rows += series_rows
        lookalikes.update(boxes)
    with atomic_path(root / CSV_NAME) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(COLUMNS)
            for row in sorted(rows, key=lambda r: r["File_name"]):
                writer.writerow([_csv_text(row[c]) for c in COLUMNS])
    if context:
        with atomic_path(root / LOOKALIKES_NAME) as tmp:
            tmp.write_text(json.dumps(dict(sorted(lookalikes.items()))))
    return root
