"""VA against its baseline in miniature (paper 004, Table 2d): the 2.5D Mask R-CNN without volumetric attention and
VA Mask R-CNN (channel + spatial attention; ``--arms`` adds channel only, spatial only and full VA with eq. 2-3 as
written), trained on the same context phantoms with the same budget, several seeds each; lesion Dice per case,
lesion false positives per volume and look-alikes hit on the held-out volumes.

    PYTHONPATH=. .venv/bin/python benchmarks/va_ablation.py [--out outputs/va_ablation]
        [--arms full baseline] [--seeds 0 1 2] [--epochs 5] [--samples 200] [--cases 32] [--shape 128 128 64]
        [--pretrain_epochs 18] [--pretrained_parts backbone rpn roi_heads]
        [--form fixed|fixed_parallel|fixed_parallel_residual|paper]
        [--context_bag 9] [--max_lookalikes 1] [--fov body|liver] [--jobs 2] [--args_file more_overrides.json]
        [--smoke]

The data are ``python -m shared phantoms lits --context true --context_bag 9 --max_lookalikes 1`` volumes: one liver
look-alike per volume that the target 2.5D image cannot tell from the lesions beside it but the images of a bag of 9
around it can, every lesion ending within what the bag reads (``shared.phantoms.lits``). ``--fov liver`` makes
them, and the pre-training's, with slices that span the liver's box instead of the body (``--fov``: pixels 1.6x
finer, lesions as many more pixels across, as a liver region crop gives). Every arm runs the real
bundle (``monai.bundle``'s ``create_workflow``, what ``python -m monai.bundle run`` calls) on
``bundles/va_maskrcnn_lits/configs/train.json``, then ``evaluate.json`` on the held-out quarter of the VA paper's
75/25 split (the datalist's "validation"; one split for every seed), in a process of its own
(``benchmarks/ablation.py``). Arms differ only in the knobs ``attention``, ``channel_attention`` and
``spatial_attention`` (and, for ``full_paper``, the block form), given as the lower-case strings the command line
gives; the baseline is ``attention false`` alone. The network the trainer holds, and the one evaluated, are read for
their VA blocks and block form, the backbone images each target reads and their parameter count (:func:`va_blocks`):
an arm whose network is not what it claims stops the run. Training does not validate; the last model is evaluated:
no model is picked on the held-out volumes.

VA block form (``--form``): ``fixed`` (:data:`FIXED_FORM`, the default) is what the block needed to carry context in
``benchmarks/va_context_probe.py``, where eq. 2-3 as written (``paper``, :data:`PAPER_FORM`, the bundle's defaults
and the ``full_paper`` arm's) did not; ``fixed_parallel`` (:data:`FIXED_PARALLEL_FORM`) is that form with the
spatial attention read from the bag before the channel gate (``sequential`` false), which carried context in every
seed of the probe where the paper's sequential order stalled in one; ``fixed_parallel_residual``
(:data:`FIXED_PARALLEL_RESIDUAL_FORM`) adds the attention-weighted bag to the gated target through a zero-initialised
1x1 convolution (``bag_residual``, not in the paper; ``benchmarks/va_feature_probe.py``). The pre-training
builds no VA block and does not depend on the form. The blocks' measurements (``benchmarks/va_block_stats.py``:
hidden units alive, slice-attention entropy and weights, gate spread, output / target norm) are logged per FPN level
in every training epoch and on the held-out volumes (``training_watch``, ``evaluation_watch``; tables:
``benchmarks/va_slice_attention.py``).

Every arm starts, as the paper's models do (sec. 3.2: feature extractor and RPN "copied from detectors pre-trained on
the MS-COCO and DeepLesion datasets"), from one detector trained on other data: the 2.5D Mask R-CNN without VA,
trained once (:func:`pretrain`, seed 0, ``--pretrain_epochs``) on 32 plain phantom volumes without look-alikes. The
arms load its ``--pretrained_parts`` through the bundle's own ``pretrained`` knobs (batch norm frozen, first ResNet
stage fixed): by default its RoI heads too, which know the same classes, so that every arm starts from a detector
that finds lesions and the budget goes to what the context phantoms add; the VA blocks start from random weights
drawn with the arm's seed.

The bundle's evaluation writes each held-out volume's prediction in its own space; :func:`score` reads them with the
LiTS scorer (``shared.metrics.lits``: lesion Dice per case, mean over volumes), counts the lesion false positives
(predicted lesion components, 26-connected as the scorer's lesions, that touch no reference lesion) and the
look-alikes hit (a look-alike whose centre voxel, from ``context_lookalikes.json``, is predicted lesion): what
context should teach.

Demo sizes (``DEMO_OVERRIDES``; the paper's stay the config defaults): those of ``scripts/va_maskrcnn_lits_job.sh``,
read from its args file ``scripts/va_maskrcnn_lits_demo_args.json`` (128 px slices, ResNet-18 with an FPN 64
channels wide, anchors 4-64 px, HU window [-100, 200], 300/100 proposals, 64 RoI samples, AdamW at lr 0.001, lesion
slices over-sampled 10x), but a bag of N = 9 images, the config default, and the pre-trained start above.
Data: 32 context phantom volumes of 128 x 128 px and 64 slices at 1.5 mm (24 to train, 8 held out).

Budget, equal for every arm: 5 epochs of 200 slices (500 iterations at batch 2) after the shared pre-training of 18
epochs (1800 iterations, what the demo job trains from random weights), sized for the 120 minutes the whole run may
take on 2 cores from a pilot timed alone: pre-training 0.6-1.0 s per iteration (2 threads, slowing as the detector
learns; 28.8 min), arms at one thread each 1.4-1.6 s (baseline) and 3.3-3.5 s (full VA, N = 9) per iteration.
Bundle docs (docs/experiments/va_maskrcnn_lits.md) give the runs and what they found.

Writes ``<out>/ablation.json`` (settings, every arm and seed with its per-volume scores and block measurements) and
``<out>/ablation.md`` (mean +- sd over seeds). ``--smoke`` is a tiny run (the arms given, 1 seed, 1 epoch of 4
slices, 32 px phantoms) to check the pipeline.
"""

import argparse
import contextlib
import functools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ablation, va_context_probe  # noqa: E402
from benchmarks.va_block_stats import recorded_block_stats, summaries  # noqa: E402
from shared.phantoms.context import LOOKALIKES_NAME  # noqa: E402

CONFIGS = REPO / "bundles" / "va_maskrcnn_lits" / "configs"
SPLIT_SEED = 0  # the datalist's shuffle: the same held-out volumes for every seed


def as_knobs(form: dict) -> dict:
    """Block keyword arguments as the command line gives them (booleans as lower-case strings)."""
    return {key: str(value).lower() if isinstance(value, bool) else value for key, value in form.items()}


FIXED_FORM = as_knobs(va_context_probe.FIXED)
"""The block form the VA arms train with (``--form fixed``, the default): eq. 3's product divided by H*W, gates
divided by their mean, at least 16 hidden units in eq. 2's embedding, no ReLU starting the spatial head: the form
that ``benchmarks/va_context_probe.py`` calls ``fixed`` (bundle docs: what each change is needed for)."""
PAPER_FORM = {
    "spatial_scale": "false",
    "gate_norm": "false",
    "min_hidden": 1,
    "spatial_relu": "true",
    "sequential": "true",
    "bag_residual": "false",
}
"""Eq. 2-3 as written (the bundle's defaults): the ``full_paper`` arm, and every VA arm with ``--form paper``."""
FIXED_PARALLEL_FORM = as_knobs(va_context_probe.FORMS["fixed_parallel"])
""":data:`FIXED_FORM` with ``sequential`` false (``--form fixed_parallel``): the spatial attention read from the bag as
given, not from the channel-gated bag (the probe's ``fixed_parallel``, where full VA carried context in every seed)."""
FIXED_PARALLEL_RESIDUAL_FORM = as_knobs(va_context_probe.FORMS["fixed_parallel_residual"])
""":data:`FIXED_PARALLEL_FORM` with ``bag_residual`` true (``--form fixed_parallel_residual``): the attention-weighted
bag also reaches the target through a zero-initialised 1x1 convolution (the feature probe's best form, not the
paper's)."""
FORMS = {
    "fixed": FIXED_FORM,
    "fixed_parallel": FIXED_PARALLEL_FORM,
    "fixed_parallel_residual": FIXED_PARALLEL_RESIDUAL_FORM,
    "paper": PAPER_FORM,
}
FORM_KNOBS = {knob for form in FORMS.values() for knob in form}
VA = {"attention": "true"}

# arm -> (the model it claims to be, the VA blocks its network must hold, its knobs as the command line gives them);
# the VA arms' block form (FIXED_FORM or PAPER_FORM) is added by arm_overrides unless the arm sets its own
ARMS = {
    "baseline": ("2.5D Mask R-CNN (no VA)", (), {"attention": "false"}),
    "channel": (
        "VA Mask R-CNN, channel attention only",
        ("channel",),
        {**VA, "channel_attention": "true", "spatial_attention": "false"},
    ),
    "spatial": (
        "VA Mask R-CNN, spatial attention only",
        ("spatial",),
        {**VA, "channel_attention": "false", "spatial_attention": "true"},
    ),
    "full": (
        "VA Mask R-CNN (channel + spatial)",
        ("channel", "spatial"),
        {**VA, "channel_attention": "true", "spatial_attention": "true"},
    ),
    "full_paper": (
        "VA Mask R-CNN (channel + spatial), eq. 2-3 as written",
        ("channel", "spatial"),
        {**VA, "channel_attention": "true", "spatial_attention": "true", **PAPER_FORM},
    ),
}
DEFAULT_ARMS = ["full", "baseline"]  # the must-haves, the slower first; --arms adds the others

DEMO_ARGS = REPO / "scripts" / "va_maskrcnn_lits_demo_args.json"
"""The demo job's sizes, which every arm trains with, but for the bag (see the module docstring)."""
DEMO_OVERRIDES = {**json.loads(DEMO_ARGS.read_text()), "bag_size": 9, "amp": "false"}
SMOKE = {"seeds": [0], "epochs": 1, "samples": 4, "cases": 4, "shape": [32, 32, 24], "pretrain_epochs": 1}
PRETRAIN_PHANTOM_SEED = 1  # other volumes than the context phantoms (seed 0)
SMOKE_OVERRIDES = {"image_size": 32, "proposals_train": 50, "proposals_test": 20, "roi_samples": 16}


def block_form(block) -> dict:
    """The form of one ``VolumetricAttention`` block, in the terms of :func:`claimed_form`."""
    from torch import nn

    form = {"spatial_scale": block.spatial_scale, "gate_norm": block.gate_norm, "bag_residual": block.bag_residual}
    if block.spatial:
        form["spatial_relu"] = isinstance(block.spatial_head[0], nn.ReLU)
    if block.channel:
        form["channel_hidden"] = block.channel_embedding[0].out_channels
    if block.channel and block.spatial:
        form["sequential"] = block.sequential
    return form


def va_blocks(network) -> dict:
    """The VA blocks (``channel``, ``spatial``) a VA Mask R-CNN holds, their form (:func:`block_form`; ``"mixed"``
    if the blocks differ), the backbone images each target reads (the bag size N with attention, 1 without) and its
    parameter count, read from the object."""
    from shared.networks.blocks.volumetric_attention import VolumetricAttention

    found = [m for m in network.modules() if isinstance(m, VolumetricAttention)]
    forms = [block_form(m) for m in found]
    kinds = [[name for name in ("channel", "spatial") if getattr(m, name)] for m in found]
    return {
        "blocks": kinds[0] if kinds and all(k == kinds[0] for k in kinds) else sorted({n for k in kinds for n in k}),
        "form": (forms[0] if all(f == forms[0] for f in forms) else "mixed") if forms else {},
        "images_per_target": len(network.backbone.image_offsets),
        "bag_size": network.backbone.bag_size,
        "parameters": sum(p.numel() for p in network.parameters()),
    }


def claimed_form(knobs: dict, channels: int) -> dict:
    """The block form that the knobs ``knobs`` (as the command line or a JSON args file gives them) give blocks of
    ``channels`` channels, in the terms of :func:`block_form`."""
    from shared.engines.flags import as_bool
    from shared.networks.blocks.volumetric_attention import channel_hidden_units

    def on(name: str) -> bool:
        return as_bool(knobs.get(name, False), name)

    blocks = [name for name in ("channel", "spatial") if on(f"{name}_attention")]
    if not on("attention") or not blocks:
        return {}
    form = {"spatial_scale": on("spatial_scale"), "gate_norm": on("gate_norm"), "bag_residual": on("bag_residual")}
    if "spatial" in blocks:
        form["spatial_relu"] = as_bool(knobs.get("spatial_relu", True), "spatial_relu")
    if "channel" in blocks:
        form["channel_hidden"] = channel_hidden_units(channels, min_hidden=int(knobs.get("min_hidden", 1)))
    if len(blocks) == 2:
        form["sequential"] = as_bool(knobs.get("sequential", True), "sequential")
    return form


def check_arm(arm: str, knobs: dict, network, what: str) -> dict:
    """:func:`va_blocks` of ``network``; stops the run if they are not those ``arm`` claims: its blocks, 1 image per
    target without VA and the whole bag with it, and the block form its ``knobs`` (the arm's overrides) set."""
    found = va_blocks(network)
    model, claimed = ARMS[arm][0], list(ARMS[arm][1])
    if found["blocks"] != claimed:
        raise SystemExit(f"arm {arm} ({model}): the {what} network holds VA blocks {found['blocks']}, not {claimed}")
    images = found["bag_size"] if claimed else 1
    if found["images_per_target"] != images:
        raise SystemExit(
            f"arm {arm} ({model}): the {what} network reads {found['images_per_target']} backbone images per target, "
            f"not {images}"
        )
    form = claimed_form(knobs, int(knobs["fpn_channels"]))
    if found["form"] != form:
        raise SystemExit(f"arm {arm} ({model}): the {what} network's VA blocks are {found['form']}, not {form}")
    return found


def arm_overrides(arm: str, seed: int, data: Path, arm_dir: Path, epochs: int, extra: dict | None = None) -> dict:
    """The bundle overrides of one arm and seed: the demo sizes (updated with ``extra``), the budget, one split for
    every seed, and the arm's attention knobs as the lower-case strings the command line gives."""
    return {
        **DEMO_OVERRIDES,
        **(extra or {}),
        "dataset_dir": str(data),
        "cache_dir": str(data.parent / "cache"),  # shared by the arms: each volume preprocessed once
        "ckpt_dir": str(arm_dir / "models"),
        "output_dir": str(arm_dir / "runs"),
        "seed": seed,
        "datalist#seed": SPLIT_SEED,
        "epochs": epochs,
        "val_interval": epochs + 1,  # no validation: no model is picked on the held-out volumes
        **ARMS[arm][2],
    }


def ras_voxels(path: Path, voxels: list) -> np.ndarray:
    """Voxel indices ``[i, j, k]`` of the image at ``path``, as written, -> their indices once it is reoriented to
    RAS (as ``shared.metrics.label_volumes.load_ras`` reads it), from the header alone."""
    import nibabel as nib

    img = nib.load(path)
    to_ras = np.linalg.inv(nib.orientations.inv_ornt_aff(nib.io_orientation(img.affine), img.shape[:3]))
    return np.rint(nib.affines.apply_affine(to_ras, np.asarray(voxels, dtype=float).reshape(-1, 3))).astype(int)


def lesion_false_positives(pred: np.ndarray, ref: np.ndarray) -> int:
    """Predicted lesion components (26-connected, as the LiTS scorer's lesions) that touch no reference lesion."""
    from scipy import ndimage

    from shared.data.lits import LESION
    from shared.metrics.lits import CONNECTIVITY

    components, count = ndimage.label(pred == LESION, structure=CONNECTIVITY)
    touching = np.unique(components[(ref == LESION) & (components > 0)])
    return count - len(touching)


def score(pred_dir: Path, entries: list[dict], lookalikes: dict) -> dict:
    """Lesion Dice per case (the LiTS scorer's, mean over volumes), lesion false positives per volume and the
    fraction of look-alikes hit (centre voxel predicted lesion) of the predictions in ``pred_dir`` of the datalist
    ``entries``; ``lookalikes`` is ``context_lookalikes.json`` (image file name -> look-alike centres [i, j, k])."""
    from shared.data.lits import CLASSES, LESION
    from shared.metrics import lits
    from shared.metrics.label_volumes import load_label_pair, pair_cases

    images = {e["case"]: Path(e["image"]).name for e in entries}
    refs = {e["case"]: Path(e["label"]) for e in entries}
    pairs = pair_cases(lits.find_predictions(pred_dir), refs, pred_dir, lits.EXPECTED_PREDICTIONS)
    scores, cases = [], []
    for case, pred_path, ref_path in pairs:
        pred, ref, spacing = load_label_pair(pred_path, ref_path, num_labels=len(CLASSES))
        scores.append(lits.score_case(pred, ref, spacing))
        centres = ras_voxels(ref_path, lookalikes.get(images[case], []))
        cases.append(
            {
                "case": case,
                "lesion_dice": scores[-1].dice["lesion"],
                "lesions": len(scores[-1].lesions),
                "lesion_false_positives": lesion_false_positives(pred, ref),
                "lookalikes": len(centres),
                "lookalikes_hit": int(sum(pred[tuple(c)] == LESION for c in centres)),
            }
        )
    total = sum(c["lookalikes"] for c in cases)
    return {
        "volumes": len(cases),
        "lesions": sum(c["lesions"] for c in cases),
        "lookalikes": total,
        "lesion_dice_per_case": lits.summarize(scores)["lesion_dice_per_case"],
        "lesion_fp_per_volume": float(np.mean([c["lesion_false_positives"] for c in cases])),
        "lookalikes_hit": sum(c["lookalikes_hit"] for c in cases) / total if total else float("nan"),
        "cases": cases,
    }


def fpn_va_blocks(network) -> dict:
    """The VA blocks a VA Mask R-CNN applies before its RPN, by FPN level; none for a network without them."""
    return dict(network.backbone.attention.items()) if hasattr(network.backbone, "attention") else {}


@contextlib.contextmanager
def watched_blocks(phase: str, network, trainer) -> Iterator[dict]:
    """The VA blocks' measurements (``benchmarks/va_block_stats.py``) per FPN level: in training one window per epoch
    (``{"epochs": [{"epoch", "levels": {level: summary}}, ...]}``), in evaluation one over the held-out volumes
    (``{"levels": ...}``); nothing for a network without VA blocks before the RPN."""
    from ignite.engine import Events

    blocks = fpn_va_blocks(network)
    log: dict = {}
    if not blocks:
        yield log
        return
    with recorded_block_stats(blocks) as stats:
        if trainer is not None:
            log["epochs"] = []

            def epoch_done(engine) -> None:
                log["epochs"].append({"epoch": engine.state.epoch, "levels": summaries(stats, reset=True)})

            trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_done)
        yield log
        if trainer is None:
            log["levels"] = summaries(stats)
        else:
            trainer.remove_event_handler(epoch_done, Events.EPOCH_COMPLETED)


def run_arm(arm: str, seed: int, data: Path, arm_dir: Path, epochs: int, extra: dict) -> dict:
    """Train one arm with one seed through the bundle, evaluate it on the held-out volumes, return its record."""
    from shared.data.lits import make_datalist

    overrides = arm_overrides(arm, seed, data, arm_dir, epochs, extra)
    eval_dir = arm_dir / "eval"
    evaluation = held_out_evaluation(arm_dir, epochs, eval_dir)
    check = functools.partial(check_arm, arm, overrides)
    evaluated, costs = ablation.train_and_evaluate(
        CONFIGS, overrides, evaluation, check, f"arm {arm} seed {seed}", watched_blocks
    )
    entries = make_datalist(data, seed=SPLIT_SEED)["validation"]
    lookalikes = json.loads((data / LOOKALIKES_NAME).read_text())
    return {
        "arm": arm,
        "seed": seed,
        "model": ARMS[arm][0],
        **evaluated,
        **score(eval_dir / "predictions", entries, lookalikes),
        **costs,
        "eval_dir": str(eval_dir),
    }


def describe(record: dict) -> str:
    """One line on a finished run."""
    return (
        f"lesion Dice per case {record['lesion_dice_per_case']:.3f}, {record['lesion_fp_per_volume']:.1f} lesion FPs "
        f"per volume, look-alikes hit {record['lookalikes_hit']:.3f} ({record['train_s']:.0f} s training, "
        f"{record['peak_rss_mib']:.0f} MiB)"
    )


METRICS = ("lesion_dice_per_case", "lesion_fp_per_volume", "lookalikes_hit")


def summarize(records: list[dict], settings: dict) -> tuple[list[dict], str]:
    """One row per arm (mean and sd over seeds) and the markdown table."""
    rows = []
    for arm, runs in ablation.by_arm(records, list(ARMS)):
        row = {"arm": arm, "model": ARMS[arm][0], "seeds": len(runs)}
        row |= {key: runs[0][key] for key in ("parameters", "blocks", "images_per_target")}
        for metric in METRICS:
            row[f"{metric}_mean"], row[f"{metric}_sd"] = ablation.mean_sd([r[metric] for r in runs])
        rows.append(row | ablation.costs(runs))
    first, sizes = records[0], settings["overrides"]
    lines = [
        f"Held-out context phantoms: {first['volumes']} volumes (the 25 % quarter of the 75/25 split), "
        f"{first['lesions']} lesions, {first['lookalikes']} look-alikes; {settings['epochs']} epochs of "
        f"{sizes['samples_per_epoch']} slices per model, each starting from the "
        f"{', '.join(sizes.get('pretrained_parts', ['backbone', 'rpn']))} of a 2.5D Mask R-CNN trained "
        f"{settings['pretrain_epochs']} epochs on plain phantoms; seeds {settings['seeds']}; "
        f"bag N = {sizes['bag_size']}; "
        f"VA block form {settings.get('form', 'paper')}; phantoms {settings.get('phantom_context', {})}; "
        f"{settings['parallel']} process(es) at a time, {settings['threads']} thread(s) each. Lesion Dice per case "
        "(LiTS), lesion false positives per volume (predicted lesion components touching no lesion), look-alikes hit "
        "(centre voxel predicted lesion); mean +- sd over seeds."
        + (
            f" A detector that cannot tell look-alikes from lesions and is otherwise perfect would score a lesion Dice "
            f"per case of {settings['context_blind_ceiling']['mean']:.3f} here."
            if "context_blind_ceiling" in settings
            else ""
        ),
        "",
    ]
    columns = [("model", False), ("params", True), ("VA blocks", False), ("images per target", True)]
    columns += [("seeds", True), ("lesion Dice per case", False), ("lesion FPs per volume", False)]
    columns += [("look-alikes hit", False), ("training s (CPU s)", True), ("peak RSS MiB", True)]
    cells = []
    for r in rows:
        described = [r["model"], f"{r['parameters']:,}", ", ".join(r["blocks"]) or "none", str(r["images_per_target"])]
        metrics = [f"{r[f'{m}_mean']:.3f} +- {r[f'{m}_sd']:.3f}" for m in METRICS]
        cells.append([*described, str(r["seeds"]), *metrics, *ablation.cost_cells(r)])
    return rows, "\n".join(lines + ablation.markdown_table(columns, cells)) + "\n"


def make_data(out: Path, cases: int, shape: list[int], context_options: dict) -> Path:
    """Context phantom LiTS root for the run, through the command line (written once, reused when present);
    ``context_options``: ``context_bag``, ``max_lookalikes`` and ``fov`` (None: left out, the phantoms' defaults)."""
    options = ["--shape", json.dumps(shape), "--num_test", "0"]
    options += [
        item for key, value in context_options.items() if value is not None for item in (f"--{key}", str(value))
    ]
    return ablation.phantoms(out / "lits_context", "lits", cases, LOOKALIKES_NAME, *options)


def drawn_phantom(case: str, shape: list[int], context_options: dict):
    """The phantom of context volume ``case`` (``volume-N``) as :func:`make_data` draws it (seed 0) and the indices
    of its look-alikes in its ``lesion_list``: ``shared.phantoms.lits.draw_volume``."""
    from shared.phantoms import lits

    return lits.draw_volume(int(case.split("-")[1]), 0, shape, True, **context_options)


def context_blind_ceiling(data: Path, shape: list[int], context_options: dict) -> dict:
    """Lesion Dice per case on the held-out volumes of a detector that cannot tell look-alikes from lesions and is
    otherwise perfect (every look-alike voxel called lesion, every lesion voxel found): the most a baseline can
    reach, from the phantoms' own draws (volume N of seed 0, as :func:`make_data` writes them)."""
    from shared.data.lits import make_datalist

    cases = {}
    for entry in make_datalist(data, seed=SPLIT_SEED)["validation"]:
        case, lookalikes = drawn_phantom(entry["case"], shape, context_options)
        found = [i + 1 for i in range(len(case.lesion_list))]
        lesion = np.isin(case.lesions, [i for i in found if i - 1 not in lookalikes]).sum()
        lookalike = np.isin(case.lesions, [i for i in found if i - 1 in lookalikes]).sum()
        # as the LiTS scorer: without lesion, 1 for an empty prediction, 0 for one that holds look-alike voxels
        cases[entry["case"]] = float(2 * lesion / (2 * lesion + lookalike)) if lesion else float(lookalike == 0)
    return {"mean": float(np.mean(list(cases.values()))), "cases": cases}


def last_checkpoint(run_dir: Path, epochs: int) -> Path:
    """The training state the bundle saves after the last of ``epochs`` (its ``model`` is the last model)."""
    return run_dir / "models" / f"resume_checkpoint_epoch={epochs}.pt"


def held_out_evaluation(arm_dir: Path, epochs: int, output_dir: Path | str) -> dict:
    """Evaluation overrides of a trained arm: its last model on the held-out quarter, written to ``output_dir``."""
    return {"output_dir": str(output_dir), "split": "validation", "ckpt_path": str(last_checkpoint(arm_dir, epochs))}


def pretrain(out: Path, cases: int, shape: list[int], extra: dict, epochs: int, fov: str = "body") -> Path:
    """The detector every arm starts from, as the paper's models start from detectors pre-trained on other data
    (sec. 3.2, Table 2b): the 2.5D Mask R-CNN without VA trained, seed 0, on plain phantom LiTS volumes (no
    look-alikes; drawn with another seed than the context ones, with their field of view ``fov``), in this process
    with all its threads. Each arm copies
    its ``--pretrained_parts`` (the bundle's ``pretrained``, batch norm frozen, first ResNet stage fixed); the VA
    blocks, and any part not copied, start from random weights. Written once, reused when present with the same
    settings (:func:`benchmarks.ablation.written_once`); returns the checkpoint."""
    run_dir = out / "pretrain"
    checkpoint = last_checkpoint(run_dir, epochs)
    overrides = arm_overrides("baseline", 0, out / "lits_plain", run_dir, epochs, extra)  # cache: out / "cache"
    settings = {k: v for k, v in overrides.items() if k not in ("dataset_dir", "cache_dir", "ckpt_dir", "output_dir")}
    if not ablation.written_once(run_dir, {**settings, "cases": cases, "shape": shape, "fov": fov}) or not (
        checkpoint.is_file()
    ):
        options = ("--shape", json.dumps(shape), "--num_test", "0", "--fov", fov)
        marker = f"segmentation-{cases - 1}.nii"  # the last file written
        ablation.phantoms(
            out / "lits_plain", "lits", cases, marker, *options, seed=PRETRAIN_PHANTOM_SEED, context=False
        )
        ablation.workflow(CONFIGS, str(CONFIGS / "train.json"), overrides).run()
    return checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ablation.add_arguments(parser, list(ARMS), REPO / "outputs" / "va_ablation", epochs=5, smoke=SMOKE)
    parser.set_defaults(arms=DEFAULT_ARMS)
    parser.add_argument("--samples", type=int, default=200, help="training slices per epoch")
    parser.add_argument("--cases", type=int, default=32, help="context phantom volumes (25 %% held out)")
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64], help="phantom rows, cols, 1.5 mm slices")
    parser.add_argument("--pretrain_epochs", type=int, default=18, help="epochs of the detector the arms start from")
    parser.add_argument(
        "--context_bag", type=int, default=9, help="phantoms made for this bag (0: the default phantoms)"
    )
    parser.add_argument("--max_lookalikes", type=int, default=1, help="look-alikes per volume at most (0: no limit)")
    parser.add_argument(
        "--fov", choices=["body", "liver"], default="body", help="what the phantoms' slices span (liver: 1.6x finer)"
    )
    parser.add_argument(
        "--form", choices=list(FORMS), default="fixed", help="block form of the VA arms (full_paper's is the paper's)"
    )
    parser.add_argument(
        "--pretrained_parts",
        nargs="+",
        default=["backbone", "rpn", "roi_heads"],
        help="what each arm copies from the pre-trained detector",
    )
    args = parser.parse_args()

    if args.arm:
        record = run_arm(args.arm, args.seed, args.data, args.out, args.epochs, args.overrides)
        print(json.dumps(record))  # the last line of stdout: the record run_child reads
        return
    extra = {**FORMS[args.form], "samples_per_epoch": args.samples}
    extra |= json.loads(args.args_file.read_text()) if args.args_file else {}
    if args.smoke:
        args.seeds, args.epochs, args.samples, args.cases, args.shape, args.pretrain_epochs = SMOKE.values()
        extra = {**extra, **SMOKE_OVERRIDES, "samples_per_epoch": args.samples}
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    context_options = {"context_bag": args.context_bag or None, "max_lookalikes": args.max_lookalikes or None}
    context_options["fov"] = args.fov
    data = make_data(out, args.cases, args.shape, context_options)
    ceiling = context_blind_ceiling(data, args.shape, context_options)
    print(f"context-blind ceiling of the held-out lesion Dice per case: {ceiling['mean']:.3f}", flush=True)
    no_form = {key: value for key, value in extra.items() if key not in FORM_KNOBS}  # the baseline has no VA blocks
    pretrained = pretrain(out, args.cases, args.shape, no_form, args.pretrain_epochs, args.fov)
    extra = {**extra, "pretrained": "true", "pretrained_path": str(pretrained), "frozen_batchnorm": "true"}
    extra["pretrained_parts"] = args.pretrained_parts
    parallel = max(1, args.jobs)
    settings = {
        "arms": args.arms,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "pretrain_epochs": args.pretrain_epochs,
        "form": args.form,
        "phantom_cases": args.cases,
        "phantom_shape": args.shape,
        "phantom_context": context_options,
        "context_blind_ceiling": ceiling,
        "overrides": {**DEMO_OVERRIDES, **extra},
        **ablation.machine_settings(parallel),
    }
    records = ablation.run_arms(__file__, args.arms, args.seeds, data, out, args.epochs, extra, parallel, describe)
    rows, markdown = summarize(records, settings)
    ablation.write_report(out, settings, rows, records, markdown, started)


if __name__ == "__main__":
    main()
