"""LiTS (liver tumour segmentation benchmark): its facts (classes, regions, layout), validation and the VA-paper
split datalist.

Layout of a root (flat, or the official "Training Batch 1/2" sub-folders: files are found recursively)::

    <root>/volume-N.nii           CT in HU, array (rows, cols, slices), axis codes ('L', 'A', 'S')
    <root>/segmentation-N.nii     uint8 on the same grid: 0 background, 1 liver, 2 lesion
    <root>/test-volume-N.nii      challenge test volumes, no segmentation

``.nii.gz`` copies of the same names are accepted too.
"""

import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from shared.data.check_cache import CheckCache
from shared.data.nifti_checks import check_image, check_pair
from shared.data.validation import root_problem

BACKGROUND, LIVER, LESION = 0, 1, 2
CLASSES = {BACKGROUND: "background", LIVER: "liver", LESION: "lesion"}
"""Label values of ``segmentation-N.nii`` and their names."""
REGIONS = {"lesion": (LESION,), "liver": (LIVER, LESION)}
"""Regions the challenge scores, as the label values they hold: the liver includes its lesions."""
AXCODES = ("L", "A", "S")
RESAMPLED_THICKNESS_MM = 1.5  # VA paper sec. 3.2: "the slice-thickness resampled to 1.5mm"
NUM_FOLDS = 4  # VA paper sec. 3.2: 75 % of the training volumes for training, 25 % for validation
FILE_NAME = re.compile(r"(volume|segmentation|test-volume)-(\d+)\.nii(\.gz)?")
"""Names of the root's files: group 1 the kind (image, label, challenge test image), group 2 the volume number."""


def case_name(number: int) -> str:
    """The case name of volume N (``volume-N``), as datalists and score tables name it."""
    return f"volume-{number}"


def _scan(root: Path) -> tuple[dict[str, dict[int, Path]], list[str]]:
    """Files by kind ("volume", "segmentation", "test-volume") and id, and problems with duplicate ids."""
    found: dict[str, dict[int, Path]] = {"volume": {}, "segmentation": {}, "test-volume": {}}
    problems = []
    for path in sorted(root.rglob("*.nii*")):
        match = FILE_NAME.fullmatch(path.name)
        if not match:
            continue
        kind, number = match.group(1), int(match.group(2))
        if number in found[kind]:
            problems.append(f"{path}: duplicate of {found[kind][number]}; keep one copy of {kind}-{number}")
            continue
        found[kind][number] = path
    return found, problems


def validate(root) -> list[str]:
    """Every problem of a LiTS root, one message each starting with the path concerned (empty: valid).

    Reads every volume (files unchanged since they last passed are skipped, see :mod:`shared.data.check_cache`).
    """
    problem = root_problem("lits", root, "volume-0.nii and segmentation-0.nii")
    if problem:
        return [problem]
    root = Path(root)
    found, problems = _scan(root)
    if not found["volume"] and not found["test-volume"]:
        return [
            f"{root}: no volume-N.nii files; point --dataset_dir at the LiTS folder holding volume-N.nii and "
            f"segmentation-N.nii, or make phantoms with `python -m shared phantoms lits {root}`"
        ]
    volumes, labels = found["volume"], found["segmentation"]
    cache = CheckCache()
    for number in tqdm(sorted(volumes.keys() | labels.keys()), desc="validating lits", disable=None, leave=False):
        if number not in labels:
            problems.append(
                f"{volumes[number]}: missing label segmentation-{number}.nii; restore it or move the volume out"
            )
            problems += check_image(volumes[number], cache)
        elif number not in volumes:
            problems.append(f"{labels[number]}: missing image volume-{number}.nii; restore it or remove the label")
        else:
            problems += check_pair(volumes[number], labels[number], CLASSES, "LiTS", cache, foreground="liver")
    for path in found["test-volume"].values():
        problems += check_image(path, cache)
    cache.save()
    return problems


def make_datalist(root, seed: int = 0, fold: int = 0) -> dict:
    """MONAI datalist of a LiTS root with the VA paper's local split (sec. 3.2): the labelled volumes, shuffled with
    ``seed``, are cut into 4 quarters; quarter ``fold`` (0-3) is "validation" (25 %), the rest "training" (75 %).

    Entries are ``{"image", "label", "case": "volume-N"}`` with absolute paths, sorted by N; "test" lists the
    ``test-volume-N`` files and any volume without segmentation (``{"image", "case"}``).
    """
    if not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"fold must be in 0..{NUM_FOLDS - 1} (which quarter is validation), got {fold}")
    found, _ = _scan(Path(root).resolve())
    volumes, labels = found["volume"], found["segmentation"]
    labelled = sorted(volumes.keys() & labels.keys())
    quarters = np.array_split(np.random.default_rng(seed).permutation(labelled), NUM_FOLDS)
    held_out = {int(n) for n in quarters[fold]}

    def entry(n):
        return {"image": str(volumes[n]), "label": str(labels[n]), "case": case_name(n)}

    test = [{"image": str(p), "case": f"test-volume-{n}"} for n, p in sorted(found["test-volume"].items())]
    test += [{"image": str(volumes[n]), "case": case_name(n)} for n in sorted(volumes.keys() - labels.keys())]
    return {
        "training": [entry(n) for n in labelled if n not in held_out],
        "validation": [entry(n) for n in labelled if n in held_out],
        "test": test,
    }
