"""What the VA blocks of a finished ``benchmarks/va_ablation.py`` run did with the bag, per FPN level: the
measurements of ``benchmarks/va_block_stats.py`` that every VA arm recorded on the held-out volumes (its
evaluation) and in each training epoch, read from the run's ``ablation.json`` and printed as tables.

    PYTHONPATH=. .venv/bin/python benchmarks/va_slice_attention.py --run outputs/va_ablation [--arms full spatial]
        [--epochs]

Per arm, level and attention: the slice attention's entropy (``log N`` uniform, 0 one-hot), largest weight, the
target image's weight and the weight of the images 2 or more places away (6+ slices, where the look-alikes differ
from lesions; uniform attention gives them ``uniform_far_weight``), mean +- sd over seeds; then the gates: hidden
units alive in the channel embedding, spread of ``S_c`` across bags, share of active spatial-head ReLU inputs (where
the head has one), spread of ``S_s`` across bags (sd of each bag's mean gate), sd of ``S_s`` over bags and pixels and
the output / target norm ratio. ``--epochs`` adds the training windows of the first seed, one row per
epoch, to show how the blocks got there.
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ablation  # noqa: E402

SLICE_FIGURES = ("entropy", "max_weight", "target_weight", "far_weight")
GATE_FIGURES = (
    "channel_hidden_alive",
    "channel_gate_spread",
    "spatial_relu_active",
    "spatial_gate_spread",
    "spatial_gate_sd",
    "norm_ratio",
)


def _cell(values: list[float]) -> str:
    mean, sd = ablation.mean_sd(values)
    return f"{mean:.3f} +- {sd:.3f}"


def slice_rows(runs: list[dict], arm: str) -> list[list[str]]:
    """Table rows (level, attention, the :data:`SLICE_FIGURES`) of ``arm``'s held-out measurements over seeds."""
    levels = [r["evaluation_watch"]["levels"] for r in runs if r["arm"] == arm and r.get("evaluation_watch")]
    rows = []
    for level in levels[0] if levels else {}:
        for kind in ("channel", "spatial"):
            if f"{kind}_entropy" not in levels[0][level]:
                continue
            cells = [_cell([seed[level][f"{kind}_{figure}"] for seed in levels]) for figure in SLICE_FIGURES]
            rows.append([arm, level, kind, *cells, f"{levels[0][level]['uniform_far_weight']:.3f}"])
    return rows


def gate_rows(runs: list[dict], arm: str, phase: str = "evaluation") -> list[list[str]]:
    """Table rows (level, the :data:`GATE_FIGURES` present) of ``arm``'s measurements over seeds; ``phase``
    ``"evaluation"`` (held out) or ``"epoch N"`` (the training window of epoch N, first seed only)."""
    if phase == "evaluation":
        levels = [r["evaluation_watch"]["levels"] for r in runs if r["arm"] == arm and r.get("evaluation_watch")]
    else:
        epoch = int(phase.split()[1])
        first = next(r for r in runs if r["arm"] == arm and r.get("training_watch"))
        levels = [next(e["levels"] for e in first["training_watch"]["epochs"] if e["epoch"] == epoch)]
    rows = []
    for level in levels[0] if levels else {}:
        cells = [_cell([s[level][f] for s in levels]) if f in levels[0][level] else "-" for f in GATE_FIGURES]
        rows.append([arm, phase, level, *cells])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="the --out folder of a finished va_ablation run")
    parser.add_argument("--arms", nargs="+", default=["full", "spatial", "channel"])
    parser.add_argument("--epochs", action="store_true", help="also the training windows, one per epoch")
    args = parser.parse_args()
    runs = json.loads((args.run / "ablation.json").read_text())["runs"]
    columns = [("arm", False), ("level", False), ("attention", False)]
    columns += [(f, True) for f in ("entropy", "largest weight", "target image", "images >= 2 away", "uniform")]
    print("\n".join(ablation.markdown_table(columns, [r for arm in args.arms for r in slice_rows(runs, arm)])))
    print()
    columns = [("arm", False), ("when", False), ("level", False)]
    titles = ("hidden alive", "S_c spread", "S_s ReLU active", "S_s spread", "S_s sd", "norm ratio")
    columns += [(f, True) for f in titles]
    rows = [r for arm in args.arms for r in gate_rows(runs, arm)]
    if args.epochs:
        for arm in args.arms:
            first = next((r for r in runs if r["arm"] == arm and r.get("training_watch")), None)
            for epoch in first["training_watch"]["epochs"] if first else []:
                rows += gate_rows(runs, arm, f"epoch {epoch['epoch']}")
    print("\n".join(ablation.markdown_table(columns, rows)))


if __name__ == "__main__":
    main()
