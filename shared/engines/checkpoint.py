"""Resuming an interrupted training run from the per-epoch checkpoint MONAI's ``CheckpointSaver`` writes.

A bundle's train.json saves model, optimizer, LR scheduler and trainer state every epoch with
``CheckpointSaver(save_interval=1, n_saved=1, file_prefix=RESUME_PREFIX)`` (ignite names the file
``resume_checkpoint_epoch=<n>.pt``), and with ``--resume true`` loads the newest one at start with
``CheckpointLoader``, disabled when :func:`resume_path` gives None. An interrupted run so loses at most the epoch it
was in.

It saves with :class:`AtomicCheckpointSaver`, not MONAI's ``CheckpointSaver``: MONAI's writes in place (ignite's
``DiskSaver(atomic=False)``) and ignite deletes the previous file before writing the next, so a run killed while
saving would leave no complete resume file, only a truncated one that resuming then fails to load.

Inference loads ``models/model.pt`` with :class:`StateDictLoader`, which refuses a file that is not a checkpoint of
the network in one line (:func:`shared.networks.pretrained.load_weights`).
"""

import os
import re
from pathlib import Path

from ignite.engine import Events
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver
from torch import nn

from shared.engines.flags import as_bool
from shared.networks.pretrained import load_weights

__all__ = ["RESUME_PREFIX", "AtomicCheckpointSaver", "StateDictLoader", "latest_checkpoint", "resume_path"]

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


class _AtomicDiskSaver(DiskSaver):
    """ignite's atomic ``DiskSaver`` (a temporary file in the same folder, then ``os.replace``) that deletes the file
    a new one supersedes only once the new one is complete, and can write under one fixed name (as MONAI's does)."""

    def __init__(self, dirname: str, filename: str | None = None):
        super().__init__(dirname=dirname, require_empty=False, atomic=True)
        self.filename = filename
        self._superseded: list[str] = []

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        super().__call__(checkpoint=checkpoint, filename=self.filename or filename, metadata=metadata)
        for old in self._superseded:
            super().remove(old)
        self._superseded.clear()

    def remove(self, filename: str) -> None:
        if self.filename is None:  # a fixed name is replaced in place by the next save
            self._superseded.append(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) whose files are each either complete or absent, and whose
    ``n_saved`` newest files are on disk at every moment: killed while saving, a run leaves its previous checkpoints
    (and at most one ``tmp*`` file, never loaded, that ignite names without the ``.pt`` suffix)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = _AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)
