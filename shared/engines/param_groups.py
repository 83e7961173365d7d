"""Optimizer parameter groups with a learning-rate multiplier for some of a network's modules.

3DCE's released code (rsummers11/CADLab, ``lesion_detector_3DCE/rcnn/symbol/symbol_vgg.py``) trains the layers it adds
to the pre-trained VGG-16 faster than the rest: ``lr_mult=3`` on the position-sensitive 1x1 convolution
(``conv_new_1``), ``lr_mult=2`` on ``fc6``. The CS-Att paper does not say what its attention layers got; the
cs_att_deeplesion bundle's ``attention_lr_mult`` (default 1: no multiplier) sets it for them.
"""

import math

import torch

from shared.errors import InputError

__all__ = ["scaled_lr_groups"]


def scaled_lr_groups(network: torch.nn.Module, lr: float, multipliers: dict[str, float]) -> list[dict]:
    """The trainable parameters of ``network`` as optimizer groups: those under a module named in ``multipliers``
    (a qualified name such as ``backbone.attention``; a DistributedDataParallel ``module.`` prefix is ignored) at
    ``lr`` times its multiplier, the others at ``lr``. Multipliers of 1 and groups with no parameter are left out,
    so with every multiplier 1 there is one group (the optimizer state of earlier checkpoints still loads)."""
    for prefix, factor in multipliers.items():
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise InputError(f"learning-rate multiplier for {prefix}: expected a positive number, got {factor!r}")
    scaled = {prefix: float(f) for prefix, f in multipliers.items() if float(f) != 1.0}
    groups = {prefix: [] for prefix in scaled}
    rest = []
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        name = name.removeprefix("module.")
        owner = next((p for p in scaled if name == p or name.startswith(p + ".")), None)
        (groups[owner] if owner else rest).append(param)
    return [{"params": rest}] + [{"params": ps, "lr": lr * scaled[p]} for p, ps in groups.items() if ps]
