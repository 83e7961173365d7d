"""The MSAN network family: shapes, variants, deep supervision, gradients, TorchScript, self-description."""

import math

import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceLoss

from shared.networks.msan import MSAN, architecture

CHANNELS = (4, 8, 16)
ANISO = ((2, 2, 1), (2, 2, 2))


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("variant", ["unet", "v1", "v2"])
@pytest.mark.parametrize(
    "strides, size",
    [((2, 2), (16, 16, 8)), (ANISO, (16, 12, 4)), (ANISO, (17, 13, 5))],
    ids=["isotropic", "anisotropic", "odd"],
)
def test_output_shape(variant, strides, size):
    model = MSAN(channels=CHANNELS, strides=strides, variant=variant).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, *size)).shape == (1, 3, *size)


def test_deep_supervision_returns_list_in_training_and_main_output_in_eval():
    torch.manual_seed(0)
    model = MSAN(channels=CHANNELS, strides=ANISO, variant="v2", deep_supervision=True)
    x = torch.randn(2, 1, 16, 12, 4)
    outputs = model.train()(x)
    # main, then the heads after the second-last and the last pooling, upsampled to the input grid (Dou et al.)
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 16, 12, 4)] * 3
    label = torch.randint(0, 3, (2, 1, 16, 12, 4)).float()  # as LoadImaged gives labels
    loss = DeepSupervisionLoss(DiceLoss(to_onehot_y=True, softmax=True))(outputs, label)
    assert loss.ndim == 0 and torch.isfinite(loss)
    with torch.no_grad():
        main = model.eval()(x)
    assert isinstance(main, torch.Tensor) and main.shape == (2, 3, 16, 12, 4)


@pytest.mark.parametrize("variant", ["unet", "v1", "v2"])
def test_gradients_reach_every_parameter(variant):
    torch.manual_seed(0)
    model = MSAN(channels=CHANNELS, strides=ANISO, variant=variant, deep_supervision=True).train()
    outputs = model(torch.randn(2, 1, 8, 8, 4))
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_variants_add_exactly_their_modules_parameters():
    c, s, out = CHANNELS, ANISO, 3
    unet = _count(MSAN(channels=c, strides=s, variant="unet"))
    v1 = _count(MSAN(channels=c, strides=s, variant="v1"))
    v2 = _count(MSAN(channels=c, strides=s, variant="v2", res2net_scale=4))
    v2_ds = _count(MSAN(channels=c, strides=s, variant="v2", deep_supervision=True))
    # V1: one transposed conv C_{i+1} -> C_i, kernel = stride, with bias, per skip
    attention = sum(c[i + 1] * c[i] * math.prod(s[i]) + c[i] for i in range(len(s)))
    assert v1 - unet == attention
    # V2: Res2Net 8 -> 16, width 16 // 4 = 4, hidden 16, three 3x3x3 group convs; conv + batch norm (2 per channel)
    res2net = (8 * 16 + 16 + 2 * 16) + 3 * (4 * 4 * 27 + 4 + 2 * 4) + (16 * 16 + 16 + 2 * 16) + (8 * 16 + 16 + 2 * 16)
    assert v2 - v1 == res2net
    # deep supervision: a 1x1x1 classifier on 8 and on 16 channels, each followed by a transposed conv out -> out of
    # kernel = stride = the total pooling factor (2*2*1 after the second-last pooling, 4*4*2 after the last)
    assert v2_ds - v2 == (8 * out + out) + (out * out * 4 + out) + (16 * out + out) + (out * out * 32 + out)


def test_deep_supervision_heads_read_the_encoding_part_only():
    """Paper sec. 2.2: deep supervision "in the last two max pooling of the encoding part": the auxiliary outputs do
    not depend on the decoder, the gates or the main head, and each head sees the map after one of the last poolings.
    """
    torch.manual_seed(0)
    model = MSAN(
        channels=(4, 8, 16, 32), strides=((2, 2, 1), (2, 2, 1), (2, 2, 2)), variant="v2", deep_supervision=True
    )
    seen = []
    for head in model.aux_heads:
        head.register_forward_hook(lambda _m, inputs, _out: seen.append(tuple(inputs[0].shape)))
    outputs = model.train()(torch.randn(1, 1, 16, 16, 4))
    # after the second-last pooling: 16/4, 16/4, 4/1 with 16 channels; after the last: 16/8, 16/8, 4/2, 32 channels
    assert seen == [(1, 16, 4, 4, 4), (1, 32, 2, 2, 2)]
    sum(o.sum() for o in outputs[1:]).backward()
    decoder_side = ("attentions", "ups", "decoders", "head.")
    reached = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert not [n for n in reached if n.startswith(decoder_side)]
    assert any(n.startswith("bottom_res2net") for n in reached) and any(n.startswith("encoders.2") for n in reached)


@pytest.mark.parametrize(
    "variant, ds, name, gates, res2net, heads",
    [
        ("unet", False, "3D U-Net", 0, 0, 0),
        ("v1", False, "MSAN-V1", 2, 0, 0),
        ("v2", False, "MSAN-V2", 2, 1, 0),
        ("v2", True, "MSAN-V2 with deep supervision", 2, 1, 2),
        ("v1", True, "MSAN-V1 with deep supervision", 2, 0, 2),
    ],
)
def test_architecture_names_each_table1_model_from_its_blocks(variant, ds, name, gates, res2net, heads):
    model = MSAN(channels=CHANNELS, strides=ANISO, variant=variant, deep_supervision=ds)
    arch = architecture(model)
    assert (arch.name, arch.attention_gates, arch.res2net_blocks, arch.supervision_heads) == (
        name,
        gates,
        res2net,
        heads,
    )
    assert arch.parameters == _count(model)


def test_architecture_reads_the_modules_not_the_arguments():
    model = MSAN(channels=CHANNELS, strides=ANISO, variant="v2")
    model.bottom_res2net = None  # what the module tree holds decides the name
    assert architecture(model).name == "MSAN-V1"


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown MSAN variant"):
        MSAN(variant="v3")
    with pytest.raises(ValueError, match="strides"):
        MSAN(channels=(4, 8, 16), strides=(2,))
    with pytest.raises(ValueError, match="at least 3 levels"):
        MSAN(channels=(4, 8), strides=(2,), deep_supervision=True)
    # a knob typed on a command line arrives as a string; "false" must not switch deep supervision on
    with pytest.raises(TypeError, match="deep_supervision must be True or False"):
        MSAN(deep_supervision="false")


def test_torchscript_matches_eager_in_eval():
    torch.manual_seed(0)
    model = MSAN(channels=CHANNELS, strides=ANISO, variant="v2", deep_supervision=True).eval()
    x = torch.randn(1, 1, 9, 8, 4)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_2d_network():
    model = MSAN(spatial_dims=2, channels=CHANNELS, strides=(2, 2), variant="v2").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 15, 10)).shape == (1, 3, 15, 10)


def test_res2net_gain_zero_starts_v2_as_v1_and_learns_the_gain():
    """With ``res2net_gain=0`` a V2 network gives V1's output from V1's weights (the branch multiplied by 0), the gain
    gets a gradient at once, and the branch's weights get theirs once the gain has moved; the default is the paper's
    plain sum (no gain parameter)."""
    torch.manual_seed(0)
    v1 = MSAN(channels=CHANNELS, strides=ANISO, variant="v1").eval()
    v2 = MSAN(channels=CHANNELS, strides=ANISO, variant="v2", res2net_gain=0).eval()
    missing, unexpected = v2.load_state_dict(v1.state_dict(), strict=False)
    assert unexpected == [] and all(k.startswith("bottom_res2net") or k == "res2net_gain" for k in missing)
    x = torch.randn(2, 1, 16, 12, 4)
    assert torch.equal(v2(x), v1(x))
    v2.train()(x).square().mean().backward()
    assert v2.res2net_gain.grad is not None and v2.res2net_gain.grad.abs() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in v2.bottom_res2net.parameters())
    with torch.no_grad():
        v2.res2net_gain.fill_(0.5)
    v2.zero_grad()
    v2(x).square().mean().backward()
    assert all(p.grad.abs().sum() > 0 for p in v2.bottom_res2net.parameters())
    plain = MSAN(channels=CHANNELS, strides=ANISO, variant="v2")
    assert plain.res2net_gain is None and "res2net_gain" not in dict(plain.named_parameters())
    with pytest.raises(ValueError, match="res2net_gain=0 needs variant 'v2'"):
        MSAN(channels=CHANNELS, strides=ANISO, variant="v1", res2net_gain=0)


def test_torchscript_with_a_res2net_gain():
    torch.manual_seed(0)
    model = MSAN(channels=CHANNELS, strides=ANISO, variant="v2", res2net_gain=0.25).eval()
    x = torch.randn(1, 1, 9, 8, 4)
    with torch.no_grad():
        assert torch.allclose(torch.jit.script(model)(x), model(x), atol=1e-5)
