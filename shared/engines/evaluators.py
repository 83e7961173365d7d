"""Evaluators of the detection bundles (validation during training)."""

from __future__ import annotations

import torch
from monai.engines import Evaluator

from shared.engines.precision import autocast
from shared.engines.trainers import prepare_detection_batch


class KeySliceDetectionEvaluator(Evaluator):
    """MONAI evaluator of a detector on preprocessed key slices (validation during training).

    Batches are ``(images, targets)`` as ``shared.engines.trainers.collate_detection`` makes them; each
    iteration outputs ``{"pred": detections, "label": targets}`` (lists, one dict per image, boxes in the
    preprocessed pixels), the input of ``shared.metrics.froc_metric.DeepLesionFROCMetric`` through
    ``from_engine(["pred", "label"])``.
    """

    def __init__(self, device, val_data_loader, network: torch.nn.Module, **kwargs) -> None:
        kwargs.setdefault("prepare_batch", prepare_detection_batch)
        super().__init__(device=torch.device(device), val_data_loader=val_data_loader, decollate=False, **kwargs)
        self.network = network

    def _iteration(self, engine: KeySliceDetectionEvaluator, batchdata) -> dict:
        images, targets = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        engine.network.eval()
        with torch.no_grad(), autocast(engine.state.device, engine.amp):
            predictions = engine.network(images)
        return {"pred": predictions, "label": targets}
