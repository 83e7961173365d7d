"""``DeepLesionFROCMetric``: the FROC of ``shared.metrics.deeplesion`` as an ignite metric for detection evaluators.

Kept apart so that scoring a detections file does not import ignite and torch.
"""

from collections.abc import Callable, Sequence
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric

from shared.metrics.deeplesion import FP_RATES, FROCResult, froc


class DeepLesionFROCMetric(Metric):
    """FROC sensitivity of a detection evaluator (ignite), accumulated over the images of an epoch.

    Engine output (after ``output_transform``): ``(predictions, targets)``, lists with one dict per image as in
    torchvision detection: ``{"boxes": (K, 4), "scores": (K,)}`` and ``{"boxes": (G, 4)}`` (tensors or arrays,
    0-based pixel [x1, y1, x2, y2]). ``compute()`` returns the sensitivity at ``key_fp_rate`` (3DCE selects its
    model on sensitivity at 4 FPs per image); when attached as ``name``, the sensitivity at every ``fp_rates``
    is also stored as ``engine.state.metrics[f"{name}@{rate:g}"]``, and ``self.result`` keeps the ``FROCResult``.
    ``convention`` is that of ``shared.metrics.deeplesion.froc``: 3DCE's (the papers' tables) by default, applied
    to the boxes as given (validation sees them in the preprocessed pixels, 3DCE's in the PNG's).
    Under DDP the images of all processes are gathered first.
    """

    def __init__(
        self,
        fp_rates: Sequence[float] = FP_RATES,
        key_fp_rate: float = 4.0,
        iou_threshold: float = 0.5,
        use_iobb: bool = False,
        convention: str = "3dce",
        output_transform: Callable = lambda x: x,
        device: str | torch.device = "cpu",
    ) -> None:
        self.fp_rates = tuple(float(r) for r in fp_rates)
        self.key_fp_rate = float(key_fp_rate)
        self.iou_threshold = iou_threshold
        self.use_iobb = use_iobb
        self.convention = convention
        self.result: FROCResult | None = None
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._images: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, output: tuple[Sequence[dict[str, Any]], Sequence[dict[str, Any]]]) -> None:
        predictions, targets = output
        if len(predictions) != len(targets):
            raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets: one of each per image")
        for pred, target in zip(predictions, targets):
            self._images.append((_numpy(pred["boxes"]), _numpy(pred["scores"]), _numpy(target["boxes"])))

    def compute(self) -> float:
        images = [image for part in idist.all_gather(self._images) for image in part]
        if not images:
            raise NotComputableError("DeepLesionFROCMetric needs at least one image before compute()")
        boxes, scores, gts = zip(*images)
        rates = tuple(sorted({*self.fp_rates, self.key_fp_rate}))
        self.result = froc(boxes, scores, gts, rates, self.iou_threshold, self.use_iobb, self.convention)
        return self.result.as_dict()[f"sens@{self.key_fp_rate:g}"]

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        sensitivities = self.result.as_dict()
        for rate in self.fp_rates:
            engine.state.metrics[f"{name}@{rate:g}"] = sensitivities[f"sens@{rate:g}"]


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
