"""Cost of CS-Att and of M in 3DCE, and of the DeepLesion sample cache; prints measured ratios side by side.

1. Training step time and peak memory of 3DCE with CS-Att vs without (same M), and M = 3 vs M = 7 (with CS-Att).
   Each configuration runs in its own process, so its peak memory (CUDA: ``max_memory_allocated``; CPU: the
   process's peak resident set) is its own.
2. Samples per second of ``LoadDeepLesionSampled`` decoding PNG series vs reading its ``.npz`` cache.

    .venv/bin/python benchmarks/csatt_benchmark.py --size 256 --steps 5 --backbone vgg16

Timings, never assertions: the numbers depend on the machine (and on what else runs on it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def step_cost(num_images: int, attention: bool, size: int, steps: int, backbone: str, device: str) -> dict:
    """Mean seconds per training step (batch of 2, after one warm-up) and peak memory in MiB."""
    import torch

    from shared.networks.three_dce import ThreeDCE

    torch.manual_seed(0)
    model = ThreeDCE(num_images, backbone, contextual=attention, spatial=attention).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-5)
    images = [torch.rand(3 * num_images, size, size, device=device) for _ in range(2)]
    box = torch.tensor([[size * 0.3, size * 0.3, size * 0.4, size * 0.42]], device=device)
    targets = [{"boxes": box, "labels": torch.ones(1, dtype=torch.int64, device=device)} for _ in range(2)]

    def step():
        optimizer.zero_grad()
        sum(model(images, targets).values()).backward()
        optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"seconds_per_step": seconds, "peak_mib": peak}


def loader_throughput(num_samples: int, image_size: int) -> dict:
    """Samples per second from PNGs (no cache) and from a warm ``.npz`` cache, on phantom DeepLesion."""
    import warnings

    from shared.data.deeplesion import make_datalist
    from shared.phantoms.deeplesion import make_phantoms
    from shared.transforms.deeplesion import LoadDeepLesionSampled

    with tempfile.TemporaryDirectory() as tmp:
        root = make_phantoms(Path(tmp) / "dl", num_cases=max(3, num_samples), seed=0, image_size=image_size)
        entries = [e for split in make_datalist(root).values() for e in split][:num_samples]
        rates = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, loader in (
                ("png", LoadDeepLesionSampled(num_images=3)),
                ("cache", LoadDeepLesionSampled(num_images=3, cache_dir=Path(tmp) / "cache")),
            ):
                if name == "cache":
                    for entry in entries:  # fill the cache first
                        loader(entry)
                start = time.perf_counter()
                for entry in entries:
                    loader(entry)
                rates[f"{name}_samples_per_s"] = len(entries) / (time.perf_counter() - start)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--loader_samples", type=int, default=12)
    parser.add_argument("--loader_image_size", type=int, default=512)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one configuration as JSON
    args = parser.parse_args()
    if args.one:
        m, attention = json.loads(args.one)
        print(json.dumps(step_cost(m, attention, args.size, args.steps, args.backbone, args.device)))
        return
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    configs = {"M=3 no attention": (3, False), "M=3 CS-Att": (3, True), "M=7 CS-Att": (7, True)}
    results = {}
    for name, config in configs.items():
        cmd = [sys.executable, __file__, "--one", json.dumps(config), "--size", str(args.size)]
        cmd += ["--steps", str(args.steps), "--backbone", args.backbone, "--device", device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[name] = json.loads(out)
    print(f"3DCE training step, batch 2, {args.size} px, backbone {args.backbone}, {device}, {args.steps} steps:")
    for name, r in results.items():
        print(f"  {name:18s} {r['seconds_per_step']:.3f} s/step   peak {r['peak_mib']:.0f} MiB")
    base, att, m7 = results["M=3 no attention"], results["M=3 CS-Att"], results["M=7 CS-Att"]
    print(
        f"  CS-Att / none (M=3): time x{att['seconds_per_step'] / base['seconds_per_step']:.2f}, "
        f"memory x{att['peak_mib'] / base['peak_mib']:.2f}"
    )
    print(
        f"  M=7 / M=3 (CS-Att): time x{m7['seconds_per_step'] / att['seconds_per_step']:.2f}, "
        f"memory x{m7['peak_mib'] / att['peak_mib']:.2f}"
    )
    rates = loader_throughput(args.loader_samples, args.loader_image_size)
    print(f"loader, M=3 (9 slices), {args.loader_image_size} px phantoms, {args.loader_samples} samples:")
    print(
        f"  PNG decode {rates['png_samples_per_s']:.1f} samples/s, cache {rates['cache_samples_per_s']:.1f} "
        f"samples/s: cache x{rates['cache_samples_per_s'] / rates['png_samples_per_s']:.1f}"
    )


if __name__ == "__main__":
    main()
