"""MSAN building blocks: the multi-scale attention gate (Sun et al. fig. 1) and the Res2Net block (Gao et al. eq. 1)."""

import pytest
import torch
import torch.nn.functional as F

from shared.networks.blocks.multiscale_attention import MultiScaleAttention, match_spatial_size
from shared.networks.blocks.res2net import Res2NetBlock


def _nearest_deconv_(deconv: torch.nn.Module) -> None:
    """Make a transposed conv with kernel == stride and C_in == C_out a nearest-neighbour upsampler."""
    with torch.no_grad():
        deconv.weight.zero_()
        deconv.bias.zero_()
        for c in range(deconv.weight.shape[0]):
            deconv.weight[c, c] = 1.0


def test_match_spatial_size_pads_by_replication_and_crops():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    padded = match_spatial_size(x, [3, 2])
    assert padded.tolist() == [[[[0.0, 1.0], [3.0, 4.0], [3.0, 4.0]]]]


@pytest.mark.parametrize("spatial_dims, scale", [(3, 2), (3, (2, 2, 1)), (2, 2)])
def test_attention_output_is_sigmoid_of_sum_times_fine_map(spatial_dims, scale):
    torch.manual_seed(0)
    block = MultiScaleAttention(spatial_dims, fine_channels=3, coarse_channels=3, scale_factor=scale)
    _nearest_deconv_(block.up.deconv)
    scales = (scale,) * spatial_dims if isinstance(scale, int) else scale
    coarse_size = (2, 3, 2)[:spatial_dims]
    a = torch.randn(2, 3, *(n * s for n, s in zip(coarse_size, scales)))
    b = torch.randn(2, 3, *coarse_size)
    up_b = F.interpolate(b, scale_factor=scales, mode="nearest")
    expected = torch.sigmoid(a + up_b) * a
    assert torch.allclose(block(a, b), expected, atol=1e-6)


def test_attention_gate_is_in_open_unit_interval_and_multiplies_features():
    torch.manual_seed(0)
    block = MultiScaleAttention(3, fine_channels=4, coarse_channels=8, scale_factor=(2, 2, 1))
    a, b = torch.randn(1, 4, 6, 6, 3), torch.randn(1, 8, 3, 3, 3)
    gate = block.gate(a, b)
    assert gate.shape == a.shape
    assert (gate > 0).all() and (gate < 1).all()
    assert torch.allclose(block(a, b), gate * a)
    # a zero fine map is suppressed whatever the coarse map says
    assert block(torch.zeros_like(a), b).abs().max() == 0


def test_attention_handles_odd_fine_sizes():
    block = MultiScaleAttention(3, fine_channels=2, coarse_channels=4, scale_factor=2)
    a, b = torch.randn(1, 2, 7, 5, 9), torch.randn(1, 4, 3, 2, 4)  # floor(7/2), floor(5/2), floor(9/2)
    assert block(a, b).shape == a.shape


def _hand_assembled_forward(block: Res2NetBlock, x: torch.Tensor) -> torch.Tensor:
    """Gao et al. eq. 1 written out for scale 4: y1 = x1, y2 = K2(x2), y3 = K3(x3 + y2), y4 = K4(x4 + y3)."""
    h = block.conv_in(x)
    w = block.width
    x1, x2, x3, x4 = h[:, :w], h[:, w : 2 * w], h[:, 2 * w : 3 * w], h[:, 3 * w :]
    k2, k3, k4 = block.group_convs
    y1 = x1
    y2 = k2(x2)
    y3 = k3(x3 + y2)
    y4 = k4(x4 + y3)
    return torch.relu(block.conv_out(torch.cat([y1, y2, y3, y4], dim=1)) + block.residual(x))


@pytest.mark.parametrize("in_channels", [8, 6])
def test_res2net_matches_hand_assembled_hierarchy(in_channels):
    torch.manual_seed(0)
    block = Res2NetBlock(3, in_channels, 8, scale=4).eval()
    x = torch.randn(2, in_channels, 5, 4, 3)
    assert block.width == 2
    assert torch.allclose(block(x), _hand_assembled_forward(block, x), atol=1e-6)


def test_res2net_group_dependencies_follow_equation_one():
    """y1 depends on x1 only; y2 on x2 only; y_i (i > 2) on x2 .. x_i; nothing depends on x_s but y_s."""
    torch.manual_seed(0)
    block = Res2NetBlock(3, 8, 8, scale=4, norm=None).eval()
    h = torch.randn(1, 8, 4, 4, 4)
    base = block.hierarchy(h)
    for group in range(4):
        bumped = h.clone()
        bumped[:, 2 * group : 2 * group + 2] += 1.0
        changed = [not torch.equal(y0, y1) for y0, y1 in zip(base, block.hierarchy(bumped))]
        if group == 0:
            expected = [True, False, False, False]
        else:
            expected = [i >= group for i in range(4)]
        assert changed == expected, (group, changed)


def test_res2net_2d_shapes_and_errors():
    assert Res2NetBlock(2, 3, 12, scale=3)(torch.randn(2, 3, 9, 7)).shape == (2, 12, 9, 7)
    with pytest.raises(ValueError, match="scale >= 2"):
        Res2NetBlock(3, 4, 4, scale=1)
