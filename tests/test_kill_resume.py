"""A training run killed (SIGKILL) inside epoch 2 and started again with `--resume true` continues from epoch 1.

The saver the configs use (:class:`shared.engines.checkpoint.AtomicCheckpointSaver`) keeps every checkpoint either
complete or absent, also when the save itself fails; each bundle's CLI run is killed and resumed at the tiny sizes of
tests/test_bundle_*.py.
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from shared.engines.checkpoint import AtomicCheckpointSaver, latest_checkpoint
from shared.phantoms import deeplesion, kits19, lits
from tests.bundle_cases import config_args
from tests.conftest import REPO_ROOT, VA_TINY_NETWORK


class _DiskFull:
    """Pickling it fails like a full disk: torch.save stops halfway through the file."""

    def __reduce__(self):
        raise OSError("No space left on device")


class _Breaks(torch.nn.Module):
    """A module whose state dict cannot be saved once ``broken`` is set."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1000))
        self.broken = False

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        return {**state, "rest": _DiskFull()} if self.broken else state


def _train_with_failing_second_save(saver_type, folder: Path) -> None:
    """Two epochs saving a resume file after each; the save after epoch 2 fails while it writes."""
    module = _Breaks()
    engine = Engine(lambda engine, batch: None)
    saver_type(
        save_dir=str(folder), save_dict={"model": module}, file_prefix="resume", save_interval=1, n_saved=1
    ).attach(engine)
    engine.add_event_handler(Events.EPOCH_STARTED, lambda e: setattr(module, "broken", e.state.epoch == 2))
    with pytest.raises(OSError):
        engine.run([0], max_epochs=2)


def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path):
    """MONAI's saver deletes the epoch-1 file and leaves a truncated epoch-2 file; the atomic one keeps epoch 1."""
    _train_with_failing_second_save(CheckpointSaver, tmp_path / "monai")
    assert [p.name for p in (tmp_path / "monai").iterdir()] == ["resume_model_epoch=2.pt"]
    with pytest.raises(RuntimeError):
        torch.load(tmp_path / "monai" / "resume_model_epoch=2.pt", weights_only=True)

    _train_with_failing_second_save(AtomicCheckpointSaver, tmp_path / "atomic")
    assert [p.name for p in (tmp_path / "atomic").iterdir()] == ["resume_model_epoch=1.pt"]
    assert torch.load(tmp_path / "atomic" / "resume_model_epoch=1.pt", weights_only=True)["weight"].shape == (1000,)


def _targets(node) -> list[str]:
    if isinstance(node, dict):
        return [node.get("_target_", "")] + [t for value in node.values() for t in _targets(value)]
    return [t for value in node for t in _targets(value)] if isinstance(node, list) else []


def test_every_bundle_config_saves_checkpoints_atomically(tmp_path):
    """MONAI's CheckpointSaver writes in place (ignite's DiskSaver with atomic=False): no config may use it."""
    savers = [
        target
        for config in REPO_ROOT.glob("bundles/*/configs/*.json")
        for target in _targets(json.loads(config.read_text()))
        if target.endswith("CheckpointSaver")
    ]
    assert len(savers) == 6 and set(savers) == {"shared.engines.checkpoint.AtomicCheckpointSaver"}
    saver = AtomicCheckpointSaver(str(tmp_path), {"x": torch.nn.Linear(1, 1)}, save_key_metric=True, save_interval=1)
    assert saver._interval_checkpoint.save_handler._atomic and saver._key_metric_checkpoint.save_handler._atomic


# per bundle: phantoms, tiny sizes, and the learning rate the final checkpoint must hold after all epochs
EPOCHS = 3
CASES = {
    "msan_kits": {
        "phantoms": lambda out: kits19.make_phantoms(out, num_cases=12, shape=(16, 32, 32)),
        "args": {
            "spacing": "$None",
            "patch_size": [16, 16, 8],
            "network_def#channels": [4, 8, 16, 32],
            "batch_size": 1,
            "num_samples": 2,  # 8 training cases: 8 iterations of 2 patches an epoch
            "lr_step_iterations": 4,  # StepLR every 4 iterations: 6 steps in 3 epochs
        },
        "iterations": 8,
        "final_lr": 0.001 * 0.1**6,
    },
    "va_maskrcnn_lits": {
        "phantoms": lambda out: lits.make_phantoms(out, num_cases=8, shape=(32, 32, 12), num_test=1),
        "args": {
            **VA_TINY_NETWORK,
            "pretrained": False,
            "frozen_batchnorm": False,
            "samples_per_epoch": 8,
            "batch_size": 1,  # 8 iterations an epoch, 24 in all, the first 2 warm-up
            "lr_steps": [2, 11],  # of 12: lr / 10 at 2 and 20 iterations after the warm-up (in epochs 1 and 3)
        },
        "iterations": 8,
        "final_lr": 0.02 * 1 / 16 * 0.1**2,
    },
    "cs_att_deeplesion": {
        "phantoms": lambda out: deeplesion.make_phantoms(out, num_cases=8, seed=0, image_size=64),
        "args": {
            "max_size": 64,
            "spacing_mm": 4.0,
            "backbone": "tiny",
            "num_images": 3,
            "batch_size": 1,  # 7 training images: 7 iterations an epoch
            "lr_milestones": [1],  # lr / 10 after epoch 1, before the kill
        },
        "iterations": 7,
        "final_lr": 0.001 * 0.1,
    },
}


def _command(bundle: str, work: Path, data: Path, **extra) -> list[str]:
    config = str(REPO_ROOT / "bundles" / bundle / "configs" / "train.json")
    args = {**CASES[bundle]["args"], "epochs": EPOCHS, "val_interval": 100, "num_workers": 0, **extra}
    args.update(dataset_dir=str(data), ckpt_dir=str(work / "models"), output_dir=str(work / "runs"))
    if bundle != "msan_kits":
        args["cache_dir"] = str(work / "cache")
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config]
    return command + config_args({**args, "device": "$torch.device('cpu')", "amp": False})


def _kill_inside_epoch_2(command: list[str], log: Path, models: Path) -> None:
    """Start COMMAND, SIGKILL it once the epoch-1 checkpoint exists and an iteration of epoch 2 is logged."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    try:
        while f"Epoch: 2/{EPOCHS}, Iter: 1/" not in log.read_text() or latest_checkpoint(models) is None:
            assert process.poll() is None, f"training ended before epoch 2:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no epoch 2 in 300 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
@pytest.mark.parametrize("bundle", list(CASES))
def test_killed_run_resumes_from_the_last_epoch(tmp_path, bundle):
    case = CASES[bundle]
    data = case["phantoms"](tmp_path / "data")
    models, n = tmp_path / "models", case["iterations"]
    _kill_inside_epoch_2(_command(bundle, tmp_path, data), tmp_path / "killed.log", models)
    assert "Epoch[2] Complete" not in (tmp_path / "killed.log").read_text()
    # only the complete epoch-1 file: no temporary or truncated file
    assert [p.name for p in models.iterdir()] == ["resume_checkpoint_epoch=1.pt"]
    killed = torch.load(models / "resume_checkpoint_epoch=1.pt", weights_only=True)
    assert killed["trainer"]["iteration"] == n

    done = subprocess.run(
        _command(bundle, tmp_path, data, resume=True),
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (tmp_path / "resumed.log").write_text(done.stdout)
    # the trainer loads the epoch-1 file, starts at iteration 1 of epoch 2 and trains only epochs 2 and 3
    assert f"Restored all variables from {models / 'resume_checkpoint_epoch=1.pt'}" in done.stdout
    iterations = re.findall(r"Epoch: (\d+)/\d+, Iter: (\d+)/", done.stdout)
    assert iterations[0] == ("2", "1") and len(iterations) == (EPOCHS - 1) * n
    final = torch.load(latest_checkpoint(models), weights_only=True)
    assert final["trainer"]["iteration"] == EPOCHS * n
    # the schedule went on from the checkpoint: steps of the whole run, and the lr a fresh optimizer could not have
    steps = final["lr_scheduler"]["last_epoch"]
    assert steps == (EPOCHS if bundle == "cs_att_deeplesion" else EPOCHS * n)
    assert all(math.isclose(g["lr"], case["final_lr"], rel_tol=1e-6) for g in final["optimizer"]["param_groups"])
    if bundle == "msan_kits":  # Adam counts its steps per parameter
        assert {float(s["step"]) for s in final["optimizer"]["state"].values()} == {float(EPOCHS * n)}
