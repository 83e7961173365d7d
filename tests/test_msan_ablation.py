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
    # the validator's Dice at each validation (every 8 // 4 = 2 iterations), the V2 branch's rms per epoch
    assert all([i for i, _ in r["validation"]["val_kits19_dice"]] == [2, 4, 6, 8] for r in runs.values())
    assert runs["v2_ds"]["training_watch"]["epochs"][-1]["ratio"] > 0 and "training_watch" not in runs["unet"]
    assert runs["v2_ds"]["res2net_gain"] is None  # the paper's plain sum unless --args_file sets a gain
    assert runs["v2_ds"]["res2net_gain_trained"] is None
    assert report["votes"] and report["votes"][0]["members"] == ablation.SMOKE["arms"]
    assert "2-model vote" in (tmp_path / "ablation.md").read_text()


def test_trained_gain_is_read_from_the_saved_model(tmp_path):
    import torch

    from shared.networks.msan import MSAN

    sizes = {"channels": (4, 8, 16), "strides": ((2, 2, 1), (2, 2, 2))}
    network = MSAN(variant="v2", res2net_gain=0, **sizes)
    with torch.no_grad():
        network.res2net_gain.fill_(0.25)  # as training would move it
    torch.save(network.state_dict(), tmp_path / "model.pt")
    torch.save(MSAN(variant="v2", **sizes).state_dict(), tmp_path / "plain.pt")
    assert ablation.trained_gain(tmp_path / "model.pt") == 0.25
    assert ablation.trained_gain(tmp_path / "plain.pt") is None


def test_demo_sizes_are_the_main_jobs():
    """The ablation trains every arm with the demo sizes of scripts/msan_kits_job.sh's args file."""
    script = (REPO / "scripts" / "msan_kits_job.sh").read_text()
    heredoc = script.split("<<JSON\n", 1)[1].split("\nJSON\n", 1)[0]
    job = json.loads(heredoc.replace("$OUT_DIR", "/out").replace("$SEED", "0"))
    paths_and_seed = {"dataset_dir", "ckpt_dir", "output_dir", "seed"}
    assert {k: v for k, v in job.items() if k not in paths_and_seed} == ablation.DEMO_OVERRIDES


def test_paired_init_starts_v1_and_v2_alike_and_keeps_the_random_state():
    import torch

    from shared.networks.msan import MSAN

    sizes = {"channels": (4, 8, 16), "strides": ((2, 2, 1), (2, 2, 2)), "norm": "instance"}
    torch.manual_seed(0)
    v1 = MSAN(variant="v1", **sizes)
    torch.manual_seed(0)
    v2 = MSAN(variant="v2", **sizes)
    shared = [k for k in v1.state_dict() if k in v2.state_dict()]
    after = [k for k in shared if k.startswith(("attentions", "ups", "decoders", "head"))]  # built after the block
    assert not any(torch.equal(v1.state_dict()[k], v2.state_dict()[k]) for k in after if k.endswith("weight"))
    state = torch.get_rng_state()
    ablation.paired_init(0, v1)
    ablation.paired_init(0, v2)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(v1.state_dict()[k], v2.state_dict()[k]) for k in shared)
    ablation.paired_init(1, v2)
    assert not torch.equal(v1.state_dict()["head.conv.weight"], v2.state_dict()["head.conv.weight"])


def test_watched_branch_logs_the_res2net_output_over_the_bottom_in_training_only():
    """Bottom conv block and Res2Net block replaced by convolutions giving constant maps 1 and 3: rms ratio 3; the
    evaluation-mode forward (the validator's) in between, with other constants, must not count."""
    import torch
    from ignite.engine import Engine

    from shared.networks.msan import MSAN

    network = MSAN(channels=(4, 8, 16), strides=((2, 2, 1), (2, 2, 2)), variant="v2", norm="instance")

    def constant(value: float) -> torch.nn.Conv3d:
        conv = torch.nn.Conv3d(8, 16, 1)
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.constant_(conv.bias, value)
        return conv

    network.bottom, network.bottom_res2net = constant(1.0), constant(3.0)
    x = torch.randn(1, 1, 8, 8, 4)

    def step(engine, batch):
        network.train()(x)
        with torch.no_grad():
            network.bottom.bias.add_(10.0)  # what an eval-mode forward sees
            network.eval()(x)
            network.bottom.bias.sub_(10.0)

    trainer = Engine(step)
    with ablation.watched_branch("training", network, trainer) as log:
        trainer.run(range(2), max_epochs=2)
    assert [(e["epoch"], e["iteration"]) for e in log["epochs"]] == [(1, 2), (2, 4)]
    for entry in log["epochs"]:
        assert entry["bottom_rms"] == pytest.approx(1.0) and entry["branch_rms"] == pytest.approx(3.0)
        assert entry["ratio"] == pytest.approx(3.0)
    trainer.state.max_epochs = None
    trainer.run(range(2), max_epochs=1)  # after the watch: nothing more logged
    assert len(log["epochs"]) == 2
    v1 = MSAN(channels=(4, 8, 16), strides=((2, 2, 1), (2, 2, 2)))
    with ablation.watched_branch("training", v1, trainer) as unwatched:
        trainer.state.max_epochs = None
        trainer.run(range(2), max_epochs=1)
    assert unwatched == {}
