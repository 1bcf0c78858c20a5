"""The one placement language: WHAT block goes WHERE in a built network.

Every engine (nnU-Net trainers, MONAI builders, ResNet presets, the benchmarks, the CLI
flags and the bundle configs) describes its blocks with a :class:`Placement`:

- ``block``: a registry name (``dsm``, ``sna``, ``se``, ``eca``, ``cbam``, ``gc``) or a
  DIA unit (``dia`` = DIA-LSTM, ``dia_light``, ``dia_se``, ``dia_eca``);
- ``options``: keyword arguments of the block or unit (``{"rd_ratio": 0.5}``);
- ``stages``: ``all``, ``first``, ``last`` or stage indices (negative count from the end);
- ``position``: where in each chosen stage (:data:`POSITIONS`), or ``None`` for the
  block's default in the network at hand.

Text form (every CLI flag and config uses it; options stay JSON)::

    BLOCK[@POSITION][:STAGES][{JSON options}]

    dsm                                   # DSM at the network's default position, every stage
    dsm@after_conv2:last{"rd_ratio": 0.5} # DSNet50-A: after conv2, last stage, r = 2
    sna@before_add                        # SNA at the end of every residual branch
    dia_light:0,1                         # one DIA-LSTM (Light) unit in stages 0 and 1
    none                                  # no attention (also "stock", "")

Positions. An in-block position sits **after that conv's normalisation and before its
nonlinearity**, in every network family, so that the block sees the normalised
pre-activation and what it adds passes through a nonlinearity before the next conv and
norm. (A per-channel offset such as DSM's, added where a conv → InstanceNorm follows, is
removed by that norm except near the zero-padded borders: the ``stage`` position of an
InstanceNorm network erases most of DSM's effect, see :class:`medattn.blocks.dsm.DSM`.)

=================  ==============================================================
position           the block follows
=================  ==============================================================
``stage``          the stage's output (what the skip connection carries)
``after_conv1``    the norm of the first conv of each block (of the stage, for a
                   plain encoder whose stage is one stack of conv layers)
``after_conv2``    the norm of the second conv
``after_conv3``    the norm of the third conv (bottleneck blocks)
``before_add``     the end of each residual branch, before the residual add
``shared``         one DIA unit per stage, shared by its blocks (DIA units only)
=================  ==============================================================

Each network family supplies one small adapter (:class:`Adapter`): the nnU-Net encoders
(:mod:`medattn.nnunet.network`), MONAI's networks (:mod:`medattn.networks.builders`) and
the ResNets (:mod:`medattn.images.resnets`). It lists the stages with the modules behind
each position, and the default position of each block. :func:`insert` then attaches the
blocks through :mod:`medattn.insertion`, after the stock network has been built.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # torch loads only when a placement is applied, so `medattn --help` stays fast
    from torch import nn

__all__ = [
    "Adapter",
    "DIA_UNITS",
    "POSITIONS",
    "Placement",
    "Stage",
    "block_names",
    "insert",
    "parse",
]

#: Every position of the language; an adapter offers the subset its network has.
POSITIONS = ("stage", "after_conv1", "after_conv2", "after_conv3", "before_add", "shared")

#: DIA unit spellings, mapped to the unit kind of :func:`medattn.blocks.dia.create_unit`.
DIA_UNITS = {"dia": "lstm", "dia_light": "light", "dia_se": "se", "dia_eca": "eca"}

#: Old spellings that still work, with the one spelling they stand for.
ALIASES = {
    "dia_lstm": "dia",
    "dia-lstm": "dia",
    "dia-light": "dia_light",
    "dia-se": "dia_se",
    "dia-eca": "dia_eca",
    "dsm_b": "dsm",
}

#: Old spellings that are refused, because they meant something else elsewhere; the
#: error names the new spelling.
RETIRED = {"lstm": "dia", "light": "dia_light"}

#: Texts that mean "no attention".
NONE_TEXTS = ("", "none", "stock", "plain")


def block_names() -> list[str]:
    """Every accepted block spelling: the registry's blocks and the DIA units, sorted."""
    from medattn import blocks

    return sorted(set(blocks.available()) | set(DIA_UNITS))


def canonical_block(name: str) -> str:
    """The one spelling of ``name`` (case-insensitive; aliases mapped).

    Raises:
        ValueError: for an unknown or retired name, naming the valid ones or the new one.
    """
    if not isinstance(name, str):
        raise ValueError(f"block must be a name, got {name!r}")
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in RETIRED:
        raise ValueError(f"block {name!r} is now spelled {RETIRED[key]!r}")
    if key not in block_names():
        raise ValueError(f"unknown block {name!r}; choose one of {block_names()} (or 'none')")
    return key


def _canonical_stages(stages) -> str | tuple[int, ...]:
    if stages is None:
        return "all"
    if isinstance(stages, str):
        key = stages.strip().lower()
        if key in ("all", "first", "last"):
            return key
        try:
            return tuple(int(part) for part in key.split(","))
        except ValueError:
            raise ValueError(
                f"unknown stages {stages!r}; use 'all', 'first', 'last' or indices such as '0,1' or '-1' "
                "(block options are JSON: dsm{\"rd_ratio\": 0.5})"
            ) from None
    values = [stages] if isinstance(stages, int) else list(stages)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"stage indices must be a non-empty list of ints, got {stages!r}")
    return tuple(values)


@dataclass(frozen=True)
class Placement:
    """One block, its options, the stages and the position (see the module docstring).

    Attributes:
        block: the block's one spelling (aliases are mapped on construction).
        position: one of :data:`POSITIONS`, or None for the network's default.
        stages: "all", "first", "last" or a tuple of indices.
        options: keyword arguments of the block or unit.

    Raises:
        ValueError: for an unknown block, position or stage spec, a DIA unit at a position
            other than ``shared`` (or a block at ``shared``), or an unknown option name.
    """

    block: str
    position: str | None = None
    stages: Any = "all"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "block", canonical_block(self.block))
        object.__setattr__(self, "stages", _canonical_stages(self.stages))
        object.__setattr__(self, "options", dict(self.options or {}))
        if self.position is not None:
            position = str(self.position).strip().lower()
            if position not in POSITIONS:
                raise ValueError(f"unknown position {self.position!r}; choose one of {list(POSITIONS)}")
            object.__setattr__(self, "position", position)
        if self.is_unit and self.position not in (None, "shared"):
            raise ValueError(f"{self.block} is a DIA unit shared by a stage's blocks: its position is 'shared', "
                             f"not {self.position!r}")
        if not self.is_unit and self.position == "shared":
            raise ValueError(f"position 'shared' is for DIA units ({sorted(DIA_UNITS)}), not {self.block!r}")
        self._check_option_names()

    @property
    def is_unit(self) -> bool:
        """True for a DIA unit shared by the blocks of a stage."""
        return self.block in DIA_UNITS

    @property
    def unit_kind(self) -> str:
        """The :func:`medattn.blocks.dia.create_unit` kind of a DIA unit."""
        return DIA_UNITS[self.block]

    def _check_option_names(self) -> None:
        from medattn.blocks import dia, registry

        if self.is_unit and self.unit_kind in ("lstm", "light"):
            valid = set(dia.LSTM_UNIT_OPTIONS)
        else:
            valid = registry.keyword_names(registry.get_block_class(DIA_UNITS.get(self.block, self.block)))
        unknown = sorted(set(self.options) - valid)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for {self.block!r}; valid options are {sorted(valid)}")

    def at(self, position: str) -> "Placement":
        """This placement with ``position`` filled in."""
        return Placement(self.block, position, self.stages, self.options)

    def to_text(self) -> str:
        """The text form; ``parse(p.to_text()) == p``."""
        text = self.block
        if self.position is not None:
            text += f"@{self.position}"
        if self.stages != "all":
            text += ":" + (self.stages if isinstance(self.stages, str) else ",".join(map(str, self.stages)))
        if self.options:
            text += json.dumps(self.options, sort_keys=True)
        return text

    __str__ = to_text

    def slug(self) -> str:
        """A file-name-safe form of the text, for run folders: ``dsm@stage:last{"rd_ratio": 0.5}``
        becomes ``dsm-stage-last-rd_ratio_0.5``."""
        import re

        return re.sub(r"[^A-Za-z0-9_.]+", "-", re.sub(r'"\s*:\s*', "_", self.to_text())).strip("-")


def parse(spec) -> Placement | None:
    """A :class:`Placement` from its text form, a mapping, or a Placement; None for no attention.

    Args:
        spec: ``"BLOCK[@POSITION][:STAGES][{JSON}]"``, a mapping with the keys ``block``,
            ``position``, ``stages``, ``options``, a :class:`Placement`, or None/"none".

    Raises:
        ValueError: for malformed text or JSON, and everything :class:`Placement` refuses.
    """
    if spec is None or isinstance(spec, Placement):
        return spec
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - {"block", "position", "stages", "options"})
        if unknown or "block" not in spec:
            raise ValueError(f"a placement mapping needs 'block' and may have position, stages, options; got {dict(spec)}")
        return Placement(spec["block"], spec.get("position"), spec.get("stages", "all"), spec.get("options") or {})
    if not isinstance(spec, str):
        raise ValueError(f"a placement is text such as 'dsm@after_conv1:all', got {spec!r}")
    text = spec.strip()
    if text.lower() in NONE_TEXTS:
        return None
    head, brace, tail = text.partition("{")
    options = {}
    if brace:
        try:
            options = json.loads(brace + tail)
        except json.JSONDecodeError as err:
            raise ValueError(f"placement {spec!r}: options are not valid JSON ({err.msg})") from None
        if not isinstance(options, dict):
            raise ValueError(f"placement {spec!r}: options must be a JSON object")
    head, colon, stages = head.strip().partition(":")
    block, at, position = head.partition("@")
    if at and not position.strip():
        raise ValueError(f"placement {spec!r}: '@' needs a position, one of {list(POSITIONS)}")
    if colon and not stages.strip():
        raise ValueError(f"placement {spec!r}: ':' needs stages ('all', 'first', 'last' or indices)")
    return Placement(block, position.strip() or None, stages.strip() or "all", options)


# ---------------------------------------------------------------------------------------
# Adapters: where the positions are in one network family
# ---------------------------------------------------------------------------------------


@dataclass
class Stage:
    """One stage of a built network, as an adapter sees it.

    Attributes:
        name: qualified module name of the stage, e.g. ``"layer3"``.
        module: the module whose forward runs the stage (its output is the ``stage`` host).
        channels: channels of the stage's output.
        blocks: per block of the stage, in execution order, ``position -> (host, channels)``
            for the in-block positions it has.
        unit_hosts: the modules whose outputs a shared DIA unit recalibrates, in execution
            order (residual branch ends, or the conv layers of a plain stage).
    """

    name: str
    module: nn.Module
    channels: int
    blocks: list[dict[str, tuple[nn.Module, int]]]
    unit_hosts: list[nn.Module]

    def positions(self) -> list[str]:
        """The positions this stage has, in :data:`POSITIONS` order."""
        have = {"stage"} | ({"shared"} if self.unit_hosts else set())
        for block in self.blocks:
            have |= set(block)
        return [p for p in POSITIONS if p in have]


class Adapter:
    """Where the positions are in one network family. Subclasses set :attr:`family` and
    :attr:`defaults` and implement :meth:`stages`.

    Attributes:
        family: a name for messages, e.g. "torchvision ResNet".
        defaults: block -> default position; the key ``"*"`` serves every other
            per-feature-map block. DIA units always default to ``shared``.
    """

    family = "network"
    defaults: Mapping[str, str] = {"*": "stage"}

    def stages(self, network: nn.Module) -> list[Stage]:
        raise NotImplementedError

    def spatial_dims(self, network: nn.Module) -> int:
        raise NotImplementedError

    def default_position(self, block: str, stages: Sequence[Stage]) -> str:
        """The position a bare ``block`` gets in this family."""
        if block in DIA_UNITS:
            return "shared"
        return self.defaults.get(block, self.defaults["*"])


def resolve(placement: Placement, adapter: Adapter, network: nn.Module) -> Placement:
    """``placement`` with its default position filled in for ``network``."""
    if placement.position is not None:
        return placement
    return placement.at(adapter.default_position(placement.block, adapter.stages(network)))


def insert(network: nn.Module, placement, adapter: Adapter) -> nn.Module:
    """Attach ``placement``'s blocks to ``network`` in place, through :mod:`medattn.insertion`.

    Args:
        network: a built stock network of ``adapter``'s family.
        placement: a :class:`Placement` or its text form (None: nothing is inserted).
        adapter: the family's adapter.

    Returns:
        The same network, for chaining.

    Raises:
        ValueError: for a position a chosen stage does not have (the message lists the
            positions it has), bad stage indices, or a block's own argument errors.
    """
    from medattn import blocks
    from medattn.blocks.dia import create_unit
    from medattn.insertion import attach_after, attach_shared_unit, resolve_stage_indices

    placement = parse(placement)
    if placement is None:
        return network
    stages = adapter.stages(network)
    placement = resolve(placement, adapter, network)
    spatial_dims = adapter.spatial_dims(network)
    chosen = [stages[i] for i in resolve_stage_indices(_plain_stages(placement.stages), len(stages))]
    for stage in chosen:
        if placement.position not in stage.positions():
            raise ValueError(
                f"{adapter.family} stage {stage.name!r} has no position {placement.position!r}; "
                f"it has {stage.positions()}"
            )
    for stage in chosen:
        if placement.position == "shared":
            unit = create_unit(placement.unit_kind, stage.channels, spatial_dims=spatial_dims,
                               num_blocks=len(stage.unit_hosts), **placement.options)
            attach_shared_unit(stage.module, stage.unit_hosts, unit)
        elif placement.position == "stage":
            attach_after(stage.module, blocks.create(placement.block, stage.channels, spatial_dims,
                                                     **placement.options))
        else:
            for block in stage.blocks:
                if placement.position in block:
                    host, channels = block[placement.position]
                    attach_after(host, blocks.create(placement.block, channels, spatial_dims, **placement.options))
    return network


def _plain_stages(stages):
    return list(stages) if isinstance(stages, tuple) else stages


# ---------------------------------------------------------------------------------------
# Command-line use: every flag that takes a placement uses these
# ---------------------------------------------------------------------------------------

#: The help text of a placement flag.
HELP = ("placement BLOCK[@POSITION][:STAGES][{JSON options}]: BLOCK one of dsm, sna, se, eca, cbam, gc or a "
        "shared DIA unit dia, dia_light, dia_se, dia_eca; POSITION one of " + ", ".join(POSITIONS) +
        " (default: the block's default in this network); STAGES all, first, last or indices like 0,1,-1; "
        "e.g. 'dsm@after_conv2:last{\"rd_ratio\": 0.5}'; none for no attention")


def argument(text: str) -> Placement | None:
    """``argparse`` type of a placement flag: the parsed placement, or an
    ``ArgumentTypeError`` that argparse prints as a usage error (no traceback)."""
    import argparse

    try:
        return parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
