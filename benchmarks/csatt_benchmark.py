"""CS-Att speed (issue 12): CS-Att vs plain 3DCE, the paper's 9 vs 21 slices, and the DeepLesion sample cache.

1. Training step (batch 2) of 3DCE + CS-Att over plain 3DCE at M = 3: time and peak-memory ratios.
2. The paper's comparison, 9 slices with CS-Att vs 21 without: M = 3 CS-Att over M = 7 3DCE, time and memory.
3. ``LoadDeepLesionSampled`` decoding PNG series over reading its ``.npz`` cache, per sample (goal >= 10x), and the
   cache read of one batch (2 samples) as a share of an M = 3 CS-Att training step (goal < 10 %).

Each network configuration runs in a fresh process: ``--warmup`` untimed steps, then ``--steps`` timed ones; its peak
memory (CUDA max allocated; on CPU the peak resident set minus the resident size before the model was built) is that
process's own. The loader is timed after one untimed pass (which also fills the cache), ``--repeats`` passes each.
Ratios are the median over every pair of timed figures, with their min-max. Refuses to start above the 1-minute load
average ``--max_load``; ``--rows`` writes the suite's rows.

    PYTHONPATH=. .venv/bin/python benchmarks/csatt_benchmark.py --size 128 --steps 3 --backbone vgg16
    PYTHONPATH=. .venv/bin/python benchmarks/csatt_benchmark.py --quick      # tiny sizes, a few seconds
"""

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import measure  # noqa: E402

CONFIGS = {"3dce_m3": (3, False), "csatt_m3": (3, True), "3dce_m7": (7, False)}  # (M, CS-Att)
BATCH = 2
QUICK = {"size": 64, "steps": 2, "backbone": "tiny", "loader_samples": 3, "loader_image_size": 64, "repeats": 2}


def step_cost(key: str, args) -> dict:
    """Timed training steps and peak memory of one configuration, in this (fresh) process."""
    from shared.networks.three_dce import ThreeDCE

    num_images, attention = CONFIGS[key]
    size, device = args.size, args.device
    torch.manual_seed(0)
    before = measure.rss_mib()
    model = ThreeDCE(num_images, args.backbone, contextual=attention, spatial=attention).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-5)
    images = [torch.rand(3 * num_images, size, size, device=device) for _ in range(BATCH)]
    box = torch.tensor([[size * 0.3, size * 0.3, size * 0.4, size * 0.42]], device=device)
    targets = [{"boxes": box, "labels": torch.ones(1, dtype=torch.int64, device=device)} for _ in range(BATCH)]

    def step() -> None:
        optimizer.zero_grad()
        sum(model(images, targets).values()).backward()
        optimizer.step()

    step_s = measure.repeat_timed(step, args.steps, args.warmup, device)
    return {"step_s": step_s, "peak_mib": measure.peak_mib(device, before)}


def loader_cost(args) -> dict:
    """Seconds per sample of M = 3 phantom DeepLesion samples: decoding the PNGs, and reading the warm cache."""
    from shared.data.deeplesion import make_datalist
    from shared.phantoms.deeplesion import make_phantoms
    from shared.transforms.deeplesion import LoadDeepLesionSampled

    n = args.loader_samples
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = make_phantoms(Path(tmp) / "dl", num_cases=max(3, n), seed=0, image_size=args.loader_image_size)
        entries = [e for split in make_datalist(root).values() for e in split][:n]
        seconds = {}
        for name, loader in (
            ("png", LoadDeepLesionSampled(num_images=3)),
            ("cache", LoadDeepLesionSampled(num_images=3, cache_dir=Path(tmp) / "cache")),
        ):  # the untimed pass fills the cache

            def load_all(loader=loader) -> None:
                for entry in entries:
                    loader(entry)

            seconds[name] = [s / len(entries) for s in measure.repeat_timed(load_all, args.repeats)]
    return seconds


def rows(records: dict[str, dict], loader: dict, args) -> list[dict]:
    """The suite's rows: CS-Att's cost at M = 3, 9 slices with CS-Att vs 21 without, the cache's gain and share."""
    setting = f"batch {BATCH}, {args.size} px, {args.backbone}, {args.device}"
    median = {key: measure.median_spread(r["step_s"])[0] for key, r in records.items()}
    memory = {key: r["peak_mib"] for key, r in records.items()}
    out = []
    for what, (a, b), goal, limit in (
        ("3DCE + CS-Att / 3DCE, M = 3", ("csatt_m3", "3dce_m3"), "report (no goal set)", "1.0 (no extra cost)"),
        (
            "9 slices with CS-Att / 21 without (M = 3 CS-Att / M = 7 3DCE)",
            ("csatt_m3", "3dce_m7"),
            "< 1 (paper: less compute)",
            "3/7 = 0.43 (backbone images)",
        ),
    ):
        out.append(
            measure.row(
                f"{what}: training step time",
                measure.ratios(records[a]["step_s"], records[b]["step_s"]),
                goal,
                limit,
                f"{median[a]:.3g} vs {median[b]:.3g} s per step ({setting})",
            )
        )
        out.append(
            measure.row(
                f"{what}: training peak memory",
                [memory[a] / memory[b]],
                goal,
                limit,
                f"{memory[a]:.0f} vs {memory[b]:.0f} MiB, one process each",
            )
        )
    cache_s, png_s = measure.median_spread(loader["cache"])[0], measure.median_spread(loader["png"])[0]
    out.append(
        measure.row(
            "DeepLesion sample: PNG decode / cache read time",
            measure.ratios(loader["png"], loader["cache"]),
            ">= 10 (issue 12)",
            "none (the cache skips decoding)",
            f"{png_s * 1e3:.3g} vs {cache_s * 1e3:.3g} ms per sample (M = 3, {args.loader_image_size} px phantoms)",
        )
    )
    out.append(
        measure.row(
            "DeepLesion cache read of a batch / M = 3 CS-Att training step",
            measure.ratios([BATCH * s for s in loader["cache"]], records["csatt_m3"]["step_s"]),
            "< 0.1 (issue 12)",
            "0 (data loading off the critical path)",
            f"{BATCH} samples read in one process, no workers ({setting})",
        )
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels of the training steps")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loader_samples", type=int, default=12)
    parser.add_argument("--loader_image_size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="timed loader passes")
    parser.add_argument("--max_load", type=float, default=1.0, help="refuse to start above this 1-minute load average")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes for a test run: {QUICK}")
    parser.add_argument("--rows", help="write the table rows here (JSON)")
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)  # child process: one configuration
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    if args.one:
        print(json.dumps(step_cost(args.one, args)))
        return
    load = measure.require_quiet("csatt_benchmark", args.max_load)
    print(f"csatt_benchmark: load {load:.2f}, device {args.device}, {torch.get_num_threads()} threads")
    records = {key: measure.run_child([sys.executable, __file__, *sys.argv[1:], "--one", key]) for key in CONFIGS}
    table_rows = rows(records, loader_cost(args), args)
    print(measure.table(table_rows))
    measure.write_rows(args.rows, table_rows)


if __name__ == "__main__":
    main()
