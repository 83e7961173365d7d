"""Log which training sample a process draws: the evidence, in a multi-GPU run's own output, that the DDP ranks train
on different samples (the bundles' multi_gpu_train.json put it into the training transforms)."""

import logging
import os
import re
from collections.abc import Mapping, Sequence

import torch.distributed as dist
from monai.data import MetaTensor
from monai.transforms import RandomizableTrait, Transform

__all__ = ["LogSampled", "loaded_samples", "sample_name"]

LOGGER = logging.getLogger("shared.sample_log")


def sample_name(data: Mapping, keys: Sequence[str]) -> str:
    """``keys``' values joined by ``:``; a loaded image (MetaTensor) is named by the file it was read from."""
    values = (data[k].meta.get("filename_or_obj", "?") if isinstance(data[k], MetaTensor) else data[k] for k in keys)
    return ":".join(str(v) for v in values)


class LogSampled(Transform, RandomizableTrait):
    """Log ``rank R loads <tag> sample <name>`` at INFO for every sample that passes, and return it unchanged.

    ``name`` is :func:`sample_name` of ``keys`` (e.g. ``"image"``, or ``["case", "slice"]`` for one slice of a
    volume); ``R`` is the process's rank in the default process group (``RANK`` of torchrun, 0 without one).
    It is a :class:`~monai.transforms.RandomizableTrait` although it changes nothing: caching datasets
    (``CacheDataset``) stop caching before it, so it runs each time the sampler draws the sample, not once at caching.
    """

    def __init__(self, keys: str | Sequence[str], tag: str = "training") -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.tag = tag

    def __call__(self, data: Mapping) -> Mapping:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))
        LOGGER.info("rank %s loads %s sample %s", rank, self.tag, sample_name(data, self.keys))
        return data


def loaded_samples(text: str, tag: str = "training") -> dict[int, list[str]]:
    """Parse a run's output: the sample names that :class:`LogSampled` logged, per rank, in order."""
    found: dict[int, list[str]] = {}
    for rank, name in re.findall(rf"rank (\d+) loads {re.escape(tag)} sample (.+)$", text, flags=re.MULTILINE):
        found.setdefault(int(rank), []).append(name)
    return found
