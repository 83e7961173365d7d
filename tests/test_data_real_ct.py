"""Real CT (TotalSegmentator example) read as the bundles read it: MONAI LoadImaged + Orientationd to RAS.

The NIfTI (RAS, 3 mm) is read with nibabel, the DICOM series (0.977 x 0.977 x 2 mm) with ITK and its labels
(a LAS NIfTI) with nibabel: only after both are reoriented by their affines do the labels land on the organs.
"""

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

SPLEEN, KIDNEY_RIGHT, KIDNEY_LEFT, LIVER = 1, 2, 3, 5  # TotalSegmentator v2 classes


def _load_ras(image: str, label: str, image_reader: str) -> dict:
    keys = ["image", "label"]
    transform = Compose(
        [
            LoadImaged("image", reader=image_reader),
            LoadImaged("label", reader="NibabelReader"),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS", labels=None),
        ]
    )
    return transform({"image": image, "label": label})


def _centroid_x(label: np.ndarray, value: int) -> float:
    return float(np.argwhere(label == value)[:, 0].mean())


@pytest.fixture(scope="module")
def dicom(totalseg_dir) -> dict:
    return _load_ras(
        str(totalseg_dir / "example_ct_dicom"), str(totalseg_dir / "example_seg_dicom.nii.gz"), "ITKReader"
    )


def test_nifti_ct_in_ras(totalseg_dir):
    data = _load_ras(
        str(totalseg_dir / "example_ct_sm.nii.gz"), str(totalseg_dir / "example_seg.nii.gz"), "NibabelReader"
    )
    image, label = data["image"], data["label"]
    assert image.shape == label.shape == (1, 122, 101, 30)
    np.testing.assert_allclose(image.pixdim, [3.0, 3.0, 3.0])
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")
    hu, lab = image[0].numpy(), label[0].numpy()
    assert 0 < hu[lab == LIVER].mean() < 150
    # RAS: +x is the patient's right: liver and right kidney right of the spleen and left kidney
    assert _centroid_x(lab, LIVER) > _centroid_x(lab, SPLEEN)
    assert _centroid_x(lab, KIDNEY_RIGHT) > _centroid_x(lab, KIDNEY_LEFT)
    assert hu[0, 0].mean() < -900  # air in a corner


def test_dicom_series_spacing_and_orientation(dicom):
    image = dicom["image"]
    assert image.shape == (1, 512, 512, 20)
    np.testing.assert_allclose(image.pixdim, [0.9765625, 0.9765625, 2.0], rtol=1e-5)
    assert nib.aff2axcodes(image.affine.numpy()) == ("R", "A", "S")


def test_dicom_labels_land_on_the_liver_after_reorientation(dicom, totalseg_dir):
    image, label = dicom["image"], dicom["label"]
    assert nib.aff2axcodes(nib.load(totalseg_dir / "example_seg_dicom.nii.gz").affine) == ("L", "A", "S")
    assert label.shape == image.shape
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-3)
    hu, lab = image[0].numpy(), label[0].numpy()
    assert 0 < hu[lab == LIVER].mean() < 150
    assert 0 < hu[lab == SPLEEN].mean() < 150
    assert _centroid_x(lab, LIVER) > _centroid_x(lab, SPLEEN)


def test_dicom_labels_miss_the_liver_without_reorientation(totalseg_dir):
    """The raw arrays (ITK's DICOM order vs the LAS label) disagree: array order is not to be trusted."""
    raw = LoadImaged("image", reader="ITKReader")({"image": str(totalseg_dir / "example_ct_dicom")})["image"]
    label = np.asanyarray(nib.load(totalseg_dir / "example_seg_dicom.nii.gz").dataobj)
    assert raw.shape == label.shape
    assert not 0 < float(raw.numpy()[label == LIVER].mean()) < 150
