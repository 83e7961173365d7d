"""How much of a finished ``benchmarks/va_ablation.py`` run's lesion errors are look-alikes: per arm (mean +- sd over
seeds), the share of the predicted lesion voxels that lie on a look-alike, and the lesion Dice per case (the LiTS
scorer's) once those voxels are called liver: what telling look-alikes from lesions perfectly would give each model.

    PYTHONPATH=. .venv/bin/python benchmarks/va_lookalike_errors.py --run outputs/va_ablation [--out errors.json]

The look-alikes' voxels are redrawn from the phantoms' own draws (``shared.phantoms.lits.draw_volume`` with the
run's phantom shape and context options, as ``va_ablation.context_blind_ceiling``); they are labelled liver in the
reference, so removing them from a prediction can only help its lesion Dice.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ablation  # noqa: E402
from benchmarks.va_ablation import SPLIT_SEED, drawn_phantom  # noqa: E402


def lookalike_mask(case: str, shape: list[int], context_options: dict, reference: Path) -> np.ndarray:
    """The look-alike voxels of phantom ``case`` (``volume-N``, seed 0) in RAS on the grid of its ``reference``
    segmentation file (as ``shared.metrics.label_volumes.load_label_pair`` reads it)."""
    import nibabel as nib

    from shared.phantoms import ct, lits

    phantom, lookalikes = drawn_phantom(case, shape, context_options)
    ids, affine = ct.reorient(phantom.lesions, phantom.affine, lits.AXCODES)
    on_disk = nib.load(reference)
    if ids.shape != on_disk.shape or not np.allclose(affine, on_disk.affine, atol=1e-3):
        raise SystemExit(f"{reference}: not the phantom drawn for {case} with {shape} and {context_options}")
    mask = np.isin(ids, [i + 1 for i in lookalikes]).astype(np.uint8)
    return np.asarray(nib.as_closest_canonical(nib.Nifti1Image(mask, affine)).dataobj).astype(bool)


def context_errors(pred: np.ndarray, ref: np.ndarray, spacing, lookalike: np.ndarray) -> dict:
    """One case: its lesion Dice, the share of predicted lesion voxels on ``lookalike`` voxels, and its lesion Dice
    with those voxels called liver (labels 0 background, 1 liver, 2 lesion, RAS)."""
    from shared.data.lits import LESION, LIVER
    from shared.metrics.lits import score_case

    called = pred == LESION
    cleaned = np.where(called & lookalike, LIVER, pred)
    return {
        "lesion_dice": score_case(pred, ref, spacing).dice["lesion"],
        "lookalike_share": float((called & lookalike).sum() / called.sum()) if called.any() else 0.0,
        "lesion_dice_without_lookalikes": score_case(cleaned, ref, spacing).dice["lesion"],
    }


def run_errors(run: Path) -> dict:
    """Every arm and seed of the run at ``run``: its cases' :func:`context_errors` and their means."""
    from shared.data.lits import make_datalist
    from shared.metrics.label_volumes import load_label_pair

    report = json.loads((run / "ablation.json").read_text())
    settings = report["settings"]
    context = settings["phantom_context"]
    entries = make_datalist(run / "lits_context", seed=SPLIT_SEED)["validation"]
    masks = {
        e["case"]: lookalike_mask(e["case"], settings["phantom_shape"], context, Path(e["label"])) for e in entries
    }
    records = []
    for record in report["runs"]:
        cases = {}
        for e in entries:
            pred_path = Path(record["eval_dir"]) / "predictions" / f"{e['case']}_seg.nii.gz"
            pred, ref, spacing = load_label_pair(pred_path, e["label"])
            cases[e["case"]] = context_errors(pred, ref, spacing, masks[e["case"]])
        means = {key: float(np.mean([c[key] for c in cases.values()])) for key in next(iter(cases.values()))}
        records.append({"arm": record["arm"], "seed": record["seed"], **means, "cases": cases})
    return {"run": str(run), "run_commit": settings.get("commit"), "runs": records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the --out folder of a finished va_ablation run")
    parser.add_argument("--out", type=Path, help="JSON of every arm and seed, per case")
    args = parser.parse_args()
    errors = run_errors(args.run)
    keys = ("lesion_dice", "lookalike_share", "lesion_dice_without_lookalikes")
    cells = []
    for arm, runs in ablation.by_arm(errors["runs"], list(dict.fromkeys(r["arm"] for r in errors["runs"]))):
        cells.append(
            [arm, str(len(runs)), *("{:.3f} +- {:.3f}".format(*ablation.mean_sd([r[k] for r in runs])) for k in keys)]
        )
    columns = [("arm", False), ("seeds", True), ("lesion Dice per case", False)]
    columns += [("predicted lesion voxels on look-alikes", False), ("lesion Dice, look-alike voxels removed", False)]
    print("\n".join(ablation.markdown_table(columns, cells)))
    if args.out:
        args.out.write_text(json.dumps({**errors, "command": ablation.machine_settings(1)["command"]}, indent=1))


if __name__ == "__main__":
    main()
