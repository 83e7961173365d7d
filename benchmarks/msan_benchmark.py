"""MSAN variants side by side at the paper's input: training step time and peak memory relative to the plain 3D U-Net,
and sliding-window inference throughput, each variant measured in a process of its own.

    PYTHONPATH=. .venv/bin/python benchmarks/msan_benchmark.py            # paper: 512x512x4 slabs, batch 2, 32-256
    PYTHONPATH=. .venv/bin/python benchmarks/msan_benchmark.py --patch 64 64 16 --channels 8 16 32 64   # demo size

Refuses to start while the machine is busy (1-minute load average above ``--max_load``): figures taken beside other
work are not comparable. Each figure is the median of ``--steps`` timed steps after ``--warmup`` untimed ones, with
the spread (min-max). Peak memory is the variant's own process: peak GPU memory on CUDA, on CPU the peak resident
set size minus the resident size before the network was built (the interpreter and torch are the same for all).
Prints measured figures and ratios; nothing here is asserted (see tests/ for correctness).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from monai.inferers import SlidingWindowInferer
from monai.losses import DeepSupervisionLoss, DiceLoss

from shared.networks.msan import MSAN

VARIANTS = {
    "unet": ("3D U-Net", "unet", False),
    "v1": ("MSAN-V1", "v1", False),
    "v2": ("MSAN-V2", "v2", False),
    "v2_ds": ("MSAN-V2+DS", "v2", True),
}


def _rss_mib() -> float:
    """Current resident set size of this process (MiB), from /proc."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(key: str, args) -> dict:
    """Step times, peak memory and sliding-window throughput of one variant, in this process."""
    name, variant, ds = VARIANTS[key]
    device = torch.device(args.device)
    torch.manual_seed(0)
    before = _rss_mib()
    net = MSAN(channels=tuple(args.channels), variant=variant, deep_supervision=ds).to(device).train()
    loss_fn = DeepSupervisionLoss(DiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.rand(args.batch, 1, *args.patch, device=device)
    y = torch.randint(0, 3, (args.batch, 1, *args.patch), device=device).float()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    del opt, x, y
    net.eval()
    volume = torch.rand(1, 1, *args.volume, device=device)
    inferer = SlidingWindowInferer(roi_size=args.patch, sw_batch_size=args.batch, overlap=0.25, mode="gaussian")
    with torch.no_grad():
        inferer(volume, net)  # warm-up
        _sync(device)
        start = time.perf_counter()
        inferer(volume, net)
        _sync(device)
        seconds = time.perf_counter() - start
    return {
        "name": name,
        "params": sum(p.numel() for p in net.parameters()),
        "step_s": times,
        "peak_mib": peak,
        "voxels_per_s": volume.numel() / seconds,
    }


def _row(record: dict, base: dict) -> str:
    step = statistics.median(record["step_s"])
    spread = f"{min(record['step_s']):.2f}-{max(record['step_s']):.2f}"
    ratio = step / statistics.median(base["step_s"])
    return (
        f"| {record['name']} | {record['params']:,} | {step:.2f} ({spread}) | {ratio:.2f}x | "
        f"{record['peak_mib']:,.0f} | {record['peak_mib'] / base['peak_mib']:.2f}x | {record['voxels_per_s']:,.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[512, 512, 4], help="training patch (paper: 4 x 512x512)")
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128, 256], help="the bundle's default")
    parser.add_argument("--batch", type=int, default=2, help="paper: batch size 2")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--volume", type=int, nargs=3, default=[512, 512, 16], help="volume for sliding-window inference"
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max_load", type=float, default=1.0, help="refuse to start above this 1-minute load average")
    parser.add_argument("--json", help="also write the records here")
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)  # child process: one variant
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    load = os.getloadavg()[0]
    if load > args.max_load:
        sys.exit(
            f"msan_benchmark: load average {load:.2f} > {args.max_load}: other work is running; wait until it ends"
        )
    print(
        f"device {args.device}, {torch.get_num_threads()} threads, load {load:.2f}, patch {args.patch}, "
        f"batch {args.batch}, channels {args.channels}, median of {args.steps} steps after {args.warmup}\n"
    )
    records = []
    for key in ["unet", *[k for k in args.variants if k != "unet"]]:  # the U-Net first: the ratios' base
        child = [sys.executable, __file__, *sys.argv[1:], "--one", key]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        records.append(json.loads(out.strip().splitlines()[-1]))
    memory = "peak GPU MiB" if args.device.startswith("cuda") else "peak RSS MiB over start"
    print(f"| variant | params | step s (min-max) | time vs U-Net | {memory} | memory vs U-Net | inference voxels/s |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for record in records:
        print(_row(record, records[0]))
    print(f"\nsliding window over a random {tuple(args.volume)} volume, windows = the patch, overlap 0.25, eval mode")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "load_at_start": load, "records": records}, f, indent=1)


if __name__ == "__main__":
    main()
