"""MONAI metrics of the challenges' region Dice, for ignite evaluators (``monai.handlers.IgniteMetricHandler``).

The same Dice as ``shared.metrics.kits19`` and ``shared.metrics.lits`` on the regions of ``shared.data.kits19`` and
``shared.data.lits``; kept apart from those modules so that scoring files (``python -m shared evaluate``) does not
import MONAI.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric, compute_dice

from shared.data import kits19, lits


def _labels(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) label indices or (B, C, ...) one-hot / probabilities -> (B, ...) integer label map."""
    if x.shape[1] == 1:
        return x[:, 0].round().long()
    return x.argmax(dim=1)


class RegionDiceMetric(CumulativeIterationMetric):
    """Per-case Dice of label regions, accumulated over iterations (use with ``monai.handlers.IgniteMetricHandler``).

    Inputs (``y_pred`` and ``y`` alike) are batch-first tensors or lists of channel-first tensors, either label
    indices with one channel (B, 1, H, W, D) or one channel per class (B, C, H, W, D) — one-hot, as MONAI's
    ``AsDiscrete(argmax=True, to_onehot=C)`` gives, or probabilities: several channels are reduced by argmax.
    Dice per case and region follows ``dice`` (both empty -> 1), computed by MONAI's ``compute_dice`` with
    ``ignore_empty=False``.

    Args:
        regions: region name -> label values it contains, e.g. ``{"kidney": (1, 2), "tumour": (2,)}``.
        key_regions: regions whose Dice (mean over cases) ``aggregate`` averages into its one number.
    """

    def __init__(self, regions: Mapping[str, Sequence[int]], key_regions: Sequence[str]) -> None:
        super().__init__()
        unknown = [k for k in key_regions if k not in regions]
        if unknown:
            raise ValueError(f"key_regions {unknown} are not among the regions {list(regions)}")
        self.regions = {name: tuple(values) for name, values in regions.items()}
        self.key_regions = tuple(key_regions)

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Per-case, per-region Dice of a batch, shape (B, number of regions)."""
        if y is None:
            raise ValueError(f"{type(self).__name__} needs the reference labels y")
        pred, ref = _labels(y_pred), _labels(y)
        if pred.shape != ref.shape:
            raise ValueError(f"prediction shape {tuple(y_pred.shape)} does not match label shape {tuple(y.shape)}")
        masks = [
            torch.stack([torch.isin(labels, torch.tensor(v, device=labels.device)) for v in self.regions.values()], 1)
            for labels in (pred, ref)
        ]
        return compute_dice(masks[0], masks[1], include_background=True, ignore_empty=False)

    def per_class(self) -> dict[str, float]:
        """Mean over the accumulated cases of each region's Dice."""
        buffer = self.get_buffer()
        if not isinstance(buffer, torch.Tensor) or buffer.numel() == 0:
            raise ValueError(f"{type(self).__name__}: no case accumulated yet")
        return dict(zip(self.regions, buffer.float().mean(dim=0).tolist()))

    def aggregate(self) -> torch.Tensor:
        """Mean of the key regions' Dice, each averaged over cases (a 0-d tensor)."""
        scores = self.per_class()
        return torch.tensor(float(np.mean([scores[k] for k in self.key_regions])))


class KiTS19DiceMetric(RegionDiceMetric):
    """KiTS19 Dice: ``aggregate()`` is the mean of kidney and tumour Dice (each a mean over cases), the challenge's
    composite; ``per_class()`` gives ``{"kidney": ..., "tumour": ...}``.

    Predictions: label indices (B, 1, ...) or 3 channels (bg, kidney, tumour; one-hot from
    ``AsDiscrete(argmax=True, to_onehot=3)``, or probabilities, reduced by argmax); labels likewise.
    """

    def __init__(self) -> None:
        super().__init__(kits19.REGIONS, key_regions=("kidney", "tumour"))


class LiTSDiceMetric(RegionDiceMetric):
    """LiTS Dice: ``aggregate()`` is the lesion Dice per case (mean over cases, the challenge ranking);
    ``per_class()`` gives ``{"lesion": ..., "liver": ...}``.

    Predictions: label indices (B, 1, ...) or 3 channels (bg, liver, lesion; one-hot from
    ``AsDiscrete(argmax=True, to_onehot=3)``, or probabilities, reduced by argmax); labels likewise.
    """

    def __init__(self) -> None:
        super().__init__(lits.REGIONS, key_regions=("lesion",))
