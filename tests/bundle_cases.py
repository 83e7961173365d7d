"""Tiny, trainable settings of each bundle on phantoms, shared by the packing, download and MONAI Label tests."""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def _kits_studies(work: Path, studies: Path) -> Path:
    """KiTS19 phantoms (the training root) copied as `<case>.nii.gz` + `labels/final/<case>.nii.gz` into STUDIES."""
    from shared.phantoms import kits19

    root = kits19.make_phantoms(work / "kits19", num_cases=5, seed=0, shape=(16, 48, 48))
    for case in sorted(p for p in root.iterdir() if p.is_dir()):
        shutil.copy(case / "imaging.nii.gz", studies / f"{case.name}.nii.gz")
        shutil.copy(case / "segmentation.nii.gz", studies / "labels" / "final" / f"{case.name}.nii.gz")
    return root


def _lits_studies(work: Path, studies: Path) -> Path:
    """LiTS phantoms (the training root) copied as `<volume>.nii` + `labels/final/<volume>.nii` into STUDIES."""
    from shared.phantoms import lits

    root = lits.make_phantoms(work / "lits", num_cases=4, seed=0, shape=(48, 48, 16), num_test=0)
    for volume in sorted(root.glob("volume-*.nii")):
        shutil.copy(volume, studies / volume.name)
        label = root / volume.name.replace("volume-", "segmentation-")
        shutil.copy(label, studies / "labels" / "final" / volume.name)
    return root


def _deeplesion_studies(work: Path, studies: Path) -> Path:
    """DeepLesion phantoms (PNG slices: the training root) and one KiTS19 phantom CT volume in STUDIES to detect on."""
    from shared.phantoms import deeplesion, kits19

    kits = kits19.make_phantoms(work / "kits19", num_cases=3, seed=0, shape=(16, 48, 48))
    case = sorted(p for p in kits.iterdir() if p.is_dir())[0]
    shutil.copy(case / "imaging.nii.gz", studies / f"{case.name}.nii.gz")
    return deeplesion.make_phantoms(work / "deeplesion", num_cases=3, seed=0, image_size=64)


@dataclass(frozen=True)
class BundleCase:
    """How to train a tiny model of one bundle on phantoms and what MONAI Label must show for it."""

    name: str
    labels: dict[str, int]  # what /info/ must list: metadata.json's channel_def of `pred` without background
    make_studies: Callable[[Path, Path], Path]  # (work, studies) -> training root; fills the studies folder
    tiny: dict[str, object]  # ids set in train.json and inference.json alike (network and input sizes)
    train_args: dict[str, object] = field(default_factory=dict)  # only for the reference training run
    infer_args: dict[str, object] = field(default_factory=dict)  # inference.json ids, server and reference alike
    trains_in_monailabel: bool = False  # cs_att_deeplesion learns from DeepLesion boxes, not from label volumes

    def __str__(self) -> str:
        return self.name


CASES = [
    BundleCase(
        name="msan_kits",
        labels={"kidney": 1, "tumour": 2},
        make_studies=_kits_studies,
        tiny={"network_def#channels": [4, 8, 16, 32], "patch_size": [32, 32, 8], "spacing": [6.0, 6.0, 8.0]},
        # 6 epochs at lr 1e-2 is the least that makes this tiny net label kidney voxels on the phantoms and the real
        # CT, so that the comparison with the reference is not one of two all-background volumes.
        train_args={"epochs": 6, "val_interval": 6, "learning_rate": 0.01, "num_samples": 2, "sw_batch_size": 1},
        trains_in_monailabel=True,
    ),
    BundleCase(
        name="va_maskrcnn_lits",
        labels={"liver": 1, "lesion": 2},
        make_studies=_lits_studies,
        # 12 mm slices: a few 2.5D images per volume (the real CT's 30 slices at 3 mm become 8)
        # no pre-training (the full-scale default loads COCO weights): batch norm not frozen, in both configs
        tiny={
            "image_size": 64,
            "bag_size": 3,
            "backbone": "resnet18",
            "slice_thickness": 12.0,
            "pretrained": False,
            "frozen_batchnorm": False,
        },
        train_args={"epochs": 1, "samples_per_epoch": 4},
        # an untrained-looking tiny detector scores below the default 0.5: draw whatever it finds
        infer_args={"score_threshold": 0.0},
    ),
    BundleCase(
        name="cs_att_deeplesion",
        labels={"lesion": 1},
        make_studies=_deeplesion_studies,
        tiny={"max_size": 64, "spacing_mm": 4.0, "backbone": "tiny", "num_images": 3},
        train_args={"epochs": 1, "batch_size": 2},
        infer_args={"min_score": 0.0, "label_threshold": 0.0},
    ),
]


def export_torchscript(configs: Path, network, folder: Path, **overrides):
    """``monai.bundle.ckpt_export`` of ``network_def`` (inference.json with OVERRIDES) from NETWORK's weights, as a
    user would run it; returns the exported TorchScript module loaded back."""
    import torch
    from monai.bundle import ckpt_export

    torch.save(network.state_dict(), folder / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(folder / "model.ts"),
        ckpt_file=str(folder / "model.pt"),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        **overrides,
    )
    return torch.jit.load(folder / "model.ts")


def config_args(values: dict[str, object]) -> list[str]:
    """`--id value` pairs for `python -m monai.bundle run` (values in JSON form, as fire parses them)."""
    return [arg for key, value in values.items() for arg in (f"--{key}", json.dumps(value))]


def bundle_run(config: str, bundle: str, args: dict[str, object], log: Path) -> None:
    """`python -m monai.bundle run --config_file bundles/<bundle>/configs/<config>` in the main .venv, or fail."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/{bundle}/configs/{config}"]
    with open(log, "w") as out:
        result = subprocess.run(
            cmd + config_args(args), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=600
        )
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{log.read_text()[-4000:]}"


def train_tiny(case: "BundleCase", work: Path) -> tuple[Path, Path]:
    """Make the case's phantom studies in WORK and train its tiny model with the bundle's own train.json.

    Returns (studies folder, model.pt). The studies folder holds the CT volumes (and `labels/final/` labels).
    """
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True, exist_ok=True)
    train_root = case.make_studies(work, studies)
    ckpt_dir = work / "ckpt"
    values = {"ckpt_dir": str(ckpt_dir), "output_dir": str(work / "runs"), "num_workers": 0}
    bundle_run(
        "train.json",
        case.name,
        {"dataset_dir": str(train_root), **values, **case.tiny, **case.train_args},
        work / "train.log",
    )
    return studies, ckpt_dir / "model.pt"
