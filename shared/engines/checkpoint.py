"""Resuming an interrupted training run from the per-epoch checkpoint MONAI's ``CheckpointSaver`` writes.

A bundle's train.json saves model, optimizer, LR scheduler and trainer state every epoch with
``CheckpointSaver(save_interval=1, n_saved=1, file_prefix=RESUME_PREFIX)`` (ignite names the file
``resume_checkpoint_epoch=<n>.pt``), and with ``--resume true`` loads the newest one at start with
``CheckpointLoader``, disabled when :func:`resume_path` gives None. An interrupted run so loses at most the epoch it
was in.
"""

import os
import re
from pathlib import Path

from shared.engines.flags import as_bool

__all__ = ["RESUME_PREFIX", "latest_checkpoint", "resume_path"]

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
