"""Precision settings of a run on CUDA, switched by the bundles' config knobs (``--amp``, ``--tf32``).

- ``amp``: float16 autocast where a network runs and a GradScaler in training. MONAI's engines take it as ``amp=``;
  the detection trainer, evaluator and inferers here run the network in :func:`autocast`.
- ``tf32``: :func:`set_tf32`, called once by every config's ``initialize``: TF32 tensor cores for float32 matmuls
  and convolutions (Ampere or newer GPUs; no effect on the CPU).
- ``flush_denormal``: :func:`set_flush_denormal`: CPU float arithmetic treats denormal numbers (below ~1.2e-38 in
  float32) as zero. A CPU training of the VA Mask R-CNN slowed from 0.6 to 1.1 s per iteration as weights and
  momentum buffers filled with denormals; flushing them kept it at 0.6 (no effect on CUDA).

``channels_last`` (NHWC weights and activations, which suit 2D convolutions on tensor cores) is a knob of the 2D
detection bundles only, read by :func:`memory_format` where the config moves ``network_def`` to the device. The 3D
MSAN keeps NCDHW: the 3D form (``channels_last_3d``) was not measured on its convolutions, so msan_kits has no such
knob.
"""

import torch

__all__ = ["autocast", "memory_format", "set_flush_denormal", "set_tf32"]


def autocast(device: torch.device | str, enabled: bool) -> torch.autocast:
    """float16 autocast for the network calls inside when ``enabled`` and ``device`` is a GPU; a no-op otherwise."""
    return torch.autocast("cuda", enabled=bool(enabled) and torch.device(device).type == "cuda")


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout a 2D network's weights are moved to: NHWC (``torch.channels_last``) or the one they have."""
    return torch.channels_last if channels_last else torch.preserve_format


def set_tf32(enabled: bool) -> None:
    """Allow (or forbid) TF32 in CUDA float32 matmuls and cuDNN convolutions for the rest of the process."""
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    torch.backends.cudnn.allow_tf32 = bool(enabled)


def set_flush_denormal(enabled: bool) -> None:
    """Flush (or keep) denormal floats in CPU arithmetic for the rest of the process (``torch.set_flush_denormal``;
    a no-op on CPUs without SSE3)."""
    torch.set_flush_denormal(bool(enabled))
