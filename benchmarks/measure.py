"""What every benchmark here measures with: a quiet-machine check, medians with their spread, peak memory of a
process of its own, and the rows of the suite's table (``python -m benchmarks``).

A row is one measured ratio beside its goal (what the issues ask for) and its limit (the best the ratio can be in
principle, e.g. the ratio of backbone images a cache saves): ``{"what", "ratio", "spread", "goal", "limit", "note"}``.
A benchmark run with ``--rows FILE`` writes its rows there as JSON; the suite collects them.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def require_quiet(name: str, max_load: float) -> float:
    """Stop with one line when the 1-minute load average is above MAX_LOAD (other work would skew the figures)."""
    load = os.getloadavg()[0]
    if load > max_load:
        sys.exit(f"{name}: load average {load:.2f} > {max_load}: other work is running; wait until it ends")
    return load


def sync(device: torch.device | str) -> None:
    """Wait for queued CUDA work, so a timer measures it (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def repeat_timed(fn: Callable[[], object], repeats: int, warmup: int = 1, device: str = "cpu") -> list[float]:
    """Seconds of each of REPEATS calls of FN, after WARMUP untimed calls (first-call set-up stays out)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, min, max) of VALUES."""
    return statistics.median(values), min(values), max(values)


def rss_mib() -> float:
    """Current resident set size of this process (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib(device: torch.device | str, rss_before: float = 0.0) -> float:
    """Peak memory of this process so far: CUDA max allocated, or on CPU the peak RSS minus RSS_BEFORE (MiB)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before  # KiB on Linux


def run_child(cmd: Sequence[str], env: dict | None = None) -> dict:
    """Run CMD (a measurement in a fresh process: its peak memory is its own); return its last stdout line as JSON."""
    merged = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    result = subprocess.run(list(cmd), cwd=REPO, env=merged, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"measurement failed: {' '.join(cmd)}\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def row(what: str, values: Sequence[float], goal: str, limit: str, note: str = "") -> dict:
    """One line of the suite's table: the median ratio of VALUES (repeated measurements) and its min-max spread."""
    mid, low, high = median_spread(values)
    return {"what": what, "ratio": mid, "spread": [low, high], "goal": goal, "limit": limit, "note": note}


def write_rows(path: str | Path | None, rows: list[dict]) -> None:
    """Write ROWS as JSON to PATH (``--rows``) when given."""
    if path:
        Path(path).write_text(json.dumps(rows, indent=1))


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Every a / b of repeated measurements A and B taken apart (in other processes): a ratio's median and spread."""
    return [a / b for a in numerators for b in denominators]


def table(rows: Sequence[dict]) -> str:
    """ROWS as a markdown table: what | measured ratio (median, min-max) | goal | limit | note."""
    lines = ["| what | measured ratio (median, min-max) | goal | limit | note |", "|---|---|---|---|---|"]
    for r in rows:
        low, high = r["spread"]
        ratio = f"{r['ratio']:.3g} ({low:.3g}-{high:.3g})"
        lines.append(f"| {r['what']} | {ratio} | {r['goal']} | {r['limit']} | {r['note']} |")
    return "\n".join(lines)
