"""What a :class:`~shared.networks.blocks.volumetric_attention.VolumetricAttention` block does with its bag, measured
on the forward passes it sees (issue 22's leads, per block, i.e. per FPN level in the detector):

- ``channel_hidden_alive``: share of the channel embedding's hidden units (``W1``, eq. 2) that are active (> 0) on at
  least one bag member; ``channel_hidden_active``: share of (unit, member) pairs active. Dead units leave ``S_c`` a
  constant.
- ``channel_entropy`` / ``spatial_entropy``: mean entropy (nats) of the slice attention ``S_att`` over the bag (eq. 2,
  eq. 3; ``log N`` when uniform, 0 when one-hot); ``*_max_weight``: mean of its largest weight; ``*_target_weight``:
  mean weight of the target image; ``*_far_weight``: mean summed weight of the images :data:`FAR` or more places
  from the target (``uniform_far_weight`` for uniform attention).
- ``channel_gate_mean`` and ``channel_gate_spread``: mean of ``S_c`` and its standard deviation across bags (mean
  over channels): 0 when the gate is the same for every bag.
- ``spatial_relu_active``: share of the attended spatial embedding above 0 (the spatial head's ReLU input, where the
  head starts with a ReLU); 0 leaves ``S_s`` a constant. ``spatial_gate_mean``, ``spatial_gate_sd``: mean and
  standard deviation of ``S_s`` over bags and pixels; ``spatial_gate_spread``: standard deviation across bags of each
  bag's mean gate.
- ``norm_ratio``: mean over bags of ||output|| / ||target features||: what the two gates leave of the target.
- ``residual_ratio`` (``bag_residual`` blocks): mean over bags of ||W_z(S_att . X_long)|| / ||target features||:
  how much the bag adds beside the gated target (0 at initialisation).

:func:`recorded_block_stats` installs the recorders on named blocks (wrapping the instances' attention methods and
hooking their ReLUs; the blocks compute exactly what they did), ``BlockStats.summary()`` gives the figures and
``reset()`` starts a new window (e.g. one per training epoch).
"""

import contextlib
import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from shared.networks.blocks.volumetric_attention import VolumetricAttention

FAR = 2  # images from the target: in the detector 2 images = 6 slices (9 mm at 1.5 mm) and beyond


def slice_weight_stats(att: np.ndarray, target_index: int, prefix: str) -> dict:
    """Entropy, largest weight, target weight and far weight of slice attentions ``att`` (bags, N), averaged over
    bags, with ``prefix`` on each key."""
    n = att.shape[1]
    offsets = np.abs(np.arange(n) - target_index)
    entropy = -(att * np.log(np.clip(att, 1e-30, None))).sum(axis=1)
    return {
        f"{prefix}_entropy": float(entropy.mean()),
        f"{prefix}_max_weight": float(att.max(axis=1).mean()),
        f"{prefix}_target_weight": float(att[:, target_index].mean()),
        f"{prefix}_far_weight": float(att[:, offsets >= FAR].sum(axis=1).mean()),
    }


class BlockStats:
    """The measurements of one block over the forward passes since the last :meth:`reset`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.bag_size = 0
        self.target_index = 0
        self.hidden_any: torch.Tensor | None = None  # (hidden,) active on some member
        self.hidden_active = [0, 0]  # active (unit, member) pairs, all pairs
        self.att = {"channel": [], "spatial": []}  # (B, N) per call
        self.channel_gates: list[np.ndarray] = []  # (B, C)
        self.spatial_relu = [0, 0]  # positive values, all values
        self.spatial_gates: list[np.ndarray] = []  # (B, pixels)
        self.norm_ratios: list[np.ndarray] = []  # (B,)
        self.residual_norms: torch.Tensor | None = None  # (B,) of the pass under way
        self.residual_ratios: list[np.ndarray] = []  # (B,)

    def add_hidden(self, hidden: torch.Tensor) -> None:
        active = (hidden.detach().flatten(1) > 0).cpu()  # (B * N, hidden)
        self.hidden_any = active.any(0) if self.hidden_any is None else self.hidden_any | active.any(0)
        self.hidden_active[0] += int(active.sum())
        self.hidden_active[1] += active.numel()

    def add_attention(self, kind: str, att: torch.Tensor, gate: torch.Tensor, target_index: int) -> None:
        self.bag_size, self.target_index = att.shape[1], target_index % att.shape[1]
        self.att[kind].append(att.detach().float().cpu().numpy())
        flat = gate.detach().float().flatten(1).cpu().numpy()
        (self.channel_gates if kind == "channel" else self.spatial_gates).append(flat)

    def add_spatial_relu_input(self, attended: torch.Tensor) -> None:
        self.spatial_relu[0] += int((attended.detach() > 0).sum())
        self.spatial_relu[1] += attended.numel()

    def add_residual(self, residual: torch.Tensor) -> None:
        self.residual_norms = residual.detach().flatten(1).norm(dim=1)

    def add_output(self, target: torch.Tensor, output: torch.Tensor) -> None:
        target_norms = target.detach().flatten(1).norm(dim=1).clamp_min(1e-12)
        self.norm_ratios.append((output.detach().flatten(1).norm(dim=1) / target_norms).float().cpu().numpy())
        if self.residual_norms is not None:
            self.residual_ratios.append((self.residual_norms / target_norms).float().cpu().numpy())
            self.residual_norms = None

    def summary(self) -> dict:
        """The figures of the module docstring (those of a switched-off attention are absent); ``bags`` counted."""
        out: dict = {"bags": int(sum(len(r) for r in self.norm_ratios)), "bag_size": self.bag_size}
        if self.norm_ratios:
            out["norm_ratio"] = float(np.concatenate(self.norm_ratios).mean())
        if self.residual_ratios:
            out["residual_ratio"] = float(np.concatenate(self.residual_ratios).mean())
        if self.hidden_any is not None:
            out["channel_hidden_alive"] = float(self.hidden_any.float().mean())
            out["channel_hidden_active"] = self.hidden_active[0] / max(self.hidden_active[1], 1)
        for kind, batches in self.att.items():
            if batches:
                out |= slice_weight_stats(np.concatenate(batches), self.target_index, kind)
        if self.bag_size:
            offsets = np.abs(np.arange(self.bag_size) - self.target_index)
            out["uniform_far_weight"] = float((offsets >= FAR).mean())
            out["uniform_entropy"] = math.log(self.bag_size)
        if self.channel_gates:
            gates = np.concatenate(self.channel_gates)  # (bags, C)
            out["channel_gate_mean"] = float(gates.mean())
            out["channel_gate_spread"] = float(gates.std(axis=0).mean())
        if self.spatial_relu[1]:
            out["spatial_relu_active"] = self.spatial_relu[0] / self.spatial_relu[1]
        if self.spatial_gates:
            gates = np.concatenate(self.spatial_gates)  # (bags, pixels); one level, so one size
            out["spatial_gate_mean"] = float(gates.mean())
            out["spatial_gate_sd"] = float(gates.std())
            out["spatial_gate_spread"] = float(gates.mean(axis=1).std())
        return out


def _record(block: VolumetricAttention, stats: BlockStats) -> list:
    """Wrap ``block``'s attention methods on the instance and hook its ReLUs; return what :func:`_restore` undoes."""
    undo = []
    for kind in ("channel", "spatial"):
        if not getattr(block, kind):
            continue
        method = getattr(block, f"{kind}_attention")

        def wrapped(bag, target_index, *args, _method=method, _kind=kind, **kwargs):
            att, gate = _method(bag, target_index, *args, **kwargs)
            stats.add_attention(_kind, att, gate, target_index)
            return att, gate

        block.__dict__[f"{kind}_attention"] = wrapped
        undo.append(f"{kind}_attention")
    handles = []
    if block.channel:
        handles.append(block.channel_embedding[1].register_forward_hook(lambda m, i, o: stats.add_hidden(o)))
    if block.bag_residual:
        handles.append(block.bag_projection.register_forward_hook(lambda m, i, o: stats.add_residual(o)))
    if block.spatial and isinstance(block.spatial_head[0], torch.nn.ReLU):
        relu = block.spatial_head[0]
        handles.append(relu.register_forward_pre_hook(lambda m, i: stats.add_spatial_relu_input(i[0])))

    def on_output(module, args, output):
        bag = args[0]
        t = args[1] if len(args) > 1 and args[1] is not None else bag.shape[1] // 2
        stats.add_output(bag[:, t], output)

    handles.append(block.register_forward_hook(on_output))
    return [undo, handles]


@contextlib.contextmanager
def recorded_block_stats(blocks: Mapping[str, VolumetricAttention]) -> Iterator[dict[str, BlockStats]]:
    """Within the block, every forward pass of each named block adds to its :class:`BlockStats` (yielded as
    ``{name: stats}``); the blocks are restored on exit."""
    stats = {name: BlockStats() for name in blocks}
    installed = {name: _record(block, stats[name]) for name, block in blocks.items()}
    try:
        yield stats
    finally:
        for name, (undo, handles) in installed.items():
            for attribute in undo:
                del blocks[name].__dict__[attribute]
            for handle in handles:
                handle.remove()


def summaries(stats: Mapping[str, BlockStats], reset: bool = False) -> dict[str, dict]:
    """``{name: summary}`` of every block that saw a bag; with ``reset``, start new windows."""
    out = {name: s.summary() for name, s in stats.items() if s.norm_ratios}
    if reset:
        for s in stats.values():
            s.reset()
    return out
