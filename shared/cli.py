"""``python -m shared``: command-line tools around the bundles (phantoms, validate, datalist, evaluate, show, summary,
pack, verify). ``show`` is a group: ``show overlay``, ``show curves``, ``show ablation``, ``show cases``.

Run ``python -m shared <command> --help`` for each command's arguments.
"""

import json
import sys
from pathlib import Path

import fire

from shared.engines.user_errors import program_name
from shared.errors import InputError


def phantoms(dataset: str, out_dir: str, num_cases: int | None = None, seed: int = 0, **size) -> None:
    """Write a phantom dataset in the official layout of DATASET (kits19, lits or deeplesion) to OUT_DIR.

    The phantoms look like CT in HU (body, organs, lesions of several sizes, look-alike distractors, noise);
    the same seed gives the same files. NUM_CASES defaults to the dataset module's demo size. SIZE options go to
    the dataset's ``make_phantoms`` (kits19/lits: --shape "[16,32,32]"; deeplesion: --image_size 64, and
    --context true for look-alikes that only the slices around the key slice tell from lesions, --key_slices 3 for
    three annotated key slices per series; lits: --context true for liver look-alikes that only slices beyond the
    target 2.5D image tell from lesions, with --context_bag 9 to make them for a bag of 9 images (lesions that end,
    and look-alikes that run on, within what that bag reads) and --max_lookalikes 1 for at most one per volume;
    lits: --fov liver for slices that span the liver's box instead of the body, pixels 1.6x finer).
    """
    from shared.data import dataset_module
    from shared.engines.flags import as_bool

    if "context" in size:  # typed on the command line, false arrives as the string 'false'
        size["context"] = as_bool(size["context"], "context")
    module = dataset_module(dataset, "shared.phantoms")
    kwargs = {"seed": seed, **size} if num_cases is None else {"seed": seed, "num_cases": num_cases, **size}
    root = module.make_phantoms(out_dir, **kwargs)
    print(f"wrote {dataset} phantoms to {root}")


def validate(dataset: str, root: str) -> None:
    """Check that ROOT is a readable DATASET root; list every problem with its file and exit 1 if any."""
    from shared.data import dataset_module

    problems = dataset_module(dataset).validate(root)
    if problems:
        print(f"{len(problems)} problem(s) in {dataset} root {root}:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        sys.exit(1)
    print(f"{dataset} root {root} is valid")


def datalist(dataset: str, root: str, out_json: str, **split) -> None:
    """Write the MONAI datalist (training/validation/test with the papers' splits) of a DATASET ROOT to OUT_JSON.

    SPLIT options go to the dataset's ``make_datalist`` (lits: --seed 0 --fold 0 pick the validation quarter; the
    KiTS19 and DeepLesion splits are fixed).
    """
    import inspect

    from shared.data import dataset_module
    from shared.data.atomic import atomic_path
    from shared.data.validation import DatasetError, ensure_valid

    try:
        ensure_valid(dataset, root)
        make_datalist = dataset_module(dataset).make_datalist
        try:
            inspect.signature(make_datalist).bind(root, **split)
        except TypeError as err:
            raise InputError(f"{dataset} datalist options {split}: {err}") from err
        data = make_datalist(root, **split)
    except DatasetError as err:
        print(f"cannot build the {dataset} datalist of {root}:\n{err}", file=sys.stderr)
        sys.exit(1)
    out = Path(out_json)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2))
    sizes = ", ".join(f"{k}: {len(v)}" for k, v in data.items() if isinstance(v, list))
    print(f"wrote {out} ({sizes})")


def evaluate(dataset: str, pred_dir: str, ref_dir: str, out_csv: str | None = None, **options) -> None:
    """Score the predictions in PRED_DIR against the references in REF_DIR as the DATASET challenge does.

    Prints a per-case table and the summary; writes the table to OUT_CSV if given. OPTIONS go to the dataset's
    ``evaluate_dir`` (deeplesion: --split test|val|train, --iou_threshold 0.5, --use_iobb, --fp_rate 4,
    --convention 3dce|reachable: 3DCE's evaluation as in the papers' tables, the default, or reachable operating
    points with continuous boxes; the table's title names it; the summary adds ap50, the VOC all-points AP at IoU
    >= 0.5 pooled over key slices).
    Exits 1 with the problem (file named) on stderr when the inputs cannot be scored.
    """
    import inspect

    from shared.data import dataset_module

    module = dataset_module(dataset, "shared.metrics")
    try:
        inspect.signature(module.evaluate_dir).bind(pred_dir, ref_dir, **options)
    except TypeError as err:
        print(f"cannot evaluate {dataset} with options {options}: {err}", file=sys.stderr)
        sys.exit(2)
    table = module.evaluate_dir(pred_dir, ref_dir, **options)
    print(table.to_text())
    if out_csv:
        print(f"wrote {table.write_csv(out_csv)}")


def show_overlay(
    image: str,
    label: str,
    pred: str,
    out_png: str,
    num_slices: int = 4,
    window: tuple[float, float] = (-200, 500),
    class_names: list[str] | None = None,
) -> None:
    """Draw the NUM_SLICES axial slices of IMAGE with most foreground, LABEL contours beside PRED overlays, to OUT_PNG.

    IMAGE, LABEL and PRED are NIfTI files on one grid (each reoriented to RAS by its affine); WINDOW is the HU
    (low, high) range shown; CLASS_NAMES are indexed by label value, e.g. '[background,kidney,tumour]'.
    """
    from shared.visualize import save_overlay_png_from_files

    out = save_overlay_png_from_files(
        image, label, pred, out_png, num_slices=num_slices, window=tuple(window), class_names=class_names
    )
    print(f"wrote {out}")


def show_curves(run_dir: str, out_png: str | None = None, metric_prefix: str = "val_", title: str | None = None):
    """Plot the training loss and the validation metric(s) against the iteration from RUN_DIR's TensorBoard files.

    RUN_DIR is the folder a training run wrote its event files to (train.json's output_dir; a job's OUT_DIR/runs);
    OUT_PNG defaults to RUN_DIR/training_curves.png. Tags starting with METRIC_PREFIX are the validation metrics (the
    bundles' val_kits19_dice, val_lesion_dice, val_sensitivity_at_4fp), every other tag a training loss (train_loss;
    the VA detector's loss and its terms).
    """
    from shared.visualize import save_training_curves_png

    out = Path(run_dir) / "training_curves.png" if out_png is None else Path(out_png)
    print(f"wrote {save_training_curves_png(run_dir, out, metric_prefix=metric_prefix, title=title)}")


def show_ablation(ablation_json: str, out_png: str, metrics: list[str] | str | None = None, title: str | None = None):
    """Bar chart of mean +- sd per arm from ABLATION_JSON (benchmarks/*_ablation.py's ablation.json) to OUT_PNG.

    METRICS picks the metrics, comma-separated, e.g. lesion_dice_per_case,lookalikes_hit (default: every
    <metric>_mean / <metric>_sd pair of the table's rows; list-valued ones per entry, e.g. sensitivity@4 of the CS-Att
    ablation; msan_ablation's 'mean +- sd' columns by name: kidney, tumour).
    """
    from shared.visualize import save_ablation_png

    if isinstance(metrics, str):  # "a,b" (or "[a,b]" that fire could not read as a list: names with '@')
        metrics = [m.strip() for m in metrics.strip("[]").split(",") if m.strip()]
    chosen = None if metrics is None else [str(m) for m in metrics]
    print(f"wrote {save_ablation_png(ablation_json, out_png, metrics=chosen, title=title)}")


def show_cases(metrics_csv: str, out_png: str, title: str | None = None) -> None:
    """Per-case Dice bars from an evaluation's METRICS_CSV (kits19_metrics.csv or lits_metrics.csv) to OUT_PNG."""
    from shared.visualize import save_case_dice_png

    print(f"wrote {save_case_dice_png(metrics_csv, out_png, title=title)}")


def summary(
    dataset: str,
    trained_dir: str,
    untrained_dir: str | None = None,
    seconds: float | None = None,
    predictions: str | None = None,
    pictures: list[str] | str | None = None,
    name: str | None = None,
) -> None:
    """Print a job's closing summary: the headline metrics of the evaluations in UNTRAINED_DIR and TRAINED_DIR side
    by side, the time (SECONDS), and the paths of the metrics, pictures and PREDICTIONS.

    DATASET (kits19, lits or deeplesion) says which file each evaluation wrote (kits19_metrics.csv: kidney and tumour
    Dice per case; lits_metrics.csv: liver and lesion Dice per case; summary.json: sensitivity at 0.5-16 FPs per
    image and AP50). PICTURES are listed after the trained evaluation's PNGs; NAME titles the summary.
    """
    from shared.engines.reports.summary import job_summary

    shown = [pictures] if isinstance(pictures, str) else list(pictures or ())
    print(job_summary(dataset, trained_dir, untrained_dir, seconds, predictions, shown, name))


def pack(bundle: str, out: str = "dist", ckpt: str | None = None, base_url: str = "", torchscript: bool = True) -> None:
    """Pack BUNDLE (a name under bundles/ or a folder) into OUT/<bundle>/ and OUT/<bundle>_v<version>.zip.

    The zip holds configs, docs, LICENSE, models/model.pt (CKPT, default the bundle's models/model.pt), model.ts
    where TorchScript export works, large_files.yml with SHA-256 hashes, and a copy of the `shared` package, so it
    runs anywhere after `python -m monai.bundle download --name <bundle> --url <url-of-zip> --bundle_dir <dir>`.
    """
    from shared.packaging import pack_bundle

    print(f"wrote {pack_bundle(bundle, out=out, ckpt=ckpt, base_url=base_url, torchscript=torchscript)}")


def verify(bundle_dir: str) -> None:
    """Check the weights of a packed or downloaded bundle against its large_files.yml; exit 1 on any mismatch."""
    from shared.packaging import verify_weights

    problems = verify_weights(bundle_dir)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        sys.exit(1)
    print(f"{bundle_dir}: weights match large_files.yml")


# Raised for problems with what the user gave (a missing or unreadable file, a wrong value: InputError, which
# DatasetError and PackError are, and the ValueErrors of checks not yet converted to it): `main` reports them in one
# line. Any other exception is a bug and keeps its traceback.
INPUT_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError)


def main() -> None:
    try:
        fire.Fire(
            {
                "phantoms": phantoms,
                "validate": validate,
                "datalist": datalist,
                "evaluate": evaluate,
                "show": {
                    "overlay": show_overlay,
                    "curves": show_curves,
                    "ablation": show_ablation,
                    "cases": show_cases,
                },
                "summary": summary,
                "pack": pack,
                "verify": verify,
            },
            name="python -m shared",
        )
    except INPUT_ERRORS as err:
        print(f"{program_name()}: {err}", file=sys.stderr)
        sys.exit(1)
