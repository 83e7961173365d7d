"""benchmarks/va_block_stats.py: recording leaves the block's output unchanged and the block as it was; each figure
equals the one worked out by hand or from the block's own intermediate tensors."""

import math

import numpy as np
import pytest
import torch

from benchmarks.va_block_stats import recorded_block_stats, slice_weight_stats, summaries
from shared.networks.blocks.volumetric_attention import VolumetricAttention


def _bag(n: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(3, n, 32, 6, 6, generator=torch.Generator().manual_seed(seed))


def test_recording_changes_nothing_and_is_undone():
    torch.manual_seed(0)
    block = VolumetricAttention(2, 32).eval()
    bag = _bag()
    with torch.no_grad():
        expected = block(bag)
        with recorded_block_stats({"0": block}) as stats:
            out = block(bag)
    torch.testing.assert_close(out, expected)
    assert stats["0"].summary()["bags"] == 3
    assert "channel_attention" not in block.__dict__ and "spatial_attention" not in block.__dict__
    assert not block._forward_hooks and not block.channel_embedding[1]._forward_hooks
    assert not block.spatial_head[0]._forward_pre_hooks
    with torch.no_grad():
        block(bag)
    assert stats["0"].summary()["bags"] == 3  # nothing recorded after the block


def test_figures_equal_the_blocks_own_tensors():
    torch.manual_seed(0)
    block = VolumetricAttention(2, 32, min_hidden=8).eval()
    bag = _bag()
    with torch.no_grad(), recorded_block_stats({"0": block}) as stats:
        out = block(bag, 2)
        att_c, gate_c = block.channel_attention(bag, 2)
        pooled = bag.mean(dim=(3, 4)).reshape(15, 32, 1, 1)
        hidden = torch.relu(block.channel_embedding[0](pooled)).flatten(1)  # (B * N, 8)
        att_s, gate_s = block.spatial_attention(bag, 2, gate_c)
    summary = summaries(stats)["0"]  # two forward passes' worth of the same bags: the same figures
    assert summary["bags"] == 3
    assert summary["channel_hidden_alive"] == pytest.approx(float((hidden > 0).any(0).float().mean()))
    assert summary["channel_hidden_active"] == pytest.approx(float((hidden > 0).float().mean()))
    entropy = float(-(att_c * att_c.log()).sum(1).mean())
    assert summary["channel_entropy"] == pytest.approx(entropy, rel=1e-5)
    assert summary["spatial_max_weight"] == pytest.approx(float(att_s.max(1).values.mean()), rel=1e-6)
    assert summary["channel_gate_spread"] == pytest.approx(float(gate_c.flatten(1).std(0, unbiased=False).mean()))
    assert summary["spatial_gate_sd"] == pytest.approx(float(gate_s.std(unbiased=False)), rel=1e-5)
    ratio = (out.flatten(1).norm(dim=1) / bag[:, 2].flatten(1).norm(dim=1)).mean()
    assert summary["norm_ratio"] == pytest.approx(float(ratio), rel=1e-6)
    assert summary["uniform_entropy"] == pytest.approx(math.log(5))


def test_slice_weights_by_hand():
    att = np.array([[0.1, 0.1, 0.6, 0.1, 0.1], [0.0, 0.2, 0.4, 0.2, 0.2]])
    stats = slice_weight_stats(att, 2, "spatial")
    assert stats["spatial_target_weight"] == pytest.approx(0.5)  # (0.6 + 0.4) / 2
    assert stats["spatial_far_weight"] == pytest.approx(0.2)  # images 0 and 4: (0.2 + 0.2) / 2
    assert stats["spatial_max_weight"] == pytest.approx(0.5)
    first = -(4 * 0.1 * math.log(0.1) + 0.6 * math.log(0.6))
    second = -(3 * 0.2 * math.log(0.2) + 0.4 * math.log(0.4))  # a zero weight adds nothing
    assert stats["spatial_entropy"] == pytest.approx((first + second) / 2)


def test_dead_units_and_a_constant_gate_are_seen():
    """A channel embedding whose hidden units never fire and a spatial head whose ReLU input is below 0 everywhere:
    no hidden unit alive, no active ReLU input, and gates that are the same for every bag and pixel."""
    block = VolumetricAttention(2, 32, min_hidden=4).eval()
    with torch.no_grad():
        block.channel_embedding[0].weight.zero_()
        block.channel_embedding[0].bias.fill_(-1.0)
        block.spatial_embedding.weight.zero_()
        block.spatial_embedding.bias.fill_(-1.0)
        with recorded_block_stats({"0": block}) as stats:
            block(_bag())
    summary = stats["0"].summary()
    assert summary["channel_hidden_alive"] == 0.0
    assert summary["spatial_relu_active"] == 0.0
    assert summary["channel_gate_spread"] == pytest.approx(0.0, abs=1e-7)
    assert summary["spatial_gate_sd"] == pytest.approx(0.0, abs=1e-7)
    assert summary["channel_entropy"] == pytest.approx(math.log(5))  # equal embeddings: uniform attention


def test_switched_off_parts_report_nothing():
    block = VolumetricAttention(2, 32, channel=False)
    with torch.no_grad(), recorded_block_stats({"0": block}) as stats:
        block(_bag())
    summary = stats["0"].summary()
    assert "channel_entropy" not in summary and "channel_hidden_alive" not in summary
    assert "spatial_entropy" in summary


def test_the_residual_ratio_is_what_the_bag_adds_over_the_target():
    """0 for a fresh block (W_z starts at 0); once W_z is set, ||W_z(S_att . X_long)|| / ||X_tgt|| from the block's
    own slice attention; absent without the residual."""
    torch.manual_seed(0)
    block = VolumetricAttention(2, 32, sequential=False, bag_residual=True).eval()
    bag = _bag()
    with torch.no_grad(), recorded_block_stats({"0": block}) as stats:
        block(bag)
        assert summaries(stats, reset=True)["0"]["residual_ratio"] == 0.0
        torch.nn.init.normal_(block.bag_projection.weight)
        block(bag, 2)
        att, _ = block.spatial_attention(bag, 2, None)
        residual = block.bag_projection((att[:, :, None, None, None] * bag).sum(1))
    ratio = (residual.flatten(1).norm(dim=1) / bag[:, 2].flatten(1).norm(dim=1)).mean()
    assert float(ratio) > 0.1
    assert summaries(stats)["0"]["residual_ratio"] == pytest.approx(float(ratio), rel=1e-5)
    plain = VolumetricAttention(2, 32).eval()
    with torch.no_grad(), recorded_block_stats({"0": plain}) as plain_stats:
        plain(bag)
    assert "residual_ratio" not in summaries(plain_stats)["0"]
