"""Record what every attached block computes, through forward hooks, outputs untouched.

:class:`AttentionRecorder` finds the blocks :mod:`medattn.insertion` attached to a network
(:func:`medattn.insertion.attached_blocks`) and hooks each. A hook never returns a value,
so the network's output is exactly what it is without the recorder (tested). What is
recorded, per block, for the last forward pass:

============================  =========================================================
block                         recorded
============================  =========================================================
SNA                           spatial ``weights``: N·softmax(M̂), (B, 1, *spatial)
DSM                           spatial ``S`` (its spatial map), and ``M_mean``: the mean over
                              channels of what the block adds (``|y − x|``), a per-position
                              summary of its self-attention M; channel ``C``
CBAM                          spatial ``spatial`` (its spatial gate); channel ``channel``
SE, ECA                       channel ``gate``
DIA units (shared per stage)  channel ``h<k>``: the unit's hₜ at the k-th block of the stage
============================  =========================================================

Spatial maps keep the block's feature grid; channel weights are (B, C). The recorder
recomputes SNA's weights and DSM's maps from the block's input with the block's own
methods (``attention_map``, ``spatial_attention``, ``channel_attention``), so a map is the
block's, not a copy of its code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["AttentionRecorder", "BlockRecord", "block_kind"]

#: Block class name -> the kind used in file names and ``--blocks``.
KINDS = {
    "SpectralNormAttention": "sna",
    "DSM": "dsm",
    "CBAMBlock": "cbam",
    "SEBlock": "se",
    "ECABlock": "eca",
    "DIAUnit": "dia",
    "SharedAttentionUnit": "dia",
}


def block_kind(module: nn.Module) -> str | None:
    """The kind of an attached block (``sna``, ``dsm``, ...), None for one without maps."""
    return KINDS.get(type(module).__name__)


@dataclass
class BlockRecord:
    """What one block computed in the last forward pass."""

    kind: str
    spatial: dict[str, torch.Tensor] = field(default_factory=dict)
    channel: dict[str, torch.Tensor] = field(default_factory=dict)


class AttentionRecorder:
    """Context manager: hooks on the attached blocks of ``network`` while inside it.

    Args:
        network: a network with blocks attached by :mod:`medattn.insertion`.
        blocks: kinds (``sna``, ``dsm``, ``cbam``, ``se``, ``eca``, ``dia``) or qualified
            block names to record; None: every block with maps.

    Raises:
        ValueError: if ``blocks`` selects nothing, listing what is attached.

    Example:
        >>> with AttentionRecorder(network) as recorder:  # doctest: +SKIP
        ...     network(x)
        ...     recorder.records["encoder.0.sna"].spatial["weights"].shape
    """

    def __init__(self, network: nn.Module, blocks=None):
        from medattn.insertion import attached_blocks

        attached = {name: module for name, module in attached_blocks(network).items() if block_kind(module)}
        if blocks:
            wanted = set(blocks)
            attached = {n: m for n, m in attached.items() if n in wanted or block_kind(m) in wanted}
        if not attached:
            found = {n: type(m).__name__ for n, m in attached_blocks(network).items()}
            raise ValueError(f"no block to explain{f' among {sorted(blocks)}' if blocks else ''}; the network has "
                             f"{found or 'no attached blocks'}")
        self.blocks = attached
        self.records: dict[str, BlockRecord] = {}
        self._handles = []

    def __enter__(self) -> "AttentionRecorder":
        for name, module in self.blocks.items():
            self._handles += _hook(name, module, self)
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clear(self) -> None:
        """Forget the last forward pass (a DIA unit's block counter starts again)."""
        self.records = {}

    def record(self, name: str, kind: str) -> BlockRecord:
        return self.records.setdefault(name, BlockRecord(kind))


def _hook(name: str, module: nn.Module, recorder: AttentionRecorder) -> list:
    kind = block_kind(module)
    if kind == "sna":
        def sna(m, args, out):
            recorder.record(name, kind).spatial["weights"] = m.attention_map(args[0].detach()).detach()
        return [module.register_forward_hook(sna)]
    if kind == "dsm":
        def dsm(m, args, out):
            x, record = args[0].detach(), recorder.record(name, kind)
            if m.mode != "channel":
                record.spatial["S"] = m.spatial_attention(x).detach()
            if m.mode not in ("channel", "spatial"):
                record.spatial["M_mean"] = (out.detach() - x).abs().mean(dim=1, keepdim=True)
            if m.mode != "spatial":
                record.channel["C"] = m.channel_attention(x).detach().flatten(1)
        return [module.register_forward_hook(dsm)]
    if kind == "cbam":
        def spatial(m, args, out):
            recorder.record(name, kind).spatial["spatial"] = out.detach()

        def channel(m, args, out):
            recorder.record(name, kind).channel["channel"] = out.detach().flatten(1)
        return [module.spatial.gate.register_forward_hook(spatial), module.channel.gate.register_forward_hook(channel)]
    if kind in ("se", "eca"):
        def gate(m, args, out):
            recorder.record(name, kind).channel["gate"] = out.detach().flatten(1)
        return [module.gate.register_forward_hook(gate)]

    def unit(m, args, out):  # a DIA unit: out = (y, state); DIAUnit's state is (h_t, c_t)
        record = recorder.record(name, kind)
        state = out[1]
        if isinstance(state, tuple):
            record.channel[f"h{len(record.channel)}"] = state[0].detach().flatten(1)
    return [module.register_forward_hook(unit)]
