"""GPU check of the three bundles at the papers' sizes: training step time with AMP off and on, peak GPU memory,
images or volumes per second, and the whole-volume inference time of one phantom CT volume per bundle.

    bash scripts/gpu_check.sh                       # CUDA, papers' sizes, sections within --budget s (default 450)
    bash scripts/gpu_check.sh --device cpu --tiny   # CPU smoke run at tiny sizes (what the test suite runs)
    bash scripts/gpu_check.sh --plan                # the planned sizes and config overrides as JSON; runs nothing

Networks, optimizers, trainers (with their AMP handling and gradient clipping), preprocessing and inferers are the
bundles' own, parsed from each train.json / inference.json with the overrides of :func:`plan`; only the data are
made up: the same random training batch every step, and one phantom CT volume (100 slices of 512 x 512 at 1.5 mm
at full size) read by each inference.json's preprocessing. Weights are random: a fresh GPU machine has no
pretrained or trained weights, so ``pretrained`` is off (VA keeps the frozen batch norm and 3 trainable stages of its
COCO-pretrained run); with random weights few detections pass the bundles' score thresholds, so the label pasting
after the detectors' heads is lighter than with trained weights.

Training runs train.json's ``initialize`` first, as ``monai.bundle run`` does (seed, determinism, TF32 where the
config has the knob); the backend flags it leaves are recorded and stay set for the bundle's inference section that
follows (inference.json's own ``initialize`` wants trained weights). Each section (bundle x AMP x training or
inference) gets an equal share of what is left of ``--budget``: training stops stepping when the next step would
overrun it, and a timer stops any section at its share, so the whole check ends within the budget. The first
training step is a warm-up; the step time is the median of the others. On CPU, AMP on is skipped (the bundles'
trainers use AMP on CUDA only) and GPU memory is n/a.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.errors import InputError  # noqa: E402

BUNDLES = ("msan_kits", "cs_att_deeplesion", "va_maskrcnn_lits")  # cheapest first: time left over goes to the later
VOLUME = {"full": (512, 512, 100), "tiny": (64, 64, 8)}  # phantom CT: rows, cols, slices of 1.5 mm
STEPS = {"full": 5, "tiny": 2}  # timed training steps after the warm-up one

# Config ids set in train.json and inference.json (each gets the ids it has; a nested id where it has the parent).
OVERRIDES = {
    "va_maskrcnn_lits": {
        "full": {"image_size": 1024, "bag_size": 9, "backbone": "resnet50"},
        "tiny": {
            "image_size": 64,
            "bag_size": 3,
            "backbone": "resnet18",
            "proposals_train": 50,
            "proposals_test": 20,
            "roi_samples": 16,
            "detections_per_image": 5,
        },
        "both": {"pretrained": False, "frozen_batchnorm": True},
    },
    "cs_att_deeplesion": {
        "full": {"num_images": 5, "max_size": 512, "backbone": "vgg16"},
        "tiny": {"num_images": 3, "max_size": 64, "backbone": "tiny"},
        "both": {"backbone_weights": None},
    },
    "msan_kits": {
        "full": {"patch_size": [512, 512, 4], "batch_size": 2, "network_def#channels": [32, 64, 128, 256]},
        "tiny": {"patch_size": [32, 32, 4], "batch_size": 2, "network_def#channels": [8, 16, 32, 64]},
        "both": {"network_def#variant": "v2", "deep_supervision": True},
    },
}
# What the check reports as each bundle's input: name -> config id (read after the overrides).
SIZES = {
    "va_maskrcnn_lits": {
        "image_px": "image_size",
        "bag_size": "bag_size",
        "backbone": "backbone",
        "batch": "batch_size",
    },
    "cs_att_deeplesion": {"image_px": "max_size", "M": "num_images", "backbone": "backbone", "batch": "batch_size"},
    "msan_kits": {
        "patch": "patch_size",
        "batch": "batch_size",
        "channels": "network_def#channels",
        "variant": "network_def#variant",
        "deep_supervision": "deep_supervision",
    },
}
UNIT = {"va_maskrcnn_lits": "img/s", "cs_att_deeplesion": "img/s", "msan_kits": "vol/s"}
WEIGHTS_NOTE = (
    "random initialisation (no pretrained or trained weights on the GPU machine: pretrained false, backbone_weights "
    "null; VA keeps frozen batch norm and 3 trainable stages as in its COCO-pretrained run)"
)
AMP_NOTE = "training: float16 autocast with a GradScaler (the bundles' trainers); inference: float16 autocast"
CPU_AMP_NOTE = "skipped on CPU: the bundles' trainers use AMP on CUDA only"


def _config_file(bundle: str, name: str) -> Path:
    return REPO / "bundles" / bundle / "configs" / name


def _raw_value(config: dict, config_id: str):
    for key in config_id.split("#"):
        config = config[key]
    return config


def plan(tiny: bool) -> dict[str, dict]:
    """Per bundle: the config ``overrides``, the input ``sizes`` they give (train.json's values otherwise) and the
    phantom ``volume`` (rows, cols, slices) of the inference timing. Reads the JSON configs only."""
    size = "tiny" if tiny else "full"
    out = {}
    for bundle in BUNDLES:
        overrides = {**OVERRIDES[bundle][size], **OVERRIDES[bundle]["both"]}
        config = json.loads(_config_file(bundle, "train.json").read_text())
        sizes = {
            name: overrides[config_id] if config_id in overrides else _raw_value(config, config_id)
            for name, config_id in SIZES[bundle].items()
        }
        out[bundle] = {"overrides": overrides, "sizes": sizes, "volume": list(VOLUME[size])}
    return out


def bundle_parser(bundle: str, config: str, overrides: dict, **values):
    """A ``ConfigParser`` of ``bundles/<bundle>/configs/<config>`` with the ``overrides`` the config has (a nested
    id where it has the parent) and ``values`` set whatever the config holds."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(_config_file(bundle, config)))
    for key, value in overrides.items():
        parent = key.rpartition("#")[0]
        if key in parser or (parent and parent in parser):
            parser[key] = value
    parser.update(values)
    return parser


class OverBudget(Exception):
    """A section ran past its share of the budget."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise :class:`OverBudget` in this (main) thread once ``seconds`` have passed."""

    def _stop(signum, frame):
        raise OverBudget(f"stopped at its {seconds:.0f} s share of the budget")

    previous = signal.signal(signal.SIGALRM, _stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class RepeatedBatch:
    """``length`` times the same batch: the trainers' data loader, so only the step itself is timed."""

    def __init__(self, batch, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return (self.batch for _ in range(self.length))


def training_batch(bundle: str, parser, device):
    """A random batch at the parsed config's sizes in the form the bundle's trainer takes, and its input shape."""
    import torch

    gen = torch.Generator().manual_seed(0)
    batch = parser["batch_size"]
    if bundle == "msan_kits":
        shape = (batch, 1, *parser["patch_size"])
        data = {"image": torch.rand(shape, generator=gen), "label": torch.randint(0, 3, shape, generator=gen).float()}
        return {k: v.to(device) for k, v in data.items()}, list(shape)
    if bundle == "va_maskrcnn_lits":
        size, channels = parser["image_size"], 3 * parser["bag_size"]
        boxes = torch.tensor([[0.2, 0.2, 0.7, 0.7], [0.35, 0.35, 0.5, 0.5]]) * size  # a liver holding a lesion
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
            mask[y1:y2, x1:x2] = 1
        target = {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks}
    else:
        size, channels = parser["max_size"], 3 * parser["num_images"]
        target = {"boxes": torch.tensor([[0.4, 0.4, 0.5, 0.48]]) * size, "labels": torch.tensor([1])}
    images = [torch.rand(channels, size, size, generator=gen).to(device) for _ in range(batch)]
    targets = [{k: v.to(device) for k, v in target.items()} for _ in range(batch)]
    return (images, targets), [batch, channels, size, size]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _network_record(network) -> dict:
    from shared.networks.msan import MSAN, architecture

    name = architecture(network).name if isinstance(network, MSAN) else type(network).__name__
    return {
        "network": type(network).__name__,
        "architecture": name,
        "parameters": sum(p.numel() for p in network.parameters()),
    }


def train_section(bundle: str, overrides: dict, device, amp: bool, steps: int, share: float, record: dict) -> None:
    """Warm-up plus up to ``steps`` timed steps of the bundle's trainer; fills ``record`` as it goes."""
    import torch
    from ignite.engine import Events

    start = time.perf_counter()
    parser = bundle_parser(bundle, "train.json", overrides, device=device, amp=amp)
    batch, shape = training_batch(bundle, parser, device)
    parser.update({"train#dataloader": RepeatedBatch(batch, 1 + steps), "train#handlers": [], "epochs": 1})
    parser.get_parsed_content("initialize")  # as `monai.bundle run`: seed, determinism, the config's TF32 knob
    trainer = parser.get_parsed_content("train#trainer")
    record["backends"] = {
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
    }
    record.update(_network_record(trainer.network), input_shape=shape, batch=parser["batch_size"], step_s=[])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = {}

    @trainer.on(Events.ITERATION_STARTED)
    def _started(engine) -> None:
        _sync(device)
        began["t"] = time.perf_counter()

    @trainer.on(Events.ITERATION_COMPLETED)
    def _completed(engine) -> None:
        _sync(device)
        now = time.perf_counter()
        seconds = now - began["t"]
        if "first_step_s" in record:
            record["step_s"].append(seconds)
        else:
            record["first_step_s"] = seconds
        record["peak_mib"] = _peak_mib(device)
        if now - start + seconds > share:
            record["stopped"] = "budget: no time left in its share for another step"
            engine.terminate()

    trainer.run()


def inference_section(bundle: str, overrides: dict, device, amp: bool, volume: Path, record: dict) -> None:
    """The inference.json's preprocessing of ``volume`` then its inferer on the whole volume (timed)."""
    import torch
    from monai.data import list_data_collate
    from monai.networks.utils import eval_mode

    parser = bundle_parser(bundle, "inference.json", overrides, device=device, amp=amp)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    network = parser.get_parsed_content("network")
    inferer = parser.get_parsed_content("inferer")
    record.update(_network_record(network), inferer=type(inferer).__name__)
    start = time.perf_counter()
    data = parser.get_parsed_content("preprocessing")({"image": str(volume)})
    record["preprocess_s"] = time.perf_counter() - start
    inputs = list_data_collate([data])["image"].to(device)
    record["input_shape"] = list(inputs.shape)
    autocast = torch.autocast(device.type) if amp else contextlib.nullcontext()
    _sync(device)
    start = time.perf_counter()
    with eval_mode(network), autocast:
        inferer(inputs, network)
    _sync(device)
    record.update(seconds=time.perf_counter() - start, peak_mib=_peak_mib(device))


def _phantom(path: Path, shape) -> Path:
    """One phantom abdomen CT of ``shape`` (rows, cols, slices) with 1.5 mm slices (the VA bundle's resampling) in
    the LiTS layout, written to ``path``."""
    import numpy as np

    from shared.data.lits import AXCODES, RESAMPLED_THICKNESS_MM
    from shared.phantoms import ct

    rng = np.random.default_rng(0)
    anatomy = ct.sample_anatomy(rng)
    pixel = 2.2 * anatomy.body.radii[0] / max(shape[:2])  # the body fills about 90 % of the field of view
    case = ct.make_abdomen(rng, shape, (pixel, pixel, RESAMPLED_THICKNESS_MM), anatomy=anatomy)
    ct.nifti(*ct.reorient(ct.to_hu_int16(case.hu), case.affine, AXCODES)).to_filename(path)
    return path


def run_checks(device_name: str, tiny: bool, budget: float, steps: int | None, bundles) -> dict:
    """Every section of every bundle within ``budget`` seconds; the JSON-ready results."""
    import torch

    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device here; run on a GPU machine or pass --device cpu")
    deadline = time.perf_counter() + budget
    steps = steps or STEPS["tiny" if tiny else "full"]
    plans = plan(tiny)
    amps = (False, True) if device.type == "cuda" else (False,)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "size": "tiny" if tiny else "full",
        "budget_s": budget,
        "weights": WEIGHTS_NOTE,
        "amp": AMP_NOTE if amps[-1] else CPU_AMP_NOTE,
        "bundles": {},
    }
    sections = [(b, amp, kind) for b in bundles for amp in amps for kind in ("train", "inference")]
    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        volume = _phantom(Path(work) / "phantom.nii.gz", VOLUME[result["size"]])
        result["phantom"] = {"shape": list(VOLUME[result["size"]]), "seconds": time.perf_counter() - start}
        for b in bundles:
            rows = [{"amp": amp, "train": {}, "inference": {}} for amp in amps]
            if device.type != "cuda":
                rows.append({"amp": True, "skipped": CPU_AMP_NOTE})
            result["bundles"][b] = {**plans[b], "rows": rows}
        for index, (b, amp, kind) in enumerate(sections):
            share = (deadline - time.perf_counter()) / (len(sections) - index)
            record = result["bundles"][b]["rows"][amps.index(amp)][kind]
            record["share_s"] = share
            if share < 1:
                record["stopped"] = "budget spent before it started"
                continue
            print(f"gpu_check: {b} amp {'on' if amp else 'off'} {kind} (share {share:.0f} s)", flush=True)
            overrides = plans[b]["overrides"]
            try:
                with time_limit(share):
                    if kind == "train":
                        train_section(b, overrides, device, amp, steps, share, record)
                    else:
                        inference_section(b, overrides, device, amp, volume, record)
            except OverBudget as stop:
                record["stopped"] = str(stop)
            except Exception as error:  # a failed section (e.g. out of memory) is reported; the others still run
                traceback.print_exc()
                record["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for b, entry in result["bundles"].items():
        for row in entry["rows"]:
            train = row.get("train", {})
            if train.get("step_s"):
                train["median_step_s"] = statistics.median(train["step_s"])
                train["throughput"] = entry["sizes"]["batch"] / train["median_step_s"]
                train["unit"] = UNIT[b]
    return result


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def table(result: dict) -> list[str]:
    """The results as a Markdown table, one row per bundle and AMP setting."""
    lines = [
        "| bundle | amp | step s | peak GPU MiB | images or volumes/s | volume inference s | inference peak GPU MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for b, entry in result["bundles"].items():
        for row in entry["rows"]:
            amp = "on" if row["amp"] else "off"
            if "skipped" in row:
                lines.append(f"| {b} | {amp} | {row['skipped']} | | | | |")
                continue
            train, infer = row["train"], row["inference"]
            rate = f"{train['throughput']:.2f} {train['unit']}" if "throughput" in train else "n/a"
            cells = [_fmt(train.get("median_step_s")), _fmt(train.get("peak_mib"), ".0f"), rate]
            cells += [_fmt(infer.get("seconds"), ".2f"), _fmt(infer.get("peak_mib"), ".0f")]
            notes = [
                f"{k} {s}: {r[k]}"
                for s, r in (("train", train), ("inference", infer))
                for k in ("stopped", "error")
                if k in r
            ]
            lines.append(f"| {b} | {amp} | {' | '.join(cells)} |" + (f" {'; '.join(notes)}" if notes else ""))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and inputs (a CPU smoke run)")
    parser.add_argument(
        "--budget", type=float, default=450.0, help="seconds for phantom and sections (default 450: 8 minutes in all)"
    )
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 5; --tiny 2)")
    parser.add_argument("--bundles", nargs="+", choices=BUNDLES, default=list(BUNDLES))
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--plan", action="store_true", help="print the planned sizes and overrides as JSON and stop")
    args = parser.parse_args()
    if args.plan:
        print(json.dumps(plan(args.tiny), indent=1))
        return
    try:
        result = run_checks(args.device, args.tiny, args.budget, args.steps, args.bundles)
    except InputError as error:
        sys.exit(f"gpu_check: {error}")
    print(f"\n{result['device']}, torch {result['torch']}, {result['size']} size, budget {result['budget_s']:.0f} s")
    print(f"weights: {result['weights']}\nAMP: {result['amp']}")
    for b, entry in result["bundles"].items():
        print(f"{b}: {entry['sizes']}; phantom volume {entry['volume']} (rows, cols, slices)")
    print("\n" + "\n".join(table(result)))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    failed = [
        f"{b} {k}"
        for b, e in result["bundles"].items()
        for r in e["rows"]
        for k in ("train", "inference")
        if "error" in r.get(k, {})
    ]
    if failed:
        sys.exit(f"gpu_check: failed sections: {', '.join(failed)}")


if __name__ == "__main__":
    main()
