"""Inference faults survived, nothing lost (issue 13): bad CT values or affines, bad model.pt, unwritable or full disk.

Each fault stops `python -m monai.bundle run inference` of every bundle with a message naming the file or folder,
a non-zero exit code and no prediction file; in-process tests cover the variants a subprocess would make slow.
"""

import errno
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import NibabelWriter

from shared.engines.volume_io import AtomicNibabelWriter, volume_entries, writable_output_dir
from shared.errors import InputError
from shared.networks.msan import MSAN
from shared.networks.pretrained import load_weights
from tests.bundle_cases import CASES, config_args

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = {case.name: case.tiny for case in CASES}
# index of SaveImaged in the mask bundles' postprocessing (inference.json)
SAVE_INDEX = {"msan_kits": 4, "va_maskrcnn_lits": 1}


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    """A NIfTI whose sform is ``affine`` as given (nibabel refuses to build a qform from a singular one)."""
    image = nib.Nifti1Image(data.astype(np.float32), None)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(None, code=0)
    image.to_filename(path)
    return path


def _ct(shape=(40, 36, 12), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 200, shape).astype(np.float32)


SPACING = np.diag([2.0, 2.0, 5.0, 1.0])


def _predictions(folder: Path) -> list[str]:
    """Every file in ``folder`` (predictions, detections, temporary files), or [] when it does not exist."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# --- in-process -------------------------------------------------------------------------------------------------


def test_volume_entries_refuses_non_finite_voxels_and_singular_affines(tmp_path):
    _save(tmp_path / "good.nii.gz", _ct(), SPACING)
    nan, inf = _ct(), _ct()
    nan[3, 4, 5] = np.nan
    inf[0, 0, 0] = np.inf
    _save(tmp_path / "nan.nii.gz", nan, SPACING)
    _save(tmp_path / "inf.nii.gz", inf, SPACING)
    _save(tmp_path / "flat_axis.nii.gz", _ct(), np.diag([2.0, 0.0, 5.0, 1.0]))
    _save(tmp_path / "nan_affine.nii.gz", _ct(), np.where(np.eye(4) > 0, np.nan, 0.0))
    with pytest.raises(InputError) as err:
        volume_entries(str(tmp_path))
    lines = str(err.value).splitlines()
    assert lines[0] == f"4 unusable input(s) in {tmp_path}, nothing written:"
    problems = {Path(line.strip().split(":")[0]).name: line for line in lines[1:]}
    assert set(problems) == {"nan.nii.gz", "inf.nii.gz", "flat_axis.nii.gz", "nan_affine.nii.gz"}
    assert "NaN or infinite voxel values" in problems["nan.nii.gz"] and "infinite" in problems["inf.nii.gz"]
    assert "affine is not invertible" in problems["flat_axis.nii.gz"]
    assert "affine holds NaN" in problems["nan_affine.nii.gz"]
    for name in problems:
        (tmp_path / name).unlink()
    assert [e["case"] for e in volume_entries(str(tmp_path))] == ["good"]


def test_volume_entries_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="missing does not exist"):
        volume_entries(str(tmp_path / "missing"))


def _tiny_msan() -> MSAN:
    return MSAN(channels=[4, 8, 16, 32])


@pytest.mark.parametrize("fault", ["random bytes", "half file", "other network", "other settings", "missing"])
def test_load_weights_names_the_file_and_what_is_wrong(tmp_path, fault):
    torch.manual_seed(0)
    good = tmp_path / "good.pt"
    torch.save(_tiny_msan().state_dict(), good)
    path = tmp_path / "model.pt"
    if fault == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif fault == "half file":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif fault == "other network":
        torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    elif fault == "other settings":
        torch.save(MSAN(channels=[4, 8, 16, 64]).state_dict(), path)
    model = _tiny_msan()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InputError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message
    expected = {
        "random bytes": "cannot read checkpoint",
        "half file": "cannot read checkpoint",
        "other network": "not a checkpoint of this MSAN (",
        "other settings": "keys of another shape",
        "missing": "no such checkpoint",
    }[fault]
    assert expected in message
    if fault == "other network":
        assert "missing keys" in message and "unknown keys, e.g. weight, bias" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-loaded


def test_load_weights_loads_the_matching_checkpoint(tmp_path):
    torch.manual_seed(0)
    trained = _tiny_msan()
    torch.save({"model": trained.state_dict()}, tmp_path / "model.pt")  # MONAI CheckpointSaver's wrapper
    model = load_weights(_tiny_msan(), tmp_path / "model.pt")
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in model.state_dict().items())


def test_unwritable_output_folder_is_refused_before_anything_runs(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(InputError) as err:
        writable_output_dir(blocker / "out")
    assert str(err.value).startswith(f"{blocker / 'out'}: cannot write the output there (")
    assert writable_output_dir(tmp_path / "new" / "out").is_dir()
    assert _predictions(tmp_path / "new") == []  # the probe leaves nothing behind


class _FullDiskNibabel(NibabelWriter):
    """Writes the first file; every later one gets half written, then the disk is full (errno ENOSPC)."""

    writes = 0

    def write(self, filename, verbose: bool = False, **obj_kwargs):
        _FullDiskNibabel.writes += 1
        if _FullDiskNibabel.writes == 1:
            return super().write(filename, verbose=verbose, **obj_kwargs)
        Path(filename).write_bytes(b"half a nifti")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))


class FullDiskWriter(AtomicNibabelWriter, _FullDiskNibabel):
    """``AtomicNibabelWriter`` over a disk that fills up after the first prediction (given to SaveImaged by name)."""


def test_atomic_writer_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(_FullDiskNibabel, "writes", 0)
    for name in ("first.nii.gz", "second.nii.gz"):
        writer = FullDiskWriter()
        writer.set_data_array(torch.zeros(1, 4, 4, 3), channel_dim=0)
        writer.set_metadata({"affine": torch.eye(4), "original_affine": torch.eye(4)})
        if name == "first.nii.gz":
            writer.write(tmp_path / name)
            continue
        with pytest.raises(InputError) as err:
            writer.write(tmp_path / name)
    assert str(err.value).startswith(f"{tmp_path}: cannot write the output there (No space left on device)")
    assert _predictions(tmp_path) == ["first.nii.gz"]  # the complete one stays, the half one is gone


def test_deeplesion_run_inference_on_a_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    from shared.engines.inferers import deeplesion, volume_boxes
    from shared.networks.three_dce import ThreeDCE
    from shared.transforms.deeplesion import LoadDeepLesionSampled

    inputs = tmp_path / "in"
    inputs.mkdir()
    _save(inputs / "ct.nii.gz", _ct((40, 36, 5)), SPACING)
    out = tmp_path / "out"

    def full_disk(image, filename):
        Path(filename).write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(volume_boxes.nib, "save", full_disk)
    model = ThreeDCE(num_images=3, backbone="tiny")
    loader = LoadDeepLesionSampled(num_images=3, spacing_mm=4.0, max_size=64)
    with pytest.raises(InputError) as err:
        deeplesion.run_inference(model, inputs, out, loader, min_score=0.0, label_threshold=0.0)
    assert str(err.value).startswith(f"{out}: cannot write the output there (No space left on device)")
    assert _predictions(out) == []


# --- through the CLI --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """``weights(bundle) -> model.pt``: the untrained state dict of each bundle's tiny network (made once)."""
    made = {}

    def get(bundle: str) -> Path:
        if bundle not in made:
            parser = ConfigParser()
            parser.read_config(str(REPO_ROOT / "bundles" / bundle / "configs" / "inference.json"))
            parser.update(TINY[bundle])
            path = tmp_path_factory.mktemp(bundle) / "model.pt"
            torch.manual_seed(0)
            torch.save(parser.get_parsed_content("network_def").state_dict(), path)
            made[bundle] = path
        return made[bundle]

    return get


def _infer(bundle: str, dataset_dir: Path, ckpt: Path, output_dir: Path, **extra) -> subprocess.CompletedProcess:
    args = {**TINY[bundle], "dataset_dir": str(dataset_dir), "ckpt_path": str(ckpt), "output_dir": str(output_dir)}
    args.update({"num_workers": 0} if bundle == "msan_kits" else {})
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference"]
    cmd += ["--config_file", f"bundles/{bundle}/configs/inference.json", *config_args({**args, **extra})]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def _inputs(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for i, name in enumerate(names):
        _save(folder / name, _ct(seed=i), SPACING)
    return folder


BUNDLES = [case.name for case in CASES]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_cli_refuses_nan_input_before_writing(bundle, weights, tmp_path):
    inputs = _inputs(tmp_path / "in", "good.nii.gz")
    nan = _ct()
    nan[1, 2, 3] = np.nan
    _save(inputs / "nan_case.nii.gz", nan, SPACING)
    out = tmp_path / "out"
    done = _infer(bundle, inputs, weights(bundle), out)
    assert done.returncode != 0
    assert f"{inputs / 'nan_case.nii.gz'}: holds NaN or infinite voxel values" in done.stderr
    assert _predictions(out) == []


# one kind of bad model.pt per bundle (all kinds in-process above)
BAD_WEIGHTS = {"msan_kits": "random bytes", "va_maskrcnn_lits": "half file", "cs_att_deeplesion": "other network"}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_cli_refuses_a_bad_model_pt(bundle, weights, tmp_path):
    inputs = _inputs(tmp_path / "in", "ct.nii.gz")
    ckpt = tmp_path / "model.pt"
    good = weights(bundle).read_bytes()
    fault = BAD_WEIGHTS[bundle]
    if fault == "random bytes":
        ckpt.write_bytes(os.urandom(4096))
    elif fault == "half file":
        ckpt.write_bytes(good[: len(good) // 2])
    else:
        torch.save(torch.nn.Linear(3, 2).state_dict(), ckpt)
    out = tmp_path / "out"
    done = _infer(bundle, inputs, ckpt, out)
    assert done.returncode != 0
    expected = "cannot read checkpoint" if fault != "other network" else ": not a checkpoint of this ThreeDCE ("
    assert str(ckpt) in done.stderr and expected in done.stderr
    assert _predictions(out) == []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_cli_refuses_an_unwritable_output_folder(bundle, weights, tmp_path):
    inputs = _inputs(tmp_path / "in", "ct.nii.gz")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    done = _infer(bundle, inputs, weights(bundle), blocker / "out")
    assert done.returncode != 0
    assert f"{blocker / 'out'}: cannot write the output there" in done.stderr
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("bundle", ["msan_kits", "va_maskrcnn_lits"])
def test_cli_disk_full_mid_run_leaves_no_partial_file(bundle, weights, tmp_path):
    inputs = _inputs(tmp_path / "in", "a.nii.gz", "b.nii.gz")
    out = tmp_path / "out"
    writer = {f"postprocessing#transforms#{SAVE_INDEX[bundle]}#writer": "tests.test_inference_faults.FullDiskWriter"}
    done = _infer(bundle, inputs, weights(bundle), out, **writer)
    assert done.returncode != 0
    assert f"{out}: cannot write the output there (No space left on device)" in done.stderr
    assert _predictions(out) == ["a_seg.nii.gz"]  # the first prediction is complete; no half-written second one


def test_cli_ensemble_refuses_a_foreign_member_checkpoint(weights, tmp_path):
    """Each member of msan_kits' five-model vote is loaded like model.pt: a foreign file is named in one last line."""
    configs = [
        str(REPO_ROOT / "bundles/msan_kits/configs" / name) for name in ("inference.json", "inference_ensemble.json")
    ]
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update(TINY["msan_kits"])
    members = tmp_path / "members"
    for name, network in zip(("unet", "v1", "v1_ds", "v2", "v2_ds"), parser.get_parsed_content("ensemble_networks")):
        (members / name).mkdir(parents=True)
        torch.save(network.state_dict(), members / name / "model.pt")
    foreign = members / "v2" / "model.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), foreign)
    inputs, out = _inputs(tmp_path / "in", "ct.nii.gz"), tmp_path / "out"
    args = {**TINY["msan_kits"], "dataset_dir": str(inputs), "ensemble_ckpt_dir": str(members), "output_dir": str(out)}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs), *config_args(args)]
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert str(foreign) in last and "not a checkpoint of this MSAN" in last
    assert _predictions(out) == []
