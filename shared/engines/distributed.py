"""Multi-GPU runs of a bundle under torchrun: the process's device, its process group, and the handlers each rank
attaches (one process writes the logs and checkpoints; every process takes part in training and validation)."""

import logging
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from ignite.contrib.handlers import ProgressBar
from monai.handlers import (
    CheckpointSaver,
    ClassificationSaver,
    LogfileHandler,
    MetricLogger,
    MetricsSaver,
    StatsHandler,
    TensorBoardHandler,
)

__all__ = ["RANK_ZERO_HANDLERS", "handlers_for_rank", "join_process_group", "leave_process_group", "local_device"]

LOGGER = logging.getLogger("shared.distributed")

# handlers that only log, draw or save: running them on every rank would write each log line and file N times
RANK_ZERO_HANDLERS = (
    StatsHandler,
    TensorBoardHandler,
    ProgressBar,
    LogfileHandler,
    MetricLogger,
    CheckpointSaver,
    MetricsSaver,
    ClassificationSaver,
)


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>``, this process's GPU on its own node (torchrun sets LOCAL_RANK), or the CPU without CUDA."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def join_process_group(device: torch.device) -> None:
    """Make ``device`` this process's GPU and join torchrun's process group (NCCL on GPUs, gloo on the CPU) once;
    log ``rank R of N (local rank L) on <device>``, what each process of a multi-node run took."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    local_rank = os.environ.get("LOCAL_RANK", "0")
    LOGGER.info("rank %d of %d (local rank %s) on %s", dist.get_rank(), dist.get_world_size(), local_rank, device)


def leave_process_group() -> None:
    """Destroy the process group at the end of a run, if there is one, once every rank has got there (a rank that
    destroys it early closes the connections another rank is still using, which aborts that rank)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def handlers_for_rank(handlers: Sequence | None) -> list:
    """The handlers this process attaches: all of them on rank 0 (or without a process group), and on the other ranks
    those that are not loggers, progress bars, TensorBoard writers or savers (:data:`RANK_ZERO_HANDLERS`)."""
    handlers = [h for h in handlers or () if h is not None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        return handlers
    return [h for h in handlers if not isinstance(h, RANK_ZERO_HANDLERS)]
