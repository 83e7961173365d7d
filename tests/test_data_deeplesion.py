"""DeepLesion layout: phantoms (PNG series, DL_info.csv), annotation parsing, validate, CLI, key-slice datalist."""

import csv
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.data import deeplesion
from shared.data.validation import DatasetError
from shared.phantoms import deeplesion as deeplesion_phantoms

REAL_COLUMNS = (  # the header of the real DL_info.csv, in order
    "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,Bounding_boxes,"
    "Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,Possibly_noisy,Slice_range,"
    "Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,Train_Val_Test"
).split(",")
SIZE = 64


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    return deeplesion_phantoms.make_phantoms(tmp_path_factory.mktemp("deeplesion"), num_cases=6, image_size=SIZE)


@pytest.fixture
def root(phantom_root, tmp_path) -> Path:
    """A private copy to corrupt."""
    return Path(shutil.copytree(phantom_root, tmp_path / "deeplesion"))


def _csv_rows(root: Path) -> list[dict]:
    with open(root / "DL_info.csv", newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(root: Path, rows: list[dict]) -> None:
    with open(root / "DL_info.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, REAL_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def test_phantom_csv_has_every_real_column(phantom_root):
    with open(phantom_root / "DL_info.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == REAL_COLUMNS
    raw = _csv_rows(phantom_root)[0]
    assert len(raw["Measurement_coordinates"].split(", ")) == 8 and len(raw["Bounding_boxes"].split(", ")) == 4


def test_phantom_series_slices_and_annotations(phantom_root):
    rows = deeplesion.read_annotations(phantom_root)
    by_key = defaultdict(list)
    for row in rows:
        by_key[row["File_name"]].append(row)
    # 1-3 lesions drawn per key slice, plus those drawn for the series' other key slice that reach this one
    assert all(1 <= len(group) <= 6 for group in by_key.values())
    assert {r["Train_Val_Test"] for r in rows} == {1, 2, 3}
    assert any(r["Possibly_noisy"] for r in rows) and not all(r["Possibly_noisy"] for r in rows)
    assert {r["Coarse_lesion_type"] for r in rows if r["Train_Val_Test"] == 1} == {-1}  # untyped, as the real train
    assert {r["Coarse_lesion_type"] for r in rows if r["Train_Val_Test"] > 1} <= {1, 2, 4, 6, 7}
    for row in rows:
        folder = phantom_root / "Images_png" / deeplesion.series_name(row)
        names = sorted(p.name for p in folder.iterdir())
        assert 20 <= len(names) <= 40 and all(len(n) == len("000.png") for n in names)
        first, last = row["Slice_range"]
        assert first <= row["Key_slice_index"] <= last
        assert all((folder / f"{n:03d}.png").is_file() for n in range(first, last + 1))
        assert row["Image_size"] == [SIZE, SIZE] and 1 <= row["Spacing_mm_px_"][2] <= 5
        assert 280 < SIZE * row["Spacing_mm_px_"][0] < 430  # field of view 1.1-1.3 x a 260-330 mm wide body
        x1, y1, x2, y2 = row["Bounding_boxes"]
        assert 1 <= x1 <= x2 <= SIZE and 1 <= y1 <= y2 <= SIZE
        long, short = row["Lesion_diameters_Pixel_"]
        assert 0 < short <= long <= np.hypot(x2 - x1, y2 - y1) + 1e-4  # 6 significant digits in the CSV
        if not row["Possibly_noisy"]:
            xs, ys = row["Measurement_coordinates"][0::2], row["Measurement_coordinates"][1::2]
            assert x1 <= min(xs) and max(xs) <= x2 and y1 <= min(ys) and max(ys) <= y2
            hu = np.asarray(Image.open(folder / f"{row['Key_slice_index']:03d}.png")).astype(float) - 32768
            inside = hu[int(y1) - 1 : int(y2), int(x1) - 1 : int(x2)]
            assert inside.mean() > -500  # the box lies on the body, not in air


def test_phantoms_key_slices_option(tmp_path):
    root = deeplesion_phantoms.make_phantoms(tmp_path, num_cases=4, image_size=SIZE, key_slices=3)
    keys = defaultdict(set)
    for row in deeplesion.read_annotations(root):
        keys[deeplesion.series_name(row)].add(row["Key_slice_index"])
    assert len(keys) == 4
    for series, numbers in keys.items():
        slices = sorted(int(p.stem) for p in (root / "Images_png" / series).iterdir())
        n = len(slices)
        evenly = {slices[0] + round((j + 1) * (n - 1) / 4) for j in range(3)}
        assert numbers <= evenly  # a key slice whose lesions found no room has no rows
    assert sum(len(numbers) for numbers in keys.values()) >= 10


def test_phantom_png_encoding(phantom_root):
    folder = next((phantom_root / "Images_png").iterdir())
    image = Image.open(next(folder.iterdir()))
    assert image.mode == "I;16" and image.size == (SIZE, SIZE)
    hu = np.asarray(image).astype(np.int32) - 32768
    assert abs(hu[:3, :3].mean() + 1000) < 40  # air in the corner
    assert hu.max() > 300  # spine


def test_phantoms_reproducible(tmp_path, phantom_root):
    again = deeplesion_phantoms.make_phantoms(tmp_path / "a", num_cases=6, image_size=SIZE)
    other = deeplesion_phantoms.make_phantoms(tmp_path / "b", num_cases=6, seed=1, image_size=SIZE)
    assert (again / "DL_info.csv").read_bytes() == (phantom_root / "DL_info.csv").read_bytes()
    assert (other / "DL_info.csv").read_bytes() != (phantom_root / "DL_info.csv").read_bytes()
    files = sorted(p.relative_to(phantom_root) for p in phantom_root.rglob("*.png"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.png"))
    assert all((again / f).read_bytes() == (phantom_root / f).read_bytes() for f in files[::7])


def test_read_annotations_raises_naming_row_and_field(root):
    rows = _csv_rows(root)
    rows[1]["Bounding_boxes"] = "10, 20, 30"
    rows[2]["Train_Val_Test"] = "4"
    _write_csv(root, rows)
    with pytest.raises(DatasetError) as info:
        deeplesion.read_annotations(root)
    message = str(info.value)
    assert "row 3" in message and "Bounding_boxes" in message and "'10, 20, 30'" in message
    assert "row 4" in message and "Train_Val_Test" in message


def test_validate_clean_root(phantom_root):
    assert deeplesion.validate(phantom_root) == []


def test_validate_missing_root(tmp_path):
    (problem,) = deeplesion.validate(tmp_path / "nope")
    assert problem.startswith(str(tmp_path / "nope")) and "python -m shared phantoms deeplesion" in problem
    (problem,) = deeplesion.validate(tmp_path)
    assert problem.startswith(str(tmp_path)) and "DL_info.csv" in problem


def test_validate_missing_slice_and_broken_row_at_once(root):
    rows = deeplesion.read_annotations(root)
    row = rows[0]
    first, _ = row["Slice_range"]
    png = root / "Images_png" / deeplesion.series_name(row) / f"{first:03d}.png"
    png.unlink()
    raw = _csv_rows(root)
    raw[-1]["Slice_range"] = "ten, 12"
    _write_csv(root, raw)
    problems = deeplesion.validate(root)
    assert len(problems) == 2
    assert problems[0].startswith(str(root / "DL_info.csv")) and f"row {len(raw) + 1}" in problems[0]
    assert "Slice_range" in problems[0]
    assert problems[1].startswith(str(png)) and "missing slice" in problems[1]


def test_validate_box_outside_image_and_missing_series(root):
    series = deeplesion.series_name(deeplesion.read_annotations(root)[-1])
    raw = _csv_rows(root)
    raw[0]["Bounding_boxes"] = f"10, 10, {SIZE + 5}, 20"
    _write_csv(root, raw)
    shutil.rmtree(root / "Images_png" / series)
    problems = deeplesion.validate(root)
    assert len(problems) == 2
    assert problems[0].startswith(str(root / "DL_info.csv")) and "row 2" in problems[0]
    assert "outside the 64x64 image" in problems[0]
    assert problems[1].startswith(str(root / "Images_png" / series)) and "missing series" in problems[1]


def test_validate_key_slice_not_16_bit(root):
    row = deeplesion.read_annotations(root)[0]
    key = root / "Images_png" / deeplesion.series_name(row) / f"{row['Key_slice_index']:03d}.png"
    Image.new("L", (SIZE, SIZE)).save(key)
    (problem,) = deeplesion.validate(root)
    assert problem.startswith(str(key)) and "16-bit" in problem


def test_validate_missing_column(root):
    raw = _csv_rows(root)
    for row in raw:
        del row["Spacing_mm_px_"]
    with open(root / "DL_info.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in REAL_COLUMNS if c != "Spacing_mm_px_"])
        writer.writeheader()
        writer.writerows(raw)
    (problem,) = deeplesion.validate(root)
    assert problem.startswith(str(root / "DL_info.csv")) and "Spacing_mm_px_" in problem


def test_cli_validate(root):
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "shared", "validate", "deeplesion", str(root)]
    assert subprocess.run(command, cwd=repo, capture_output=True).returncode == 0
    row = deeplesion.read_annotations(root)[0]
    key = root / "Images_png" / deeplesion.series_name(row) / f"{row['Key_slice_index']:03d}.png"
    key.unlink()
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    assert result.returncode == 1 and str(key) in result.stderr


def _row(file_name, noisy, split, box, lesion_type=-1, diameters="10, 5"):
    patient, study, series, key = (int(v) for v in file_name[:-4].split("_"))
    return {
        "File_name": file_name,
        "Patient_index": patient,
        "Study_index": study,
        "Series_ID": series,
        "Key_slice_index": key,
        "Measurement_coordinates": "1, 2, 3, 4, 5, 6, 7, 8",
        "Bounding_boxes": box,
        "Lesion_diameters_Pixel_": diameters,
        "Normalized_lesion_location": "0.5, 0.5, 0.5",
        "Coarse_lesion_type": lesion_type,
        "Possibly_noisy": noisy,
        "Slice_range": f"{key - 2}, {key + 3}",
        "Spacing_mm_px_": "0.8, 0.8, 5",
        "Image_size": "512, 512",
        "DICOM_windows": "-175, 275",
        "Patient_gender": "F",
        "Patient_age": 62,
        "Train_Val_Test": split,
    }


def test_datalist_groups_key_slices_drops_noisy_rows_and_shifts_boxes(tmp_path):
    _write_csv(
        tmp_path,
        [
            _row("000001_01_01_109.png", 0, 1, "11, 21, 31, 41.5", diameters="20, 10"),
            _row("000001_01_01_109.png", 1, 1, "1, 1, 5, 5"),  # noisy: removed
            _row("000001_01_01_109.png", 0, 1, "100, 200, 110, 220", diameters="12.5, 4"),
            _row("000002_01_02_050.png", 0, 2, "2, 3, 4, 5", lesion_type=4),
            _row("000003_01_01_007.png", 1, 3, "2, 3, 4, 5", lesion_type=6),  # only noisy rows: no entry
        ],
    )
    data = deeplesion.make_datalist(tmp_path)
    assert [len(data[k]) for k in ("training", "validation", "test")] == [1, 1, 0]
    assert data["training"][0] == {
        "image": str(tmp_path.resolve() / "Images_png" / "000001_01_01"),
        "key_slice": 109,
        "slice_range": [107, 112],
        "boxes": [[10.0, 20.0, 30.0, 40.5], [99.0, 199.0, 109.0, 219.0]],
        "lesion_types": [-1, -1],
        "diameters_mm": [pytest.approx([16.0, 8.0]), pytest.approx([10.0, 3.2])],
        "spacing": [0.8, 0.8, 5.0],
        "image_size": [512, 512],
        "file_name": "000001_01_01_109.png",
        "series": "000001_01_01",
    }
    val = data["validation"][0]
    assert (val["series"], val["key_slice"], val["lesion_types"]) == ("000002_01_02", 50, [4])


def test_datalist_of_phantoms_matches_csv(phantom_root):
    rows = deeplesion.read_annotations(phantom_root)
    clean = [r for r in rows if not r["Possibly_noisy"]]
    data = deeplesion.make_datalist(phantom_root)
    entries = data["training"] + data["validation"] + data["test"]
    assert len(entries) == len({r["File_name"] for r in clean})
    assert sum(len(e["boxes"]) for e in entries) == len(clean)
    assert all(len(data[k]) > 0 for k in ("training", "validation", "test"))
    assert all(Path(e["image"]).is_dir() for e in entries)
