"""MSAN variants against the plain 3D U-Net at the paper's input: training step time and peak memory ratios.

    PYTHONPATH=. .venv/bin/python benchmarks/msan_benchmark.py             # paper: 512x512x4 slabs, batch 2, 32-256
    PYTHONPATH=. .venv/bin/python benchmarks/msan_benchmark.py --quick     # tiny sizes, a few seconds
    PYTHONPATH=. .venv/bin/python benchmarks/msan_benchmark.py --rows rows.json   # also the suite's table rows

Refuses to start above the 1-minute load average ``--max_load``. Each variant (3D U-Net, MSAN-V1, MSAN-V2,
MSAN-V2+DS) runs Adam + Dice training steps on random data in a fresh process of its own: ``--warmup`` untimed
steps, then ``--steps`` timed ones; its peak memory (CUDA max allocated; on CPU the peak resident set minus the
resident size before the network was built) is that process's own. Rows: each variant's step time and peak memory
over the U-Net's (goal from issue 10: V2 <= 1.3x in both), the time ratio's spread over every pair of timed steps.
Whole-volume (sliding-window) inference cost is the suite's scaling benchmark.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from monai.losses import DeepSupervisionLoss, DiceLoss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import measure  # noqa: E402
from shared.networks.msan import MSAN  # noqa: E402

VARIANTS = {
    "unet": ("3D U-Net", "unet", False),
    "v1": ("MSAN-V1", "v1", False),
    "v2": ("MSAN-V2", "v2", False),
    "v2_ds": ("MSAN-V2+DS", "v2", True),
}
GOALS = {"v2": "<= 1.3 (issue 10)"}
QUICK = {"patch": [32, 32, 4], "channels": [4, 8, 16, 32], "steps": 2}


def step_cost(key: str, args) -> dict:
    """Timed training steps and peak memory of one variant, in this (fresh) process."""
    name, variant, ds = VARIANTS[key]
    torch.manual_seed(0)
    before = measure.rss_mib()
    net = MSAN(channels=tuple(args.channels), variant=variant, deep_supervision=ds).to(args.device).train()
    loss_fn = DeepSupervisionLoss(DiceLoss(to_onehot_y=True, softmax=True, include_background=True, batch=True))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.rand(args.batch, 1, *args.patch, device=args.device)
    y = torch.randint(0, 3, (args.batch, 1, *args.patch), device=args.device).float()

    def step() -> None:
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()

    step_s = measure.repeat_timed(step, args.steps, args.warmup, args.device)
    return {"name": name, "step_s": step_s, "peak_mib": measure.peak_mib(args.device, before)}


def rows(records: dict[str, dict], args) -> list[dict]:
    """Each variant's step time and peak memory over the U-Net's."""
    base = records["unet"]
    memory = "peak GPU MiB" if torch.device(args.device).type == "cuda" else "peak RSS MiB over start"
    setting = f"{'x'.join(map(str, args.patch))}, batch {args.batch}, channels {args.channels}, {args.device}"
    out = []
    for key, record in records.items():
        if key == "unet":
            continue
        what, goal = f"{record['name']} / 3D U-Net", GOALS.get(key, "report (no goal set)")
        mid, base_mid = measure.median_spread(record["step_s"])[0], measure.median_spread(base["step_s"])[0]
        note = f"{mid:.3g} vs {base_mid:.3g} s per step ({setting})"
        out.append(
            measure.row(
                f"{what}: training step time",
                measure.ratios(record["step_s"], base["step_s"]),
                goal,
                "1.0 (no extra cost)",
                note,
            )
        )
        note = f"{record['peak_mib']:.0f} vs {base['peak_mib']:.0f} {memory}, one process each"
        out.append(
            measure.row(
                f"{what}: training peak memory",
                [record["peak_mib"] / base["peak_mib"]],
                goal,
                "1.0 (no extra cost)",
                note,
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[512, 512, 4], help="training patch (paper: 4 x 512x512)")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 256], help="the bundle's default")
    parser.add_argument("--batch", type=int, default=2, help="paper: batch size 2")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps first")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max_load", type=float, default=1.0, help="refuse to start above this 1-minute load average")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes for a test run: {QUICK}")
    parser.add_argument("--rows", help="write the table rows here (JSON)")
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)  # child process: one variant
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    if args.one:
        print(json.dumps(step_cost(args.one, args)))
        return
    load = measure.require_quiet("msan_benchmark", args.max_load)
    print(f"msan_benchmark: load {load:.2f}, device {args.device}, {torch.get_num_threads()} threads")
    records = {}
    for key in ["unet", *[k for k in args.variants if k != "unet"]]:  # the U-Net first: the ratios' base
        records[key] = measure.run_child([sys.executable, __file__, *sys.argv[1:], "--one", key])
    table_rows = rows(records, args)
    print(measure.table(table_rows))
    measure.write_rows(args.rows, table_rows)


if __name__ == "__main__":
    main()
