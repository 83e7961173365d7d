"""Volumetric Attention (VA) block: Wang et al., "Volumetric Attention for 3D Medical Image Segmentation and
Detection", MICCAI 2019, sections 2.1-2.3 and Fig. 3.

A 2.5D network sees a *bag* of feature maps ``X_long = [X_1, ..., X_N]`` (eq. 1), one per 2.5D image, in z order,
with the target image at ``target_index`` (the middle one by default). The block returns the target features refined
by two attentions computed from the whole bag:

- volumetric channel attention (sec. 2.2, eq. 2): global average pooling, a shared embedding
  ``F_emb^c = W2 relu(W1 .)`` (two 1x1 convolutions, reduction 16) of target and bag, slice attention
  ``S_att^c = softmax_N(F_emb^c(X_tgt) . F_emb^c(X_long))``, attended embedding ``S_att^c . F_emb^c(X_long)``
  through ReLU, 1x1 convolution and sigmoid -> channel gate ``S_c`` (C x 1 x 1), multiplied channel-wise.
- volumetric spatial attention (sec. 2.3, eq. 3): channel max and mean pooling -> 2 x H x W, learned convolutional
  embedding ``F_emb^s = W F_pool^s``, slice attention ``S_att^s = softmax_N(F_emb^s(X_tgt) . F_emb^s(X_long))``,
  attended spatial embedding through ReLU, convolution and sigmoid -> spatial gate ``S_s`` (1 x H x W), multiplied
  element-wise.

The two are applied sequentially, channel first (sec. 1: "sequentially infers ... channel and spatial", as in
CBAM): the spatial attention is computed from the bag with the channel gate applied to every member. Choices
where the paper is vague are marked "vague:" below. The block is TorchScript-scriptable (``torch.jit.script``).
"""

from typing import Final

import torch
from torch import nn


def channel_hidden_units(in_channels: int, reduction: int = 16, min_hidden: int = 1) -> int:
    """Hidden units of eq. 2's channel embedding ``W1``: C / ``reduction`` (the paper: 16), at least ``min_hidden``."""
    return max(in_channels // reduction, min_hidden, 1)


def bag_softmax(target_emb: torch.Tensor, bag_emb: torch.Tensor) -> torch.Tensor:
    """Slice attention softmax_N(target . bag) for embeddings flattened to (B, L) and (B, N, L) -> (B, N)."""
    return torch.softmax(torch.einsum("bl,bnl->bn", target_emb, bag_emb), dim=1)


class VolumetricAttention(nn.Module):
    """Volumetric channel + spatial attention over a bag of N feature maps (VA paper sec. 2.1-2.3).

    Args:
        spatial_dims: 2 (feature maps H x W, the paper's case) or 3 (D x H x W, pooled/convolved alike).
        in_channels: C, channels of every feature map in the bag.
        reduction: channel reduction ratio of the embedding ``W1`` (paper: 16).
        min_hidden: fewest hidden units of the channel embedding: ``max(in_channels // reduction, min_hidden)``.
            Default 1: C / 16 as written, 16 units at the paper's 256-channel FPN (4 at a 64-channel one).
        spatial_kernel_size: kernel of the spatial embedding ``W`` and of the spatial head convolution.
        channel: use volumetric channel attention (Table 2d ablation).
        spatial: use volumetric spatial attention (Table 2d ablation).
        spatial_scale: divide the target . bag product of the spatial embeddings by H*W (their mean instead of
            their sum), so that the softmax temperature does not grow with the resolution of the pyramid level.
            Default False: eq. 3 as written (the plain dot product).
        gate_norm: divide each gate by its mean (``S_c`` over the channels, ``S_s`` over the pixels), so that each
            gate averages 1 and redistributes the target's features instead of scaling them all (the plain gates,
            about 0.5 each at initialisation, leave a quarter of the target's norm), and there is nothing to gain by
            driving the sigmoid open everywhere. Default False: the sigmoid gates as written (sec. 2.2-2.3).
        spatial_relu: the ReLU that starts the spatial head (sec. 2.3: "an architecture similar to that of Section
            2.2", whose head is relu, conv, sigmoid). False: conv and sigmoid only (CBAM's spatial head): a ReLU on
            the one-channel attended embedding passes nothing once that map is below 0 everywhere.
        sequential: compute the spatial attention from the bag with the channel gate applied to every member (sec. 1:
            "sequentially", as CBAM). False: from the bag as given, both gates then multiplied onto the target (in the
            VA context probe the channel gate in front stalled the spatial attention in one seed of three).
        bag_residual: add the bag, weighed by the slice attention (the spatial one's when on, else the channel
            one's), through a 1x1 convolution ``W_z`` to the gated target: ``X_tgt * S_c * S_s + W_z(S_att . X_long)``,
            the residual form of the non-local block the paper's attention is inspired by ([17]: ``z = W_z y + x``).
            ``W_z`` starts at zero, so a fresh block is the paper's. Default False: the target only rescaled by the
            gates (sec. 2.2-2.3), which on a detector's features passed no context in
            ``benchmarks/va_feature_probe.py``.

    Forward:
        bag: (B, N, C, *spatial) features in z order.
        target_index: index of the target image in the bag (default: the middle one, ``N // 2``).
        returns: (B, C, *spatial), the attended target features (the target itself when both switches are off).
    """

    # constants for TorchScript: the branches of a switched-off attention (whose layers do not exist) are not compiled
    spatial_dims: Final[int]
    channel: Final[bool]
    spatial: Final[bool]
    spatial_scale: Final[bool]
    gate_norm: Final[bool]
    sequential: Final[bool]
    bag_residual: Final[bool]

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        reduction: int = 16,
        min_hidden: int = 1,
        spatial_kernel_size: int = 7,
        channel: bool = True,
        spatial: bool = True,
        spatial_scale: bool = False,
        gate_norm: bool = False,
        spatial_relu: bool = True,
        sequential: bool = True,
        bag_residual: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if bag_residual and not (channel or spatial):
            raise ValueError("bag_residual weighs the bag by a slice attention: switch channel or spatial on")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.spatial_dims = spatial_dims
        self.channel = channel
        self.spatial = spatial
        self.spatial_scale = spatial_scale
        self.gate_norm = gate_norm
        self.sequential = sequential
        self.bag_residual = bag_residual
        if bag_residual:
            self.bag_projection = conv(in_channels, in_channels, 1)  # W_z, zero: the block starts as the paper's
            nn.init.zeros_(self.bag_projection.weight)
            nn.init.zeros_(self.bag_projection.bias)
        if channel:
            hidden = channel_hidden_units(in_channels, reduction, min_hidden)
            # F_emb^c = W2 relu(W1 F_avg^c(.)), shared by target and bag (eq. 2).
            self.channel_embedding = nn.Sequential(
                conv(in_channels, hidden, 1), nn.ReLU(inplace=True), conv(hidden, in_channels, 1)
            )
            # relu -> 1x1 conv -> sigmoid on the attended embedding gives S_c.
            self.channel_head = nn.Sequential(nn.ReLU(), conv(in_channels, in_channels, 1), nn.Sigmoid())
        if spatial:
            pad = spatial_kernel_size // 2
            # vague: "W is a learned convolutional weight layer"; a 2 -> 1 channel k x k convolution as in CBAM.
            self.spatial_embedding = conv(2, 1, spatial_kernel_size, padding=pad)
            # vague: "an architecture similar to that of Section 2.2"; relu -> k x k conv (1 -> 1) -> sigmoid
            # (spatial_relu False: no relu on the one-channel map, as CBAM's conv -> sigmoid).
            first = nn.ReLU() if spatial_relu else nn.Identity()
            self.spatial_head = nn.Sequential(first, conv(1, 1, spatial_kernel_size, padding=pad), nn.Sigmoid())

    def channel_attention(self, bag: torch.Tensor, target_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 2. Returns (slice attention S_att^c (B, N), channel gate S_c (B, C, 1, ...))."""
        b, n, c = bag.shape[0], bag.shape[1], bag.shape[2]
        ones = [1] * self.spatial_dims
        pooled = bag.flatten(3).mean(dim=3).reshape([b * n, c] + ones)  # F_avg^c
        emb = self.channel_embedding(pooled).reshape(b, n, c)  # F_emb^c of every bag member (target included)
        att = bag_softmax(emb[:, target_index], emb)
        attended = torch.einsum("bn,bnc->bc", att, emb).reshape([b, c] + ones)
        gate = self.channel_head(attended)
        if self.gate_norm:
            gate = gate / gate.mean(dim=1, keepdim=True)
        return att, gate

    def spatial_attention(
        self, bag: torch.Tensor, target_index: int, channel_gate: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3 on the bag (gated channel-wise by ``channel_gate`` (B, C, 1, ...) if given).

        Returns (slice attention S_att^s (B, N), spatial gate S_s (B, 1, *spatial)). The channel-gated bag is pooled
        one member at a time, so it is never held whole in memory.
        """
        b, n = bag.shape[0], bag.shape[1]
        spatial = list(bag.shape[3:])
        members = []
        for k in range(n):
            member = bag[:, k]
            if channel_gate is not None:
                member = member * channel_gate
            members.append(torch.cat([member.amax(dim=1, keepdim=True), member.mean(dim=1, keepdim=True)], dim=1))
        pooled = torch.stack(members, dim=1).flatten(0, 1)  # F_pool^s of every member, (B * N, 2, *spatial)
        emb = self.spatial_embedding(pooled).reshape(b, n, -1)  # F_emb^s flattened over H x W
        # eq. 3: the product of two 1 x H x W embeddings, flattened: their dot product (spatial_scale: divided by
        # H*W, their mean)
        target = emb[:, target_index]
        if self.spatial_scale:
            target = target / emb.shape[2]
        att = bag_softmax(target, emb)
        attended = torch.einsum("bn,bnl->bl", att, emb).reshape([b, 1] + spatial)
        gate = self.spatial_head(attended)
        if self.gate_norm:
            gate = gate / gate.flatten(1).mean(dim=1).reshape([b] + [1] * (self.spatial_dims + 1))
        return att, gate

    def forward(self, bag: torch.Tensor, target_index: int | None = None) -> torch.Tensor:
        if bag.ndim != self.spatial_dims + 3:
            raise ValueError(
                f"expected a bag (B, N, C, *spatial) with {self.spatial_dims} spatial dims, got {bag.shape}"
            )
        n = bag.shape[1]
        t = n // 2 if target_index is None else target_index
        if not -n <= t < n:
            raise ValueError(f"target_index {t} outside a bag of {n}")
        target = bag[:, t]
        channel_gate: torch.Tensor | None = None
        slice_attention = torch.empty(0)
        if self.channel:
            slice_attention, gate = self.channel_attention(bag, t)
            target = target * gate
            if self.sequential:
                channel_gate = gate
        if self.spatial:
            slice_attention, spatial_gate = self.spatial_attention(bag, t, channel_gate)
            target = target * spatial_gate
        if self.bag_residual:
            weights = slice_attention.reshape(list(slice_attention.shape) + [1] * (self.spatial_dims + 1))
            target = target + self.bag_projection((weights * bag).sum(dim=1))
        return target
