"""MSAN's ablation in miniature (paper 003, Table 1): the five ensemble members trained on the same phantom KiTS19 data
with the same budget, several seeds each, then the five-model vote; kidney and tumour Dice on the held-out (test)
cases with the project's KiTS19 scorer.

    PYTHONPATH=. .venv/bin/python benchmarks/msan_ablation.py [--out outputs/msan_ablation]
        [--arms unet v1 v2 v2_ds v1_ds] [--seeds 0 1 2] [--iterations 1200] [--jobs 2] [--cases 60] [--mixed_sizes]
        [--args_file more_overrides.json] [--smoke]

Every arm runs the real bundle (``monai.bundle``'s ``create_workflow``, what ``python -m monai.bundle run`` calls) on
``bundles/msan_kits/configs/train.json``, then ``evaluate.json`` on the test split, in a process of its own, so the
peak RSS reported is that arm's. The trained network is read back from the workflow and named from the blocks it
holds (:func:`shared.networks.msan.architecture`): an arm whose network is not the model it claims stops the run.
The vote takes each seed's five members' saved predictions (the bundle's largest-connected-component step already
applied to each) through MONAI's ``VoteEnsemble`` and the same connected-component step again.

Writes ``<out>/ablation.json`` (settings, every arm and seed, the votes) and ``<out>/ablation.md`` (mean +- sd over
seeds). ``--smoke`` is a tiny run (2 arms, 1 seed, 8 iterations, small phantoms) to check the pipeline in a minute.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
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


def _workflow(config_file, run_id: str, overrides: dict):
    from monai.bundle.scripts import create_workflow

    return create_workflow(
        config_file=config_file,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        run_id=run_id,
        **overrides,
    )


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


def run_arm(arm: str, seed: int, data: Path, arm_dir: Path, iterations: int, extra: dict) -> dict:
    """Train one arm with one seed through the bundle, evaluate it on the test split, return its record."""
    from shared.data.kits19 import make_datalist
    from shared.metrics.kits19 import evaluate_dir
    from shared.networks.msan import architecture

    claimed = ARMS[arm][2]
    overrides = arm_overrides(arm, seed, data, arm_dir, iterations, extra)
    start, cpu_start = time.perf_counter(), time.process_time()
    training = _workflow(str(CONFIGS / "train.json"), "run", overrides)
    training.run()
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    arch = architecture(training.parser.get_parsed_content("network"))
    if arch.name != claimed:
        raise SystemExit(f"arm {arm}: the trained network is {arch.name!r}, not {claimed!r}")

    start = time.perf_counter()
    eval_dir = arm_dir / "eval"
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]
    evaluating = _workflow(configs, "run", {**overrides, "eval_dir": str(eval_dir)})
    evaluating.run()
    eval_s = time.perf_counter() - start
    cases = [entry["case"] for entry in make_datalist(data)["test"]]
    table = evaluate_dir(eval_dir, data, cases)
    return {
        "arm": arm,
        "seed": seed,
        "model": arch.name,
        "parameters": arch.parameters,
        "attention_gates": arch.attention_gates,
        "res2net_blocks": arch.res2net_blocks,
        "supervision_heads": arch.supervision_heads,
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,  # CPU time of all threads: what free cores would need
        "eval_s": eval_s,
        "cases": table.rows,
        "kidney_dice": table.summary["kidney_dice"],
        "tumour_dice": table.summary["tumour_dice"],
        "eval_dir": str(eval_dir),
        "data": str(data),
    }


def spawn_arm(arm: str, seed: int, data: Path, out: Path, budget: dict, threads: int) -> tuple[subprocess.Popen, Path]:
    """Start one arm in its own process; its record goes to ``<out>/<arm>_seed<seed>/record.json``."""
    arm_dir = out / f"{arm}_seed{seed}"
    arm_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--arm", arm, "--seed", str(seed), "--data", str(data), "--out", str(arm_dir)]
    cmd += ["--iterations", str(budget["iterations"]), "--overrides", json.dumps(budget["extra"])]
    with open(arm_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    return proc, arm_dir


def run_arms(jobs: list[tuple[str, int]], data: Path, out: Path, budget: dict, parallel: int) -> list[dict]:
    """Run every (arm, seed), ``parallel`` processes at a time; add each process's wall time and peak RSS."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    pending, running, records = list(jobs), {}, []
    while pending or running:
        while pending and len(running) < parallel:
            arm, seed = pending.pop(0)
            proc, arm_dir = spawn_arm(arm, seed, data, out, budget, threads)
            running[proc.pid] = (arm, seed, arm_dir, time.perf_counter())
            print(f"started {arm} seed {seed} (pid {proc.pid}, log {arm_dir / 'log.txt'})", flush=True)
        pid, status, usage = os.wait4(-1, 0)  # this child's own rusage: its peak RSS alone
        if pid not in running:
            continue
        arm, seed, arm_dir, started = running.pop(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{arm} seed {seed} failed; see {arm_dir / 'log.txt'}")
        record = json.loads((arm_dir / "record.json").read_text())
        record["wall_s"] = time.perf_counter() - started
        record["peak_rss_mib"] = usage.ru_maxrss / 1024  # kilobytes on Linux
        records.append(record)
        print(
            f"done {arm} seed {seed}: kidney {record['kidney_dice']:.3f} tumour {record['tumour_dice']:.3f} "
            f"({record['train_s']:.0f} s training, {record['peak_rss_mib']:.0f} MiB)",
            flush=True,
        )
    return records


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


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"


def summarize(records: list[dict], votes: list[dict], settings: dict) -> tuple[list[dict], str]:
    """One row per model (mean +- sd over seeds) and the markdown table."""
    rows = []
    for arm in [a for a in ARMS if any(r["arm"] == a for r in records)]:
        runs = [r for r in records if r["arm"] == arm]
        first = runs[0]
        rows.append(
            {
                "model": runs[0]["model"],
                "parameters": runs[0]["parameters"],
                "blocks": f"{first['attention_gates']} / {first['res2net_blocks']} / {first['supervision_heads']}",
                "seeds": len(runs),
                "kidney": _mean_sd([r["kidney_dice"] for r in runs]),
                "tumour": _mean_sd([r["tumour_dice"] for r in runs]),
                "train_s": statistics.mean(r["train_s"] for r in runs),
                "train_cpu_s": statistics.mean(r["train_cpu_s"] for r in runs),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            }
        )
    if votes:
        rows.append(
            {
                "model": f"{len(votes[0]['members'])}-model vote",
                "parameters": sum(r["parameters"] for r in rows),
                "blocks": "-",
                "seeds": len(votes),
                "kidney": _mean_sd([v["kidney_dice"] for v in votes]),
                "tumour": _mean_sd([v["tumour_dice"] for v in votes]),
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
        "| model | params | gates / Res2Net / DS heads | seeds | kidney Dice | tumour Dice | training s (CPU s) "
        "| peak RSS MiB |",
        "|---|---:|---|---:|---|---|---:|---:|",
    ]
    for r in rows:
        train = "-" if r["train_s"] != r["train_s"] else f"{r['train_s']:.0f} ({r['train_cpu_s']:.0f})"
        rss = "-" if r["peak_rss_mib"] != r["peak_rss_mib"] else f"{r['peak_rss_mib']:.0f}"
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['blocks']} | {r['seeds']} | {r['kidney']} | {r['tumour']} "
            f"| {train} | {rss} |"
        )
    return rows, "\n".join(lines) + "\n"


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
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "msan_ablation")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=1200, help="training iterations per model")
    parser.add_argument("--cases", type=int, default=60, help="phantom cases (10 held out for testing)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="phantom array shape (slices rows cols)")
    parser.add_argument("--jobs", type=int, default=2, help="arms trained at the same time (threads split evenly)")
    parser.add_argument("--mixed_sizes", action="store_true", help="phantoms with small tumours beside large ones")
    parser.add_argument("--args_file", type=Path, help="JSON of bundle overrides applied over the demo sizes")
    parser.add_argument("--smoke", action="store_true", help="tiny run to check the pipeline: " + json.dumps(SMOKE))
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)  # internal: run one arm in this process
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", type=json.loads, default={}, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.arm:
        record = run_arm(args.arm, args.seed, args.data, args.out, args.iterations, args.overrides)
        (args.out / "record.json").write_text(json.dumps(record, indent=1))
        return
    if args.smoke:
        args.arms, args.seeds, args.iterations, args.cases, args.shape = (SMOKE[k] for k in SMOKE)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    data = make_data(out, args.cases, args.shape, args.mixed_sizes)
    budget = {"iterations": args.iterations, "extra": json.loads(args.args_file.read_text()) if args.args_file else {}}
    from shared.data.kits19 import make_datalist

    parallel = max(1, args.jobs)
    settings = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "arms": args.arms,
        "seeds": args.seeds,
        "iterations": args.iterations,
        "phantom_cases": args.cases,
        "phantom_shape": args.shape,
        "mixed_sizes": args.mixed_sizes,
        "test_cases": [e["case"] for e in make_datalist(data)["test"]],
        "overrides": {**DEMO_OVERRIDES, **budget["extra"]},
        "parallel": parallel,
        "threads": max(1, (os.cpu_count() or 1) // parallel),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "machine": platform.platform(),
    }
    records = run_arms([(a, s) for s in args.seeds for a in args.arms], data, out, budget, parallel)
    votes = vote(records, out)
    rows, markdown = summarize(records, votes, settings)
    settings["total_s"] = time.perf_counter() - started
    markdown += f"\nWhole run: {settings['total_s'] / 60:.1f} min. Command: `{settings['command']}`\n"
    report = {"settings": settings, "table": rows, "runs": records, "votes": votes}
    (out / "ablation.json").write_text(json.dumps(report, indent=1))
    (out / "ablation.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
