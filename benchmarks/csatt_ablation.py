"""CS-Att's ablation in miniature (paper 001, Table 3): 3DCE, + contextual attention, + spatial attention, + both,
trained on the same phantoms with the same budget, several seeds each; sensitivities at 0.5-16 FPs per image on
the held-out test split.

    PYTHONPATH=. .venv/bin/python benchmarks/csatt_ablation.py [--out outputs/csatt_ablation]
        [--arms 3dce contextual spatial both] [--seeds 0 1 2] [--epochs 12] [--cases 400] [--image_size 128]
        [--num_images 5] [--phantoms context|plain] [--jobs 2] [--args_file more_overrides.json] [--smoke]

The data (``--phantoms context``, the default) are ``python -m shared phantoms deeplesion --context true`` series:
look-alikes that a single 3-slice image cannot tell from lesions but the M images around the key slice can
(``shared.phantoms.deeplesion``). Every arm runs
the real bundle (``monai.bundle``'s ``create_workflow``, what ``python -m monai.bundle run`` calls) on
``bundles/cs_att_deeplesion/configs/train.json``, then ``evaluate.json`` on the test split, in a process of its own.
Arms differ only in the knobs ``contextual_attention`` and ``spatial_attention``, given as the lower-case strings the
command line gives. The network the trainer holds, and the one evaluated, are read for their CS-Att blocks and
parameter count, with the attention convolutions' kernel and what the RPN reads (:func:`attention_blocks`): an arm
whose network is not what it claims stops the run. The bundle's
evaluation writes the detections; they are scored here with its scorer in 3DCE's convention
(``shared.metrics.deeplesion.score_detections``), and the look-alikes found at the 4 FPs per image operating point
are counted (a detection with IoU >= 0.5 on a look-alike's key-slice box): what context should teach.
``--phantoms plain`` trains and tests on the demo's phantoms instead (``python -m shared phantoms deeplesion``, no
look-alikes across slices): 1-3 lesions on each of one or two key slices among in-slice clutter of lesion-like HU and
size (renal and abdominal cysts, bowel loops with gas, liver vessels, and lesions flagged ``Possibly_noisy``, which
are drawn but count as background), where spatial attention has its job: raising true boxes above the clutter on
the key slice. Each record holds the learning rate and parameter count of every optimizer group the trainer used
(``training_watch``: ``attention_lr_mult`` gives the attention layers a group of their own).

Demo sizes (``DEMO_OVERRIDES``; the paper's stay the config defaults): those of ``scripts/cs_att_deeplesion_job.sh``
(ResNet-18 without pretraining, HU window [-200, 300], anchors 8-48 px, lr 0.02, gradient norm clipped at 10, 2000/500
RPN proposals), but M = 5 images, the paper's ablation setting (the phantom's look-alikes in 5 mm series differ from
lesions only beyond the reach of M = 3), and 128 px series at 2 mm pixels (at most 160 px) instead of 1.8 mm.

Budget, equal for every arm: 12 epochs of ~120 iterations (400 series give ~240 training key slices, one per
series; batch 2), validation every 2 epochs on ~80 key slices, model.pt the best validation sensitivity at 4 FPs per
image. Sized from one arm timed at 2 threads (~0.22 s per iteration with its validations): 12 runs, 2 at a time on
one thread each, fit in 90 minutes; the measured whole run is in the bundle docs ("CS-Att against 3DCE").

Writes ``<out>/ablation.json`` (settings, every arm and seed) and ``<out>/ablation.md`` (mean +- sd over seeds).
``--smoke`` is a tiny run (all arms, 1 seed, 1 epoch, 48 px phantoms, the tiny backbone) to check the pipeline.
The processes, timings and report files are those of every ablation here (``benchmarks/ablation.py``).
"""

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ablation  # noqa: E402
from shared.metrics.deeplesion import FP_RATES  # noqa: E402

CONFIGS = REPO / "bundles" / "cs_att_deeplesion" / "configs"

# arm -> (the model it claims to be, the CS-Att blocks its network must hold)
ARMS = {
    "3dce": ("3DCE", ()),
    "contextual": ("3DCE + contextual attention", ("contextual",)),
    "spatial": ("3DCE + spatial attention", ("spatial",)),
    "both": ("3DCE + CS-Att (contextual + spatial)", ("contextual", "spatial")),
}

# CPU demo sizes, the same for every arm (see the module docstring)
DEMO_OVERRIDES = {
    "num_workers": 0,
    "amp": "false",
    "num_images": 5,
    "spacing_mm": 2.0,
    "max_size": 160,
    "hu_window": [-200, 300],
    "backbone": "resnet18",
    "pretrained": "false",
    "image_mean": [0, 0, 0],
    "image_std": [1, 1, 1],
    "box_loss_weight": 1,
    "learning_rate": 0.02,
    "network_def#anchor_sizes": [8, 12, 16, 24, 48],
    "network_def#box_batch_size_per_image": 64,
    "network_def#rpn_pre_nms_top_n_train": 2000,
    "network_def#rpn_post_nms_top_n_train": 500,
    "train#trainer#grad_clip_norm": 10,
}
SMOKE = {"seeds": [0], "epochs": 1, "cases": 6, "image_size": 48, "num_images": 3}
SMOKE_OVERRIDES = {"backbone": "tiny", "spacing_mm": 6.0, "max_size": 64, "network_def#rpn_pre_nms_top_n_train": 200}


def attention_blocks(network) -> dict:
    """The CS-Att blocks (``contextual``, ``spatial``) a network holds, their convolutions' kernel sizes, the feature
    maps its RPN reads and its parameter count, read from the object."""
    from shared.networks.blocks.contextual_spatial_attention import ContextualSpatialAttention

    found = [m for m in network.modules() if isinstance(m, ContextualSpatialAttention)]
    blocks = [name for name in ("contextual", "spatial") if any(getattr(m, name) for m in found)]
    convs = [conv for m in found for conv in (m.phi_c, m.phi_s) if conv is not None]
    return {
        "blocks": blocks,
        "attention_kernels": sorted({conv.kernel_size[0] for conv in convs}),
        "rpn_reads": list(network.backbone.rpn_feature_names),
        "parameters": sum(p.numel() for p in network.parameters()),
    }


def check_arm(arm: str, network, what: str) -> dict:
    """:func:`attention_blocks` of ``network``; stops the run if they are not those ``arm`` claims."""
    found = attention_blocks(network)
    claimed = list(ARMS[arm][1])
    if found["blocks"] != claimed:
        raise SystemExit(
            f"arm {arm} ({ARMS[arm][0]}): the {what} network holds CS-Att blocks {found['blocks']}, not {claimed}"
        )
    return found


def arm_overrides(arm: str, seed: int, data: Path, arm_dir: Path, epochs: int, extra: dict | None = None) -> dict:
    """The bundle overrides of one arm and seed: the demo sizes (updated with ``extra``), the budget, and the arm's
    attention knobs as the lower-case strings the command line gives."""
    blocks = ARMS[arm][1]
    return {
        **DEMO_OVERRIDES,
        **(extra or {}),
        "dataset_dir": str(data),
        "cache_dir": str(data.parent / "cache"),  # shared by the arms: one decoded sample per key slice
        "ckpt_dir": str(arm_dir / "models"),
        "output_dir": str(arm_dir / "runs"),
        "seed": seed,
        "epochs": epochs,
        "lr_milestones": [max(1, epochs * 4 // 6), max(1, epochs * 5 // 6)],  # the paper's 4 and 5 of 6 epochs
        "val_interval": min(2, epochs),
        "contextual_attention": str("contextual" in blocks).lower(),
        "spatial_attention": str("spatial" in blocks).lower(),
    }


@contextlib.contextmanager
def optimizer_groups(phase: str, network, engine):
    """Records, for training, the learning rate of each of the trainer's optimizer groups and the parameters it holds
    (``attention_lr_mult`` puts the attention layers in a group of their own): what the arm trained with."""
    watched = {}
    if phase == "training":
        groups = engine.optimizer.param_groups
        watched["optimizer_groups"] = [
            {"lr": g["lr"], "parameters": sum(p.numel() for p in g["params"])} for g in groups
        ]
    yield watched


def scored_detections(eval_dir: Path, data: Path, split: str = "test") -> tuple[list, list[dict], object]:
    """The key slices of ``split`` (ground truth), the bundle's ``detections.json`` in ``eval_dir`` and their
    scoring in 3DCE's convention (``shared.metrics.deeplesion.score_detections``'s result)."""
    from shared.data.deeplesion import read_annotations
    from shared.metrics.deeplesion import key_slices, read_detections, score_detections

    truth = key_slices(read_annotations(data), split)
    detections = read_detections(eval_dir / "detections.json")
    _, result = score_detections(detections, truth, convention="3dce")
    return truth, detections, result


def score(eval_dir: Path, data: Path, split: str = "test") -> dict:
    """Sensitivities (3DCE convention) of the bundle's ``detections.json`` on the key slices of ``split``, and the
    look-alikes on those key slices hit (IoU >= 0.5) by a detection kept at the 4 FPs per image operating point."""
    from shared.metrics.deeplesion import box_overlaps
    from shared.phantoms.deeplesion import LOOKALIKES_NAME

    truth, detections, result = scored_detections(eval_dir, data, split)
    threshold = result.threshold_at(4.0)
    marked = data / LOOKALIKES_NAME  # context phantoms only
    lookalikes = json.loads(marked.read_text()) if marked.is_file() else {}
    hits = total = 0
    for k in truth:
        boxes = np.asarray(lookalikes.get(f"{k.series}_{k.slice:03d}.png", []), dtype=float) - 1.0  # 0-based
        on_slice = [d for d in detections if (d["series"], d["slice"]) == (k.series, k.slice)]
        kept = [d["box"] for d in on_slice if d["score"] >= threshold]
        total += len(boxes)
        if len(boxes) and kept:
            hits += int((box_overlaps(kept, boxes, pixel_inclusive=True).max(axis=0) >= 0.5).sum())
    return {
        "sensitivity": [float(s) for s in result.sensitivities],
        "images": result.num_images,
        "lesions": result.num_lesions,
        "lookalikes": total,
        "lookalikes_hit_at_4fp": hits / total if total else None,
    }


def run_arm(arm: str, seed: int, data: Path, arm_dir: Path, epochs: int, extra: dict) -> dict:
    """Train one arm with one seed through the bundle, evaluate it on the test split, return its record."""
    overrides = arm_overrides(arm, seed, data, arm_dir, epochs, extra)
    eval_dir = arm_dir / "eval"
    evaluation = {"output_dir": str(eval_dir), "split": "test", "num_pictures": 0}
    check = functools.partial(check_arm, arm)
    name = f"arm {arm} seed {seed}"
    evaluated, costs = ablation.train_and_evaluate(CONFIGS, overrides, evaluation, check, name, optimizer_groups)
    return {
        "arm": arm,
        "seed": seed,
        "model": ARMS[arm][0],
        **evaluated,
        **score(eval_dir, data),
        **costs,
        "eval_dir": str(eval_dir),
    }


def describe(record: dict) -> str:
    """One line on a finished run."""
    hit = record["lookalikes_hit_at_4fp"]
    return (
        f"sensitivity at 0.5 / 4 FPs {record['sensitivity'][0]:.3f} / {record['sensitivity'][3]:.3f}"
        + (f", look-alikes hit {hit:.3f}" if hit is not None else "")
        + f" ({record['train_s']:.0f} s training, {record['peak_rss_mib']:.0f} MiB)"
    )


def summarize(records: list[dict], settings: dict) -> tuple[list[dict], str]:
    """One row per arm (mean and sd over seeds) and the markdown table."""
    rows = []
    for arm, runs in ablation.by_arm(records, list(ARMS)):
        sensitivity = [ablation.mean_sd([r["sensitivity"][i] for r in runs]) for i in range(len(FP_RATES))]
        hits = [r["lookalikes_hit_at_4fp"] for r in runs]
        lookalikes = ablation.mean_sd(hits) if None not in hits else (None, None)
        rows.append(
            {
                "arm": arm,
                "model": ARMS[arm][0],
                "parameters": runs[0]["parameters"],
                "blocks": runs[0]["blocks"],
                "seeds": len(runs),
                "sensitivity_mean": [m for m, _ in sensitivity],
                "sensitivity_sd": [sd for _, sd in sensitivity],
                "lookalikes_hit_at_4fp_mean": lookalikes[0],
                "lookalikes_hit_at_4fp_sd": lookalikes[1],
                **ablation.costs(runs),
            }
        )
    first = records[0]
    lines = [
        f"Held-out {settings.get('phantoms', 'context')} phantoms: {first['images']} test key slices, "
        f"{first['lesions']} lesions, {first['lookalikes']} look-alikes; {settings['epochs']} epochs per model; "
        f"seeds {settings['seeds']}; "
        f"M = {settings['overrides']['num_images']}; {settings['parallel']} process(es) at a time, "
        f"{settings['threads']} thread(s) each. Sensitivity at FPs per image (3DCE convention), mean +- sd over seeds.",
        "",
    ]
    columns = [("model", False), ("params", True), ("CS-Att blocks", False), ("seeds", True)]
    columns += [(f"{r:g}", False) for r in FP_RATES] + [("look-alikes hit at 4 FPs", False)]
    columns += [("training s (CPU s)", True), ("peak RSS MiB", True)]
    cells = []
    for r in rows:
        means = [*r["sensitivity_mean"], r["lookalikes_hit_at_4fp_mean"]]
        sds = [*r["sensitivity_sd"], r["lookalikes_hit_at_4fp_sd"]]
        described = [r["model"], f"{r['parameters']:,}", ", ".join(r["blocks"]) or "none", str(r["seeds"])]
        figures = [f"{m:.3f} +- {sd:.3f}" if m is not None else "-" for m, sd in zip(means, sds)]
        cells.append(described + figures + ablation.cost_cells(r))
    return rows, "\n".join(lines + ablation.markdown_table(columns, cells)) + "\n"


def make_data(out: Path, cases: int, image_size: int, phantoms: str = "context") -> Path:
    """The run's DeepLesion phantom root (``phantoms``: context or plain), through the command line (written once,
    reused when present)."""
    options = ("--image_size", str(image_size))
    context = phantoms == "context"
    data = out / f"deeplesion_{phantoms}"
    return ablation.phantoms(data, "deeplesion", cases, "DL_info.csv", *options, context=context)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ablation.add_arguments(parser, list(ARMS), REPO / "outputs" / "csatt_ablation", epochs=12, smoke=SMOKE)
    parser.add_argument("--cases", type=int, default=400, help="context phantom series (~20 %% held out for testing)")
    parser.add_argument("--image_size", type=int, default=128, help="phantom series size in pixels")
    parser.add_argument("--num_images", type=int, default=5, choices=[3, 5, 7], help="M, 3-slice images per sample")
    parser.add_argument(
        "--phantoms", choices=["context", "plain"], default="context", help="look-alikes across slices, or the demo's"
    )
    args = parser.parse_args()

    if args.arm:
        record = run_arm(args.arm, args.seed, args.data, args.out, args.epochs, args.overrides)
        print(json.dumps(record))  # the last line of stdout: the record run_child reads
        return
    extra = {"num_images": args.num_images, **(json.loads(args.args_file.read_text()) if args.args_file else {})}
    if args.smoke:
        args.seeds, args.epochs, args.cases, args.image_size, args.num_images = (SMOKE[k] for k in SMOKE)
        extra = {**extra, **SMOKE_OVERRIDES, "num_images": args.num_images}
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = make_data(out, args.cases, args.image_size, args.phantoms)
    parallel = max(1, args.jobs)
    settings = {
        "arms": args.arms,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "fp_rates": FP_RATES,
        "phantom_cases": args.cases,
        "phantom_image_size": args.image_size,
        "phantoms": args.phantoms,
        "overrides": {**DEMO_OVERRIDES, **extra},
        **ablation.machine_settings(parallel),
    }
    records = ablation.run_arms(__file__, args.arms, args.seeds, data, out, args.epochs, extra, parallel, describe)
    rows, markdown = summarize(records, settings)
    ablation.write_report(out, settings, rows, records, markdown, started)


if __name__ == "__main__":
    main()
