"""CS-Att block (Tao et al. 2019, eq. 1-8): softmax axes, max normalisation, temperatures, switches, gradients."""

import math

import pytest
import torch

from shared.networks.blocks.contextual_spatial_attention import ContextualSpatialAttention, max_normalized_softmax


def _entropy(p: torch.Tensor, dim) -> torch.Tensor:
    return -(p * p.log()).sum(dim=dim)


def test_softmax_hand_computed_with_temperature():
    scores = torch.tensor([0.0, 2.0, 4.0])
    soft, norm = max_normalized_softmax(scores, 0, temperature=2.0)
    expected = torch.tensor([1.0, math.e, math.e**2]) / (1 + math.e + math.e**2)  # exp(s / 2) normalized
    assert torch.allclose(soft, expected, atol=1e-6)
    assert torch.allclose(norm, torch.tensor([math.e**-2, math.e**-1, 1.0]), atol=1e-6)


def test_contextual_softmax_sums_to_one_across_images_and_max_is_one():
    torch.manual_seed(0)
    scores = torch.randn(2, 5, 4, 6, 7) * 3  # (B, M, D, H, W)
    soft, norm = max_normalized_softmax(scores, 1, temperature=2.0)
    assert torch.allclose(soft.sum(dim=1), torch.ones(2, 4, 6, 7), atol=1e-6)
    # eq. 3: per channel and position, the maximum over the M images is exactly one
    assert torch.equal(norm.amax(dim=1), torch.ones(2, 4, 6, 7))
    assert (norm > 0).all() and (norm <= 1).all()


def test_spatial_softmax_sums_to_one_over_positions_and_max_is_one_per_map():
    torch.manual_seed(1)
    scores = torch.randn(2, 3, 4, 6, 7) * 3
    soft, norm = max_normalized_softmax(scores, (3, 4), temperature=3.0)
    assert torch.allclose(soft.sum(dim=(3, 4)), torch.ones(2, 3, 4), atol=1e-5)
    assert torch.equal(norm.amax(dim=(3, 4)), torch.ones(2, 3, 4))
    # same result as a flat softmax over H*W
    flat = torch.softmax(scores.flatten(3) / 3.0, dim=-1).reshape_as(scores)
    assert torch.allclose(soft, flat, atol=1e-6)


def test_higher_temperature_is_flatter():
    torch.manual_seed(2)
    scores = torch.randn(4, 7, 8) * 2
    low, _ = max_normalized_softmax(scores, 1, temperature=1.0)
    high, _ = max_normalized_softmax(scores, 1, temperature=3.0)
    assert (high.amax(dim=1) < low.amax(dim=1)).all()
    assert (_entropy(high, 1) > _entropy(low, 1)).all()


def _block_with_known_scores(contextual: bool, spatial: bool) -> ContextualSpatialAttention:
    block = ContextualSpatialAttention(2, contextual=contextual, spatial=spatial, kernel_size=1)
    for conv in (block.phi_c, block.phi_s):
        if conv is not None:
            with torch.no_grad():
                conv.weight.copy_(torch.eye(2).reshape(2, 2, 1, 1))  # identity: scores = features
                conv.bias.zero_()
    return block


def test_contextual_attention_equations_on_known_scores():
    block = _block_with_known_scores(contextual=True, spatial=False)
    x = torch.rand(1, 3, 2, 4, 5) * 4
    out, maps = block(x, return_maps=True)
    expected_att = torch.softmax(x / 2.0, dim=1)
    expected_att = expected_att / expected_att.amax(dim=1, keepdim=True)
    assert torch.allclose(maps["contextual"], expected_att, atol=1e-6)
    assert torch.allclose(out, expected_att * x, atol=1e-6)
    assert "spatial" not in maps


def test_spatial_attention_scores_refined_features():
    block = _block_with_known_scores(contextual=True, spatial=True)
    x = torch.rand(1, 3, 2, 4, 5) * 4
    out, maps = block(x, return_maps=True)
    refined = maps["contextual"] * x
    s = torch.softmax(refined.flatten(3) / 3.0, dim=-1).reshape_as(x)  # eq. 5-6 on X'
    s = s / s.amax(dim=(3, 4), keepdim=True)
    assert torch.allclose(maps["spatial"], s, atol=1e-6)
    assert torch.allclose(out, s * refined, atol=1e-6)


def test_switches_turn_parts_off():
    x = torch.randn(2, 3, 4, 5, 5)
    off = ContextualSpatialAttention(4, contextual=False, spatial=False)
    assert torch.equal(off(x), x)
    assert sum(p.numel() for p in off.parameters()) == 0
    only_s = ContextualSpatialAttention(4, contextual=False)
    _, maps = only_s(x, return_maps=True)
    assert set(maps) == {"spatial"} and only_s.phi_c is None


def test_three_dimensional_features_and_bad_shape():
    block = ContextualSpatialAttention(3, spatial_dims=3)
    x = torch.randn(1, 2, 3, 4, 4, 4)
    out, maps = block(x, return_maps=True)
    assert out.shape == x.shape and torch.equal(maps["spatial"].amax(dim=(3, 4, 5)), torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match="expected"):
        block(torch.randn(2, 3, 4, 4))


def test_gradients_flow_to_both_convolutions_and_input():
    torch.manual_seed(3)
    block = ContextualSpatialAttention(4)
    x = torch.randn(2, 3, 4, 6, 6, requires_grad=True)
    (block(x) * torch.randn(2, 3, 4, 6, 6)).sum().backward()
    for p in block.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert x.grad is not None and torch.isfinite(x.grad).all()
