"""VA Mask R-CNN speed (issue 11): the backbone feature cache, VA vs the plain 2.5D Mask R-CNN, the training cache.

1. Whole-volume inference (VolumeMaskInferer) with vs without the backbone feature cache: time ratio uncached /
   cached beside its limit: the uncached time over that time less the backbone images the cache does not rerun
   (measured backbone time per image; the RPN and heads run once per slice either way, and with random weights and
   ``box_score_thresh`` 0 the heads dominate); goal >= 0.9 x the limit. The note says whether both label maps are
   equal.
2. VA Mask R-CNN vs the baseline 2.5D Mask R-CNN (``attention=False``, with the VA model's weights for every shared
   layer, so both run the same proposals) over the same volume, both cached: time and peak-memory ratios (goals of
   issue 11: time <= 1.2 at 512 px, ResNet-50; memory <= 1.3).
3. Training pipeline: seconds per slice preprocessing the NIfTI each time over reading bags from the memory-mapped
   volume cache.

Each inference configuration runs in a fresh process: its first (cold) pass over the volume is the warm-up, then
``--repeats`` timed passes; its peak memory (CUDA max allocated; on CPU the peak resident set minus the resident size
before the first pass) is that process's own. Time ratios are the median over every pair of timed passes, with
their min-max. Refuses to start above the 1-minute load average ``--max_load``; ``--rows`` writes the suite's rows.

    PYTHONPATH=. .venv/bin/python benchmarks/va_benchmark.py --size 128 --bag_size 9 --depth 24 --backbone resnet50
    PYTHONPATH=. .venv/bin/python benchmarks/va_benchmark.py --quick            # tiny sizes, a few seconds
    PYTHONPATH=. .venv/bin/python benchmarks/va_benchmark.py --device cuda --size 1024 --depth 64   # paper scale
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import measure  # noqa: E402
from shared.engines.inferers.volume_mask import VolumeMaskInferer  # noqa: E402
from shared.networks.va_rcnn import build_va_mask_rcnn  # noqa: E402

CONFIGS = {"cached": (True, True), "uncached": (True, False), "baseline": (False, True)}  # (attention, cache)
QUICK = {
    "size": 32,
    "bag_size": 3,
    "depth": 6,
    "backbone": "resnet18",
    "proposals": 20,
    "detections": 5,
    "repeats": 2,
    "pipeline_samples": 2,
}


def _model(args, attention: bool) -> torch.nn.Module:
    """The VA model, or the baseline with the VA model's weights for every layer they share (the VA blocks draw random
    numbers first, so a seed alone would give the baseline other RPN and head weights, hence other proposal counts)."""
    model = _build(args, attention)
    if not attention:
        model.load_state_dict(_build(args, True).state_dict(), strict=False)
    return model.to(args.device).eval()


def _build(args, attention: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_va_mask_rcnn(
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


def volume_cost(key: str, save_to: str, args) -> dict:
    """Timed whole-volume passes and peak memory of configuration KEY in this fresh process; label map to SAVE_TO."""
    attention, cache = CONFIGS[key]
    model = _model(args, attention)
    volume = torch.rand(1, 1, args.size, args.size, args.depth, generator=torch.Generator().manual_seed(0))
    volume = volume.to(args.device)
    inferer = VolumeMaskInferer(score_threshold=0.0, cache_features=cache)
    before = measure.rss_mib()
    with torch.no_grad():
        labels = inferer(volume, model)  # cold pass: the warm-up
        images = inferer.images_computed
        seconds = measure.repeat_timed(lambda: inferer(volume, model), args.repeats, warmup=0, device=args.device)
        image = volume[None, 0, 0, :, :, 0].expand(1, 3, -1, -1)
        backbone = measure.repeat_timed(lambda: model.backbone.image_features(image), args.repeats, device=args.device)
    torch.save(labels.cpu().as_subclass(torch.Tensor), save_to)
    peak = measure.peak_mib(args.device, before)
    return {"seconds": seconds, "peak_mib": peak, "images": images, "backbone_s": measure.median_spread(backbone)[0]}


def pipeline_cost(args) -> dict:
    """Seconds per training slice: bags from the memory-mapped cache, and preprocessing the NIfTI for each."""
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
        items = cache.slices(entries)  # builds the cache
        bag = SliceBagd(args.bag_size)

        def from_cache() -> None:
            for item in items:
                bag(item)

        def from_nifti() -> None:  # without a cache every sample decompresses/reorients/resamples its volume
            for k in range(args.pipeline_samples):
                volume = cache.transform(dict(entries[k % len(entries)]))
                arrays = {key: to_slice_first(volume[key]) for key in ("image", "label")}
                bag({**arrays, "slice": k % arrays["image"].shape[0]})

        cached = [s / len(items) for s in measure.repeat_timed(from_cache, args.repeats)]
        nifti = [s / args.pipeline_samples for s in measure.repeat_timed(from_nifti, args.repeats)]
    return {"cached": cached, "nifti": nifti}


def rows(records: dict[str, dict], pipeline: dict, agree: float, args) -> list[dict]:
    """The suite's rows: cache speed-up vs its limit, VA vs baseline time and memory, training cache vs NIfTI."""
    cached, uncached, baseline = records["cached"], records["uncached"], records["baseline"]
    setting = f"{args.size} px, N = {args.bag_size}, {args.depth} slices, {args.backbone}, {args.device}"
    # Amdahl: the cache saves only the backbone images it does not rerun; the rest of the uncached time stays
    saved = (uncached["images"] - cached["images"]) * uncached["backbone_s"]
    uncached_s = measure.median_spread(uncached["seconds"])[0]
    limit = uncached_s / max(uncached_s - saved, 1e-9)
    median = {key: measure.median_spread(r["seconds"])[0] for key, r in records.items()}
    return [
        measure.row(
            "VA whole volume: uncached / cached feature time",
            measure.ratios(uncached["seconds"], cached["seconds"]),
            f">= {0.9 * limit:.2f} (0.9 x limit)",
            f"{limit:.2f} (uncached time less {uncached['images'] - cached['images']} backbone images of "
            f"{uncached['backbone_s'] * 1e3:.0f} ms; {uncached['images']}/{cached['images']} images)",
            f"{median['uncached']:.3g} vs {median['cached']:.3g} s ({setting}); label maps {100 * agree:.3f} % equal",
        ),
        measure.row(
            "VA / baseline 2.5D Mask R-CNN: whole-volume time",
            measure.ratios(cached["seconds"], baseline["seconds"]),
            "<= 1.2 at 512 px, ResNet-50 (issue 11)",
            "1.0 (no extra cost)",
            f"{median['cached']:.3g} vs {median['baseline']:.3g} s, both cached ({setting})",
        ),
        measure.row(
            "VA / baseline 2.5D Mask R-CNN: whole-volume peak memory",
            [cached["peak_mib"] / baseline["peak_mib"]],
            "<= 1.3 (issue 11)",
            "1.0 (no extra cost)",
            f"{cached['peak_mib']:.0f} vs {baseline['peak_mib']:.0f} MiB, one cold process each",
        ),
        measure.row(
            "VA training pipeline: NIfTI / cache time per slice",
            measure.ratios(pipeline["nifti"], pipeline["cached"]),
            "report (no goal set)",
            "none (the cache skips decoding and resampling)",
            f"{measure.median_spread(pipeline['cached'])[0] * 1e3:.3g} ms per slice from the cache, bag of "
            f"{args.bag_size} at {args.size} px",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--bag_size", type=int, default=9)
    parser.add_argument("--depth", type=int, default=24)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--proposals", type=int, default=1000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the warm-up")
    parser.add_argument("--pipeline_samples", type=int, default=8, help="NIfTI samples preprocessed per timed pass")
    parser.add_argument("--max_load", type=float, default=1.0, help="refuse to start above this 1-minute load average")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes for a test run: {QUICK}")
    parser.add_argument("--rows", help="write the table rows here (JSON)")
    parser.add_argument("--one", nargs=2, metavar=("CONFIG", "LABELS"), help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.quick:
        vars(args).update(QUICK)
    if args.one:
        print(json.dumps(volume_cost(*args.one, args)))
        return
    load = measure.require_quiet("va_benchmark", args.max_load)
    print(f"va_benchmark: load {load:.2f}, device {args.device}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        records = {
            key: measure.run_child([sys.executable, __file__, *sys.argv[1:], "--one", key, f"{tmp}/{key}.pt"])
            for key in CONFIGS
        }
        agree = (torch.load(f"{tmp}/cached.pt") == torch.load(f"{tmp}/uncached.pt")).float().mean().item()
    table_rows = rows(records, pipeline_cost(args), agree, args)
    print(measure.table(table_rows))
    measure.write_rows(args.rows, table_rows)


if __name__ == "__main__":
    main()
