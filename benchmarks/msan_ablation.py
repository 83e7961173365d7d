"""MSAN's ablation in miniature (paper 003, Table 1): the five ensemble members trained on the same phantom KiTS19 data
with the same budget, several seeds each, then the five-model vote; kidney and tumour Dice on the held-out (test)
cases with the project's KiTS19 scorer.

    PYTHONPATH=. .venv/bin/python benchmarks/msan_ablation.py [--out outputs/msan_ablation]
        [--arms unet v1 v2 v2_ds v1_ds] [--seeds 0 1 2] [--iterations 1200] [--jobs 2] [--cases 60] [--mixed_sizes]
        [--args_file more_overrides.json] [--smoke]

Every arm runs the real bundle (``monai.bundle``'s ``create_workflow``, what ``python -m monai.bundle run`` calls) on
``bundles/msan_kits/configs/train.json``, then ``evaluate.json`` on the test split, in a process of its own, so the
peak RSS reported is that arm's. The trainer's network, and the one evaluated, are read back from the workflows and
named from the blocks they hold (:func:`shared.networks.msan.architecture`): an arm whose network is not the model it
claims stops the run; the record gives the V2 branch's gain (``network_def#res2net_gain``, e.g. through
``--args_file``) that the network starts with (``res2net_gain``) and the evaluated model's (``res2net_gain_trained``,
read from its checkpoint).
The arms' weights are paired: every module is re-drawn from the seed and its name before training
(:func:`paired_init`), so at one seed V1 and V2 start the modules they share alike. Each record holds the validator's
whole-volume Dice (mean of kidney and tumour) at every validation (``validation``) and, for V2, the Res2Net output's
rms over the bottom conv block's per epoch of training (``training_watch``).
The vote takes each seed's five members' saved predictions (the bundle's largest-connected-component step already
applied to each) through MONAI's ``VoteEnsemble`` and the same connected-component step again.

Writes ``<out>/ablation.json`` (settings, every arm and seed, the votes) and ``<out>/ablation.md`` (mean +- sd over
seeds). ``--smoke`` is a tiny run (2 arms, 1 seed, 8 iterations, small phantoms) to check the pipeline in a minute.
The processes, timings and report files are those of every ablation here (``benchmarks/ablation.py``).
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ablation  # noqa: E402

CONFIGS = REPO / "bundles" / "msan_kits" / "configs"

# arm -> (network_def#variant, deep supervision, the name architecture() must give the trained network)
ARMS = {
    "unet": ("unet", False, "3D U-Net"),
    "v1": ("v1", False, "MSAN-V1"),
    "v2": ("v2", False, "MSAN-V2"),
    "v2_ds": ("v2", True, "MSAN-V2 with deep supervision"),
    "v1_ds": ("v1", True, "MSAN-V1 with deep supervision"),
}

# CPU demo sizes, the same for every arm: those of scripts/msan_kits_job.sh (the paper's are the bundle defaults)
DEMO_OVERRIDES = {
    "spacing": None,
    "patch_size": [64, 64, 16],
    "crop_ratios": [1, 1, 2],
    "network_def#channels": [8, 16, 32, 64],
    "network_def#norm": "instance",
    "learning_rate": 0.003,
    "num_workers": 0,
    "sw_batch_size": 2,
    "amp": False,
}
SMOKE = {"arms": ["unet", "v2_ds"], "seeds": [0], "iterations": 8, "cases": 6, "shape": [16, 32, 32]}


def arm_overrides(arm: str, seed: int, data: Path, arm_dir: Path, iterations: int, extra: dict | None = None) -> dict:
    """The bundle overrides of one arm and seed: the demo sizes (updated with ``extra``), the budget, the arm's
    variant and supervision."""
    variant, deep_supervision, _ = ARMS[arm]
    return {
        **DEMO_OVERRIDES,
        **(extra or {}),
        "dataset_dir": str(data),
        "ckpt_dir": str(arm_dir / "models"),
        "output_dir": str(arm_dir / "runs"),
        "seed": seed,
        "iterations": iterations,
        "lr_step_iterations": max(1, iterations * 3 // 4),  # as the main job: lr / 10 for the last quarter
        "val_every_iterations": max(1, iterations // 4),  # model.pt: the best of about four validations
        "network_def#variant": variant,
        "network_def#deep_supervision": deep_supervision,  # a Python bool: no string reaches the network
    }


def check_arm(arm: str, network, what: str) -> dict:
    """What :func:`shared.networks.msan.architecture` reads of ``network`` (the model's name as ``model``); stops the
    run if it is not the model ``arm`` claims."""
    from shared.networks.msan import architecture

    found = dataclasses.asdict(architecture(network))
    claimed = ARMS[arm][2]
    if found["name"] != claimed:
        raise SystemExit(f"arm {arm}: the {what} network is {found['name']!r}, not {claimed!r}")
    gain = getattr(network, "res2net_gain", None)
    return {"model": found.pop("name"), **found, "res2net_gain": None if gain is None else float(gain)}


def paired_init(seed: int, network) -> None:
    """Re-draw ``network``'s weights module by module from ``seed`` and each module's name
    (:func:`benchmarks.ablation.seed_each_module`), so that the arms start the modules they share from the same
    weights at the same seed (V2 builds its Res2Net block before the gates, up-convolutions and heads, which would
    otherwise draw other weights than V1's); the global random state (data order, augmentation) is left as it was."""
    import torch

    state = torch.get_rng_state()
    ablation.seed_each_module(network, seed)
    torch.set_rng_state(state)


@contextlib.contextmanager
def watched_branch(phase: str, network, trainer) -> Iterator[dict]:
    """In training, for a network with a V2 Res2Net block: the root mean square of the block's output and of the
    bottom conv block's (the two summed), and their ratio, over each epoch's training iterations
    (``{"epochs": [{"epoch", "iteration", "branch_rms", "bottom_rms", "ratio"}, ...]}``); nothing otherwise."""
    from ignite.engine import Events

    log: dict = {}
    branch = getattr(network, "bottom_res2net", None)
    if trainer is None or branch is None:
        yield log
        return
    sums = {"branch": [0.0, 0], "bottom": [0.0, 0]}

    def record(key: str):
        def hook(module, inputs, output) -> None:
            if module.training:  # not the validator's sliding windows
                sums[key][0] += float(output.detach().square().sum())
                sums[key][1] += output.numel()

        return hook

    handles = [branch.register_forward_hook(record("branch")), network.bottom.register_forward_hook(record("bottom"))]
    log["epochs"] = []

    def epoch_done(engine) -> None:
        rms = {key: (total / count) ** 0.5 if count else float("nan") for key, (total, count) in sums.items()}
        entry = {"epoch": engine.state.epoch, "iteration": engine.state.iteration}
        log["epochs"].append(entry | {f"{k}_rms": v for k, v in rms.items()} | {"ratio": rms["branch"] / rms["bottom"]})
        for value in sums.values():
            value[:] = [0.0, 0]

    trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_done)
    try:
        yield log
    finally:
        trainer.remove_event_handler(epoch_done, Events.EPOCH_COMPLETED)
        for handle in handles:
            handle.remove()


def trained_gain(checkpoint: Path) -> float | None:
    """The V2 branch's gain in a saved model (the bundle's ``model.pt``, a state dict); None if it has none."""
    import torch

    gain = torch.load(checkpoint, map_location="cpu", weights_only=True).get("res2net_gain")
    return None if gain is None else float(gain)


def run_arm(arm: str, seed: int, data: Path, arm_dir: Path, iterations: int, extra: dict) -> dict:
    """Train one arm with one seed through the bundle, evaluate it on the test split, return its record."""
    from shared.data.kits19 import make_datalist
    from shared.metrics.kits19 import evaluate_dir
    from shared.visualize import training_curves

    overrides = arm_overrides(arm, seed, data, arm_dir, iterations, extra)
    eval_dir = arm_dir / "eval"
    check = functools.partial(check_arm, arm)
    name = f"arm {arm} seed {seed}"
    evaluated, costs = ablation.train_and_evaluate(
        CONFIGS,
        overrides,
        {"eval_dir": str(eval_dir)},
        check,
        name,
        watched_branch,
        functools.partial(paired_init, seed),
    )
    _, validation = training_curves(arm_dir / "runs")  # the validator's whole-volume Dice at each validation
    cases = [entry["case"] for entry in make_datalist(data)["test"]]
    table = evaluate_dir(eval_dir, data, cases)
    return {
        "arm": arm,
        "seed": seed,
        **evaluated,
        **costs,
        "cases": table.rows,
        "kidney_dice": table.summary["kidney_dice"],
        "tumour_dice": table.summary["tumour_dice"],
        "validation": validation,
        "res2net_gain_trained": trained_gain(arm_dir / "models" / "model.pt"),  # the model evaluate.json loads
        "eval_dir": str(eval_dir),
        "data": str(data),
    }


def describe(record: dict) -> str:
    """One line on a finished run."""
    return (
        f"kidney {record['kidney_dice']:.3f} tumour {record['tumour_dice']:.3f} "
        f"({record['train_s']:.0f} s training, {record['peak_rss_mib']:.0f} MiB)"
    )


def vote(records: list[dict], out: Path) -> list[dict]:
    """Per seed: VoteEnsemble of its members' saved test predictions (each already through the bundle's
    connected-component step), that step again on the vote, KiTS19 Dice against the references."""
    import torch
    from monai.bundle import ConfigParser
    from monai.transforms import KeepLargestConnectedComponentd, VoteEnsemble

    from shared.data.kits19 import CLASSES, LABEL
    from shared.metrics.kits19 import case_dice, find_predictions
    from shared.metrics.label_volumes import load_label_pair

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    post = [t for t in parser.get("validate#postprocessing")["transforms"] if "ConnectedComponent" in t["_target_"]]
    component = KeepLargestConnectedComponentd(**{k: v for k, v in post[0].items() if not k.startswith("_")})
    ensemble = VoteEnsemble(num_classes=len(CLASSES))
    data = Path(records[0]["data"])
    results = []
    for seed in sorted({r["seed"] for r in records}):
        members = [r for r in records if r["seed"] == seed]
        if len(members) < 2:
            continue
        predictions = [find_predictions(r["eval_dir"]) for r in members]
        rows = []
        for case in sorted(predictions[0]):
            pairs = [load_label_pair(p[case], data / case / LABEL, num_labels=len(CLASSES)) for p in predictions]
            labels = [torch.as_tensor(pred)[None] for pred, _, _ in pairs]
            voted = component({"pred": ensemble(labels)})["pred"][0].numpy()
            rows.append({"case": case, **case_dice(voted, pairs[0][1])})
        results.append(
            {
                "seed": seed,
                "members": [r["arm"] for r in members],
                "cases": rows,
                "kidney_dice": float(np.mean([r["kidney_dice"] for r in rows])),
                "tumour_dice": float(np.mean([r["tumour_dice"] for r in rows])),
            }
        )
    return results


def mean_sd_text(values: list[float]) -> str:
    """``mean +- sd`` of ``values`` to three decimals."""
    return "{:.3f} +- {:.3f}".format(*ablation.mean_sd(values))


def summarize(records: list[dict], votes: list[dict], settings: dict) -> tuple[list[dict], str]:
    """One row per model (mean +- sd over seeds) and the markdown table."""
    rows = []
    for _, runs in ablation.by_arm(records, list(ARMS)):
        first = runs[0]
        rows.append(
            {
                "model": first["model"],
                "parameters": first["parameters"],
                "blocks": f"{first['attention_gates']} / {first['res2net_blocks']} / {first['supervision_heads']}",
                "seeds": len(runs),
                "kidney": mean_sd_text([r["kidney_dice"] for r in runs]),
                "tumour": mean_sd_text([r["tumour_dice"] for r in runs]),
                **ablation.costs(runs),
            }
        )
    if votes:
        rows.append(
            {
                "model": f"{len(votes[0]['members'])}-model vote",
                "parameters": sum(r["parameters"] for r in rows),
                "blocks": "-",
                "seeds": len(votes),
                "kidney": mean_sd_text([v["kidney_dice"] for v in votes]),
                "tumour": mean_sd_text([v["tumour_dice"] for v in votes]),
                "train_s": float("nan"),
                "train_cpu_s": float("nan"),
                "peak_rss_mib": float("nan"),
            }
        )
    lines = [
        f"Held-out phantom cases: {settings['test_cases']}; {settings['iterations']} iterations per model; "
        f"seeds {settings['seeds']}; {settings['parallel']} process(es) at a time, "
        f"{settings['threads']} thread(s) each.",
        "",
    ]
    columns = [("model", False), ("params", True), ("gates / Res2Net / DS heads", False), ("seeds", True)]
    columns += [("kidney Dice", False), ("tumour Dice", False), ("training s (CPU s)", True), ("peak RSS MiB", True)]
    cells = []
    for r in rows:
        trained = ["-", "-"] if r["train_s"] != r["train_s"] else ablation.cost_cells(r)  # the vote trains nothing
        described = [r["model"], f"{r['parameters']:,}", r["blocks"], str(r["seeds"]), r["kidney"], r["tumour"]]
        cells.append(described + trained)
    return rows, "\n".join(lines + ablation.markdown_table(columns, cells)) + "\n"


def make_data(out: Path, cases: int, shape: list[int] | None, mixed_sizes: bool) -> Path:
    """Phantom KiTS19 root for the run (written once, reused when present)."""
    data = out / ("kits19_mixed" if mixed_sizes else "kits19")
    if not (data / "case_00000").is_dir():
        cmd = [
            sys.executable,
            "-m",
            "shared",
            "phantoms",
            "kits19",
            str(data),
            "--num_cases",
            str(cases),
            "--seed",
            "0",
        ]
        if shape:
            cmd += ["--shape", json.dumps(shape)]
        if mixed_sizes:
            cmd += ["--mixed_sizes"]
        subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ablation.add_arguments(parser, list(ARMS), REPO / "outputs" / "msan_ablation", smoke=SMOKE, iterations=1200)
    parser.add_argument("--cases", type=int, default=60, help="phantom cases (10 held out for testing)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="phantom array shape (slices rows cols)")
    parser.add_argument("--mixed_sizes", action="store_true", help="phantoms with small tumours beside large ones")
    args = parser.parse_args()

    if args.arm:
        record = run_arm(args.arm, args.seed, args.data, args.out, args.iterations, args.overrides)
        print(json.dumps(record))  # the last line of stdout: the record run_child reads
        return
    if args.smoke:
        args.arms, args.seeds, args.iterations, args.cases, args.shape = (SMOKE[k] for k in SMOKE)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = make_data(out, args.cases, args.shape, args.mixed_sizes)
    extra = json.loads(args.args_file.read_text()) if args.args_file else {}
    from shared.data.kits19 import make_datalist

    parallel = max(1, args.jobs)
    settings = {
        "arms": args.arms,
        "seeds": args.seeds,
        "iterations": args.iterations,
        "phantom_cases": args.cases,
        "phantom_shape": args.shape,
        "mixed_sizes": args.mixed_sizes,
        "test_cases": [e["case"] for e in make_datalist(data)["test"]],
        "overrides": {**DEMO_OVERRIDES, **extra},
        **ablation.machine_settings(parallel),
    }
    records = ablation.run_arms(
        __file__, args.arms, args.seeds, data, out, args.iterations, extra, parallel, describe, "iterations"
    )
    votes = vote(records, out)
    rows, markdown = summarize(records, votes, settings)
    ablation.write_report(out, settings, rows, records, markdown, started, votes=votes)


if __name__ == "__main__":
    main()
