"""Res2Net block (Gao et al., "Res2Net: A New Multi-scale Backbone Architecture", eq. 1), in 2D or 3D.

MSAN-V2 (Sun et al., sec. 2.2, figs. 2-3) adds a 3D Res2Net block parallel to the bottom branch of the U-Net.
PAPER: "The architecture of 3D Res2Net block is shown in Figure 3", and fig. 3 is missing from the text. CHOICE: Gao
et al.'s bottleneck with every 2D convolution made 3D (the block the paper cites): a 1x1(x1) convolution, a split of
its output into ``scale`` groups ``x_1 .. x_s`` of ``width`` channels,

    y_1 = x_1,   y_2 = K_2(x_2),   y_i = K_i(x_i + y_{i-1})  for 2 < i <= s      (Gao et al., eq. 1)

with ``K_i`` a 3x3(x3) convolution + norm + activation, the concatenation of the ``y_i`` fused by a 1x1(x1)
convolution + norm, a residual connection (1x1(x1) projection when the channel counts differ) and a final activation.
"""

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.utils import get_act_layer
from torch import nn

__all__ = ["Res2NetBlock"]


class Res2NetBlock(nn.Module):
    """Hierarchical multi-scale residual block of Res2Net (Gao et al., eq. 1).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        scale: number of groups ``s`` the channels are split into (>= 2).
        width: channels per group; default ``max(1, out_channels // scale)``.
        kernel_size: kernel of the group convolutions ``K_i``.
        norm: MONAI norm name or (name, args); None for no normalisation.
        act: MONAI activation name or (name, args).

    Shapes:
        (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        scale: int = 4,
        width: int | None = None,
        kernel_size: int = 3,
        norm: str | tuple | None = "batch",
        act: str | tuple = "relu",
    ) -> None:
        super().__init__()
        if scale < 2:
            raise ValueError(f"Res2NetBlock needs scale >= 2 groups, got {scale}")
        self.scale = scale
        self.width = width if width is not None else max(1, out_channels // scale)
        hidden = self.width * scale
        self.conv_in = Convolution(spatial_dims, in_channels, hidden, kernel_size=1, norm=norm, act=act)
        self.group_convs = nn.ModuleList(
            Convolution(spatial_dims, self.width, self.width, kernel_size=kernel_size, norm=norm, act=act)
            for _ in range(scale - 1)
        )
        self.conv_out = Convolution(spatial_dims, hidden, out_channels, kernel_size=1, norm=norm, act=None)
        self.residual: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, norm=norm, act=None)
        )
        self.act = get_act_layer(act)

    def hierarchy(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The group outputs ``[y_1, ..., y_s]`` of eq. 1 for the split groups ``x_1 .. x_s`` of ``x``."""
        groups = torch.split(x, self.width, dim=1)
        ys = [groups[0]]
        for i, conv in enumerate(self.group_convs):
            group = groups[i + 1]
            ys.append(conv(group if i == 0 else group + ys[-1]))
        return ys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat(self.hierarchy(self.conv_in(x)), dim=1)
        return self.act(self.conv_out(y) + self.residual(x))
