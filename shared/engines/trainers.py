"""Ignite/MONAI trainer for torchvision-style detectors: ``model(images, targets)`` returns a dict of losses.

Works for any such model (VA Mask R-CNN, VA Faster R-CNN, 3DCE, plain torchvision detectors). Each iteration sums
the loss dict, back-propagates (optionally with AMP on CUDA and gradient clipping) and stores the losses as floats
in ``engine.state.output`` (``{"loss": total, "loss_classifier": ..., ...}``), so MONAI's ``StatsHandler`` and
``TensorBoardStatsHandler`` with ``output_transform=lambda x: x`` log every loss. Validation on whole volumes runs
in a MONAI ``SupervisedEvaluator`` with a slice-wise inferer (:mod:`shared.engines.inferers.volume_mask`), attached with
``ValidationHandler``.
"""

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from torch.optim import Optimizer

from shared.engines.precision import autocast

TARGET_KEYS = ("boxes", "labels", "masks")


def collate_detection(
    batch: list[dict], image_key: str = "image", target_keys: Sequence[str] = TARGET_KEYS
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Collate samples ``{image_key: (C, H, W), "boxes": (K, 4), "labels": (K,), "masks": (K, H, W)}`` into the
    (images, targets) lists torchvision detectors take; target keys a sample lacks are left out."""
    images = [torch.as_tensor(sample[image_key]) for sample in batch]
    targets = [{k: torch.as_tensor(sample[k]) for k in target_keys if k in sample} for sample in batch]
    return images, targets


def prepare_detection_batch(
    batchdata: tuple[list[torch.Tensor], list[dict]], device: torch.device | str | None = None, non_blocking=False, **_
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Move a collated (images, targets) batch to ``device`` (the trainer's ``prepare_batch``)."""
    images, targets = batchdata
    images = [im.to(device=device, non_blocking=non_blocking) for im in images]
    targets = [{k: v.to(device=device, non_blocking=non_blocking) for k, v in t.items()} for t in targets]
    return images, targets


class DetectionTrainer(Trainer):
    """MONAI ``Trainer`` for detectors that return a loss dict in train mode.

    Args:
        device: training device.
        max_epochs: number of epochs.
        train_data_loader: yields (images, targets) lists, e.g. a DataLoader with :func:`collate_detection`.
        network: detector; ``network(images, targets)`` in train mode returns ``{name: scalar loss}``.
        optimizer: torch optimizer over the trainable parameters.
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        train_handlers: ignite/MONAI handlers (StatsHandler, CheckpointSaver, ValidationHandler, ...).
        amp: mixed precision with a GradScaler; used only on CUDA (ignored on CPU).
        grad_clip_norm: clip the gradients' global L2 norm to this value (None: no clipping).
        loss_weights: optional factor per loss name (e.g. ``{"loss_mask": 2.0}``); others count 1.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: Optimizer,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = prepare_detection_batch,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        grad_clip_norm: float | None = None,
        loss_weights: dict[str, float] | None = None,
    ) -> None:
        device = torch.device(device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            handlers=train_handlers,
            amp=amp and device.type == "cuda",
            decollate=False,
        )
        self.network = network
        self.optimizer = optimizer
        self.grad_clip_norm = grad_clip_norm
        self.loss_weights = loss_weights or {}

    def _iteration(self, engine: "DetectionTrainer", batchdata) -> dict[str, float]:
        images, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=True)
        with autocast(engine.state.device, engine.amp):
            loss_dict = engine.network(images, targets)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = sum(engine.loss_weights.get(k, 1.0) * v.float() for k, v in loss_dict.items())
        if not math.isfinite(loss.item()):
            losses = ", ".join(f"{k}={v.item():.4g}" for k, v in loss_dict.items())
            raise FloatingPointError(
                f"non-finite training loss at iteration {engine.state.iteration} ({losses}): "
                "lower the learning rate or enable grad_clip_norm"
            )
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        params = [p for group in engine.optimizer.param_groups for p in group["params"]]
        if engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if engine.grad_clip_norm is not None:
                engine.scaler.unscale_(engine.optimizer)
                torch.nn.utils.clip_grad_norm_(params, engine.grad_clip_norm)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if engine.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, engine.grad_clip_norm)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return {"loss": loss.item(), **{k: v.item() for k, v in loss_dict.items()}}
