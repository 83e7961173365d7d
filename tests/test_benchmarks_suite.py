"""``python -m benchmarks``: one table of every benchmark's rows, the same rows in rows.json, refusal under load."""

import json
import math
import os
import subprocess
import sys

import pytest

EXPECTED = {
    "msan_benchmark": [
        f"{variant} / 3D U-Net: training {figure}"
        for variant in ("MSAN-V1", "MSAN-V2", "MSAN-V2+DS")
        for figure in ("step time", "peak memory")
    ],
    "va_benchmark": [
        "VA whole volume: uncached / cached feature time",
        "VA / baseline 2.5D Mask R-CNN: whole-volume time",
        "VA / baseline 2.5D Mask R-CNN: whole-volume peak memory",
        "VA training pipeline: NIfTI / cache time per slice",
    ],
    "csatt_benchmark": [
        f"{what}: training {figure}"
        for what in ("3DCE + CS-Att / 3DCE, M = 3", "9 slices with CS-Att / 21 without (M = 3 CS-Att / M = 7 3DCE)")
        for figure in ("step time", "peak memory")
    ]
    + [
        "DeepLesion sample: PNG decode / cache read time",
        "DeepLesion cache read of a batch / M = 3 CS-Att training step",
    ],
    "onnx_benchmark": [
        f"{bundle}: ONNX Runtime / PyTorch eager CPU inference time"
        for bundle in ("msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion")
    ],
}
OTHERS = ("scaling", "data_loading")  # their rows are theirs to test; here: present when the file is


def run_suite(repo_root, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    cmd = [sys.executable, "-m", "benchmarks", *args]
    return subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_quick_suite_prints_one_table_and_writes_its_rows(repo_root, tmp_path):
    out = tmp_path / "bench"
    result = run_suite(repo_root, "--quick", "--max_load", "1000", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "rows.json").read_text())
    rows = saved["rows"]
    assert (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"  # the plot beside the table
    for name, whats in EXPECTED.items():
        assert [r["what"] for r in rows if r["benchmark"] == name] == whats
    for name in OTHERS:
        present = (repo_root / "benchmarks" / f"{name}.py").is_file()
        assert any(r["benchmark"] == name for r in rows) == present
        assert (f"== {name}: skipped" in result.stdout) != present
    for r in rows:
        low, high = r["spread"]
        assert math.isfinite(r["ratio"]) and low <= r["ratio"] <= high < math.inf, r
        assert low > 0 or "added per slice" in r["what"], r  # a memory growth (difference of two peaks) may be <= 0
        assert r["goal"] and r["limit"], r
    # the printed table: one line per row of rows.json, in order, with its ratio; table.md is what was printed
    table = [line for line in result.stdout.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert len(table) == len(rows)
    for line, r in zip(table, rows):
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[0] == r["what"] and cells[2:4] == [r["goal"], r["limit"]]
        assert float(cells[1].split()[0]) == pytest.approx(r["ratio"], rel=5e-3)
    written = (out / "table.md").read_text()
    assert written.strip() in result.stdout and "Device: " in written and "load average at start" in written
    assert saved["load_start"] <= 1000 and saved["quick"] is True


def test_suite_refuses_under_load_with_one_line(repo_root, tmp_path):
    result = run_suite(repo_root, "--quick", "--max_load", "-1", "--out", str(tmp_path / "bench"))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "load average" in lines[0] and "> -1.0" in lines[0], result.stderr
    assert not (tmp_path / "bench").exists()
