"""Share of a training step spent waiting for data, per bundle: its own train.json trainer and data loader on phantom
data, timed by ignite's ``HandlersTimeProfiler`` (dataflow: waiting for the next batch; processing: the step).

    PYTHONPATH=. .venv/bin/python benchmarks/data_loading.py             # 10 iterations after 2 warm-up ones
    PYTHONPATH=. .venv/bin/python benchmarks/data_loading.py --num_workers 0   # the loaders without worker processes

Each bundle runs in a process of its own: phantoms written by ``python -m shared phantoms`` into a temporary folder,
train.json parsed with the demo sizes of scripts/*_job.sh (:data:`DEMO`, printed) and ``initialize`` run as
``monai.bundle run`` does; the loader settings are the config's (``num_workers`` 4, persistent workers when there are
workers, pinned memory on CUDA) unless ``--num_workers`` is given, and the ones in effect are reported. The trainer's
handlers are left out (validation, logging, checkpoints and the LR schedule are not part of a step). The first
``--warmup`` iterations (worker start-up, the first batches) are not counted. Row (``--rows``): the median over the
counted iterations of dataflow / (dataflow + processing), with its min-max spread; the note gives the share of the
counted iterations' total time.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.gpu_check import bundle_parser  # noqa: E402
from benchmarks.measure import require_quiet, row, run_child, write_rows  # noqa: E402

BUNDLES = ("msan_kits", "va_maskrcnn_lits", "cs_att_deeplesion")
# python -m shared phantoms DATASET DIR <arguments>: (default, --quick); enough training samples for the iterations
PHANTOMS = {
    "msan_kits": (["kits19", "--num_cases", "36"], ["kits19", "--num_cases", "6", "--shape", "[16, 48, 48]"]),
    "va_maskrcnn_lits": (
        ["lits", "--num_cases", "8", "--shape", "[64, 64, 48]"],
        ["lits", "--num_cases", "4", "--shape", "[32, 32, 16]"],
    ),
    "cs_att_deeplesion": (
        ["deeplesion", "--num_cases", "48"],
        ["deeplesion", "--num_cases", "6", "--image_size", "64"],
    ),
}
# train.json ids as scripts/*_job.sh set them (CPU demo sizes; the configs' defaults are the papers')
DEMO = {
    "msan_kits": {
        "spacing": None,
        "patch_size": [64, 64, 16],
        "crop_ratios": [1, 1, 2],
        "network_def#channels": [8, 16, 32, 64],
        "network_def#norm": "instance",
    },
    "va_maskrcnn_lits": {
        "image_size": 64,
        "bag_size": 3,
        "backbone": "resnet18",
        "proposals_train": 300,
        "roi_samples": 64,
        "anchor_sizes": [8, 16, 32, 64, 128],
        "pretrained": False,
        "frozen_batchnorm": False,
    },
    "cs_att_deeplesion": {
        "spacing_mm": 1.8,
        "max_size": 192,
        "hu_window": [-200, 300],
        "backbone": "resnet18",
        "network_def#anchor_sizes": [8, 12, 16, 24, 48],
        "num_images": 3,
        "pretrained": False,
        "image_mean": [0, 0, 0],
        "image_std": [1, 1, 1],
        "box_loss_weight": 1,
        "network_def#box_batch_size_per_image": 64,
    },
}
QUICK = {  # --quick: smaller still
    "msan_kits": {"patch_size": [32, 32, 8], "network_def#channels": [4, 8, 16, 32]},
    "va_maskrcnn_lits": {"image_size": 32, "proposals_train": 50, "roi_samples": 16},
    "cs_att_deeplesion": {"max_size": 64},
}


def settings(bundle: str, quick: bool, num_workers: int | None) -> dict:
    """The train.json ids this benchmark sets for BUNDLE (besides the folders)."""
    chosen = {**DEMO[bundle], **(QUICK[bundle] if quick else {})}
    return chosen if num_workers is None else {**chosen, "num_workers": num_workers}


def measure_one(bundle: str, args: argparse.Namespace) -> dict:
    """Dataflow and processing seconds of each iteration of the bundle's trainer, and the loader's settings."""
    from ignite.engine import Events
    from ignite.handlers import HandlersTimeProfiler

    total = args.warmup + args.iterations
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "data"
        phantoms = PHANTOMS[bundle][args.quick]
        subprocess.run(
            [sys.executable, "-m", "shared", "phantoms", phantoms[0], str(data), *phantoms[1:]],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        values = {k: str(Path(work) / k) for k in ("output_dir", "ckpt_dir", "cache_dir")} | {"dataset_dir": str(data)}
        if args.device:
            values["device"] = torch.device(args.device)
        parser = bundle_parser(bundle, "train.json", settings(bundle, args.quick, args.num_workers), **values)
        parser.update({"train#handlers": [], "epochs": total})  # at least one batch an epoch: never short
        parser.get_parsed_content("initialize")
        trainer = parser.get_parsed_content("train#trainer")
        loader = trainer.data_loader
        profiler = HandlersTimeProfiler()
        profiler.attach(trainer)
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=total), lambda engine: engine.terminate())
        trainer.run()
        return {
            "dataflow_s": profiler.dataflow_times[args.warmup :],
            "processing_s": profiler.processing_times[args.warmup :],
            "iterations_per_epoch": len(loader),
            "batch_size": loader.batch_size,
            "num_workers": loader.num_workers,
            "persistent_workers": loader.persistent_workers,
            "pin_memory": loader.pin_memory,
            "device": str(trainer.state.device),
        }


def wait_shares(dataflow: list[float], processing: list[float]) -> list[float]:
    """Per iteration: the share of its time spent waiting for its batch."""
    return [d / (d + p) for d, p in zip(dataflow, processing)]


def loading_row(bundle: str, record: dict) -> dict:
    """The suite's row of one bundle: its median data-wait share, goal < 0.10."""
    wait, step = sum(record["dataflow_s"]), sum(record["processing_s"])
    loader = ", ".join(f"{k} {record[k]}" for k in ("num_workers", "persistent_workers", "pin_memory"))
    return row(
        f"{bundle} data wait share of a training step",
        wait_shares(record["dataflow_s"], record["processing_s"]),
        goal="< 0.10",
        limit="0.0",
        note=f"{len(record['dataflow_s'])} iterations on {record['device']}: {wait / (wait + step):.3f} of their total"
        f" time; batch {record['batch_size']}, {record['iterations_per_epoch']} iterations an epoch; {loader}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", choices=BUNDLES, default=list(BUNDLES))
    parser.add_argument("--iterations", type=int, default=10, help="counted iterations")
    parser.add_argument("--warmup", type=int, default=2, help="iterations before them, not counted")
    parser.add_argument("--num_workers", type=int, help="instead of the config's (4)")
    parser.add_argument("--device", help="instead of the config's (CUDA when there is one)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 + 2 iterations")
    parser.add_argument("--rows", help="write the suite's rows here (JSON)")
    parser.add_argument("--max_load", type=float, default=1.0, help="refuse to start above this 1-minute load average")
    parser.add_argument("--one", choices=BUNDLES, help=argparse.SUPPRESS)  # child process: one bundle
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.warmup = 2, 1
    if args.one:
        print(json.dumps(measure_one(args.one, args)))
        return
    load = require_quiet("data_loading", args.max_load)
    print(
        f"data_loading: {torch.get_num_threads()} threads, load {load:.2f}, {args.iterations} iterations after "
        f"{args.warmup}, each bundle in a process of its own"
    )
    child_args = ["--iterations", str(args.iterations), "--warmup", str(args.warmup)] + ["--quick"] * args.quick
    child_args += [f"--{k}={getattr(args, k)}" for k in ("num_workers", "device") if getattr(args, k) is not None]
    rows = []
    for bundle in args.bundles:
        print(f"{bundle}: train.json overrides {settings(bundle, args.quick, args.num_workers)}", flush=True)
        record = run_child([sys.executable, __file__, *child_args, "--one", bundle])
        rows.append(loading_row(bundle, record))
        print(
            f"| {rows[-1]['what']} | {rows[-1]['ratio']:.3f} ({rows[-1]['spread'][0]:.3f}-"
            f"{rows[-1]['spread'][1]:.3f}) | < 0.10 | {rows[-1]['note']} |",
            flush=True,
        )
    write_rows(args.rows, rows)


if __name__ == "__main__":
    main()
