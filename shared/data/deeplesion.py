"""DeepLesion (Yan et al. 2018): layout, DL_info.csv parsing, key-slice datalist, validation, phantoms.

Layout of a root::

    <root>/Images_png/<patient>_<study>_<series>/<slice>.png   uint16 axial slices, HU = value - 32768;
                                                               slice names are 3-digit numbers, e.g. 109.png
    <root>/DL_info.csv                                         one row per lesion (columns: :data:`COLUMNS`)

Multi-number fields hold ", "-separated numbers. Boxes and RECIST coordinates are 1-based pixels (x = column,
y = row). A series folder holds only the slices around its key slices (the rows' ``Slice_range``), not the
whole volume. The official split is per patient: ``Train_Val_Test`` 1 train, 2 val, 3 test.
"""

import csv
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from shared.data import phantom_ct
from shared.data.atomic import atomic_path
from shared.data.validation import DatasetError, root_problem

CSV_NAME, IMAGES = "DL_info.csv", "Images_png"
HU_OFFSET = 32768
SPLITS = {1: "training", 2: "validation", 3: "test"}
LESION_TYPES = {
    -1: "unknown",
    1: "bone",
    2: "abdomen",
    3: "mediastinum",
    4: "liver",
    5: "lung",
    6: "kidney",
    7: "soft tissue",
    8: "pelvis",
}
_FILE_NAME = re.compile(r"(\d+)_(\d+)_(\d+)_(\d+)\.png")


def _numbers(count: int, kind: type):
    def parse(text: str):
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != count:
            raise ValueError(f"expected {count} numbers separated by ', '")
        values = [float(p) for p in parts]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("numbers must be finite")
        if kind is int and any(v != int(v) for v in values):
            raise ValueError("expected whole numbers")
        return [kind(v) for v in values]

    return parse


def _one_of(choices):
    def parse(text: str):
        value = int(text)
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}")
        return value

    return parse


def _age(text: str):
    return None if text.strip().lower() in ("", "nan") else int(float(text))


def _file_name(text: str):
    if not _FILE_NAME.fullmatch(text):
        raise ValueError("expected <patient>_<study>_<series>_<slice>.png, e.g. 000001_01_01_109.png")
    return text


COLUMNS = {
    "File_name": _file_name,
    "Patient_index": int,
    "Study_index": int,
    "Series_ID": int,
    "Key_slice_index": int,
    "Measurement_coordinates": _numbers(8, float),  # RECIST: long axis (x1, y1, x2, y2), then short axis
    "Bounding_boxes": _numbers(4, float),  # x1, y1, x2, y2, 1-based pixels
    "Lesion_diameters_Pixel_": _numbers(2, float),  # long, short
    "Normalized_lesion_location": _numbers(3, float),  # x, y, z in 0..1
    "Coarse_lesion_type": _one_of(tuple(LESION_TYPES)),
    "Possibly_noisy": _one_of((0, 1)),
    "Slice_range": _numbers(2, int),  # first, last slice file number
    "Spacing_mm_px_": _numbers(3, float),  # x, y pixel spacing, slice interval (mm)
    "Image_size": _numbers(2, int),  # width, height
    "DICOM_windows": _numbers(2, float),  # low, high HU
    "Patient_gender": str,
    "Patient_age": _age,
    "Train_Val_Test": _one_of(tuple(SPLITS)),
}
"""Every column of the real DL_info.csv, in its order, with the parser of its text."""


def series_name(row: dict) -> str:
    """``<patient>_<study>_<series>`` folder of a parsed row (its File_name without the slice number)."""
    return row["File_name"].rsplit("_", 1)[0]


def _parse_row(row: dict, where: str) -> tuple[dict | None, list[str]]:
    parsed, problems = {}, []
    for column, parse in COLUMNS.items():
        text = row.get(column) or ""
        try:
            parsed[column] = parse(text)
        except (TypeError, ValueError) as err:
            problems.append(f"{where}, field {column}: {text!r} does not parse ({err}); fix or remove the row")
    if problems:
        return None, problems
    first, last = parsed["Slice_range"]
    key = parsed["Key_slice_index"]
    ids = tuple(int(g) for g in _FILE_NAME.fullmatch(parsed["File_name"]).groups())
    expected = (parsed["Patient_index"], parsed["Study_index"], parsed["Series_ID"], key)
    if ids != expected:
        problems.append(
            f"{where}, field File_name: {parsed['File_name']!r} disagrees with Patient_index, Study_index, "
            f"Series_ID, Key_slice_index {expected}; fix the row"
        )
    if not first <= key <= last:
        problems.append(f"{where}, field Slice_range: {first}-{last} does not hold key slice {key}; fix the row")
    x1, y1, x2, y2 = parsed["Bounding_boxes"]
    width, height = parsed["Image_size"]
    if not (x1 <= x2 and y1 <= y2):
        problems.append(f"{where}, field Bounding_boxes: {parsed['Bounding_boxes']} has x1 > x2 or y1 > y2")
    elif x1 < 1 or y1 < 1 or x2 > width or y2 > height:
        problems.append(
            f"{where}, field Bounding_boxes: {parsed['Bounding_boxes']} lies outside the {width}x{height} image "
            "(1-based pixels); fix the box"
        )
    if min(parsed["Spacing_mm_px_"]) <= 0 or min(parsed["Image_size"]) <= 0:
        problems.append(f"{where}, fields Spacing_mm_px_/Image_size: must be positive; fix the row")
    return (None if problems else parsed), problems


def _parse_csv(root: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """((CSV line number, parsed row) for every good row, problems of the others); never raises on bad data."""
    path = root / CSV_NAME
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                return [], [f"{path}: missing columns {', '.join(missing)}; restore the original DL_info.csv"]
            rows, problems = [], []
            for row in reader:
                where = f"{path}: row {reader.line_num} ({row.get('File_name')})"
                parsed, row_problems = _parse_row(row, where)
                problems += row_problems
                if parsed is not None:
                    rows.append((reader.line_num, parsed))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return [], [f"{path}: unreadable ({type(err).__name__}: {err}); restore the original DL_info.csv"]
    if not rows and not problems:
        problems.append(f"{path}: no annotation rows; restore the original DL_info.csv")
    return rows, problems


def read_annotations(root) -> list[dict]:
    """Parsed rows of ``<root>/DL_info.csv`` (keys: :data:`COLUMNS`; multi-number fields as lists).

    Raises :class:`DatasetError` listing every row and field that does not parse.
    """
    problem = root_problem("deeplesion", root, f"{CSV_NAME} and {IMAGES}/")
    if problem:
        raise DatasetError(problem)
    if not (Path(root) / CSV_NAME).is_file():
        raise DatasetError(f"{Path(root) / CSV_NAME}: not found; a DeepLesion root holds {CSV_NAME} and {IMAGES}/")
    rows, problems = _parse_csv(Path(root))
    if problems:
        raise DatasetError(f"{len(problems)} problem(s) in {Path(root) / CSV_NAME}:\n" + "\n".join(problems))
    return [row for _, row in rows]


def _slice_numbers(folder: Path) -> dict[int, Path]:
    return {int(p.stem): p for p in folder.glob("*.png") if p.stem.isdigit()}


def _check_key_png(path: Path, size: list[int], where: str) -> str | None:
    try:
        with Image.open(path) as image:
            mode, actual = image.mode, list(image.size)
    except Exception as err:  # noqa: BLE001 - any reader failure is reported, never raised
        return f"{path}: unreadable PNG ({type(err).__name__}: {err}), the key slice of {where}; restore it"
    if mode not in ("I;16", "I;16B", "I"):
        return f"{path}: mode {mode}, expected a 16-bit grey PNG (HU + 32768), the key slice of {where}; restore it"
    if actual != size:
        return f"{path}: size {actual[0]}x{actual[1]} differs from Image_size {size[0]}x{size[1]} of {where}"
    return None


def validate(root) -> list[str]:
    """Every problem of a DeepLesion root, one message each starting with the path concerned (empty: valid).

    Checks DL_info.csv (columns, every field, boxes inside the image), that the key slice and every slice of each
    row's Slice_range exist, and that key slices are 16-bit PNGs of the row's Image_size (header only).
    """
    problem = root_problem("deeplesion", root, f"{CSV_NAME} and {IMAGES}/")
    if problem:
        return [problem]
    root = Path(root)
    csv_path, images = root / CSV_NAME, root / IMAGES
    if not csv_path.is_file() and not images.is_dir():
        return [
            f"{root}: no {CSV_NAME} and no {IMAGES}/; point --dataset_dir at the DeepLesion root, or make phantoms "
            f"with `python -m shared phantoms deeplesion {root}`"
        ]
    if not images.is_dir():
        return [f"{images}: missing folder of PNG series; unzip the Images_png_*.zip files into it"]
    if not csv_path.is_file():
        return [f"{csv_path}: missing annotation file; download DL_info.csv into {root}"]
    rows, problems = _parse_csv(root)
    needed: dict[Path, list[int]] = defaultdict(list)  # slice PNG -> CSV lines that need it
    missing_series: set[str] = set()
    slices_of: dict[str, dict[int, Path]] = {}
    for line, row in tqdm(rows, desc="validating deeplesion", unit="row", disable=None, leave=False):
        series = series_name(row)
        folder = images / series
        if series not in slices_of:
            slices_of[series] = _slice_numbers(folder) if folder.is_dir() else {}
            if not folder.is_dir():
                missing_series.add(series)
                problems.append(f"{folder}: missing series folder (needed by {csv_path.name} row {line}); unzip it")
        if series in missing_series:
            continue
        first, last = row["Slice_range"]
        for number in range(first, last + 1):
            if number not in slices_of[series]:
                needed[folder / f"{number:03d}.png"].append(line)
        key = row["Key_slice_index"]
        if key in slices_of[series]:
            problem = _check_key_png(slices_of[series][key], row["Image_size"], f"{csv_path.name} row {line}")
            if problem and problem not in problems:
                problems.append(problem)
    for path, lines in needed.items():
        rows_text = ", ".join(map(str, sorted(set(lines))))
        problems.append(f"{path}: missing slice (in the Slice_range of {csv_path.name} rows {rows_text}); restore it")
    return problems


def make_datalist(root, seed: int = 0, fold: int = 0) -> dict:
    """MONAI datalist of a DeepLesion root: one entry per key slice (rows grouped by File_name), rows with
    ``Possibly_noisy == 1`` removed (3DCE, CS-Att sec. 3), split by ``Train_Val_Test`` (the official patient-level
    split, so ``seed`` and ``fold`` change nothing).

    Entry: ``{"image": series folder, "key_slice", "slice_range": [first, last], "boxes": [[x1, y1, x2, y2], ...]
    0-based float pixels (DL_info.csv's 1-based minus 1), "lesion_types", "diameters_mm": [[long, short], ...]
    (pixels times the x pixel spacing), "spacing": [sx, sy, slice interval], "image_size": [w, h], "file_name",
    "series"}``.
    """
    del seed, fold
    root = Path(root).resolve()
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in read_annotations(root):
        if row["Possibly_noisy"] == 0:
            groups[row["File_name"]].append(row)
    data = {name: [] for name in SPLITS.values()}
    for file_name in sorted(groups):
        rows = groups[file_name]
        first = rows[0]
        sx = first["Spacing_mm_px_"][0]
        data[SPLITS[first["Train_Val_Test"]]].append(
            {
                "image": str(root / IMAGES / series_name(first)),
                "key_slice": first["Key_slice_index"],
                "slice_range": list(first["Slice_range"]),
                "boxes": [[v - 1.0 for v in r["Bounding_boxes"]] for r in rows],
                "lesion_types": [r["Coarse_lesion_type"] for r in rows],
                "diameters_mm": [[d * sx for d in r["Lesion_diameters_Pixel_"]] for r in rows],
                "spacing": list(first["Spacing_mm_px_"]),
                "image_size": list(first["Image_size"]),
                "file_name": file_name,
                "series": series_name(first),
            }
        )
    return data


# ----------------------------------------------------------------------------------------------------- phantoms

_SITE_TYPES = {"liver": 4, "kidney": 6, "spleen": 2, "abdomen": 2, "bone": 1, "soft_tissue": 7}
_SITE_WEIGHTS = {"liver": 0.25, "kidney": 0.15, "spleen": 0.05, "abdomen": 0.3, "bone": 0.1, "soft_tissue": 0.15}
_WINDOWS = [(-175, 275), (-160, 240), (-135, 215), (-150, 250), (-1350, 150), (-500, 1300)]
_INTERVALS_MM = (1.0, 1.25, 2.0, 2.5, 3.0, 5.0)
DEMO_NUM_CASES = 12
DEMO_IMAGE_SIZE = 128


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
        return 3
    return 2 if patient > num_patients - 2 * n_small else 1


def _series_rows(rng, root: Path, patient: int, study: int, split: int, image_size, seed: int) -> list[dict]:
    """Render one phantom series, write its PNG slices, return its DL_info rows (values per column)."""
    patient_rng = np.random.default_rng([seed, 1_000_000 + patient])
    anatomy = phantom_ct.sample_anatomy(patient_rng)  # the same body in every study of a patient
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
    half = max(2, round(rng.uniform(25, 35) / interval))
    placed: list[phantom_ct.Lesion] = []
    for key in keys:
        for _ in range(int(rng.integers(1, 4))):
            diameter = rng.uniform(*[(6, 15), (15, 30), (30, 60)][rng.choice(3, p=[0.45, 0.35, 0.2])])
            sites = rng.choice(
                list(_SITE_WEIGHTS), size=len(_SITE_WEIGHTS), replace=False, p=list(_SITE_WEIGHTS.values())
            )
            for site in sites:
                request = phantom_ct.LesionRequest(
                    str(site), min(diameter, 25) if site == "bone" else diameter, z_of(key)
                )
                lesion = phantom_ct.place_lesion(rng, anatomy, request, placed)
                if lesion is not None:
                    placed.append(lesion)
                    break
    case = phantom_ct.make_abdomen(
        rng, (width, height, num_slices), (pixel, pixel, interval), z_center, placed, anatomy
    )
    series = f"{patient:06d}_{study:02d}_{1:02d}"
    pngs = (phantom_ct.to_hu_int16(case.hu).astype(np.int32) + HU_OFFSET).astype(np.uint16)
    for number in range(first, last + 1):
        k = num_slices - 1 - (number - first)  # RAS z index: slice numbers increase toward the feet
        with atomic_path(root / IMAGES / series / f"{number:03d}.png") as tmp:
            Image.fromarray(pngs[::-1, ::-1, k].T.copy()).save(tmp, format="PNG")  # rows -> P, cols -> L
    window = _WINDOWS[int(rng.integers(len(_WINDOWS)))]
    rows = []
    for key in keys:
        k = num_slices - 1 - (key - first)
        on_key = [i for i, lesion in enumerate(case.lesion_list) if abs(lesion.shape.center[2] - z_of(key)) < 1e-6]
        for order, i in enumerate(on_key):
            mask = case.lesions[::-1, ::-1, k].T == i + 1
            if mask.sum() < 2:
                continue
            coords, long, short = _recist(mask)
            rr, cc = np.nonzero(mask)
            box = [cc.min() + 1.0, rr.min() + 1.0, cc.max() + 1.0, rr.max() + 1.0]
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
                    "Coarse_lesion_type": -1 if split == 1 else _SITE_TYPES[site],  # real train rows are untyped
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
    return rows


def _csv_text(value) -> str:
    if isinstance(value, list):
        return ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def make_phantoms(out_dir, num_cases: int = DEMO_NUM_CASES, seed: int = 0, image_size=DEMO_IMAGE_SIZE) -> Path:
    """Write ``num_cases`` phantom series (Images_png) and their DL_info.csv in the DeepLesion layout; return root.

    Each series has 20-40 axial slices of ``image_size`` pixels (int or (w, h); the body is ~300 mm wide), a slice
    interval of 1-5 mm, one or two key slices with 1-3 lesions each (liver, kidney, spleen, abdomen, bone, soft
    tissue, of 6-60 mm), some extra lesions per key slice flagged ``Possibly_noisy`` with shifted marks. Patients
    (about 2 series per 3; the rest are second studies) are split ~70/15/15, every split populated. PNG rows run
    anterior -> posterior, columns patient right -> left (radiological view), slice numbers head -> feet. Boxes are
    the tight 1-based pixel boxes of each lesion on its key slice. The same seed gives byte-identical files.
    """
    if num_cases < 3:
        raise ValueError(f"num_cases must be >= 3 to populate the train, val and test splits, got {num_cases}")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    root = Path(out_dir)
    series = _patients(num_cases)
    num_patients = max(p for p, _ in series)
    rows = []
    for index, (patient, study) in enumerate(tqdm(series, desc="deeplesion phantoms", unit="series", disable=None)):
        split = _split_of(patient, num_patients)
        rows += _series_rows(np.random.default_rng([seed, index]), root, patient, study, split, size, seed)
    with atomic_path(root / CSV_NAME) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(COLUMNS)
            for row in sorted(rows, key=lambda r: r["File_name"]):
                writer.writerow([_csv_text(row[c]) for c in COLUMNS])
    return root
