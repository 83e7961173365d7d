"""Can VA read context from the detector's own features? (issue 22: why the block learns so little in the detector)

``benchmarks/va_context_probe.py`` shows the VA block separating lesions from look-alikes on synthetic feature maps;
inside the detector the trained gate barely tells them apart (``benchmarks/va_gate_objects.py``). This probe sits
between the two: the context probe's block, head and training (:func:`benchmarks.va_context_probe.train_probe`), on
the FPN features of the detector every ablation arm starts from (the 2.5D Mask R-CNN that
``benchmarks/va_ablation.py`` pre-trains, frozen here) for the context phantoms' bags. Every slice through a lesion
is a target (the volume's look-alike lies on the same axial level, so it is there too): the bundle's preprocessing,
the bag the bundle cuts there (N = 9 images), one FPN level of each member (``--level``); each feature cell is
labelled background, lesion or look-alike from the phantom's own draw (a cell an object covers at least half of, and
each object's most covered cell). Arms, the same head on:

- ``target``: the target image's features (context-blind: what the 2.5D detector sees);
- ``channel``, ``spatial``, ``full``: ``VolumetricAttention`` over the bag (``--form``, default ``fixed_parallel``,
  the section-4 ablation's form);
- ``stacked``: all N members' features, stacked and mixed by a 1x1 convolution: whether the features hold the
  answer at all, with no attention form in the way.

Trained on the ablation's training volumes, scored per object (lesion vs look-alike, an object's class the larger of
its summed lesion and look-alike logits) on every held-out target slice, as balanced accuracy (the mean of the
lesions' and the look-alikes' accuracies: lesions outnumber look-alikes about 2 to 1 there, and calling every object
a lesion scores 0.5); mean +- sd over seeds. How to read it:
``full`` near ``stacked`` and above ``target``: the features carry the context and the block can take it, so what
fails in the detector is its training; ``full`` near ``target`` below ``stacked``: the block cannot take it from
these features; ``stacked`` near ``target``: the pre-trained features do not hold it.

    PYTHONPATH=. .venv/bin/python benchmarks/va_feature_probe.py --out DIR [--fov liver] [--level 0]
        [--arms target spatial full stacked] [--seeds 0 1 2] [--steps 600] [--form fixed_parallel] [--json out.json]
        [--readout baseline full [--epochs 5]]

``--readout``: instead, the ``target`` arm's head on what each trained network of a ``benchmarks/va_ablation.py``
run (``--out``; its arms' ``ARM_seedSEED`` folders, the block form ``--form``, the last of ``--epochs``) passes to
its RPN and heads at ``--level``: VA's output, or the baseline's target features; the head's seed is the network's.
Whether the trained detector's attended features hold what tells lesions from look-alikes, held out.

``--out`` is a ``benchmarks/va_ablation.py`` output folder (its phantoms and pre-trained detector are reused when
they were made with the same settings) or a new one, where both are made as the ablation makes them.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ablation, va_ablation, va_context_probe  # noqa: E402
from benchmarks.va_block_stats import recorded_block_stats, summaries  # noqa: E402
from shared.transforms.slice_bags import bag_slice_indices  # noqa: E402

ARMS = {**va_context_probe.ARMS, "stacked": None}
BACKGROUND, LESION, LOOKALIKE = range(3)  # va_context_probe.LABELS


class StackedProbe(va_context_probe.Probe):
    """The context probe's head on all N members' features stacked along channels and mixed by a 1x1 convolution."""

    def __init__(self, channels: int, bag_size: int) -> None:
        super().__init__(None, channels)
        self.stack = nn.Conv2d(channels * bag_size, channels, 1)

    def forward(self, bag: torch.Tensor) -> torch.Tensor:
        return self.head(self.stack(bag.flatten(1, 2)))


def cell_labels(masks: list[np.ndarray], kinds: list[int], shape: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Per feature cell of ``shape``: the class (background, lesion, look-alike) and the object (1..K, 0 none) of the
    in-plane object ``masks`` of the given ``kinds``: a cell an object covers at least half of, and each object's most
    covered cell (so that every object has one)."""
    labels = torch.zeros(shape, dtype=torch.long)
    ids = torch.zeros(shape, dtype=torch.long)
    for i, (mask, kind) in enumerate(zip(masks, kinds), start=1):
        cover = nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None], shape)[0]
        cells = cover >= 0.5
        cells.view(-1)[cover.argmax()] = True
        labels[cells], ids[cells] = kind, i
    return labels, ids


def member_features(backbone, level: str):
    """Bag (3N, H, W) -> the FPN features at ``level`` of each of its N images (N, C, h, w), no attention."""
    return lambda bag: backbone.image_features(bag.reshape(-1, 3, *bag.shape[1:]))[level]


def passed_features(backbone, level: str):
    """Bag (3N, H, W) -> the target's features at ``level`` as ``backbone`` passes them to the RPN and the heads
    (1, C, h, w): VA's output, or without VA the target image's own features."""
    return lambda bag: backbone(bag[None])[level]


def volume_targets(features_of, preprocessing, bag_size: int, entry: dict, shape, options: dict) -> list:
    """Every target slice of one context volume (a datalist entry) through one of its lesions (where the look-alike
    lies too: a volume's objects share one axial level), with every object on it: what ``features_of`` makes of the
    bag (:func:`member_features`, :func:`passed_features`), the cells' classes and objects (:func:`cell_labels`) and
    the objects' classes. The
    phantom's lesions must lie mostly on the segmentation's lesion voxels as the bundle's preprocessing reads them (a
    slice's lesion tips may not: the phantom's slice nearest a target can be half a slice from the one the
    resampling took), or the run stops: a phantom drawn otherwise than the volume on disk, or another orientation."""
    phantom, lookalikes = va_ablation.drawn_phantom(entry["case"], shape, options)
    loaded = preprocessing({"image": entry["image"], "label": entry["label"]})
    image, label = loaded["image"], loaded["label"]
    z_of = lambda affine, k: float(affine[2, 3] + k * affine[2, 2])  # noqa: E731
    slice_of = lambda affine, z: round((z - float(affine[2, 3])) / float(affine[2, 2]))  # noqa: E731
    lesion_ids = [i + 1 for i in range(len(phantom.lesion_list)) if i not in lookalikes]
    holding = [k for k in range(phantom.lesions.shape[2]) if np.isin(phantom.lesions[:, :, k], lesion_ids).any()]
    targets = sorted({slice_of(image.affine, z_of(phantom.affine, k)) for k in holding})
    out = []
    on_lesion = lesion_pixels = 0
    for target in targets:
        ids = phantom.lesions[:, :, slice_of(phantom.affine, z_of(image.affine, target))]
        present = [i for i in range(len(phantom.lesion_list)) if (ids == i + 1).any()]
        if not present:
            continue
        lesion_voxels = np.asarray(label[0][..., target]) == 2
        if lesion_voxels.shape != ids.shape:
            raise SystemExit(f"{entry['case']}: phantom slices {ids.shape}, the bundle's {lesion_voxels.shape}")
        lesions = np.isin(ids, lesion_ids)
        on_lesion, lesion_pixels = on_lesion + int(lesion_voxels[lesions].sum()), lesion_pixels + int(lesions.sum())
        bag = image[0][..., bag_slice_indices(target, image.shape[-1], bag_size)].permute(2, 0, 1).float()
        with torch.no_grad():
            features = features_of(bag)
        kinds = [LOOKALIKE if i in lookalikes else LESION for i in present]
        labels, cells = cell_labels([ids == i + 1 for i in present], kinds, tuple(features.shape[-2:]))
        out.append({"features": features, "labels": labels, "ids": cells, "classes": kinds})
    if lesion_pixels and on_lesion < 0.8 * lesion_pixels:
        raise SystemExit(
            f"{entry['case']}: {on_lesion / lesion_pixels:.0%} of the phantom's lesion pixels lie on the "
            "segmentation's lesion voxels; the phantom drawn here is not the volume on disk"
        )
    return out


def detector_parts(out: Path, data: Path, epochs: int, samples: int, arm: str = "baseline", seed: int = 0, form=None):
    """The ablation's ``arm`` (default its baseline 2.5D Mask R-CNN) of ``seed`` as the bundle's train.json builds it,
    VA blocks in the block form ``form`` (knobs), checked to be what the arm claims
    (:func:`benchmarks.va_ablation.check_arm`), with random weights (the caller loads the trained ones); the bundle's
    preprocessing and the bag size."""
    from monai.bundle import ConfigParser

    extra = {**(form or {}), "samples_per_epoch": samples}
    overrides = va_ablation.arm_overrides(arm, seed, data, out / f"{arm}_seed{seed}", epochs, extra)
    overrides["pretrained"] = "false"
    parser = ConfigParser()
    parser.read_config(str(va_ablation.CONFIGS / "train.json"))
    parser.update(overrides)
    network = parser.get_parsed_content("network_def")
    va_ablation.check_arm(arm, overrides, network, "read")
    return network, parser.get_parsed_content("preprocessing"), int(parser["bag_size"])


def stacked(targets: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Targets -> (bags (T, N, C, h, w), labels (T, h, w), object ids (T, h, w), classes per target)."""
    return (
        torch.stack([t["features"] for t in targets]),
        torch.stack([t["labels"] for t in targets]),
        torch.stack([t["ids"] for t in targets]),
        [t["classes"] for t in targets],
    )


def run_arm(arm: str, seed: int, steps: int, form: dict, train: tuple, held_out: tuple, batch: int = 8) -> dict:
    """Train one arm with one seed on the training targets (``batch`` drawn at random each step) and score it on the
    held-out ones (:func:`benchmarks.va_context_probe.train_probe`); its record."""
    bags, labels = train[0], train[1]
    channels, bag_size = bags.shape[2], bags.shape[1]
    kwargs = None if ARMS[arm] is None else {**form, **ARMS[arm]}
    probe = StackedProbe(channels, bag_size) if arm == "stacked" else va_context_probe.Probe(kwargs, channels)
    model = ablation.seed_each_module(probe, seed)
    data = torch.Generator().manual_seed(1000 + seed)

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        picked = torch.randint(len(bags), (batch,), generator=data)
        return bags[picked], labels[picked]

    trained = va_context_probe.train_probe(model, steps, draw, (held_out[0], held_out[2], held_out[3]))
    return va_context_probe.probe_record(arm, seed, model, kwargs, 1 if arm == "target" else bag_size, trained)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a va_ablation.py output folder, or a new one")
    parser.add_argument("--fov", choices=["body", "liver"], default="liver", help="the phantoms' field of view")
    parser.add_argument("--level", default="0", help="the FPN level the probe reads ('0'-'3', 'pool')")
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=["target", "spatial", "full", "stacked"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--form", choices=list(va_context_probe.FORMS), default="fixed_parallel")
    parser.add_argument("--cases", type=int, default=32, help="context phantom volumes (25 %% held out)")
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64])
    parser.add_argument("--samples", type=int, default=200, help="the ablation's slices per epoch (its settings)")
    parser.add_argument("--pretrain_epochs", type=int, default=18)
    parser.add_argument("--json", type=Path, help="write the settings, every run and the table here")
    parser.add_argument(
        "--readout",
        nargs="+",
        choices=list(va_ablation.ARMS),
        help="instead: the target head on the features each trained ablation network (ARM_seedSEED in --out, block "
        "form --form) passes to its RPN and heads",
    )
    parser.add_argument("--epochs", type=int, default=5, help="the ablation's epochs (its last checkpoint is read)")
    args = parser.parse_args()
    if args.readout and args.form not in va_ablation.FORMS:
        parser.error(f"--readout reads an ablation's networks: --form is one of {list(va_ablation.FORMS)}")
    from shared.data.lits import make_datalist
    from shared.networks.pretrained import read_state_dict

    started = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    options = {"context_bag": 9, "max_lookalikes": 1, "fov": args.fov}  # the ablation's defaults
    data = va_ablation.make_data(out, args.cases, args.shape, options)
    checkpoint = va_ablation.pretrain(
        out, args.cases, args.shape, {"samples_per_epoch": args.samples}, args.pretrain_epochs, args.fov
    )
    split = make_datalist(data, seed=va_ablation.SPLIT_SEED)

    def targets_of(features_of, preprocessing, bag_size) -> dict:
        parts = {}
        for name in ("training", "validation"):
            targets = []
            for entry in split[name]:
                targets += volume_targets(features_of, preprocessing, bag_size, entry, args.shape, options)
            parts[name] = stacked(targets)
            objects = sum(len(c) for c in parts[name][3])
            print(f"{name}: {len(targets)} target slices, {objects} objects on them", flush=True)
        return parts

    records = []
    if args.readout:  # the target head on what each trained ablation network passes on
        form = va_ablation.FORMS[args.form]
        for seed in args.seeds:
            for arm in args.readout:
                network, preprocessing, bag_size = detector_parts(out, data, args.epochs, args.samples, arm, seed, form)
                trained = va_ablation.last_checkpoint(out / f"{arm}_seed{seed}", args.epochs)
                network.load_state_dict(read_state_dict(trained))
                backbone = network.backbone.eval()
                with recorded_block_stats(va_ablation.fpn_va_blocks(network)) as stats:  # per level, every target
                    parts = targets_of(passed_features(backbone, args.level), preprocessing, bag_size)
                record = run_arm("target", seed, args.steps, {}, parts["training"], parts["validation"])
                read = va_ablation.va_blocks(network)  # what the trained network is, not the probe's head
                record |= {"arm": arm, "network": str(trained), "network_va": read, "va_blocks": read["blocks"]}
                record["network_block_stats"] = summaries(stats)
                record["images_per_target"] = read["images_per_target"]
                records.append({"form": args.form, **record})
                print(f"{arm} seed {seed}: {va_context_probe.describe(record)}", flush=True)
    else:  # the probe's arms on the pre-trained detector's features of every bag member
        network, preprocessing, bag_size = detector_parts(out, data, args.pretrain_epochs, args.samples)
        network.load_state_dict(read_state_dict(checkpoint))
        parts = targets_of(member_features(network.backbone.eval(), args.level), preprocessing, bag_size)
        for seed in args.seeds:
            for arm in args.arms:
                record = run_arm(
                    arm, seed, args.steps, va_context_probe.FORMS[args.form], parts["training"], parts["validation"]
                )
                records.append({"form": args.form, **record})
                print(f"{arm} seed {seed}: {va_context_probe.describe(record)}", flush=True)
    arms = args.readout or list(ARMS)
    rows, markdown = va_context_probe.summarize(records, arms, "balanced_accuracy")
    settings = {
        "run": str(out),
        "checkpoint": str(checkpoint),
        "level": args.level,
        "steps": args.steps,
        "seeds": args.seeds,
        "form": {args.form: va_context_probe.FORMS[args.form]},
        "phantom_context": options,
        "readout": args.readout,
        "targets": {name: len(part[3]) for name, part in parts.items()},
        "objects": {name: sum(len(c) for c in part[3]) for name, part in parts.items()},
        **ablation.machine_settings(1),
    }
    va_context_probe.write_run(settings, rows, records, markdown, started, args.json)


if __name__ == "__main__":
    main()
