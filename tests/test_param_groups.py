"""shared.engines.param_groups and the cs_att_deeplesion ``attention_lr_mult`` knob: the attention layers, and only
they, get the multiplied learning rate, through the scheduler too; a multiplier of 1 keeps one group."""

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from shared.engines.param_groups import scaled_lr_groups
from shared.errors import InputError
from shared.networks.three_dce import ThreeDCE

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "cs_att_deeplesion" / "configs"


def _attention_ids(network) -> set[int]:
    return {id(p) for p in network.backbone.attention.parameters()}


def test_attention_parameters_get_the_multiplied_rate():
    network = ThreeDCE(3, "tiny", contextual=False, spatial=True)
    groups = scaled_lr_groups(network, 0.02, {"backbone.attention": 3})
    assert len(groups) == 2 and "lr" not in groups[0] and groups[1]["lr"] == pytest.approx(0.06)
    assert {id(p) for p in groups[1]["params"]} == _attention_ids(network) and len(groups[1]["params"]) == 2  # phi_s
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in network.parameters()) and len(set(every)) == len(every)


def test_a_multiplier_of_one_keeps_one_group_and_frozen_parameters_stay_out():
    network = ThreeDCE(3, "tiny", contextual=True, spatial=True)
    network.backbone.body[0].weight.requires_grad_(False)
    groups = scaled_lr_groups(network, 0.02, {"backbone.attention": 1.0})
    assert len(groups) == 1
    assert len(groups[0]["params"]) == sum(1 for p in network.parameters() if p.requires_grad)
    assert sum(1 for p in network.parameters()) == len(groups[0]["params"]) + 1


def test_the_distributed_wrapper_prefix_is_ignored_and_bad_multipliers_are_refused():
    class Wrapper(torch.nn.Module):  # names its parameters module.* as DistributedDataParallel does
        def __init__(self, module):
            super().__init__()
            self.module = module

    network = ThreeDCE(3, "tiny", contextual=True, spatial=False)
    groups = scaled_lr_groups(Wrapper(network), 0.01, {"backbone.attention": 2})
    assert {id(p) for p in groups[1]["params"]} == _attention_ids(network)
    for bad in ("three", 0, -1.0, float("nan")):
        with pytest.raises(InputError, match="learning-rate multiplier for backbone.attention"):
            scaled_lr_groups(network, 0.01, {"backbone.attention": bad})


@pytest.mark.parametrize("mult", [None, 3])
def test_train_config_attention_lr_mult_reaches_the_optimizer_and_its_schedule(mult):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"backbone": "tiny", "num_images": 3, "pretrained": False, "device": "$torch.device('cpu')"})
    if mult is not None:
        parser["attention_lr_mult"] = mult
    optimizer = parser.get_parsed_content("optimizer")
    lrs = [g["lr"] for g in optimizer.param_groups]
    assert lrs == ([0.001] if mult is None else [0.001, pytest.approx(0.003)])
    scheduler = parser.get_parsed_content("lr_scheduler")
    for _ in range(parser["lr_milestones"][0]):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [pytest.approx(lr / 10) for lr in lrs]
