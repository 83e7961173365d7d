"""Can the VA block carry context from distant bag members into the target? (issue 22, section 1)

A synthetic task with nothing but the block between the bag and a classifier: bags of feature maps (B, N, C, H, W),
N = 9 in z order, target in the middle, where each object is drawn identically (same place, size, signature) on the
target member and its neighbours (members within :data:`LESION_REACH` of the target) and then either continues
through every far member (a *look-alike*, like a vessel) or ends (a *lesion*). Far members also hold other objects
of their own elsewhere. Background features are noise. Every pixel is labelled background, lesion or look-alike.

Arms, each with the same classifier head (3x3 conv, ReLU, 1x1 conv: per-pixel logits) trained the same number of
steps on fresh bags:

- ``target``: the head on the target member's features: lesions and look-alikes are drawn from one distribution
  there, so it cannot tell them apart (chance 0.5 by construction);
- ``channel``, ``spatial``, ``full``: the head on the output of ``VolumetricAttention`` (channel only, spatial only,
  both) over the bag.

Reported on held-out bags: per-object accuracy on lesions vs look-alikes (an object's class: the larger of its
summed lesion and look-alike logits), mean +- sd over seeds, and the block's measurements
(``benchmarks/va_block_stats.py``) over the last 50 training steps and on the held-out bags. ``--forms`` picks the
block forms of :data:`FORMS`: eq. 2-3 as written (``paper``), the ``fixed`` form that ``benchmarks/va_ablation.py``
trains with, and the fixed form less one change at a time.

    PYTHONPATH=. .venv/bin/python benchmarks/va_context_probe.py [--forms paper fixed]
        [--arms target channel spatial full] [--seeds 0 1 2] [--steps 600] [--out probe.json]
"""

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import ablation  # noqa: E402
from benchmarks.va_block_stats import recorded_block_stats, summaries  # noqa: E402
from shared.networks.blocks.volumetric_attention import VolumetricAttention  # noqa: E402

BAG_SIZE = 9  # the paper's N (sec. 3.2)
CHANNELS = 64  # the demo's FPN width
SIZE = 32  # H = W: the demo's FPN level 0 (128 px slices at stride 4)
OBJECTS = (2, 5)  # objects drawn on the target per bag (low, high inclusive)
LESION_REACH = 1  # members on either side of the target that still show a lesion
RADIUS_PX = (2.0, 4.0)
BACKGROUND_SD = 0.5
AMPLITUDE = (0.7, 1.3)  # of an object's signature
SIGNATURE_JITTER = 0.3  # per-object change of the common signature
FAR_OBJECTS = (0, 2)  # extra objects of their own per far member run
LABELS = ("background", "lesion", "look-alike")
ARMS = {
    "target": None,
    "channel": {"channel": True, "spatial": False},
    "spatial": {"channel": False, "spatial": True},
    "full": {"channel": True, "spatial": True},
}
HELD_OUT_SEED = 12345
FIXED = {"spatial_scale": True, "gate_norm": True, "min_hidden": 16, "spatial_relu": False}
FORMS = {
    "paper": {},  # eq. 2-3 as written: the bundle's defaults
    "fixed": FIXED,  # benchmarks/va_ablation.py's FIXED_FORM
    # the fixed form less one of its changes: what each one is needed for
    "fixed_literal_eq3": {**FIXED, "spatial_scale": False},
    "fixed_plain_gates": {**FIXED, "gate_norm": False},
    "fixed_spatial_relu": {**FIXED, "spatial_relu": True},
    "fixed_c16_hidden": {**FIXED, "min_hidden": 1},
    # the fixed form with the spatial attention computed from the bag before the channel gate
    "fixed_parallel": {**FIXED, "sequential": False},
    # the attention-weighted bag added to the gated target (non-local residual, zero-initialised): a deviation
    "paper_residual": {"bag_residual": True},
    "fixed_parallel_residual": {**FIXED, "sequential": False, "bag_residual": True},
}
"""Block forms (``VolumetricAttention`` keyword arguments) the probe compares: ``--forms``."""


def draw_bags(generator: torch.Generator, batch: int, signature: torch.Tensor, n: int = BAG_SIZE, size: int = SIZE):
    """``batch`` bags: features (B, N, C, H, W), labels (B, H, W) and object ids (B, H, W; 0 none) of the target,
    and each object's label (lesion 1 / look-alike 2) as a list per bag."""
    c, t = signature.numel(), n // 2
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    bags = torch.randn(batch, n, c, size, size, generator=generator) * BACKGROUND_SD
    labels = torch.zeros(batch, size, size, dtype=torch.long)
    ids = torch.zeros(batch, size, size, dtype=torch.long)
    classes = []

    def uniform(low, high):
        return float(low + (high - low) * torch.rand(1, generator=generator))

    def place(occupied: torch.Tensor) -> torch.Tensor | None:
        for _ in range(20):
            r = uniform(*RADIUS_PX)
            cy, cx = uniform(r, size - 1 - r), uniform(r, size - 1 - r)
            distance = (yy - cy) ** 2 + (xx - cx) ** 2
            if not ((distance <= (r + 2) ** 2) & occupied).any():
                return distance <= r * r
        return None

    for b in range(batch):
        occupied = torch.zeros(size, size, dtype=torch.bool)
        disks, presence = [], []  # per object: (H, W) mask, (N,) members it shows on
        classes.append([])
        for _ in range(int(torch.randint(OBJECTS[0], OBJECTS[1] + 1, (1,), generator=generator))):
            disk = place(occupied)
            if disk is None:
                continue
            occupied |= disk
            label = 1 + int(torch.rand(1, generator=generator) < 0.5)  # lesion or look-alike, even odds
            shown = torch.ones(n) if label == 2 else (torch.arange(n) - t).abs().le(LESION_REACH).float()
            disks.append(disk)
            presence.append(shown)
            classes[-1].append(label)
            labels[b][disk] = label
            ids[b][disk] = len(classes[-1])
        sides = (torch.arange(t + LESION_REACH + 1, n), torch.arange(0, t - LESION_REACH))
        for side in (s for s in sides if len(s)):  # far objects of their own (none in a bag without far members)
            for _ in range(int(torch.randint(FAR_OBJECTS[0], FAR_OBJECTS[1] + 1, (1,), generator=generator))):
                disk = place(occupied)
                if disk is None:
                    continue
                occupied |= disk
                run = side if side[0] > t else side.flip(0)  # outward from the target
                shown = torch.zeros(n)
                shown[run[: int(torch.randint(1, len(side) + 1, (1,), generator=generator))]] = 1.0
                disks.append(disk)
                presence.append(shown)
        if disks:
            amplitude = AMPLITUDE[0] + (AMPLITUDE[1] - AMPLITUDE[0]) * torch.rand(len(disks), 1, generator=generator)
            jitter = torch.randn(len(disks), c, generator=generator) * SIGNATURE_JITTER
            values = amplitude * (signature + jitter)  # (objects, C)
            bags[b] += torch.einsum("on,ohw,oc->nchw", torch.stack(presence), torch.stack(disks).float(), values)
    return bags, labels, ids, classes


class Probe(nn.Module):
    """The arm's block (or the target member alone) and the shared classifier head."""

    def __init__(self, block_kwargs: dict | None, channels: int = CHANNELS) -> None:
        super().__init__()
        self.block = None if block_kwargs is None else VolumetricAttention(2, channels, **block_kwargs)
        self.head = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(32, len(LABELS), 1)
        )

    def forward(self, bag: torch.Tensor) -> torch.Tensor:
        features = bag[:, bag.shape[1] // 2] if self.block is None else self.block(bag)
        return self.head(features)


def object_accuracy(logits: torch.Tensor, ids: torch.Tensor, classes: list[list[int]]) -> dict:
    """Per-object accuracy, lesion vs look-alike: each object is called by the larger of its summed lesion and
    look-alike logits over its pixels; also by class, and their mean (balanced: chance 0.5 whatever the classes'
    shares)."""
    right = {1: [], 2: []}
    for b, labels in enumerate(classes):
        for i, label in enumerate(labels, start=1):
            mask = ids[b] == i
            summed = logits[b, 1:, mask].sum(dim=1)  # (lesion, look-alike)
            right[label].append(int(1 + int(summed.argmax())) == label)
    both = right[1] + right[2]
    by_class = {"lesion_accuracy": float(np.mean(right[1])), "lookalike_accuracy": float(np.mean(right[2]))}
    return {
        "object_accuracy": float(np.mean(both)),
        **by_class,
        "balanced_accuracy": float(np.mean(list(by_class.values()))),
        "objects": len(both),
    }


def train_probe(model: Probe, steps: int, draw, held_out: tuple, eval_every: int = 0) -> dict:
    """Train ``model`` ``steps`` steps (Adam, lr 1e-3, cross entropy with background weighted 0.2) on the batches
    ``draw()`` gives (``(bags, labels)``) and score it on ``held_out`` (``(bags, ids, classes)``, as
    :func:`object_accuracy` reads them). Returns the held-out accuracies, the mean loss of the last 50 steps, the
    training time, the block's measurements over the last 50 steps and on the held-out bags and (``eval_every`` > 0)
    the held-out object accuracy every ``eval_every`` steps before the last 50 (``curve``, the end included)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = torch.tensor([0.2, 1.0, 1.0])  # background is most pixels
    blocks = {} if model.block is None else {"block": model.block}
    held_out_bags, ids, classes = held_out

    def accuracy() -> dict:
        model.eval()
        with torch.no_grad():
            result = object_accuracy(model(held_out_bags), ids, classes)
        model.train()
        return result

    curve = []
    losses = []
    start = time.perf_counter()
    with contextlib.ExitStack() as recording:
        for step in range(steps):
            if step == max(steps - 50, 0):  # the block's measurements of the last 50 steps only
                stats = recording.enter_context(recorded_block_stats(blocks))
            bags, labels = draw()
            loss = nn.functional.cross_entropy(model(bags), labels, weight=weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps - 50:
                curve.append([step + 1, accuracy()["object_accuracy"]])
        train_stats = summaries(stats).get("block", {})
    train_s = time.perf_counter() - start
    with recorded_block_stats(blocks) as stats:
        result = accuracy()
        held_out_stats = summaries(stats).get("block", {})
    trained = {
        **result,
        "final_loss": float(np.mean(losses[-50:])),
        "train_s": train_s,
        "train_stats": train_stats,
        "held_out_stats": held_out_stats,
    }
    if eval_every:
        trained["curve"] = curve + [[steps, result["object_accuracy"]]]
    return trained


def run_arm(
    arm: str,
    seed: int,
    steps: int,
    block_kwargs: dict,
    batch: int = 8,
    held_out: int = 128,
    channels: int = CHANNELS,
    size: int = SIZE,
    bag_size: int = BAG_SIZE,
    eval_every: int = 0,
) -> dict:
    """Train one arm with one seed on bags of ``bag_size`` maps of ``channels`` x ``size`` x ``size``
    (:func:`train_probe`, fresh bags every step); return its record.

    Modules are seeded one by one (:func:`benchmarks.ablation.seed_each_module`): at one seed every arm starts the
    head, and the spatial and the full arm the spatial attention, from the same weights."""
    signature = torch.rand(channels, generator=torch.Generator().manual_seed(0))  # common to every run
    kwargs = None if ARMS[arm] is None else {**block_kwargs, **ARMS[arm]}
    model = ablation.seed_each_module(Probe(kwargs, channels), seed)
    data = torch.Generator().manual_seed(1000 + seed)
    held_out_bags, _, ids, classes = draw_bags(
        torch.Generator().manual_seed(HELD_OUT_SEED), held_out, signature, bag_size, size
    )
    trained = train_probe(
        model,
        steps,
        lambda: draw_bags(data, batch, signature, bag_size, size)[:2],
        (held_out_bags, ids, classes),
        eval_every,
    )
    return probe_record(arm, seed, model, kwargs, 1 if kwargs is None else bag_size, trained)


def probe_record(arm: str, seed: int, model: Probe, kwargs: dict | None, images_per_target: int, trained: dict) -> dict:
    """One probe run's record: what it is (block knobs, parameters, VA blocks, images per target) and
    :func:`train_probe`'s result."""
    return {
        "arm": arm,
        "seed": seed,
        "block": kwargs,
        "parameters": sum(p.numel() for p in model.parameters()),
        "va_blocks": [k for k in ("channel", "spatial") if kwargs and kwargs[k]],
        "images_per_target": images_per_target,
        **trained,
    }


def write_run(settings: dict, rows: list[dict], records: list[dict], markdown: str, started: float, out) -> None:
    """Print the table and the whole run's time (added to ``settings`` as ``total_s``); write settings, table and
    runs as JSON to ``out`` if given."""
    settings["total_s"] = time.perf_counter() - started
    print(markdown)
    print(f"Whole run: {settings['total_s'] / 60:.1f} min")
    if out:
        out.write_text(json.dumps({"settings": settings, "table": rows, "runs": records}, indent=1))


def describe(record: dict) -> str:
    """One line on a finished run: accuracies, loss, time and the block's held-out measurements."""
    stats = json.dumps({k: round(v, 3) for k, v in record["held_out_stats"].items()})
    return (
        f"object accuracy {record['object_accuracy']:.3f} (lesions {record['lesion_accuracy']:.2f}, look-alikes "
        f"{record['lookalike_accuracy']:.2f}), loss {record['final_loss']:.3f}, {record['train_s']:.0f} s; {stats}"
    ) + ("".join(f"\n  step {step}: {accuracy:.3f}" for step, accuracy in record.get("curve", [])))


def summarize(
    records: list[dict], arms: list[str] | None = None, metric: str = "object_accuracy"
) -> tuple[list[dict], str]:
    """Mean +- sd over seeds per form and arm (in the order of ``arms``, default :data:`ARMS`), and the markdown
    table of ``metric`` (``object_accuracy`` or ``balanced_accuracy``)."""
    rows, cells = [], []
    forms = list(dict.fromkeys(r["form"] for r in records))
    for form in forms:
        for arm, runs in ablation.by_arm([r for r in records if r["form"] == form], arms or list(ARMS)):
            row = {"form": form, "arm": arm, "seeds": len(runs), "parameters": runs[0]["parameters"]}
            row |= {"va_blocks": runs[0]["va_blocks"], "images_per_target": runs[0]["images_per_target"]}
            for key in (metric, "lesion_accuracy", "lookalike_accuracy"):
                row[f"{key}_mean"], row[f"{key}_sd"] = ablation.mean_sd([r[key] for r in runs])
            rows.append(row)
            accuracy = f"{row[f'{metric}_mean']:.3f} +- {row[f'{metric}_sd']:.3f}"
            by_seed = " / ".join(f"{r[metric]:.3f}" for r in runs)
            by_class = f"{row['lesion_accuracy_mean']:.2f} / {row['lookalike_accuracy_mean']:.2f}"
            blocks = ", ".join(row["va_blocks"]) or "none"
            described = [form if row["va_blocks"] else "-", arm, f"{row['parameters']:,}", blocks]
            cells.append([*described, str(row["images_per_target"]), accuracy, by_seed, by_class])
    columns = [("block form", False), ("arm", False), ("params", True), ("VA blocks", False)]
    columns += [("images per target", True), (metric.replace("_", " "), False), ("by seed", False)]
    columns += [("lesions / look-alikes", False)]
    return rows, "\n".join(ablation.markdown_table(columns, cells)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--forms", nargs="+", choices=list(FORMS), default=["paper", "fixed"])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval_every", type=int, default=0, help="held-out accuracy every so many steps (a curve)")
    parser.add_argument("--out", type=Path, help="JSON of the settings, every run and the table")
    args = parser.parse_args()
    started = time.perf_counter()
    records = []
    for form in args.forms:
        for seed in args.seeds:
            for arm in args.arms:
                if arm == "target" and form != args.forms[0]:
                    continue  # no block: one form's runs are every form's
                records.append(
                    {"form": form, **run_arm(arm, seed, args.steps, FORMS[form], eval_every=args.eval_every)}
                )
                print(f"{form} {arm} seed {seed}: {describe(records[-1])}", flush=True)
    rows, markdown = summarize(records)
    settings = {
        "steps": args.steps,
        "eval_every": args.eval_every,
        "seeds": args.seeds,
        "forms": {f: FORMS[f] for f in args.forms},
    }
    settings |= ablation.machine_settings(1)
    write_run(settings, rows, records, markdown, started, args.out)


if __name__ == "__main__":
    main()
