"""VA Mask R-CNN benchmarks: printed ratios, never asserted in tests.

1. Whole-volume inference with vs without the backbone feature cache (VolumeMaskInferer): same outputs, time ratio
   (expected near the bag size N: without the cache every bag runs the backbone on its N images).
2. VA Mask R-CNN vs the baseline 2.5D Mask R-CNN (attention=False) over the same volume, both through VolumeMaskInferer:
   time and peak-memory ratios (goal < 1.3x). Peak memory: CUDA max allocated, or on CPU the peak RSS increase of
   a fresh process (each measurement runs in its own subprocess).
3. Training pipeline slices/s: bags read from the memory-mapped volume cache vs preprocessing the NIfTI each time.

    python benchmarks/va_benchmark.py --size 128 --bag_size 9 --depth 24 --backbone resnet50
    python benchmarks/va_benchmark.py --device cuda --size 1024 --bag_size 9 --depth 64   # paper scale, on a GPU
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.engines.inferers.volume_mask import VolumeMaskInferer  # noqa: E402
from shared.networks.va_rcnn import build_va_mask_rcnn  # noqa: E402


def _model(args, attention: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_va_mask_rcnn(
        bag_size=args.bag_size,
        attention=attention,
        min_size=args.size,
        max_size=args.size,
        backbone=args.backbone,
        frozen_batchnorm=True,
        box_score_thresh=0.0,  # random weights: keep detections so the heads and mask pasting do real work
        rpn_pre_nms_top_n_test=args.proposals,
        rpn_post_nms_top_n_test=args.proposals,
        box_detections_per_img=args.detections,
    )
    return model.to(args.device).eval()


def _volume(args) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(1, 1, args.size, args.size, args.depth, generator=g).to(args.device)


def measure_one(args) -> dict:
    """Inference time and peak memory of one configuration (run in a fresh process)."""
    model, volume = _model(args, attention=args.attention), _volume(args)
    inferer = VolumeMaskInferer(score_threshold=0.0, cache_features=args.cache)
    cuda = args.device == "cuda"
    with torch.no_grad():
        if cuda:
            inferer(volume[..., :2], model)  # warm-up (on CPU it would raise the RSS high-water mark used below)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        start = time.perf_counter()
        out = inferer(volume, model)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    if args.save_output:
        torch.save(out.cpu().as_subclass(torch.Tensor), args.save_output)
    return {"seconds": seconds, "peak_bytes": max(peak, 0), "images": inferer.images_computed}


def _child(args, attention: bool, cache: bool, save_output: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--device", args.device, "--size", str(args.size)]
    cmd += ["--bag_size", str(args.bag_size), "--depth", str(args.depth), "--backbone", args.backbone]
    cmd += ["--proposals", str(args.proposals), "--detections", str(args.detections)]
    cmd += ["--attention", str(int(attention)), "--cache", str(int(cache))]
    if save_output:
        cmd += ["--save_output", save_output]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def inference_benchmarks(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cached = _child(args, True, True, f"{tmp}/cached.pt")
        uncached = _child(args, True, False, f"{tmp}/uncached.pt")
        a, b = torch.load(f"{tmp}/cached.pt"), torch.load(f"{tmp}/uncached.pt")
    agree = (a == b).float().mean().item()
    print(f"\n1. feature cache, VA Mask R-CNN N={args.bag_size}, {args.depth} slices of {args.size} px ({args.device})")
    print(f"   cached   {cached['seconds']:8.2f} s  backbone images {cached['images']}")
    print(f"   uncached {uncached['seconds']:8.2f} s  backbone images {uncached['images']}")
    print(
        f"   time ratio uncached / cached: {uncached['seconds'] / cached['seconds']:.2f}x; label voxels equal: "
        f"{100 * agree:.3f} %"
    )

    baseline = _child(args, False, True)
    print("\n2. VA Mask R-CNN (cached) vs baseline 2.5D Mask R-CNN over the same volume")
    print(f"   VA       {cached['seconds']:8.2f} s  peak {cached['peak_bytes'] / 2**20:8.1f} MiB")
    print(f"   baseline {baseline['seconds']:8.2f} s  peak {baseline['peak_bytes'] / 2**20:8.1f} MiB")
    mem_ratio = cached["peak_bytes"] / baseline["peak_bytes"] if baseline["peak_bytes"] else float("nan")
    print(
        f"   time ratio VA / baseline: {cached['seconds'] / baseline['seconds']:.2f}x; "
        f"peak-memory ratio: {mem_ratio:.2f}x (goal < 1.3x)"
    )


def pipeline_benchmark(args) -> None:
    from monai.bundle import ConfigParser

    from shared.phantoms.lits import make_phantoms
    from shared.transforms.slice_bags import SliceBagd
    from shared.transforms.volume_cache import to_slice_first

    with tempfile.TemporaryDirectory() as tmp:
        root = make_phantoms(f"{tmp}/lits", num_cases=2, shape=(args.size, args.size, args.depth), num_test=0)
        parser = ConfigParser()
        parser.read_config(str(REPO / "bundles/va_maskrcnn_lits/configs/train.json"))
        parser.update({"image_size": args.size, "cache_dir": f"{tmp}/cache", "bag_size": args.bag_size})
        cache = parser.get_parsed_content("volume_cache")
        entries = [
            {"image": str(root / f"volume-{n}.nii"), "label": str(root / f"segmentation-{n}.nii")} for n in (0, 1)
        ]
        items = cache.slices(entries)
        bag = SliceBagd(args.bag_size)
        start = time.perf_counter()
        for item in items:
            bag(item)
        cached_rate = len(items) / (time.perf_counter() - start)
        # without a cache every sample decompresses/reorients/resamples its volume before cutting the bag
        n = args.pipeline_samples
        start = time.perf_counter()
        for k in range(n):
            volume = cache.transform(dict(entries[k % len(entries)]))
            arrays = {key: to_slice_first(volume[key]) for key in ("image", "label")}
            bag({**arrays, "slice": k % arrays["image"].shape[0]})
        uncached_rate = n / (time.perf_counter() - start)
    print(f"\n3. training pipeline, bag of {args.bag_size} images of {args.size} px")
    print(f"   from the memory-mapped cache {cached_rate:10.1f} slices/s")
    print(f"   from NIfTI (preprocess each) {uncached_rate:10.1f} slices/s")
    print(f"   ratio: {cached_rate / uncached_rate:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--bag_size", type=int, default=9)
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--proposals", type=int, default=1000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--pipeline_samples", type=int, default=8)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--attention", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--save_output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(args)))
        return
    inference_benchmarks(args)
    pipeline_benchmark(args)


if __name__ == "__main__":
    main()
