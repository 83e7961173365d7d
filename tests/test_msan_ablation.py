"""benchmarks/msan_ablation.py: every arm reaches the bundle as the model it claims; a tiny run writes the table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from benchmarks import msan_ablation as ablation
from shared.networks.msan import architecture

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("arm", list(ablation.ARMS))
def test_each_arm_builds_the_table1_model_it_claims(arm, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(ablation.CONFIGS / "train.json"))
    parser.update(ablation.arm_overrides(arm, seed=0, data=tmp_path, arm_dir=tmp_path, iterations=40))
    arch = architecture(parser.get_parsed_content("network_def"))
    assert arch.name == ablation.ARMS[arm][2]
    assert arch.supervision_heads == (2 if arm.endswith("_ds") else 0)


def test_summary_gives_mean_and_sd_over_seeds_and_the_vote_row():
    def record(arm, seed, kidney, tumour):
        blocks = {"unet": (0, 0, 0), "v2_ds": (3, 1, 2)}[arm]
        return {
            "arm": arm,
            "seed": seed,
            "model": ablation.ARMS[arm][2],
            "parameters": 100 if arm == "unet" else 150,
            "attention_gates": blocks[0],
            "res2net_blocks": blocks[1],
            "supervision_heads": blocks[2],
            "kidney_dice": kidney,
            "tumour_dice": tumour,
            "train_s": 10.0 + seed,
            "train_cpu_s": 18.0 + seed,
            "peak_rss_mib": 500.0 + seed,
        }

    records = [record("unet", 0, 0.8, 0.2), record("unet", 1, 0.9, 0.4), record("v2_ds", 0, 0.9, 0.5)]
    votes = [{"members": ["unet", "v2_ds"], "kidney_dice": 0.95, "tumour_dice": 0.6}]
    settings = {"test_cases": ["case_00180"], "iterations": 40, "seeds": [0, 1], "parallel": 1, "threads": 2}
    rows, markdown = ablation.summarize(records, votes, settings)
    assert [r["model"] for r in rows] == ["3D U-Net", "MSAN-V2 with deep supervision", "2-model vote"]
    assert rows[0]["kidney"] == "0.850 +- 0.071" and rows[0]["tumour"] == "0.300 +- 0.141"
    assert rows[0]["train_s"] == 10.5 and rows[0]["peak_rss_mib"] == 501.0
    assert rows[1]["blocks"] == "3 / 1 / 2" and rows[2]["tumour"] == "0.600 +- 0.000"
    assert "| 3D U-Net | 100 | 0 / 0 / 0 | 2 | 0.850 +- 0.071 | 0.300 +- 0.141 | 10 (18) | 501 |" in markdown


@pytest.mark.slow
def test_smoke_run_writes_the_table(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / "msan_ablation.py"),
        "--smoke",
        "--jobs",
        "1",
        "--out",
        str(tmp_path),
    ]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, timeout=600)
    report = json.loads((tmp_path / "ablation.json").read_text())
    runs = {r["arm"]: r for r in report["runs"]}
    assert set(runs) == set(ablation.SMOKE["arms"])
    assert runs["unet"]["attention_gates"] == 0 and runs["v2_ds"]["res2net_blocks"] == 1
    assert runs["v2_ds"]["supervision_heads"] == 2 and runs["v2_ds"]["parameters"] > runs["unet"]["parameters"]
    assert all(r["peak_rss_mib"] > 0 and 0 <= r["tumour_dice"] <= 1 for r in runs.values())
    assert report["votes"] and report["votes"][0]["members"] == ablation.SMOKE["arms"]
    assert "2-model vote" in (tmp_path / "ablation.md").read_text()


def test_demo_sizes_are_the_main_jobs():
    """The ablation trains every arm with the demo sizes of scripts/msan_kits_job.sh's args file."""
    script = (REPO / "scripts" / "msan_kits_job.sh").read_text()
    heredoc = script.split("<<JSON\n", 1)[1].split("\nJSON\n", 1)[0]
    job = json.loads(heredoc.replace("$OUT_DIR", "/out").replace("$SEED", "0"))
    paths_and_seed = {"dataset_dir", "ckpt_dir", "output_dir", "seed"}
    assert {k: v for k, v in job.items() if k not in paths_and_seed} == ablation.DEMO_OVERRIDES
