"""MetricTable: aligned text, atomic CSV, JSON-ready dict."""

import csv
import json
import math

import pytest

from shared.metrics.table import MetricTable


def _table() -> MetricTable:
    rows = [{"case": "case_00001", "dice": 0.5, "n": 3}, {"case": "case_00002", "dice": math.nan, "n": 12}]
    return MetricTable(rows, {"dice_mean": 0.5, "large": math.nan}, title="demo")


def test_text_is_aligned_and_shows_nan_as_na():
    lines = _table().to_text().splitlines()
    assert lines[0] == "demo"
    header, rule, first, second = lines[1:5]
    assert header.split() == ["case", "dice", "n"]
    assert len(first) == len(second) == len(rule)  # numbers right-aligned to the column width
    assert first.split() == ["case_00001", "0.5000", "3"]
    assert second.split() == ["case_00002", "n/a", "12"]
    assert lines[5:] == ["dice_mean : 0.5000", "large     : n/a"]


def test_csv_has_header_rows_and_empty_nan(tmp_path):
    out = _table().write_csv(tmp_path / "sub" / "scores.csv")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"case": "case_00001", "dice": "0.5", "n": "3"}, {"case": "case_00002", "dice": "", "n": "12"}]
    assert [p.name for p in out.parent.iterdir()] == ["scores.csv"]  # no temporary file left


def test_failed_csv_write_leaves_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "scores.csv"
    out.write_text("old")

    def broken_writerow(self, row):
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerow", broken_writerow)
    with pytest.raises(OSError, match="disk full"):
        _table().write_csv(out)
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_to_dict_is_json_ready():
    data = _table().to_dict()
    assert json.loads(json.dumps(data, allow_nan=False))["summary"] == {"dice_mean": 0.5, "large": None}
    assert data["rows"][1]["dice"] is None
