"""benchmarks/scaling.py and benchmarks/data_loading.py: the growth fit and the rows on hand-made numbers, the config
ids they set exist in the bundles' configs, and a --quick run of each writes rows with finite positive ratios."""

import json
import math
import re
import subprocess
import sys

import pytest
from monai.bundle import ConfigParser

from benchmarks import data_loading, scaling
from tests.conftest import REPO_ROOT

DEPTHS = [32, 64, 128]


def test_linear_time_is_flat_per_slice_and_memory_doubling_with_depth_grows_fourfold():
    times = [0.5 * d for d in DEPTHS]
    assert scaling.growth_exponent(DEPTHS, times) == pytest.approx(1.0)
    assert scaling.fitted_ratio(DEPTHS, [t / d for t, d in zip(times, DEPTHS)]) == pytest.approx(1.0)
    assert scaling.fitted_ratio(DEPTHS, [100, 200, 400]) == pytest.approx(4.0)
    assert scaling.fitted_ratio(DEPTHS, [100, 100, 100]) == pytest.approx(1.0)
    assert scaling.fitted_ratio(DEPTHS, [t * d for t, d in zip(times, DEPTHS)]) == pytest.approx(16.0)  # quadratic


def _records(bundle, memory):
    """Hand-made measurements: time linear in depth (two repeats 10 % apart), work one unit a slice."""
    return {
        bundle: {
            64: {
                d: {"seconds": [0.01 * d, 0.011 * d], "peak_mib": m, "work": d, "volume_mib": d / 64}
                for d, m in zip(DEPTHS, memory)
            }
        }
    }


def _exponent(r: dict) -> float:
    """The fitted exponent a row's note gives (``... ~ depth^K``)."""
    return float(re.search(r"depth\^(-?[0-9.]+)", r["note"]).group(1))


def test_rows_give_time_per_slice_and_memory_at_the_largest_vs_smallest_depth():
    time_row, memory_row = scaling.scaling_rows(_records("va_maskrcnn_lits", [50, 50, 50]))
    assert time_row["what"] == "va_maskrcnn_lits time/slice at 128 vs 32 slices (64 px)"
    assert time_row["ratio"] == pytest.approx(1.0)
    assert time_row["spread"] == pytest.approx([1 / 1.1, 1.1])  # every repeat at 128 over every repeat at 32
    assert time_row["limit"].startswith("1.00") and _exponent(time_row) == pytest.approx(0.0, abs=0.01)
    assert memory_row["what"] == "va_maskrcnn_lits memory added per slice, in float32 slices (64 px)"
    assert memory_row["ratio"] == pytest.approx(0.0)
    slice_mib = 1 / 64  # _records: one float32 slice is 1/64 MiB
    _, two_volumes = scaling.scaling_rows(_records("cs_att_deeplesion", [50 + 2 * d * slice_mib for d in DEPTHS]))
    assert two_volumes["ratio"] == pytest.approx(2.0) and "volume-sized arrays only" in two_volumes["goal"]
    _, msan_memory = scaling.scaling_rows(_records("msan_kits", [100, 200, 400]))
    assert msan_memory["ratio"] == pytest.approx(4.0) and _exponent(msan_memory) == pytest.approx(1.0, abs=0.01)
    assert "sliding window" in msan_memory["goal"]


def test_wait_share_row_on_hand_made_times():
    record = {
        "dataflow_s": [0.1, 0.3, 0.2],
        "processing_s": [0.9, 0.7, 1.8],
        "iterations_per_epoch": 12,
        "batch_size": 2,
        "num_workers": 4,
        "persistent_workers": True,
        "pin_memory": False,
        "device": "cpu",
    }
    assert data_loading.wait_shares(record["dataflow_s"], record["processing_s"]) == pytest.approx([0.1, 0.3, 0.1])
    loading = data_loading.loading_row("msan_kits", record)
    assert loading["what"] == "msan_kits data wait share of a training step" and loading["goal"] == "< 0.10"
    assert loading["ratio"] == pytest.approx(0.1) and loading["spread"] == pytest.approx([0.1, 0.3])
    assert "0.150 of their total time" in loading["note"]  # 0.6 s of 4.0 s
    assert "num_workers 4, persistent_workers True, pin_memory False" in loading["note"]


def _missing_ids(bundle: str, config: str, ids) -> list[str]:
    """The ids neither the config nor (for a nested id) its parent has: the benchmarks' parser would skip them."""
    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / config))
    return [i for i in ids if i not in parser and not ("#" in i and i.rpartition("#")[0] in parser)]


@pytest.mark.parametrize("bundle", scaling.BUNDLES)
def test_every_config_id_the_benchmarks_set_is_in_the_bundles_configs(bundle):
    assert _missing_ids(bundle, "inference.json", scaling.overrides(bundle, 64, paper_networks=False)) == []
    train_ids = {**data_loading.settings(bundle, quick=True, num_workers=0), **data_loading.DEMO[bundle]}
    train_ids |= dict.fromkeys(["output_dir", "ckpt_dir", "dataset_dir", "epochs", "train#handlers"])
    assert _missing_ids(bundle, "train.json", train_ids) == []
    assert _missing_ids(bundle, "inference.json", ["misspelt_id"]) == ["misspelt_id"]


def _quick(script: str, tmp_path, *extra) -> list[dict]:
    rows = tmp_path / f"{script}.json"
    cmd = [sys.executable, f"benchmarks/{script}.py", "--quick", "--max_load", "1000", "--rows", str(rows), *extra]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(rows.read_text())


def _finite_positive(r: dict) -> bool:
    return all(math.isfinite(v) and v > 0 for v in (r["ratio"], *r["spread"])) and r["spread"][0] <= r["ratio"]


@pytest.mark.slow
def test_quick_scaling_run_writes_rows_and_a_plot(tmp_path):
    png = tmp_path / "scaling.png"
    rows = _quick("scaling", tmp_path, "--out", str(png))
    whats = []
    for b in scaling.BUNDLES:
        whats.append(f"{b} time/slice at 8 vs 4 slices (32 px)")
        added = f"{b} memory added per slice, in float32 slices (32 px)"
        whats.append(added if b in scaling.TWO_AND_A_HALF_D else f"{b} memory at 8 vs 4 slices (32 px)")
    assert [r["what"] for r in rows] == whats
    growth = [r for r in rows if "added per slice" in r["what"]]  # a difference of two peaks: noise may make it <= 0
    assert all(math.isfinite(r["ratio"]) for r in growth), growth
    assert all(_finite_positive(r) for r in rows if r not in growth), rows
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_data_loading_run_writes_a_share_per_bundle(tmp_path):
    rows = _quick("data_loading", tmp_path, "--num_workers", "1")
    assert [r["what"] for r in rows] == [f"{b} data wait share of a training step" for b in data_loading.BUNDLES]
    assert all(_finite_positive(r) and r["spread"][1] < 1 for r in rows), rows
    assert all("num_workers 1, persistent_workers True" in r["note"] for r in rows)
