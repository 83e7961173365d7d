"""KiTS19 (kidney tumour segmentation challenge 2019): its facts (classes, regions, layout, MSAN split), validation
and the MSAN split datalist.

Layout of a root (the ``data`` folder of the official kits19 repository)::

    <root>/case_00000/imaging.nii.gz        int16 HU, array (slices, rows, cols), axis codes ('I', 'P', 'L')
    <root>/case_00000/segmentation.nii.gz   uint8 on the same grid: 0 background, 1 kidney, 2 tumour

Cases 0-209 are labelled; the challenge's test cases 210-299 have no segmentation.
"""

import re
from pathlib import Path

from tqdm import tqdm

from shared.data.check_cache import CheckCache
from shared.data.nifti_checks import check_image, check_pair
from shared.data.validation import root_problem

BACKGROUND, KIDNEY, TUMOUR = 0, 1, 2
CLASSES = {BACKGROUND: "background", KIDNEY: "kidney", TUMOUR: "tumour"}
"""Label values of ``segmentation.nii.gz`` and their names."""
REGIONS = {"kidney": (KIDNEY, TUMOUR), "tumour": (TUMOUR,)}
"""Regions the challenge scores, as the label values they hold: the kidney includes its tumours."""
AXCODES = ("I", "P", "L")
IMAGE, LABEL = "imaging.nii.gz", "segmentation.nii.gz"
# MSAN paper sec. 2.1: "the first 180 of the released training sets as our own training set, using ten samples of
# the 180-190 serial number as our test set"; the Dice it reports is on the validation data, the remaining
# labelled cases 190-209.
TRAINING_IDS, TEST_IDS, VALIDATION_IDS = range(0, 180), range(180, 190), range(190, 210)
LABELLED_IDS = range(0, 210)
_CASE = re.compile(r"case_(\d{5})")


def case_name(case_id: int) -> str:
    return f"case_{case_id:05d}"


def _case_dirs(root: Path) -> list[tuple[int, Path]]:
    return sorted((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CASE.fullmatch(p.name)))


def validate(root) -> list[str]:
    """Every problem of a KiTS19 root, one message each starting with the path concerned (empty: valid).

    Reads every volume (files unchanged since they last passed are skipped, see :mod:`shared.data.check_cache`).
    """
    problem = root_problem("kits19", root, "case_00000/imaging.nii.gz")
    if problem:
        return [problem]
    root = Path(root)
    cases = _case_dirs(root)
    if not cases:
        return [
            f"{root}: no case_XXXXX folders; point --dataset_dir at the kits19 'data' folder holding "
            f"case_00000/imaging.nii.gz, or make phantoms with `python -m shared phantoms kits19 {root}`"
        ]
    problems, cache = [], CheckCache()
    for case_id, folder in tqdm(cases, desc="validating kits19", unit="case", disable=None, leave=False):
        image, label = folder / IMAGE, folder / LABEL
        if not image.is_file():
            problems.append(f"{image}: missing image; restore {IMAGE} of {folder.name} or remove the folder")
        if not label.is_file() and case_id in LABELLED_IDS:
            problems.append(f"{label}: missing label (KiTS19 labels cases 0-209); restore {LABEL} or remove the folder")
        if image.is_file() and label.is_file():
            problems += check_pair(image, label, CLASSES, "KiTS19", cache, foreground="kidney")
        elif image.is_file():
            problems += check_image(image, cache)
    cache.save()
    return problems


def make_datalist(root) -> dict:
    """MONAI datalist of a KiTS19 root with the MSAN split (sec. 2.1): ids 0-179 training, 180-189 test, 190-209
    validation; entries ``{"image", "label", "case"}`` with absolute paths.

    Cases without segmentation (the challenge test cases 210-299) are listed under ``"unlabeled"`` (no
    ``"label"``); labelled cases outside 0-209 (later KiTS releases) go to ``"test"``.
    """
    root = Path(root).resolve()
    data = {"training": [], "validation": [], "test": [], "unlabeled": []}
    for case_id, folder in _case_dirs(root):
        image, label = folder / IMAGE, folder / LABEL
        if not image.is_file():
            continue
        entry = {"image": str(image), "case": folder.name}
        if not label.is_file():
            data["unlabeled"].append(entry)
            continue
        entry = {"image": str(image), "label": str(label), "case": folder.name}
        if case_id in TRAINING_IDS:
            data["training"].append(entry)
        elif case_id in VALIDATION_IDS:
            data["validation"].append(entry)
        else:
            data["test"].append(entry)
    return data
