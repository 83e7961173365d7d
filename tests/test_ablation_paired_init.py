"""benchmarks/ablation.seed_each_module: arms that share a module start it from the same weights at one seed, whatever
other modules an arm builds before it."""

import torch
from torch import nn

from benchmarks import ablation


def _arm(extra: bool) -> nn.Module:
    model = nn.Module()
    if extra:  # an arm with one more module, built first: it draws from the global generator before the others
        model.gate = nn.Linear(16, 16)
    model.shared = nn.Conv2d(2, 1, 7)
    model.head = nn.Sequential(nn.Conv2d(8, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 1))
    return model


def test_shared_modules_start_alike_across_arms_and_differ_across_seeds():
    torch.manual_seed(0)
    plain = _arm(False)
    torch.manual_seed(0)
    more = _arm(True)
    # without per-module seeds the extra module shifts every later draw
    assert not torch.equal(plain.shared.weight, more.shared.weight)
    ablation.seed_each_module(plain, 0)
    ablation.seed_each_module(more, 0)
    for name, tensor in plain.state_dict().items():
        torch.testing.assert_close(more.state_dict()[name], tensor, rtol=0, atol=0)
    other = ablation.seed_each_module(_arm(False), 1)
    assert not torch.equal(other.shared.weight, plain.shared.weight)
    twins = ablation.seed_each_module(nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)), 0)
    assert not torch.equal(twins[0].weight, twins[1].weight)  # each name its own draw


def test_reinitialised_weights_keep_pytorch_default_scale():
    conv = ablation.seed_each_module(nn.Sequential(nn.Conv2d(64, 32, 3)), 3)[0]
    bound = 1 / (64 * 9) ** 0.5  # kaiming_uniform(a=sqrt(5)) of a conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
