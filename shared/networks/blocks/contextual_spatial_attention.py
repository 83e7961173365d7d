"""Cross-slice contextual attention and intra-slice spatial attention (Tao et al., MICCAI 2019, CS-Att).

Paper: "Improving Deep Lesion Detection Using 3D Contextual and Spatial Attention", sections 2.1-2.2, equations
1-8, and section 3 ("softmax with temperature of 3 for spatial attention and 2 for contextual attention").
"""

from __future__ import annotations

import torch
from monai.networks.layers import Conv
from torch import nn


def max_normalized_softmax(scores: torch.Tensor, dim: int | list[int], temperature: float):
    """Softmax of ``scores / temperature`` over ``dim`` and the same divided by its maximum over ``dim``.

    Returns ``(softmax, normalized)``: CS-Att eq. 2/6 (with the temperature of sec. 3) and eq. 3/7. The softmax is
    positive, so the ``max |.|`` of eq. 3/7 is its plain maximum; the largest element of ``normalized`` is exactly 1.
    ``dim``: one dimension or several (a list; a tuple also works outside TorchScript).
    """
    dims = [dim] if isinstance(dim, int) else list(dim)
    scaled = scores / temperature
    if len(dims) == 1:
        soft = torch.softmax(scaled, dim=dims[0])
    else:
        # softmax over several dimensions (H x W for spatial attention): stabilized exp divided by the sum
        shifted = scaled - scaled.amax(dim=dims, keepdim=True)
        expo = shifted.exp()
        soft = expo / expo.sum(dim=dims, keepdim=True)
    return soft, soft / soft.amax(dim=dims, keepdim=True)


class ContextualSpatialAttention(nn.Module):
    """Contextual (cross-slice) then spatial (intra-slice) attention on the features of M slice images.

    Contextual attention (CS-Att sec. 2.1, eq. 1-4): ``C_i = phi_C(X_i)`` (one convolution shared by the M images,
    ``D`` output channels so that ``C_{i,d}^{w,h}`` is a score per feature channel ``d`` and position, as the
    equations index it), softmax over the M images at temperature ``contextual_temperature`` (2, sec. 3), division
    by the maximum over the M images (eq. 3), ``X'_i = C''_i * X_i`` (eq. 4).

    Spatial attention (sec. 2.2, eq. 5-8): ``S_i = phi_S(X'_i)``, softmax over all positions of each map at
    temperature ``spatial_temperature`` (3, sec. 3), division by the maximum over the positions (eq. 7),
    ``X''_i = S''_i * X'_i`` (eq. 8). Eq. 5 writes ``phi_S(X_i)`` but the text says the module "takes refined
    features X'_i" and eq. 8 multiplies ``X'_i``; we follow the text and score ``X'_i`` (when the contextual part is
    switched off, ``X'_i = X_i`` and both readings agree). ``phi_S`` also has ``D`` output channels, one map per
    feature channel as eq. 6-7 index ``S_{i,d}``.

    The kernel size of ``phi_C``/``phi_S`` is not given in the paper: we use 3 (a local neighbourhood, padding 1, so
    the score of a position sees its surroundings), configurable with ``kernel_size``. Scores start near zero
    (small initial weights, zero bias), so a fresh block starts close to uniform attention.

    Args:
        in_channels: D, feature channels of every image (512 for VGG-16 relu5_3).
        spatial_dims: 2 for 2D feature maps of each slice image (the paper), 3 for volumetric ones.
        contextual: apply the contextual attention (Table 3 "C_Att").
        spatial: apply the spatial attention (Table 3 "S_Att").
        contextual_temperature: softmax temperature across images (2 in sec. 3).
        spatial_temperature: softmax temperature across positions (3 in sec. 3).
        kernel_size: kernel of phi_C and phi_S.

    Input ``x``: ``(B, M, D, *spatial)``. Output: the attended features with the same shape, or with
    ``return_maps=True`` a tuple ``(features, maps)`` where ``maps`` holds ``"contextual"`` (C'', same shape as x)
    and ``"spatial"`` (S'', same shape as x) for the parts that are switched on. TorchScript compiles
    :meth:`attend` (always the tuple), which the 3DCE backbone calls.
    """

    def __init__(
        self,
        in_channels: int,
        spatial_dims: int = 2,
        contextual: bool = True,
        spatial: bool = True,
        contextual_temperature: float = 2.0,
        spatial_temperature: float = 3.0,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if contextual_temperature <= 0 or spatial_temperature <= 0:
            raise ValueError("softmax temperatures must be positive")
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.spatial_dims = spatial_dims
        self.contextual_temperature = float(contextual_temperature)
        self.spatial_temperature = float(spatial_temperature)
        self.phi_c = conv_type(in_channels, in_channels, kernel_size, padding=kernel_size // 2) if contextual else None
        self.phi_s = conv_type(in_channels, in_channels, kernel_size, padding=kernel_size // 2) if spatial else None
        for conv in (self.phi_c, self.phi_s):
            if conv is not None:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)

    @property
    def contextual(self) -> bool:
        return self.phi_c is not None

    @property
    def spatial(self) -> bool:
        return self.phi_s is not None

    @staticmethod
    def _per_image(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(B*M, ...)`` scores of a convolution shared by the M images of ``x`` back to ``(B, M, ...)``."""
        return out.reshape([x.shape[0], x.shape[1]] + list(out.shape[1:]))

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The attended features and the maps C'' and S'' of the parts switched on (TorchScript-compilable)."""
        if x.dim() != self.spatial_dims + 3:
            raise ValueError(f"expected (B, M, D, *spatial), {self.spatial_dims} spatial dims; got {x.shape}")
        maps: dict[str, torch.Tensor] = {}
        if self.phi_c is not None:
            _, contextual = max_normalized_softmax(
                self._per_image(self.phi_c(x.flatten(0, 1)), x), 1, self.contextual_temperature
            )
            x = contextual * x  # eq. 4
            maps["contextual"] = contextual
        if self.phi_s is not None:
            positions = list(range(3, x.dim()))
            scores = self._per_image(self.phi_s(x.flatten(0, 1)), x)
            _, spatial = max_normalized_softmax(scores, positions, self.spatial_temperature)
            x = spatial * x  # eq. 8
            maps["spatial"] = spatial
        return x, maps

    @torch.jit.unused
    def forward(self, x: torch.Tensor, return_maps: bool = False):
        out, maps = self.attend(x)
        return (out, maps) if return_maps else out
