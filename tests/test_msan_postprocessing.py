"""Helpers of the msan_kits bundle: two-kidney component cleanup, resume checkpoint lookup, atomic NIfTI writer."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from shared.engines.checkpoint import latest_checkpoint
from shared.engines.volume_io import AtomicNibabelWriter, volume_entries
from shared.transforms.postprocessing import KeepLargestComponentsd, keep_largest_components


def _three_blobs() -> np.ndarray:
    labels = np.zeros((20, 20, 10), dtype=np.int64)
    labels[1:7, 1:7, 1:7] = 1  # 216 voxels: a kidney
    labels[3:5, 3:5, 3:5] = 2  # with its tumour inside, same component
    labels[12:17, 12:17, 1:6] = 1  # 125 voxels: the other kidney
    labels[18, 1:3, 8] = 2  # 2 voxels: an island
    return labels


def test_keeps_the_two_largest_foreground_components():
    labels = _three_blobs()
    clear = keep_largest_components(labels, num_components=2)
    assert clear.sum() == 2 and clear[18, 1:3, 8].all()
    assert not keep_largest_components(labels, num_components=3).any()


def test_dictionary_transform_clears_islands_and_keeps_metadata():
    affine = torch.diag(torch.tensor([2.0, 2.0, 3.0, 1.0]))
    pred = MetaTensor(torch.as_tensor(_three_blobs())[None], affine=affine)
    out = KeepLargestComponentsd("pred", num_components=2)({"pred": pred})["pred"]
    expected = _three_blobs()
    expected[18, 1:3, 8] = 0
    assert np.array_equal(out[0].numpy(), expected)
    assert torch.equal(out.affine, affine)
    assert pred[0, 18, 1, 8] == 2  # the input is not modified


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
