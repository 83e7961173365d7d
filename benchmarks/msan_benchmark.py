"""MSAN variants side by side: training speed and peak memory relative to the plain 3D U-Net, sliding-window inference
throughput on a full phantom volume, and the data-loading share of a cached training step.

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python benchmarks/msan_benchmark.py [--patch 64 64 16] [--steps 5]

Prints measured figures and ratios; nothing here is asserted (see tests/ for correctness).
"""

import argparse
import gc
import resource
import tempfile
import time
from pathlib import Path

import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import SlidingWindowInferer
from monai.losses import DeepSupervisionLoss, DiceLoss
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    Orientationd,
    RandCropByLabelClassesd,
    ScaleIntensityRanged,
)

from shared.data.kits19 import make_datalist
from shared.networks.msan import MSAN
from shared.phantoms.kits19 import make_phantoms

VARIANTS = [("3D U-Net", "unet", False), ("MSAN-V1", "v1", False), ("MSAN-V1+DS", "v1", True)]
VARIANTS += [("MSAN-V2", "v2", False), ("MSAN-V2+DS", "v2", True)]


def _peak_memory(device: torch.device) -> float:
    """Peak GPU memory (MiB) since the last reset, or the process's peak RSS (MiB) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_speed(variant: str, ds: bool, args, device: torch.device) -> tuple[float, float, int]:
    """(iterations/s, peak memory MiB, parameters) of Adam + Dice training steps on random patches."""
    torch.manual_seed(0)
    net = MSAN(channels=tuple(args.channels), variant=variant, deep_supervision=ds).to(device).train()
    loss_fn = DeepSupervisionLoss(DiceLoss(to_onehot_y=True, softmax=True, include_background=False))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.rand(args.batch, 1, *args.patch, device=device)
    y = torch.randint(0, 3, (args.batch, 1, *args.patch), device=device).float()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rate = args.steps / (time.perf_counter() - start)
    return rate, _peak_memory(device), sum(p.numel() for p in net.parameters())


def inference_throughput(volume: torch.Tensor, args, device: torch.device, amp: bool) -> float:
    """Voxels/s of sliding-window inference of MSAN-V2 over one full volume."""
    net = MSAN(channels=tuple(args.channels), variant="v2").to(device).eval()
    inferer = SlidingWindowInferer(roi_size=args.patch, sw_batch_size=4, overlap=0.25, mode="gaussian")
    with torch.no_grad(), torch.autocast(device.type, enabled=amp):
        inferer(volume.to(device), net)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        inferer(volume.to(device), net)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return volume[0, 0].numel() / (time.perf_counter() - start)


def loading_share(root: Path, args, device: torch.device) -> tuple[float, float]:
    """(seconds waiting for a cached batch, seconds of the training step) per iteration, averaged over one epoch."""
    keys = ["image", "label"]
    transform = Compose(
        [
            LoadImaged(keys),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS"),
            ScaleIntensityRanged("image", -200, 500, 0.0, 1.0, clip=True),
            RandCropByLabelClassesd(
                keys, "label", args.patch, ratios=[1, 1, 1], num_classes=3, num_samples=2, warn=False
            ),
        ]
    )
    data = CacheDataset(make_datalist(root)["training"], transform, cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(data, batch_size=1, shuffle=True, num_workers=0)
    net = MSAN(channels=tuple(args.channels), variant="v1").to(device).train()
    loss_fn = DiceLoss(to_onehot_y=True, softmax=True, include_background=False)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    wait = step = 0.0
    count = 0
    tick = time.perf_counter()
    for batch in loader:
        got = time.perf_counter()
        opt.zero_grad()
        loss_fn(net(batch["image"].to(device)), batch["label"].to(device)).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        done = time.perf_counter()
        wait, step, count = wait + got - tick, step + done - got, count + 1
        tick = done
    return wait / count, step / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 16])
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--volume", type=int, nargs=3, default=[48, 96, 96], help="phantom shape (slices, rows, cols)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch threads {torch.get_num_threads()}, patch {args.patch}, channels {args.channels}")

    print("\ntraining, relative to the 3D U-Net at the same patch size")
    print(f"{'variant':<12} {'params':>9} {'it/s':>7} {'speed':>6} {'peak MiB':>9} {'memory':>7}")
    base = None
    for name, variant, ds in VARIANTS:
        gc.collect()
        rate, peak, params = train_speed(variant, ds, args, device)
        base = base or (rate, peak)
        print(f"{name:<12} {params:>9} {rate:>7.2f} {rate / base[0]:>6.2f} {peak:>9.0f} {peak / base[1]:>7.2f}")
    if device.type == "cpu":
        print("(CPU peak memory is the process's peak RSS so far, so it only grows down the table)")

    with tempfile.TemporaryDirectory() as tmp:
        root = make_phantoms(Path(tmp) / "kits19", num_cases=6, shape=tuple(args.volume))
        image = LoadImaged("image", ensure_channel_first=True)({"image": str(root / "case_00000" / "imaging.nii.gz")})
        volume = image["image"][None].float()
        print(f"\nsliding-window inference, MSAN-V2, full phantom volume {tuple(volume.shape[2:])}")
        for amp in [False, True] if device.type == "cuda" else [False]:
            print(f"  amp={amp}: {inference_throughput(volume, args, device, amp):,.0f} voxels/s")
        wait, step = loading_share(root, args, device)
        print(f"\ncached data loading: {wait * 1000:.1f} ms waiting per step, {step * 1000:.1f} ms computing")
        print(f"  loading share of a training step: {wait / (wait + step):.1%}")


if __name__ == "__main__":
    main()
