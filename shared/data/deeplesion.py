"""DeepLesion (Yan et al. 2018): its facts (layout, HU offset, split codes, lesion types), DL_info.csv parsing,
validation and the key-slice datalist.

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

from PIL import Image
from tqdm import tqdm

from shared.data.validation import DatasetError, root_problem

CSV_NAME, IMAGES = "DL_info.csv", "Images_png"
HU_OFFSET = 32768
"""The PNGs store HU + HU_OFFSET as uint16."""
SPLITS = {1: "training", 2: "validation", 3: "test"}
"""``Train_Val_Test`` code -> datalist split (the official split, per patient)."""
_SPLIT_ALIASES = {"train": "training", "val": "validation"}
UNKNOWN_LESION_TYPE = -1
"""``Coarse_lesion_type`` of the rows without a type (all training rows of the real DL_info.csv)."""
LESION_TYPES = {
    UNKNOWN_LESION_TYPE: "unknown",
    1: "bone",
    2: "abdomen",
    3: "mediastinum",
    4: "liver",
    5: "lung",
    6: "kidney",
    7: "soft tissue",
    8: "pelvis",
}
"""``Coarse_lesion_type`` code -> lesion type."""
LESION_TYPE_ABBREVIATIONS = {1: "BN", 2: "AB", 3: "ME", 4: "LV", 5: "LU", 6: "KD", 7: "ST", 8: "PV"}
"""``Coarse_lesion_type`` code -> the abbreviation of the DeepLesion and CS-Att papers (none for unknown)."""
_FILE_NAME = re.compile(r"(\d+)_(\d+)_(\d+)_(\d+)\.png")


def split_code(split: str) -> int:
    """``Train_Val_Test`` code of a split: ``training`` (or ``train``), ``validation`` (or ``val``) or ``test``."""
    codes = {name: code for code, name in SPLITS.items()}
    name = _SPLIT_ALIASES.get(split, split)
    if name not in codes:
        raise ValueError(f"unknown split {split!r}: choose one of {', '.join([*codes, *_SPLIT_ALIASES])}")
    return codes[name]


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
        return (
            f"{path}: mode {mode}, expected a 16-bit grey PNG (HU + {HU_OFFSET}), the key slice of {where}; restore it"
        )
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


def make_datalist(root, train_and_val: bool = False) -> dict:
    """MONAI datalist of a DeepLesion root: one entry per key slice (rows grouped by File_name), rows with
    ``Possibly_noisy == 1`` removed (3DCE, CS-Att sec. 3), split by ``Train_Val_Test`` (the official patient-level
    split). With ``train_and_val`` the ``training`` list also holds the validation entries (VA paper sec. 3.3:
    "training with the DeepLesion train and val sets"); ``validation`` keeps them, so its scores are then on
    trained-on images.

    Entry: ``{"image": series folder, "key_slice", "slice_range": [first, last], "boxes": [[x1, y1, x2, y2], ...]
    0-based float pixels (DL_info.csv's 1-based minus 1), "lesion_types", "diameters_mm": [[long, short], ...]
    (pixels times the x pixel spacing), "spacing": [sx, sy, slice interval], "image_size": [w, h], "file_name",
    "series"}``.
    """
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
    if train_and_val:
        data["training"] = data["training"] + data["validation"]
    return data
