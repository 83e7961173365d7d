"""MSAN: the 3D U-Net family of Sun et al., "A Multi-scale Attention Network for Kidney Tumor Segmentation on CT Scans".

One configurable network gives the five ensemble members of the paper (sec. 3.1): "3D-UNET, MSAN-V1, MSAN-V1 with
deep supervision, MSAN-V2, MSAN-V2 with deep supervision". The paper's figures 1-3 are missing from its text, so the
wiring below is read from the text; every point the text leaves open is marked ``PAPER:`` (what it says) and
``CHOICE:`` (what we do and why) where it is implemented.

- ``variant="unet"``: 3D U-Net (Cicek et al.): per level two conv-norm-ReLU blocks, max pooling down, transposed
  convolution up, the encoder map of each level concatenated into the decoder, a 1x1x1 output convolution.
- ``variant="v1"`` (sec. 2.2, fig. 1): every skip connection goes through a :class:`MultiScaleAttention` gate, i.e. the
  decoder concatenates ``sigmoid(a + up(b)) * a`` instead of ``a``, with ``a`` the encoder map of the level and ``b``
  the encoder map of the level below (for the deepest skip, the bottom branch's output).
- ``variant="v2"`` (sec. 2.2, figs. 2-3): V1 plus a 3D :class:`Res2NetBlock` "parallel to the bottom branch" with
  "only the smallest feature maps" as its input: it reads the same pooled map as the bottom conv block and the two
  outputs are summed.
- ``deep_supervision=True`` (sec. 2.2, "in the last two max pooling of the encoding part, we added deep supervision
  information"; sec. 3.1 cites Dou et al. for the technique): one :class:`DeepSupervisionHead` on each of the two
  encoder maps computed after the last two max poolings (the deepest encoder level and the bottom branch), each a
  1x1x1 classifier upsampled to the input grid by a transposed convolution, as Dou et al.'s 3D DSN does. In training
  mode the network returns ``[main, aux_after_second_last_pool, aux_after_last_pool]``, all at the input size (the
  order :class:`monai.losses.DeepSupervisionLoss` weights as 1, 1/2, 1/4); in eval mode only the main output.

:func:`architecture` reads from the module tree which of these blocks a network holds, so an ablation arm can show
what it is whatever its config said. Strides are per level and per axis, so the paper's slabs of 4 slices of
512x512 (sec. 3.1) pool only in-plane first: after ``Orientationd("RAS")`` the slice axis is the last one, e.g.
``strides=((2, 2, 1), (2, 2, 1), (2, 2, 2))``. Odd sizes are handled by flooring pooling and padding the upsampled
map back onto the finer grid.
"""

import math
from dataclasses import dataclass

import torch
from monai.networks.blocks import Convolution, UnetBasicBlock, UpSample
from monai.networks.layers import Pool
from monai.utils import ensure_tuple_rep
from torch import nn

from shared.networks.blocks.multiscale_attention import MultiScaleAttention, match_spatial_size
from shared.networks.blocks.res2net import Res2NetBlock

__all__ = ["MSAN", "MSAN_VARIANTS", "DeepSupervisionHead", "MSANArchitecture", "architecture"]

MSAN_VARIANTS = ("unet", "v1", "v2")


class DeepSupervisionHead(nn.Module):
    """Auxiliary classifier of a hidden feature map at the input resolution (Dou et al.'s 3D DSN side output).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the hidden map.
        out_channels: classes.
        scale_factor: resolution ratio between the input grid and the hidden map, int or per axis.

    Shapes:
        ``forward(x, size)``: x (B, in_channels, *S_k) -> (B, out_channels, *size).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale_factor: int | tuple) -> None:
        super().__init__()
        self.classify = Convolution(spatial_dims, in_channels, out_channels, kernel_size=1, conv_only=True)
        # CHOICE: Dou et al. upscale side outputs with learned deconvolutions to the input size; we use one transposed
        # convolution of kernel = stride = the total pooling factor, so the loss compares with the full-resolution
        # label (small tumours are not lost to a downsampled label).
        self.up = UpSample(spatial_dims, out_channels, out_channels, scale_factor=scale_factor, mode="deconv")

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        return match_spatial_size(self.up(self.classify(x)), size)


class MSAN(nn.Module):
    """3D U-Net, MSAN-V1 or MSAN-V2, with or without deep supervision (see the module docstring).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (1 for CT).
        out_channels: classes (3 for KiTS19: background, kidney, tumour).
        channels: feature channels per level, finest first (at least 2 levels; 3 with deep supervision).
        strides: pooling factor between consecutive levels, ``len(channels) - 1`` entries, int or per axis.
        variant: ``"unet"``, ``"v1"`` or ``"v2"``.
        deep_supervision: True adds the two auxiliary heads (returned in training mode only); must be a bool, so a
            string such as ``"false"`` from a command line cannot silently switch it on.
        res2net_scale: number of groups of the V2 Res2Net block.
        res2net_gain: None (default, the paper's plain sum): the V2 Res2Net output is added to the bottom branch's as
            it is; a number: it is multiplied by a learnable scalar that starts at this value before the sum (0: V2
            starts as V1, SkipInit of De & Smith, NeurIPS 2020, the zero-gamma start nnU-Net gives residual
            branches). Only with ``variant="v2"``.
        kernel_size: convolution kernel of the encoder/decoder blocks.
        norm: MONAI norm name or (name, args), e.g. ``"batch"`` (Cicek et al.) or ``"instance"``.
        act: MONAI activation name or (name, args).

    Shapes:
        (B, in_channels, *S) -> (B, out_channels, *S); in training mode with deep supervision a list of three such
        tensors (main output first).
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 3,
        # PAPER: no widths or depth are given. CHOICE: Cicek et al.'s 3D U-Net depth (three poolings) and widths
        # (32 at the finest level, doubling per level), one width per level as in MONAI's UNet blocks.
        channels: tuple[int, ...] = (32, 64, 128, 256),
        # PAPER: input slabs of "4 images of size 512x512". CHOICE: pool in-plane only until the last level, so the
        # 4 slices survive to the bottom (a 2x2x2 pooling at every level would leave half a slice).
        strides: tuple = ((2, 2, 1), (2, 2, 1), (2, 2, 2)),
        variant: str = "v1",
        deep_supervision: bool = False,
        res2net_scale: int = 4,
        res2net_gain: float | None = None,
        kernel_size: int = 3,
        norm: str | tuple = "batch",
        act: str | tuple = "relu",
    ) -> None:
        super().__init__()
        if variant not in MSAN_VARIANTS:
            raise ValueError(f"unknown MSAN variant {variant!r}: choose one of {', '.join(MSAN_VARIANTS)}")
        if not isinstance(deep_supervision, bool):
            raise TypeError(f"deep_supervision must be True or False, got {deep_supervision!r}")
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

        in_chs = (in_channels, *channels[:-1])
        self.encoders = nn.ModuleList(conv_block(cin, cout) for cin, cout in zip(in_chs[:-1], channels[:-1]))
        self.pools = nn.ModuleList(Pool["MAX", spatial_dims](kernel_size=s, stride=s) for s in strides)
        self.bottom = conv_block(channels[-2], channels[-1])
        # PAPER: "adding a 3D Res2Net block parallel to the bottom branch ... only the smallest feature maps are input
        # into the block" (fig. 2 missing). CHOICE: the block reads the last pooled map, the bottom conv block's own
        # input, and its output is added to the bottom's: parallel branches merged by a sum keep the bottom's
        # channel count, so V2 = V1 + one block (a concatenation would also widen the first decoder level).
        self.bottom_res2net = (
            Res2NetBlock(spatial_dims, channels[-2], channels[-1], scale=res2net_scale, norm=norm, act=act)
            if variant == "v2"
            else None
        )
        # PAPER: nothing scales the sum. CHOICE (knob res2net_gain, default None: the plain sum): a learnable scalar on
        # the branch, so that an untrained branch need not carry most of the bottom's energy from the first step.
        if res2net_gain is not None and variant != "v2":
            raise ValueError(f"res2net_gain={res2net_gain!r} needs variant 'v2' (the Res2Net block), not {variant!r}")
        gain = None if res2net_gain is None else nn.Parameter(torch.tensor(float(res2net_gain)))
        self.register_parameter("res2net_gain", gain)
        # PAPER: "the larger feature maps are added element-wisely with the smaller feature maps" (fig. 1 missing).
        # CHOICE: the smaller map is the encoder map one level below each skip (the bottom for the deepest skip), so
        # every gate mixes two scales of the same encoding; see MultiScaleAttention for the gate itself.
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
        self.head = Convolution(spatial_dims, channels[0], out_channels, kernel_size=1, conv_only=True)
        # PAPER: "in the last two max pooling of the encoding part, we added deep supervision information".
        # CHOICE: heads on the encoder maps computed after the last two poolings (levels - 2 and the bottom), not on
        # decoder maps: the text names the encoding part, and Dou et al. (its reference) supervise hidden layers of
        # the downsampling path.
        per_axis = [ensure_tuple_rep(s, spatial_dims) for s in strides]
        scale = [tuple(math.prod(axis) for axis in zip(*per_axis[:k])) for k in (levels - 2, levels - 1)]
        self.aux_heads = (
            nn.ModuleList(
                [
                    DeepSupervisionHead(spatial_dims, channels[-2], out_channels, scale[0]),
                    DeepSupervisionHead(spatial_dims, channels[-1], out_channels, scale[1]),
                ]
            )
            if deep_supervision
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        encoded: list[torch.Tensor] = []
        h = x
        for encoder, pool in zip(self.encoders, self.pools):
            h = encoder(h)
            encoded.append(h)
            h = pool(h)
        bottom = self.bottom(h)
        if self.bottom_res2net is not None:
            branch = self.bottom_res2net(h)
            bottom = bottom + (branch if self.res2net_gain is None else self.res2net_gain * branch)
        encoded.append(bottom)

        skips = encoded[:-1]
        if self.attentions is not None:
            skips = [attention(encoded[i], encoded[i + 1]) for i, attention in enumerate(self.attentions)]

        d = bottom
        for j, (up, decoder) in enumerate(zip(self.ups, self.decoders)):
            skip = skips[len(skips) - 1 - j]
            d = decoder(torch.cat([skip, match_spatial_size(up(d), list(skip.shape[2:]))], dim=1))
        main = self.head(d)
        if self.aux_heads is None or not self.training:
            return main
        size = list(x.shape[2:])
        hidden = encoded[-2:]  # after the second-last pooling, after the last pooling (the bottom)
        return [main] + [aux(hidden[k], size) for k, aux in enumerate(self.aux_heads)]


@dataclass(frozen=True)
class MSANArchitecture:
    """What a network holds, counted from its modules: the Table 1 name it earns, parameters and MSAN blocks."""

    name: str
    parameters: int
    attention_gates: int
    res2net_blocks: int
    supervision_heads: int


def architecture(network: nn.Module) -> MSANArchitecture:
    """Count the MSAN blocks in ``network``'s module tree and name it as Table 1 of the paper does.

    The name follows from the blocks found, not from constructor arguments: attention gates and no Res2Net block
    make "MSAN-V1", both make "MSAN-V2", neither "3D U-Net"; deep supervision heads add "with deep supervision".
    """
    modules = list(network.modules())
    gates = sum(isinstance(m, MultiScaleAttention) for m in modules)
    res2net = sum(isinstance(m, Res2NetBlock) for m in modules)
    heads = sum(isinstance(m, DeepSupervisionHead) for m in modules)
    name = {(False, False): "3D U-Net", (True, False): "MSAN-V1", (True, True): "MSAN-V2"}.get(
        (gates > 0, res2net > 0), "3D U-Net with Res2Net"
    )
    if heads:
        name += " with deep supervision"
    return MSANArchitecture(name, sum(p.numel() for p in network.parameters()), gates, res2net, heads)
