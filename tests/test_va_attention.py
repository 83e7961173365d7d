"""Volumetric Attention block (VA paper sec. 2.1-2.3): equations 2 and 3, softmax over the bag, switches, shapes."""

import pytest
import torch
import torch.nn.functional as F

from shared.networks.blocks.volumetric_attention import VolumetricAttention


def _block(seed: int = 0, **kwargs) -> VolumetricAttention:
    torch.manual_seed(seed)
    return VolumetricAttention(2, 32, **kwargs).eval()


def _bag(n: int = 5, seed: int = 1, b: int = 2) -> torch.Tensor:
    return torch.randn(b, n, 32, 6, 7, generator=torch.Generator().manual_seed(seed))


def test_slice_attention_is_a_softmax_over_the_bag():
    block, bag = _block(), _bag()
    for att, _ in (block.channel_attention(bag, 2), block.spatial_attention(bag, 2)):
        assert att.shape == (2, 5)
        assert (att > 0).all()
        torch.testing.assert_close(att.sum(dim=1), torch.ones(2))


def test_identical_bag_gives_uniform_attention():
    block = _block()
    image = _bag(n=1)
    bag = image.expand(-1, 7, -1, -1, -1)
    for att, _ in (block.channel_attention(bag, 3), block.spatial_attention(bag, 3)):
        torch.testing.assert_close(att, torch.full((2, 7), 1 / 7))


def test_channel_attention_follows_equation_2():
    block, bag = _block(), _bag(n=3, b=1)
    w1, w2 = block.channel_embedding[0], block.channel_embedding[2]
    head = block.channel_head[1]
    pooled = bag[0].mean(dim=(2, 3))  # (N, C): global average pooling of each bag member
    emb = F.linear(torch.relu(F.linear(pooled, w1.weight[:, :, 0, 0], w1.bias)), w2.weight[:, :, 0, 0], w2.bias)
    target = emb[1]  # 1 x C, the middle image
    logits = torch.stack([torch.dot(target, emb[k]) for k in range(3)])
    att = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
    attended = (att[:, None] * emb).sum(dim=0)  # S_att^c . F_emb^c(X_long), 1 x C
    gate = torch.sigmoid(F.linear(torch.relu(attended), head.weight[:, :, 0, 0], head.bias))
    got_att, got_gate = block.channel_attention(bag, 1)
    torch.testing.assert_close(got_att[0], att)
    torch.testing.assert_close(got_gate[0, :, 0, 0], gate)


@pytest.mark.parametrize("spatial_scale", [False, True])
def test_spatial_attention_follows_equation_3(spatial_scale):
    block, bag = _block(spatial_scale=spatial_scale), _bag(n=3, b=1)
    pooled = torch.stack([bag[0].amax(dim=1), bag[0].mean(dim=1)], dim=1)  # (N, 2, H, W)
    emb = block.spatial_embedding(pooled)[:, 0]  # (N, H, W)
    scale = emb[1].numel() if spatial_scale else 1  # eq. 3 as written: the plain product
    logits = torch.stack([(emb[1] * emb[k]).sum() / scale for k in range(3)])
    att = torch.softmax(logits, dim=0)
    attended = (att[:, None, None] * emb).sum(dim=0)
    gate = block.spatial_head(attended[None, None])[0]
    got_att, got_gate = block.spatial_attention(bag, 1)
    torch.testing.assert_close(got_att[0], att)
    torch.testing.assert_close(got_gate[0], gate)


def test_spatial_slice_attention_by_hand():
    """Eq. 3 on a 1 x 2 map with the embedding W = channel max (1x1 kernel, weights [1, 0]): target [1, 1] and
    members [1, 0], [1, 1], [0, 2] give products 1, 2, 2. Literal: softmax(1, 2, 2) = (1, e, e) / (1 + 2e); scaled by
    H*W = 2: softmax(0.5, 1, 1) = (1, e^0.5, e^0.5) / (1 + 2 e^0.5)."""
    maps = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])  # channel max of each member, (N, W)
    bag = torch.stack([maps, maps - 1.0], dim=1)[None, :, :, None, :]  # (1, N=3, C=2, H=1, W=2); channel 1 lower
    expected = {False: [0.155362, 0.422319, 0.422319], True: [0.232697, 0.383652, 0.383652]}
    for spatial_scale, probabilities in expected.items():
        block = VolumetricAttention(2, 2, spatial_kernel_size=1, channel=False, spatial_scale=spatial_scale)
        with torch.no_grad():
            block.spatial_embedding.weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
            block.spatial_embedding.bias.zero_()
        att, _ = block.spatial_attention(bag, 1)
        torch.testing.assert_close(att[0], torch.tensor(probabilities), atol=1e-6, rtol=0)
    assert VolumetricAttention(2, 2).spatial_scale is False  # eq. 3 as written is the default


def test_block_is_scriptable():
    """TorchScript (the bundle's ckpt_export) compiles the block with any switches and gives the eager output."""
    bag = _bag()
    fixed = {"spatial_scale": True, "gate_norm": True, "min_hidden": 16, "spatial_relu": False}
    for switches in ({}, {"channel": False}, {"spatial": False}, {"spatial_scale": True}, fixed):
        block = _block(**switches)
        torch.testing.assert_close(torch.jit.script(block)(bag, 2), block(bag, 2))


def test_switches_turn_parts_off():
    bag = _bag()
    target = bag[:, 2]
    channel_only = _block(spatial=False)
    assert not hasattr(channel_only, "spatial_embedding")
    _, gate = channel_only.channel_attention(bag, 2)
    torch.testing.assert_close(channel_only(bag), target * gate)

    spatial_only = _block(channel=False)
    assert not hasattr(spatial_only, "channel_embedding")
    _, gate = spatial_only.spatial_attention(bag, 2)
    torch.testing.assert_close(spatial_only(bag), target * gate)

    both = _block()
    _, c_gate = both.channel_attention(bag, 2)
    _, s_gate = both.spatial_attention(bag * c_gate.unsqueeze(1), 2)
    torch.testing.assert_close(both(bag), target * c_gate * s_gate)

    torch.testing.assert_close(_block(channel=False, spatial=False)(bag), target)


def test_gradients_reach_every_parameter():
    block = _block().train()
    bag = _bag().requires_grad_(True)
    block(bag).square().mean().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # context images (not only the target) receive gradient: the attention really looks at the bag
    assert bag.grad[:, 0].abs().sum() > 0


@pytest.mark.parametrize("n", [1, 3, 9])
def test_shapes_for_several_bag_sizes(n):
    bag = _bag(n=n)
    assert _block()(bag).shape == (2, 32, 6, 7)
    bag3d = torch.randn(1, n, 32, 3, 4, 5)
    assert VolumetricAttention(3, 32)(bag3d).shape == (1, 32, 3, 4, 5)


def test_bad_bag_shape_and_target_index_are_refused():
    with pytest.raises(ValueError, match="expected a bag"):
        _block()(torch.randn(2, 32, 6, 7))
    with pytest.raises(ValueError, match="target_index"):
        _block()(_bag(n=3), target_index=3)


def test_gate_norm_divides_each_gate_by_its_mean():
    """``gate_norm``: S_c / mean over channels and S_s / mean over pixels, applied in the same sequence as the plain
    gates; without it, the gates of eq. 2-3 as they are."""
    bag = _bag()
    plain, normed = _block(), _block(gate_norm=True)  # same seed: the same weights
    _, c_gate = plain.channel_attention(bag, 2)
    c_normed = c_gate / c_gate.mean(dim=1, keepdim=True)
    _, s_gate = plain.spatial_attention(bag, 2, c_normed)
    s_normed = s_gate / s_gate.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(normed.channel_attention(bag, 2)[1], c_normed)
    torch.testing.assert_close(normed(bag, 2), bag[:, 2] * c_normed * s_normed)
    torch.testing.assert_close(c_normed.mean(dim=1), torch.ones(2, 1, 1))
    assert not torch.allclose(c_gate.mean(dim=1), torch.ones(2, 1, 1))  # the plain gate's mean is not 1
    torch.testing.assert_close(plain(bag, 2), bag[:, 2] * c_gate * plain.spatial_attention(bag, 2, c_gate)[1])


def test_sequential_false_computes_the_spatial_attention_from_the_ungated_bag():
    """Default (sec. 1, sequential): S_s from the bag gated by S_c. ``sequential=False``: S_s from the bag as given;
    both gates multiply the target either way."""
    bag = _bag()
    sequential, parallel = _block(), _block(sequential=False)  # same seed: the same weights
    _, c_gate = sequential.channel_attention(bag, 2)
    s_gated = sequential.spatial_attention(bag, 2, c_gate)[1]
    s_plain = sequential.spatial_attention(bag, 2, None)[1]
    assert not torch.allclose(s_gated, s_plain)  # the order matters on this bag
    torch.testing.assert_close(sequential(bag, 2), bag[:, 2] * c_gate * s_gated)
    torch.testing.assert_close(parallel(bag, 2), bag[:, 2] * c_gate * s_plain)
    torch.jit.script(parallel)  # scriptable like the default


@pytest.mark.parametrize(("channels", "min_hidden", "hidden"), [(256, 1, 16), (64, 1, 4), (64, 16, 16), (8, 1, 1)])
def test_channel_embedding_width(channels, min_hidden, hidden):
    """C / 16 hidden units as eq. 2 writes (16 at the paper's 256-channel FPN), at least ``min_hidden``."""
    block = VolumetricAttention(2, channels, min_hidden=min_hidden)
    assert block.channel_embedding[0].out_channels == hidden


def test_bag_residual_starts_as_the_paper_form_and_adds_the_attended_bag():
    """``bag_residual``: ``X_tgt * S_c * S_s + W_z(S_att . X_long)`` with the spatial slice attention (the channel one
    without spatial attention); ``W_z`` starts at zero, so a fresh block gives the paper's output."""
    bag = _bag()
    residual = _block(channel=False, bag_residual=True)
    plain = VolumetricAttention(2, 32, channel=False).eval()
    plain.load_state_dict({k: v for k, v in residual.state_dict().items() if not k.startswith("bag_projection")})
    torch.testing.assert_close(residual(bag, 2), plain(bag, 2))  # W_z = 0
    with torch.no_grad():
        residual.bag_projection.weight.normal_(generator=torch.Generator().manual_seed(3))
    att, gate = residual.spatial_attention(bag, 2)
    attended = (att[:, :, None, None, None] * bag).sum(dim=1)
    expected = bag[:, 2] * gate + residual.bag_projection(attended)
    torch.testing.assert_close(residual(bag, 2), expected)
    assert not torch.allclose(residual(bag, 2), plain(bag, 2))
    changed = bag.clone()
    changed[:, 0] += 1.0  # a far member: reaches the output through the residual, not only through the gate
    assert not torch.allclose(residual(changed, 2), residual(bag, 2))
    torch.testing.assert_close(torch.jit.script(residual)(bag, 2), residual(bag, 2))
    channel_only = _block(spatial=False, bag_residual=True)
    with torch.no_grad():
        channel_only.bag_projection.weight.fill_(0.01)
    c_att, c_gate = channel_only.channel_attention(bag, 2)
    c_attended = (c_att[:, :, None, None, None] * bag).sum(dim=1)
    torch.testing.assert_close(channel_only(bag, 2), bag[:, 2] * c_gate + channel_only.bag_projection(c_attended))
    with pytest.raises(ValueError, match="switch channel or spatial on"):
        VolumetricAttention(2, 32, channel=False, spatial=False, bag_residual=True)
