"""Multi-scale attention gate of MSAN (Sun et al., "A Multi-scale Attention Network for Kidney Tumor Segmentation").

Paper sec. 2.2, fig. 1: "the larger feature maps are added element-wisely with the smaller feature maps in purple
arrow, then the information-infused feature maps are input into a Sigmoid layer to generate the weights for feature
recalibration. Then a element-wise multiplication is applied for feature enhancement. The enhanced features are then
concatenated to the deep layers."

PAPER: the figure itself is missing from the text; the text fixes the sum, the sigmoid, the element-wise product and
the concatenation, not what the two maps are nor what the purple arrow does. CHOICE (our reading):

- "larger feature maps" = the finer encoder map ``a`` of a skip connection (larger spatial size);
- "smaller feature maps" = the next coarser encoder map ``b`` (the level below, which the paper calls multi-scale
  information); the "purple arrow" brings it to the finer grid and channel count. We use a learnable transposed
  convolution with kernel = stride = the pooling factor between the two levels (the up-convolution of the 3D U-Net):
  an element-wise sum needs equal shapes, and the 3D U-Net already moves maps up a level this way;
- no convolution before the sigmoid (the text names none): weights ``g = sigmoid(a + up(b))``, each in (0, 1), and
  the enhanced map ``g * a`` replaces ``a`` on the skip connection ("the enhanced features are then concatenated to
  the deep layers": what the decoder concatenates).
"""

import torch
import torch.nn.functional as F
from monai.networks.blocks import UpSample
from torch import nn

__all__ = ["MultiScaleAttention", "match_spatial_size"]


def match_spatial_size(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Crop (at the end) or replicate-pad (at the end) the spatial dims of ``x`` (B, C, *S) to ``size``.

    Pooling floors odd sizes (17 -> 8) and upsampling gives back 16, one voxel short of the finer map: this brings
    the upsampled map onto the finer grid.
    """
    for dim, target in enumerate(size):
        if x.shape[dim + 2] > target:
            x = x.narrow(dim + 2, 0, target)
    pads: list[int] = []
    for dim in range(len(size) - 1, -1, -1):  # F.pad lists the last dimension first
        pads += [0, size[dim] - x.shape[dim + 2]]
    if max(pads) > 0:
        x = F.pad(x, pads, mode="replicate")
    return x


class MultiScaleAttention(nn.Module):
    """Recalibrate a fine feature map with weights computed from it and the next coarser map (MSAN fig. 1).

    Args:
        spatial_dims: 2 or 3.
        fine_channels: channels ``C_f`` of the fine map.
        coarse_channels: channels ``C_c`` of the coarse map.
        scale_factor: resolution ratio between the two maps (the pooling stride between them), int or per axis.

    Shapes:
        ``forward(fine, coarse)``: fine (B, C_f, *S_f), coarse (B, C_c, *S_c) with S_c ~ S_f / scale_factor
        -> (B, C_f, *S_f), equal to ``sigmoid(fine + up(coarse)) * fine``.
    """

    def __init__(
        self,
        spatial_dims: int,
        fine_channels: int,
        coarse_channels: int,
        scale_factor: int | tuple[int, ...] = 2,
    ) -> None:
        super().__init__()
        self.up = UpSample(spatial_dims, coarse_channels, fine_channels, scale_factor=scale_factor, mode="deconv")

    def gate(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Recalibration weights ``sigmoid(fine + up(coarse))`` in (0, 1), shape of ``fine``."""
        up = match_spatial_size(self.up(coarse), list(fine.shape[2:]))
        return torch.sigmoid(fine + up)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        return self.gate(fine, coarse) * fine
