"""Same seed, same data, CPU: two training runs of a bundle's own train.json give the same loss at every iteration.

Each bundle trains twice in this process from scratch (its own output and cache folders) at the tiny sizes of
tests/test_bundle_*.py, for two epochs of two iterations and no validation, with data loaded in the main process
and in two worker processes; the per-iteration losses are compared exactly (floats, not within a tolerance), and a
third run with another seed must differ (the comparison can fail).
"""

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

from shared.phantoms import deeplesion, kits19, lits
from tests.conftest import REPO_ROOT, VA_TINY_NETWORK

# only the run's own folders and sizes differ from the defaults; the device is the CPU even where CUDA is present
CPU = {"device": "$torch.device('cpu')", "amp": False, "epochs": 2, "val_interval": 100}
TINY = {
    "msan_kits": {
        "spacing": "$None",
        "patch_size": [16, 16, 8],
        "network_def#channels": [4, 8, 16, 32],
        "batch_size": 1,
        "num_samples": 2,  # 2 training cases x 2 patches: 2 iterations of 2 patches a epoch
    },
    "va_maskrcnn_lits": {
        **VA_TINY_NETWORK,
        "pretrained": False,
        "frozen_batchnorm": False,
        "samples_per_epoch": 4,
        "batch_size": 2,
    },
    "cs_att_deeplesion": {"max_size": 64, "spacing_mm": 4.0, "backbone": "tiny", "num_images": 3, "batch_size": 2},
}
PHANTOMS = {
    "msan_kits": lambda out: kits19.make_phantoms(out, num_cases=4, shape=(16, 32, 32)),
    "va_maskrcnn_lits": lambda out: lits.make_phantoms(out, num_cases=8, shape=(32, 32, 12), num_test=1),
    "cs_att_deeplesion": lambda out: deeplesion.make_phantoms(out, num_cases=5, seed=0, image_size=64),
}


def _item(loss: torch.Tensor | float) -> float:
    return loss.item() if isinstance(loss, torch.Tensor) else loss


def _losses(bundle: str, dataset_dir, run_dir, **knobs) -> list[float]:
    """Train the bundle's train.json with KNOBS set and return the loss of every iteration."""
    overrides = {**CPU, **TINY[bundle], **knobs, "dataset_dir": str(dataset_dir), "ckpt_dir": str(run_dir / "models")}
    overrides.update(output_dir=str(run_dir / "runs"), cache_dir=str(run_dir / "cache"))
    if bundle == "msan_kits":
        del overrides["cache_dir"]  # CacheDataset keeps its cache in memory
    config = str(REPO_ROOT / "bundles" / bundle / "configs" / "train.json")
    workflow = ConfigWorkflow(config_file=config, workflow_type=None, run_id="training", **overrides)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(_item(e.state.output["loss"])))
    workflow.run()
    workflow.finalize()
    return losses


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("bundle", list(TINY))
def test_same_seed_gives_the_same_losses(tmp_path, bundle, num_workers):
    data = PHANTOMS[bundle](tmp_path / "data")
    first = _losses(bundle, data, tmp_path / "first", num_workers=num_workers)
    second = _losses(bundle, data, tmp_path / "second", num_workers=num_workers)
    assert len(first) == 4
    assert first == second
    assert _losses(bundle, data, tmp_path / "other_seed", num_workers=num_workers, seed=1) != first
