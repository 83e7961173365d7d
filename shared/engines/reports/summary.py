"""The one summary every demo job ends with (``python -m shared summary``): the headline metrics of the trained and
the untrained network side by side, the time taken, and where the metrics, pictures and predictions are.

It reads what the two evaluations wrote (``shared.engines.reports``): ``kits19_metrics.csv`` (msan_kits: kidney and
tumour Dice per case, the means over the rows as ``shared.metrics.kits19.score_files`` takes them),
``lits_metrics.csv`` (va_maskrcnn_lits: liver and lesion Dice per case) and ``summary.json`` (cs_att_deeplesion:
sensitivity at 0.5-16 FPs per image and AP50).
"""

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from shared.errors import InputError

__all__ = ["HEADLINES", "headline_metrics", "job_summary"]

# dataset -> (the metrics file an evaluation writes, [(row label, column or summary key), ...])
HEADLINES = {
    "kits19": (
        "kits19_metrics.csv",
        [("kidney Dice per case", "kidney_dice"), ("tumour Dice per case", "tumour_dice")],
    ),
    "lits": ("lits_metrics.csv", [("liver Dice per case", "liver_dice"), ("lesion Dice per case", "lesion_dice")]),
    "deeplesion": (
        "summary.json",
        [(f"sensitivity at {r} FPs per image", f"sens@{r}") for r in ("0.5", "1", "2", "4", "8", "16")]
        + [("AP50", "ap50")],
    ),
}


def _known(dataset: str) -> tuple[str, list[tuple[str, str]]]:
    if dataset not in HEADLINES:
        raise InputError(f"unknown dataset {dataset!r}; one of {', '.join(HEADLINES)}")
    return HEADLINES[dataset]


def headline_metrics(dataset: str, eval_dir: str | Path) -> tuple[Path, dict[str, float], str]:
    """``(metrics file, {row label: value}, what was scored)`` of the evaluation in ``eval_dir``.

    Segmentation: the mean over the CSV's per-case rows of each Dice column (empty cells, undefined Dice, left out;
    NaN if none is left); detection: the values of ``summary.json`` (``null`` is NaN). FileNotFoundError naming the
    file when the evaluation wrote none; InputError when it lacks a column or key.
    """
    name, rows = _known(dataset)
    path = Path(eval_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (the {dataset} evaluation writes it into its output folder)")
    if dataset == "deeplesion":
        summary = json.loads(path.read_text())
        missing = [key for _, key in rows if key not in summary]
        if missing:
            raise InputError(f"{path}: no {', '.join(missing)} (not an evaluate.json summary.json)")
        values = {label: math.nan if summary[key] is None else float(summary[key]) for label, key in rows}
        scored = f"{summary.get('images', '?')} key slices, {summary.get('lesions', '?')} lesions"
        return path, values, scored
    with open(path, newline="") as f:
        table = list(csv.DictReader(f))
    columns = list(table[0]) if table else []
    missing = [key for _, key in rows if key not in columns]
    if missing:
        raise InputError(f"{path}: no per-case rows with {', '.join(missing)} (columns: {columns})")
    values = {}
    for label, key in rows:
        cells = [float(r[key]) for r in table if r[key] not in ("", None)]
        values[label] = sum(cells) / len(cells) if cells else math.nan
    return path, values, f"{len(table)} cases, mean over cases"


def _cell(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3f}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{round(seconds)} s ({minutes} min {rest} s)" if minutes else f"{round(seconds)} s"


def job_summary(
    dataset: str,
    trained_dir: str | Path,
    untrained_dir: str | Path | None = None,
    seconds: float | None = None,
    predictions: str | Path | None = None,
    pictures: Sequence[str | Path] = (),
    name: str | None = None,
) -> str:
    """The summary's lines: a title, the headline metrics (untrained | trained), the time, then the paths.

    ``trained_dir`` / ``untrained_dir`` are the two evaluations' output folders (``untrained_dir`` None: the column
    says ``not run``); ``seconds`` the job's time after its environment setup (the jobs' timer); ``predictions``
    where inference wrote; ``pictures`` the pictures beside the trained evaluation's PNGs (each listed, marked
    ``(missing)`` when absent).
    """
    trained_file, trained, scored = headline_metrics(dataset, trained_dir)
    files = [trained_file]
    if untrained_dir is not None:
        untrained_file, untrained, _ = headline_metrics(dataset, untrained_dir)
        files.append(untrained_file)
    else:
        untrained = None
    label_width = max(len("metric"), *(len(label) for label in trained))
    header = f"{'metric'.ljust(label_width)}  {'untrained':>9}  {'trained':>9}"
    lines = [f"== {name + ' job ' if name else ''}summary ({dataset}: {scored})", header]
    for label, value in trained.items():
        before = "not run" if untrained is None else _cell(untrained[label])
        lines.append(f"{label.ljust(label_width)}  {before:>9}  {_cell(value):>9}")
    took = "not measured" if seconds is None else f"{_duration(float(seconds))} after the environment setup"
    lines.append(f"time: {took}")
    lines.append(f"metrics: {', '.join(str(f) for f in files)}")
    shown = sorted(Path(trained_dir).glob("*.png"))
    shown += [Path(p) for p in pictures if Path(p) not in shown]
    described = [f"{p}" if p.is_file() else f"{p} (missing)" for p in shown]
    lines.append(f"pictures: {', '.join(described) if described else 'none'}")
    lines.append(f"predictions: {predictions if predictions is not None else 'none'}")
    return "\n".join(lines)
