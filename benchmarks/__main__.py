"""The benchmark suite: every benchmark of the three bundles, run one after another, and one table of their ratios.

    python -m benchmarks [--quick] [--max_load 1.0] [--out outputs/benchmarks] [--only NAME ...]
    bash scripts/bench.sh ...            # the same with .venv's Python

Refuses to start above the 1-minute load average MAX_LOAD. Each benchmark (benchmarks/NAME.py) runs in a process of
its own with ``--rows``, ``--max_load`` (and ``--quick``), its output to OUT/NAME.log (shown when it fails). Figures
taken under load are not reported: after each benchmark the CPU time other processes took while it ran (the machine's
busy time less the suite's own) must stay within MAX_LOAD cores, else the suite says so and stops; then it waits (up
to ``--settle`` s) for the 1-minute load average, which the benchmark's own threads raised, to fall back to MAX_LOAD
before the next one, and stops if it does not. Prints one markdown table (what | measured ratio (median, min-max) |
goal | limit | note) with the load at start and end and the device, and writes it to OUT/table.md, the rows (each
with its benchmark) to OUT/rows.json and the scaling plot to OUT/scaling.png.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import measure

BENCHMARKS = ("msan_benchmark", "va_benchmark", "csatt_benchmark", "scaling", "data_loading", "onnx_benchmark")


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its finished children) so far."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    machine = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    own = sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )
    return machine, own


def device_name() -> str:
    """The GPU the benchmarks use, or the CPU's model and torch's thread count."""
    import torch

    if torch.cuda.is_available():
        return f"CUDA {torch.cuda.get_device_name(0)}"
    with open("/proc/cpuinfo") as f:
        model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown CPU")
    return f"CPU {model}, {torch.get_num_threads()} threads"


def run_benchmark(name: str, args, rows_path: Path, log_path: Path) -> float:
    """Run benchmarks/NAME.py (its output to LOG_PATH), stopping the suite when it fails; return the cores other work
    used meanwhile."""
    cmd = [sys.executable, str(measure.REPO / "benchmarks" / f"{name}.py"), "--rows", str(rows_path)]
    cmd += ["--max_load", str(args.max_load), *(["--quick"] if args.quick else [])]
    cmd += ["--out", str(Path(args.out) / "scaling.png")] if name == "scaling" else []  # the plot beside the table
    print(f"== {name}: {' '.join(cmd[1:])} (output: {log_path})", flush=True)
    env = {**os.environ, "PYTHONPATH": str(measure.REPO)}
    start, (machine, own) = time.monotonic(), cpu_seconds()
    with open(log_path, "w") as log:
        returncode = subprocess.run(cmd, cwd=measure.REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall, (machine_after, own_after) = time.monotonic() - start, cpu_seconds()
    if returncode != 0:
        print("".join(log_path.read_text().splitlines(keepends=True)[-20:]), file=sys.stderr)
        sys.exit(f"benchmarks: {name} failed (exit {returncode}), output in {log_path}; no table written")
    return max(0.0, (machine_after - machine) - (own_after - own)) / wall


def settle(after: str, max_load: float, wait_s: float) -> None:
    """Wait until the 1-minute load average is back at MAX_LOAD; stop the suite when it is not within WAIT_S."""
    deadline = time.monotonic() + wait_s
    while (load := os.getloadavg()[0]) > max_load:
        if time.monotonic() > deadline:
            sys.exit(f"benchmarks: load average {load:.2f} > {max_load} {wait_s:.0f} s after {after}: other work runs")
        time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a test run; figures mean nothing)")
    parser.add_argument("--max_load", type=float, default=1.0, help="refuse to run above this 1-minute load average")
    parser.add_argument("--out", default="outputs/benchmarks", help="folder for table.md, rows.json and the logs")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), metavar="NAME")
    parser.add_argument("--settle", type=float, default=180, help="longest wait (s) for the load between benchmarks")
    args = parser.parse_args()
    load_start = measure.require_quiet("benchmarks", args.max_load)
    names = [name for name in BENCHMARKS if name in args.only]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, previous = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if not (measure.REPO / "benchmarks" / f"{name}.py").is_file():
                print(f"== {name}: skipped, benchmarks/{name}.py does not exist yet", flush=True)
                continue
            if previous:
                settle(previous, args.max_load, args.settle)
            previous = name
            other = run_benchmark(name, args, Path(tmp) / f"{name}.json", out / f"{name}.log")
            if other > args.max_load:
                sys.exit(
                    f"benchmarks: other work used {other:.2f} cores while {name} ran (> {args.max_load}): its figures "
                    "were taken under load; stopping, no table written"
                )
            rows += [{"benchmark": name, **r} for r in json.loads((Path(tmp) / f"{name}.json").read_text())]
    load_end = os.getloadavg()[0]
    device = device_name()
    text = (
        f"{measure.table(rows)}\n\n"
        f"Device: {device}. 1-minute load average at start {load_start:.2f}, at end {load_end:.2f} (the end includes "
        f"the benchmarks' own threads); limit {args.max_load}.{' Quick sizes: not figures.' if args.quick else ''}\n"
    )
    print(f"\n{text}")
    (out / "table.md").write_text(text)
    summary = {"device": device, "load_start": load_start, "load_end": load_end, "max_load": args.max_load}
    (out / "rows.json").write_text(json.dumps({**summary, "quick": args.quick, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
