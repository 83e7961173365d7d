"""MSAN: the 3D U-Net family of Sun et al., "A Multi-scale Attention Network for Kidney Tumor Segmentation".

One configurable network gives the five ensemble members of the paper (sec. 3.1): the plain 3D U-Net (Cicek et al.),
MSAN-V1, MSAN-V1 with deep supervision, MSAN-V2 and MSAN-V2 with deep supervision.

- ``variant="unet"``: 3D U-Net (Cicek et al.): per level two conv-norm-ReLU blocks, max pooling down, transposed
  convolution up, the encoder map of each level concatenated into the decoder, a 1x1x1 output convolution.
- ``variant="v1"`` (sec. 2.2, fig. 1): every skip connection goes through a :class:`MultiScaleAttention` gate, i.e. the
  decoder concatenates ``sigmoid(a + up(b)) * a`` instead of ``a``, with ``a`` the encoder map of the level and ``b``
  the encoder map of the level below (for the deepest skip, the bottom branch's output).
- ``variant="v2"`` (sec. 2.2, figs. 2-3): V1 plus a 3D :class:`Res2NetBlock` "parallel to the bottom branch" with
  "only the smallest feature maps" as its input: it reads the same pooled map as the bottom conv block and the two
  outputs are summed (the figure is missing; summing keeps the bottom's channel count and is our reading).
- ``deep_supervision=True`` (sec. 2.2, "in the last two max pooling of the encoding part, we added deep
  supervision"; Dou et al.): 1x1x1 auxiliary heads on the decoder features at the resolutions of the last two max
  poolings, i.e. the bottom branch's output and the first decoder level above it. In training mode the network
  returns ``[main, aux_finer, aux_coarser]`` (full to coarse resolution, the order
  :class:`monai.losses.DeepSupervisionLoss` weights as 1, 1/2, 1/4); in eval mode only the main output.

Strides are per level and per axis, so the paper's slabs of 4 slices of 512x512 (sec. 3.1) pool only in-plane first:
after ``Orientationd("RAS")`` the slice axis is the last one, e.g. ``strides=((2, 2, 1), (2, 2, 1), (2, 2, 2))``.
Odd sizes are handled by flooring pooling and padding the upsampled map back onto the finer grid.
"""

import torch
from monai.networks.blocks import Convolution, UnetBasicBlock, UpSample
from monai.networks.layers import Pool
from torch import nn

from shared.networks.blocks.multiscale_attention import MultiScaleAttention, match_spatial_size
from shared.networks.blocks.res2net import Res2NetBlock

__all__ = ["MSAN", "MSAN_VARIANTS"]

MSAN_VARIANTS = ("unet", "v1", "v2")


class MSAN(nn.Module):
    """3D U-Net, MSAN-V1 or MSAN-V2, with or without deep supervision (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (1 for CT).
        out_channels: classes (3 for KiTS19: background, kidney, tumour).
        channels: feature channels per level, finest first (at least 2 levels; 3 with deep supervision).
        strides: pooling factor between consecutive levels, ``len(channels) - 1`` entries, int or per axis.
        variant: ``"unet"``, ``"v1"`` or ``"v2"``.
        deep_supervision: add the two auxiliary heads (returned in training mode only).
        res2net_scale: number of groups of the V2 Res2Net block.
        kernel_size: convolution kernel of the encoder/decoder blocks.
        norm: MONAI norm name or (name, args), e.g. ``"batch"`` (Cicek et al.) or ``"instance"``.
        act: MONAI activation name or (name, args).

    Shapes:
        (B, in_channels, *S) -> (B, out_channels, *S); in training mode with deep supervision a list of that tensor
        and two coarser (B, out_channels, *S_k) tensors.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 3,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        strides: tuple = ((2, 2, 1), (2, 2, 1), (2, 2, 2)),
        variant: str = "v1",
        deep_supervision: bool = False,
        res2net_scale: int = 4,
        kernel_size: int = 3,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
    ) -> None:
        super().__init__()
        if variant not in MSAN_VARIANTS:
            raise ValueError(f"unknown MSAN variant {variant!r}: choose one of {', '.join(MSAN_VARIANTS)}")
        levels = len(channels)
        if levels < (3 if deep_supervision else 2):
            raise ValueError(f"MSAN needs at least {3 if deep_supervision else 2} levels, got channels={channels}")
        if len(strides) != levels - 1:
            raise ValueError(f"strides needs len(channels) - 1 = {levels - 1} entries, got {strides}")
        self.variant = variant
        self.deep_supervision = deep_supervision

        def conv_block(cin: int, cout: int) -> nn.Module:
            return UnetBasicBlock(
                spatial_dims, cin, cout, kernel_size=kernel_size, stride=1, norm_name=norm, act_name=act
            )

        def head(cin: int) -> nn.Module:
            return Convolution(spatial_dims, cin, out_channels, kernel_size=1, conv_only=True)

        in_chs = (in_channels, *channels[:-1])
        self.encoders = nn.ModuleList(conv_block(cin, cout) for cin, cout in zip(in_chs[:-1], channels[:-1]))
        self.pools = nn.ModuleList(Pool["MAX", spatial_dims](kernel_size=s, stride=s) for s in strides)
        self.bottom = conv_block(channels[-2], channels[-1])
        self.bottom_res2net = (
            Res2NetBlock(spatial_dims, channels[-2], channels[-1], scale=res2net_scale, norm=norm, act=act)
            if variant == "v2"
            else None
        )
        self.attentions = (
            nn.ModuleList(
                MultiScaleAttention(spatial_dims, channels[i], channels[i + 1], strides[i]) for i in range(levels - 1)
            )
            if variant != "unet"
            else None
        )
        # decoder modules are stored deepest first, the order in which forward runs them
        self.ups = nn.ModuleList(
            UpSample(spatial_dims, channels[i + 1], channels[i], scale_factor=strides[i], mode="deconv")
            for i in reversed(range(levels - 1))
        )
        self.decoders = nn.ModuleList(conv_block(2 * channels[i], channels[i]) for i in reversed(range(levels - 1)))
        self.head = head(channels[0])
        self.aux_heads = nn.ModuleList([head(channels[-2]), head(channels[-1])]) if deep_supervision else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        encoded: list[torch.Tensor] = []
        h = x
        for encoder, pool in zip(self.encoders, self.pools):
            h = encoder(h)
            encoded.append(h)
            h = pool(h)
        bottom = self.bottom(h)
        if self.bottom_res2net is not None:
            bottom = bottom + self.bottom_res2net(h)
        encoded.append(bottom)

        skips = encoded[:-1]
        if self.attentions is not None:
            skips = [attention(encoded[i], encoded[i + 1]) for i, attention in enumerate(self.attentions)]

        decoded: list[torch.Tensor] = [bottom]
        d = bottom
        for j, (up, decoder) in enumerate(zip(self.ups, self.decoders)):
            skip = skips[len(skips) - 1 - j]
            d = decoder(torch.cat([skip, match_spatial_size(up(d), list(skip.shape[2:]))], dim=1))
            decoded.append(d)
        main = self.head(d)
        if self.aux_heads is None or not self.training:
            return main
        # aux heads read the first decoder level above the bottom, then the bottom (finer first)
        return [main] + [aux(decoded[1 - k]) for k, aux in enumerate(self.aux_heads)]
