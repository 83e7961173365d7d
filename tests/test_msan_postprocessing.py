"""Helpers of the msan_kits bundle: two-kidney component cleanup, resume checkpoint lookup, atomic NIfTI writer."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from shared.engines.checkpoint import latest_checkpoint
from shared.engines.volume_io import AtomicNibabelWriter, volume_entries

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "msan_kits" / "configs"


def _three_blobs() -> np.ndarray:
    labels = np.zeros((20, 20, 10), dtype=np.int64)
    labels[1:7, 1:7, 1:7] = 1  # 216 voxels: a kidney
    labels[3:5, 3:5, 3:5] = 2  # with its tumour inside, same component
    labels[12:17, 12:17, 1:6] = 1  # 125 voxels: the other kidney
    labels[18, 1:3, 8] = 2  # 2 voxels: an island
    return labels


def _cleanups(node, path: str = "") -> dict[str, dict]:
    """Config id -> item of every ``KeepLargestConnectedComponentd`` under ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    found = {path: node} if isinstance(node, dict) and node.get("_target_") == "KeepLargestConnectedComponentd" else {}
    for key, value in items:
        found.update(_cleanups(value, f"{path}#{key}" if path else str(key)))
    return found


def test_every_msan_config_cleans_up_the_union_of_kidney_and_tumour():
    items = {p.name: _cleanups(json.loads(p.read_text())) for p in sorted(CONFIGS.glob("*.json"))}
    assert items["inference.json"], "inference.json has no KeepLargestConnectedComponentd"
    for name, found in items.items():
        for item in found.values():
            assert item["independent"] is False and item["applied_labels"] == [1, 2], (name, item)


def _bundle_cleanup():
    """The component cleanup of msan_kits' inference.json (what users and MONAI Label run)."""
    config = json.loads((CONFIGS / "inference.json").read_text())
    (item_id,) = _cleanups(config)
    return ConfigParser(config).get_parsed_content(item_id)


@pytest.mark.parametrize("num_components", [2, 3])
def test_keeps_the_two_largest_foreground_components(num_components):
    cleanup = _bundle_cleanup()
    assert cleanup.converter.num_components == 2
    cleanup.converter.num_components = num_components
    labels = torch.as_tensor(_three_blobs())[None]
    out = cleanup({"pred": labels.clone()})["pred"][0].numpy()
    cleared = out != _three_blobs()
    if num_components == 2:
        assert cleared.sum() == 2 and cleared[18, 1:3, 8].all()  # the island; both kidneys and the tumour stay
    else:
        assert not cleared.any()


def test_dictionary_transform_clears_islands_and_keeps_metadata():
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    pred = MetaTensor(torch.as_tensor(_three_blobs())[None], affine=affine)
    out = _bundle_cleanup()({"pred": pred})["pred"]
    expected = _three_blobs()
    expected[18, 1:3, 8] = 0
    assert np.array_equal(out[0].numpy(), expected)
    assert torch.equal(out.affine, affine)


def test_diagonal_neighbours_are_one_component():
    labels = np.zeros((1, 10, 10, 10), dtype=np.int64)
    labels[0, 1:4, 1:4, 1:4] = 1
    labels[0, 4:6, 4:6, 4:6] = 2  # touches the first block at one corner only: 26-connected, one component
    labels[0, 8, 8, 8] = 1
    labels[0, 0, 9, 9] = 1
    out = _bundle_cleanup()({"pred": torch.as_tensor(labels.copy())})["pred"].numpy()
    assert (out[0, 1:4, 1:4, 1:4] == 1).all() and (out[0, 4:6, 4:6, 4:6] == 2).all()
    assert (out != labels).sum() == 1  # one of the two single voxels is the third component


def test_latest_checkpoint_picks_the_highest_epoch(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for name in ("resume_checkpoint_epoch=2.pt", "resume_checkpoint_epoch=10.pt", "model.pt", "other_epoch=99.pt"):
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path) == str(tmp_path / "resume_checkpoint_epoch=10.pt")


def test_atomic_writer_leaves_no_partial_file(tmp_path):
    writer = AtomicNibabelWriter()
    writer.set_data_array(torch.zeros(1, 4, 4, 3), channel_dim=0)
    writer.set_metadata({"affine": torch.eye(4), "original_affine": torch.eye(4)})
    writer.write(tmp_path / "x.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"]


def test_volume_entries_names_every_bad_input(tmp_path):
    import nibabel as nib

    nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)).to_filename(tmp_path / "good.nii.gz")
    nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)).to_filename(tmp_path / "flat.nii.gz")
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(ValueError) as err:
        volume_entries(str(tmp_path))
    message = str(err.value)
    assert "flat.nii.gz" in message and "not a 3D volume" in message
    assert "broken.nii.gz" in message and "good.nii.gz" not in message
