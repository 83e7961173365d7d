"""What the bundle ablations share (``benchmarks/csatt_ablation.py``, ``benchmarks/va_ablation.py``,
``benchmarks/msan_ablation.py``): every (arm, seed) trained through the bundle's ``train.json`` and evaluated through
``evaluate.json`` in a process of its own, the network of both checked against the arm's claim, mean +- sd over
seeds, the run's settings, and the report files ``ablation.json`` / ``ablation.md``.

An ablation script runs itself as the child: ``SCRIPT --arm ARM --seed SEED --data DATA --out ARM_DIR --epochs E
--overrides JSON`` (``--iterations I`` where the budget is counted in iterations) must print the arm's record (a JSON
object) as the last line of its stdout (:func:`add_arguments` declares those options).
"""

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.measure import peak_mib, run_child

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]


def add_arguments(
    parser: argparse.ArgumentParser,
    arms: Sequence[str],
    out: Path,
    smoke: dict,
    epochs: int | None = None,
    iterations: int | None = None,
) -> None:
    """The options every ablation takes (arms, seeds, budget, parallel processes, extra overrides, smoke run) and
    the internal ones of the child process that runs one arm. The budget per model is ``--epochs`` or
    ``--iterations``, whichever is given a default here."""
    if (epochs is None) == (iterations is None):
        raise ValueError("give the budget as epochs or as iterations, not both")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--arms", nargs="+", choices=list(arms), default=list(arms))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    unit, default = ("epochs", epochs) if epochs is not None else ("iterations", iterations)
    parser.add_argument(f"--{unit}", type=int, default=default, help=f"training {unit} per model")
    parser.add_argument("--jobs", type=int, default=2, help="arms trained at the same time (threads split evenly)")
    parser.add_argument("--args_file", type=Path, help="JSON of bundle overrides applied over the demo sizes")
    parser.add_argument("--smoke", action="store_true", help="tiny run to check the pipeline: " + json.dumps(smoke))
    parser.add_argument("--arm", choices=list(arms), help=argparse.SUPPRESS)  # internal: run one arm in this process
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--overrides", type=json.loads, default={}, help=argparse.SUPPRESS)


def written_once(folder: Path, settings: dict) -> bool:
    """Whether ``folder`` holds what ``settings`` (JSON-able) make, written before: True if its ``settings.json`` says
    so, False if the folder is new (the settings are recorded); stops the run if it was made with other settings,
    rather than reuse it silently."""
    record = folder / "settings.json"
    if record.is_file():
        before = json.loads(record.read_text())
        if before != json.loads(json.dumps(settings)):
            raise SystemExit(f"{folder} was made with {before}, not {settings}: give another --out")
        return True
    folder.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings))
    return False


def phantoms(
    data: Path, dataset: str, cases: int, done_marker: str, *options: str, seed: int = 0, context: bool = True
) -> Path:
    """``python -m shared phantoms <dataset> <data>`` (``cases`` cases drawn with ``seed``, ``options``, with
    ``--context true`` when ``context``) unless ``data / done_marker`` shows it was written before with the same
    command (:func:`written_once`); returns ``data``."""
    cmd = [sys.executable, "-m", "shared", "phantoms", dataset, str(data), "--num_cases", str(cases)]
    cmd += ["--seed", str(seed), *options, *(["--context", "true"] if context else [])]
    if not written_once(data, {"phantoms": cmd[2:]}) or not (data / done_marker).is_file():
        subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    return data


def workflow(configs: Path, config_file: str | list[str], overrides: dict):
    """The bundle workflow of ``config_file`` (what ``python -m monai.bundle run`` builds), with ``overrides``."""
    from monai.bundle.scripts import create_workflow

    return create_workflow(
        config_file=config_file,
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        run_id="run",
        **overrides,
    )


def evaluation_workflow(configs: Path, overrides: dict):
    """The bundle workflow of ``train.json`` + ``evaluate.json`` (what ``monai.bundle run evaluating`` builds)."""
    return workflow(configs, [str(configs / "train.json"), str(configs / "evaluate.json")], overrides)


def train_and_evaluate(
    configs: Path,
    overrides: dict,
    eval_overrides: dict,
    check: Callable[[object, str], dict],
    name: str,
    watch: Callable[[str, object, object], contextlib.AbstractContextManager[dict]] | None = None,
    init: Callable[[object], object] | None = None,
) -> tuple[dict, dict]:
    """Train with ``train.json`` and ``overrides``, then evaluate with ``evaluate.json`` and ``eval_overrides`` on top;
    ``check(network, "trainer's" | "evaluated")`` reads each network before it runs (and stops a mislabelled arm).
    ``watch(phase, network, engine)``, if given, is entered around training (``"training"``, the trainer) and
    around evaluation (``"evaluation"``, engine None) and yields a dict it fills while they run; the two dicts join
    what ``check`` read under ``"training_watch"`` and ``"evaluation_watch"``. ``init(network)``, if given,
    re-initialises the trainer's network in place before training (e.g. :func:`seed_each_module`).
    Returns what ``check`` read of the evaluated network (and what was watched) and the costs (wall and CPU seconds,
    this process's peak RSS: the arm runs alone in it)."""
    watch = watch or (lambda phase, network, engine: contextlib.nullcontext({}))
    start, cpu_start = time.perf_counter(), time.process_time()
    training = workflow(configs, str(configs / "train.json"), overrides)
    trainer = training.parser.get_parsed_content("train#trainer")
    trained = check(trainer.network, "trainer's")
    print(f"{name}: {trained}", flush=True)
    if init is not None:
        init(trainer.network)
    with watch("training", trainer.network, trainer) as training_watch:
        training.run()
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start

    start = time.perf_counter()
    evaluating = evaluation_workflow(configs, {**overrides, **eval_overrides})
    network = evaluating.parser.get_parsed_content("network")
    evaluated = check(network, "evaluated")
    with watch("evaluation", network, None) as evaluation_watch:
        evaluating.run()
    costs = {
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,  # CPU time of all threads: what free cores would need
        "eval_s": time.perf_counter() - start,
        "peak_rss_mib": peak_mib("cpu"),
    }
    if training_watch or evaluation_watch:
        evaluated = {**evaluated, "training_watch": training_watch, "evaluation_watch": evaluation_watch}
    return evaluated, costs


def run_arms(
    script: str,
    arms: Sequence[str],
    seeds: Sequence[int],
    data: Path,
    out: Path,
    budget: int,
    extra: dict,
    parallel: int,
    describe: Callable[[dict], str],
    unit: str = "epochs",
) -> list[dict]:
    """Run ``script``'s child for every arm and seed in a process of its own, ``parallel`` at a time with the cores
    split between them, started arm by arm in the order of ``arms`` (give the slowest first: the others fill in
    beside it), ``budget`` given as ``--<unit>``; print ``describe(record)`` as each ends; return the records by arm
    (in the order of ``arms``) and seed."""
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    def one(arm: str, seed: int) -> dict:
        arm_dir = out / f"{arm}_seed{seed}"
        cmd = [sys.executable, script, "--arm", arm, "--seed", str(seed), "--data", str(data), "--out", str(arm_dir)]
        return run_child([*cmd, f"--{unit}", str(budget), "--overrides", json.dumps(extra)], env)

    records = []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for done in as_completed([pool.submit(one, arm, seed) for arm in arms for seed in seeds]):
            record = done.result()
            records.append(record)
            print(f"done {record['arm']} seed {record['seed']}: {describe(record)}", flush=True)
    return sorted(records, key=lambda r: (list(arms).index(r["arm"]), r["seed"]))


def seed_each_module(model: "torch.nn.Module", seed: int) -> "torch.nn.Module":
    """Re-initialise every submodule of ``model`` that has ``reset_parameters`` from a generator seeded by ``seed``
    and the submodule's qualified name, so that the arms of an ablation start the modules they share (same name, same
    shape) from the same weights at the same seed, whatever modules an arm builds before them. Returns ``model``."""
    import torch

    for name, module in model.named_modules():
        if hasattr(module, "reset_parameters") and next(module.parameters(recurse=False), None) is not None:
            torch.manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            module.reset_parameters()
    return model


def by_arm(records: list[dict], arms: Sequence[str]) -> list[tuple[str, list[dict]]]:
    """``(arm, its records)`` for each of ``arms`` that has records, in the order of ``arms``."""
    return [(arm, runs) for arm in arms if (runs := [r for r in records if r["arm"] == arm])]


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def costs(runs: list[dict]) -> dict:
    """Mean training wall and CPU seconds and the largest peak RSS of an arm's runs."""
    return {
        "train_s": statistics.mean(r["train_s"] for r in runs),
        "train_cpu_s": statistics.mean(r["train_cpu_s"] for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
    }


def cost_cells(row: dict) -> list[str]:
    """The last two cells of a table row: training s (CPU s) and peak RSS MiB."""
    return [f"{row['train_s']:.0f} ({row['train_cpu_s']:.0f})", f"{row['peak_rss_mib']:.0f}"]


def markdown_table(columns: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a markdown table: ``columns`` are (title, right-aligned), ``rows`` the cells as text."""
    lines = ["| " + " | ".join(title for title, _ in columns) + " |"]
    lines.append("|" + "".join("---:|" if right else "---|" for _, right in columns))
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def source_commit() -> str | None:
    """The commit of the code a run runs (``git rev-parse HEAD`` in the repository; None outside a git checkout),
    with ``+changes`` if tracked files differ from it."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        return None
    changed = subprocess.run([*git, "diff", "--quiet", "HEAD"]).returncode != 0
    return head.stdout.strip() + ("+changes" if changed else "")


def machine_settings(parallel: int) -> dict:
    """The command line and commit, the processes and threads, and the machine of a run."""
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": source_commit(),
        "parallel": parallel,
        "threads": max(1, (os.cpu_count() or 1) // parallel),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "machine": platform.platform(),
    }


def write_report(
    out: Path, settings: dict, rows: list[dict], records: list[dict], markdown: str, started: float, **more: object
):
    """Add the whole run's time (since ``started``, a ``time.perf_counter()``) to ``settings`` and the table, write
    ``ablation.json`` (settings, table, every run, then ``more``'s entries) and ``ablation.md`` in ``out``, and print
    the table."""
    settings["total_s"] = time.perf_counter() - started
    markdown += f"\nWhole run: {settings['total_s'] / 60:.1f} min. Command: `{settings['command']}`\n"
    report = {"settings": settings, "table": rows, "runs": records, **more}
    (out / "ablation.json").write_text(json.dumps(report, indent=1))
    (out / "ablation.md").write_text(markdown)
    print(markdown)
