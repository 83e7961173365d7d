"""Resuming an interrupted training run from the per-epoch checkpoint MONAI's ``CheckpointSaver`` writes.

A bundle's train.json saves model, optimizer, LR scheduler and trainer state every epoch with
``CheckpointSaver(save_interval=1, n_saved=1, file_prefix=RESUME_PREFIX)`` (ignite names the file
``resume_checkpoint_epoch=<n>.pt``), and with ``--resume true`` loads the newest one at start with
``CheckpointLoader``, disabled when :func:`resume_path` gives None. An interrupted run so loses at most the epoch it
was in.

Inference loads ``models/model.pt`` with :class:`StateDictLoader`, which refuses a file that is not a checkpoint of
the network in one line (:func:`shared.networks.pretrained.load_weights`).
"""

import os
import re
from pathlib import Path

from ignite.engine import Events
from torch import nn

from shared.engines.flags import as_bool
from shared.networks.pretrained import load_weights

__all__ = ["RESUME_PREFIX", "StateDictLoader", "latest_checkpoint", "resume_path"]

RESUME_PREFIX = "resume"


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = RESUME_PREFIX) -> str | None:
    """Path of the ``<prefix>_*_epoch=<n>.pt`` file with the largest ``n`` in ``ckpt_dir``, or None if there is none."""
    pattern = re.compile(rf"{re.escape(prefix)}_.*epoch=(\d+)\.pt")
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name))]
    return str(max(found)[1]) if found else None


def resume_path(ckpt_dir: str | os.PathLike, resume: bool | int | str) -> str | None:
    """The checkpoint a run resumes from: the newest in ``ckpt_dir`` if the ``resume`` knob is on, else None."""
    return latest_checkpoint(ckpt_dir) if as_bool(resume, "resume") else None


class StateDictLoader:
    """Ignite handler loading the plain state dict at ``load_path`` onto ``network`` when the engine starts.

    Unlike MONAI's ``CheckpointLoader``, a missing, truncated or foreign file stops the run with one line naming it
    (:func:`~shared.networks.pretrained.load_weights`).
    """

    def __init__(self, load_path: str | os.PathLike, network: nn.Module) -> None:
        self.load_path = load_path
        self.network = network

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        load_weights(self.network, self.load_path)
