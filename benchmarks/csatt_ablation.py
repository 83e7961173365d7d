"""CS-Att's ablation in miniature (paper 001, Table 3): 3DCE, + contextual attention, + spatial attention, + both,
trained on the same context phantoms with the same budget, several seeds each; sensitivities at 0.5-16 FPs per
image on the held-out test split.

    PYTHONPATH=. .venv/bin/python benchmarks/csatt_ablation.py [--out outputs/csatt_ablation]
        [--arms 3dce contextual spatial both] [--seeds 0 1 2] [--epochs 12] [--cases 400] [--image_size 128]
        [--num_images 5] [--jobs 2] [--args_file more_overrides.json] [--smoke]

The data are ``python -m shared phantoms deeplesion --context true`` series: look-alikes that a single 3-slice image
cannot tell from lesions but the M images around the key slice can (``shared.phantoms.deeplesion``). Every arm runs
the real bundle (``monai.bundle``'s ``create_workflow``, what ``python -m monai.bundle run`` calls) on
``bundles/cs_att_deeplesion/configs/train.json``, then ``evaluate.json`` on the test split, in a process of its own.
Arms differ only in the knobs ``contextual_attention`` and ``spatial_attention``, given as the lower-case strings the
command line gives. The network the trainer holds, and the one evaluated, are read for their CS-Att blocks and
parameter count (:func:`attention_blocks`): an arm whose network is not what it claims stops the run. The bundle's
evaluation writes the detections; they are scored here with its scorer in 3DCE's convention
(``shared.metrics.deeplesion.score_detections``), and the look-alikes found at the 4 FPs per image operating point
are counted (a detection with IoU >= 0.5 on a look-alike's key-slice box): what context should teach.

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
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.measure import peak_mib, run_child  # noqa: E402
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
    """The CS-Att blocks (``contextual``, ``spatial``) a network holds and its parameter count, read from the object."""
    from shared.networks.blocks.contextual_spatial_attention import ContextualSpatialAttention

    found = [m for m in network.modules() if isinstance(m, ContextualSpatialAttention)]
    blocks = [name for name in ("contextual", "spatial") if any(getattr(m, name) for m in found)]
    return {"blocks": blocks, "parameters": sum(p.numel() for p in network.parameters())}


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


def _workflow(config_file, overrides: dict):
    from monai.bundle.scripts import create_workflow

    return create_workflow(
        config_file=config_file,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        run_id="run",
        **overrides,
    )


def score(eval_dir: Path, data: Path, split: str = "test") -> dict:
    """Sensitivities (3DCE convention) of the bundle's ``detections.json`` on the key slices of ``split``, and the
    look-alikes on those key slices hit (IoU >= 0.5) by a detection kept at the 4 FPs per image operating point."""
    from shared.data.deeplesion import read_annotations
    from shared.metrics.deeplesion import box_overlaps, key_slices, read_detections, score_detections
    from shared.phantoms.deeplesion import LOOKALIKES_NAME

    truth = key_slices(read_annotations(data), split)
    detections = read_detections(eval_dir / "detections.json")
    _, result = score_detections(detections, truth, convention="3dce")
    threshold = result.threshold_at(4.0)
    lookalikes = json.loads((data / LOOKALIKES_NAME).read_text())
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
        "lookalikes_hit_at_4fp": hits / total if total else float("nan"),
    }


def run_arm(arm: str, seed: int, data: Path, arm_dir: Path, epochs: int, extra: dict) -> dict:
    """Train one arm with one seed through the bundle, evaluate it on the test split, return its record."""
    overrides = arm_overrides(arm, seed, data, arm_dir, epochs, extra)
    start, cpu_start = time.perf_counter(), time.process_time()
    training = _workflow(str(CONFIGS / "train.json"), overrides)
    trained = check_arm(arm, training.parser.get_parsed_content("train#trainer").network, "trainer's")
    print(f"arm {arm} seed {seed}: {trained['parameters']:,} parameters, CS-Att blocks {trained['blocks']}", flush=True)
    training.run()
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start

    start = time.perf_counter()
    eval_dir = arm_dir / "eval"
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]
    evaluating = _workflow(configs, {**overrides, "output_dir": str(eval_dir), "split": "test", "num_pictures": 0})
    evaluated = check_arm(arm, evaluating.parser.get_parsed_content("network"), "evaluated")
    evaluating.run()
    eval_s = time.perf_counter() - start
    return {
        "arm": arm,
        "seed": seed,
        "model": ARMS[arm][0],
        **evaluated,
        **score(eval_dir, data),
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,  # CPU time of all threads: what free cores would need
        "eval_s": eval_s,
        "peak_rss_mib": peak_mib("cpu"),  # this process's own peak: the arm runs alone in it
        "eval_dir": str(eval_dir),
    }


def run_arms(jobs: list[tuple[str, int]], data: Path, out: Path, epochs: int, extra: dict, parallel: int) -> list:
    """Run every (arm, seed) in a process of its own, ``parallel`` at a time with the cores split between them."""
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def one(arm: str, seed: int) -> dict:
        arm_dir = out / f"{arm}_seed{seed}"
        cmd = [sys.executable, __file__, "--arm", arm, "--seed", str(seed), "--data", str(data), "--out", str(arm_dir)]
        return run_child([*cmd, "--epochs", str(epochs), "--overrides", json.dumps(extra)], env)

    records = []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for done in as_completed([pool.submit(one, arm, seed) for arm, seed in jobs]):
            r = done.result()
            records.append(r)
            print(
                f"done {r['arm']} seed {r['seed']}: sensitivity at 4 FPs {r['sensitivity'][3]:.3f}, look-alikes hit "
                f"{r['lookalikes_hit_at_4fp']:.3f} ({r['train_s']:.0f} s training, {r['peak_rss_mib']:.0f} MiB)",
                flush=True,
            )
    return records


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(records: list[dict], settings: dict) -> tuple[list[dict], str]:
    """One row per arm (mean and sd over seeds) and the markdown table."""
    rows = []
    for arm in [a for a in ARMS if any(r["arm"] == a for r in records)]:
        runs = [r for r in records if r["arm"] == arm]
        sensitivity = [mean_sd([r["sensitivity"][i] for r in runs]) for i in range(len(FP_RATES))]
        lookalikes = mean_sd([r["lookalikes_hit_at_4fp"] for r in runs])
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
                "train_s": statistics.mean(r["train_s"] for r in runs),
                "train_cpu_s": statistics.mean(r["train_cpu_s"] for r in runs),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            }
        )
    first = records[0]
    lines = [
        f"Held-out context phantoms: {first['images']} test key slices, {first['lesions']} lesions, "
        f"{first['lookalikes']} look-alikes; {settings['epochs']} epochs per model; seeds {settings['seeds']}; "
        f"M = {settings['overrides']['num_images']}; {settings['parallel']} process(es) at a time, "
        f"{settings['threads']} thread(s) each. Sensitivity at FPs per image (3DCE convention), mean +- sd over seeds.",
        "",
        "| model | params | CS-Att blocks | seeds | "
        + " | ".join(f"{r:g}" for r in FP_RATES)
        + " | look-alikes hit at 4 FPs | training s (CPU s) | peak RSS MiB |",
        "|---|---:|---|---:|" + "---|" * len(FP_RATES) + "---|---:|---:|",
    ]
    for r in rows:
        means = [*r["sensitivity_mean"], r["lookalikes_hit_at_4fp_mean"]]
        sds = [*r["sensitivity_sd"], r["lookalikes_hit_at_4fp_sd"]]
        cells = [f"{m:.3f} +- {sd:.3f}" for m, sd in zip(means, sds)]
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {', '.join(r['blocks']) or 'none'} | {r['seeds']} | "
            + " | ".join(cells)
            + f" | {r['train_s']:.0f} ({r['train_cpu_s']:.0f}) | {r['peak_rss_mib']:.0f} |"
        )
    return rows, "\n".join(lines) + "\n"


def make_data(out: Path, cases: int, image_size: int) -> Path:
    """Context phantom DeepLesion root for the run, through the command line (written once, reused when present)."""
    data = out / "deeplesion_context"
    if not (data / "DL_info.csv").is_file():
        cmd = [sys.executable, "-m", "shared", "phantoms", "deeplesion", str(data), "--num_cases", str(cases)]
        cmd += ["--image_size", str(image_size), "--seed", "0", "--context", "true"]
        subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "csatt_ablation")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12, help="training epochs per model")
    parser.add_argument("--cases", type=int, default=400, help="context phantom series (~20 %% held out for testing)")
    parser.add_argument("--image_size", type=int, default=128, help="phantom series size in pixels")
    parser.add_argument("--num_images", type=int, default=5, choices=[3, 5, 7], help="M, 3-slice images per sample")
    parser.add_argument("--jobs", type=int, default=2, help="arms trained at the same time (threads split evenly)")
    parser.add_argument("--args_file", type=Path, help="JSON of bundle overrides applied over the demo sizes")
    parser.add_argument("--smoke", action="store_true", help="tiny run to check the pipeline: " + json.dumps(SMOKE))
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)  # internal: run one arm in this process
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", type=json.loads, default={}, help=argparse.SUPPRESS)
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
    data = make_data(out, args.cases, args.image_size)
    parallel = max(1, args.jobs)
    settings = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "arms": args.arms,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "fp_rates": FP_RATES,
        "phantom_cases": args.cases,
        "phantom_image_size": args.image_size,
        "overrides": {**DEMO_OVERRIDES, **extra},
        "parallel": parallel,
        "threads": max(1, (os.cpu_count() or 1) // parallel),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "machine": platform.platform(),
    }
    records = run_arms([(a, s) for s in args.seeds for a in args.arms], data, out, args.epochs, extra, parallel)
    records.sort(key=lambda r: (list(ARMS).index(r["arm"]), r["seed"]))
    rows, markdown = summarize(records, settings)
    settings["total_s"] = time.perf_counter() - started
    markdown += f"\nWhole run: {settings['total_s'] / 60:.1f} min. Command: `{settings['command']}`\n"
    (out / "ablation.json").write_text(json.dumps({"settings": settings, "table": rows, "runs": records}, indent=1))
    (out / "ablation.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
