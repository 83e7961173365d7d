"""Load parts of a local detector checkpoint onto a model, with a report of what matched (VA paper sec. 3.2).

The VA paper copies "the weights of the feature extractor and RPN from detectors pre-trained on MS-COCO and
DeepLesion". :func:`load_pretrained` does that from a file the user supplies (nothing is downloaded): a torchvision
COCO Mask R-CNN ``state_dict`` (``maskrcnn_resnet50_fpn_coco-*.pth``), a DeepLesion VA Faster R-CNN trained by the
``cs_att_deeplesion`` bundle, or any checkpoint whose keys follow torchvision's detector names.
"""

import logging
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from shared.errors import InputError

logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("model", "state_dict", "network", "net")  # dicts that MONAI CheckpointSaver and others write


@dataclass
class LoadReport:
    """Keys under the requested prefixes: loaded, missing from the checkpoint, shape mismatches, unknown to model."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, checkpoint shape, model shape)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        text = (
            f"loaded {len(self.loaded)}, missing {len(self.missing)}, shape mismatch {len(self.mismatched)}, "
            f"not in model {len(self.unexpected)}"
        )
        details = [f"  missing: {k}" for k in self.missing]
        details += [f"  shape mismatch: {k} checkpoint {c} model {m}" for k, c, m in self.mismatched]
        details += [f"  not in model: {k}" for k in self.unexpected]
        return "\n".join([text, *details])


def require_checkpoint(path: str | Path, url: str) -> Path:
    """``path`` if it is a file; otherwise an :class:`InputError` naming the file and where to get it.

    For the configs' default pre-training: nothing is downloaded (a run must not depend on being online).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"pretrained weights {path} not found: download {url} to that path (or give --pretrained_path <file>),"
            " or train from random weights with --pretrained false"
        )
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (.pt/.pth via ``torch.load(weights_only=True)``, or .safetensors).

    A dict wrapping the state dict under ``model``/``state_dict``/``network``/``net`` is unwrapped and a DDP
    ``module.`` prefix removed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint {path} does not exist: give the path of a local .pt/.pth file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            # torch.save writes a zip archive: anything else is corrupt or truncated (torch's message would say
            # that the file "can still be loaded" unsafely, which misleads then)
            lines = str(err).strip().splitlines() or [type(err).__name__]
            zipped = zipfile.is_zipfile(path)
            reason = f"not a weights-only torch file: {lines[0]}" if zipped else "corrupt or truncated"
            raise InputError(f"{path}: cannot read checkpoint ({reason}); save or download it again") from err
    for key in WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"checkpoint {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    prefixes: str | Sequence[str] = ("backbone", "rpn"),
    rename: Mapping[str, str] | None = None,
) -> LoadReport:
    """Copy the checkpoint's tensors whose keys start with one of ``prefixes`` onto ``model``; log and return a report.

    ``prefixes``: parts of the model by the names of its children (``backbone``, ``rpn``, ``roi_heads``); one name
    alone may be given as a string (as ``--pretrained_parts roi_heads`` arrives). A name the model does not have, or
    a checkpoint of which nothing is loaded, raises an :class:`InputError` naming them.

    Tensors with a matching name and shape are loaded; the others are reported (``missing``: model keys under the
    prefixes that the checkpoint lacks, e.g. the VA blocks when starting from COCO; ``mismatched``: same name,
    other shape; ``unexpected``: checkpoint keys the model does not have). Nothing outside the prefixes is touched.
    ``rename`` maps checkpoint keys to model keys first and leaves out the keys it does not name (the checkpoint of
    another network, e.g. an ImageNet classifier onto a detector's backbone).
    """
    prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
    parts = [name for name, _ in model.named_children()]
    unknown = [p for p in prefixes if p.split(".")[0] not in parts]
    if unknown or not prefixes:
        raise InputError(
            f"pretrained parts {list(prefixes)}: {type(model).__name__} has no {', '.join(unknown) or 'part given'};"
            f" give some of {parts}"
        )
    checkpoint = read_state_dict(path)
    if rename is not None:
        checkpoint = {rename[k]: v for k, v in checkpoint.items() if k in rename}
    target = model.state_dict()

    def selected(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    report = LoadReport()
    to_load = {}
    for key, value in checkpoint.items():
        if not selected(key):
            continue
        if key not in target:
            report.unexpected.append(key)
        elif target[key].shape != value.shape:
            report.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
        else:
            to_load[key] = value
    report.missing = [k for k in target if selected(k) and k not in checkpoint]
    if not to_load:
        raise InputError(
            f"{path}: no tensor of {', '.join(prefixes)} fits {type(model).__name__} "
            f"({report.summary().splitlines()[0]}); give a checkpoint of this detector, or other --pretrained_parts"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    logger.info("pretrained weights from %s (prefixes %s): %s", path, ", ".join(prefixes), report.summary())
    return report


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """``model`` with every tensor of the checkpoint at ``path`` loaded (strict), for inference.

    A missing, unreadable or truncated file, or the state dict of another network (or of this one built with other
    settings), raises an :class:`InputError` naming the file, the network and the keys that differ.
    """
    path = Path(path)
    name = type(model).__name__
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint; train {name} with configs/train.json or pass --ckpt_path")
    checkpoint = read_state_dict(path)
    target = model.state_dict()
    missing = [k for k in target if k not in checkpoint]
    unexpected = [k for k in checkpoint if k not in target]
    mismatched = [k for k in target if k in checkpoint and checkpoint[k].shape != target[k].shape]
    kinds = {"missing keys": missing, "unknown keys": unexpected, "keys of another shape": mismatched}
    differences = [f"{len(keys)} {what}, e.g. {', '.join(keys[:3])}" for what, keys in kinds.items() if keys]
    if differences:
        raise InputError(
            f"{path}: not a checkpoint of this {name} ({'; '.join(differences)}); give the model.pt trained with"
            " configs/train.json and the same network settings"
        )
    model.load_state_dict(checkpoint)
    return model
