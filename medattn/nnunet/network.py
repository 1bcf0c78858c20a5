"""nnU-Net networks with attention in the encoder: the placement adapter of nnU-Net's encoders.

The stock network is built exactly as nnU-Net builds it from the plans
(``nnUNetTrainer.build_network_architecture``); then :func:`insert_attention` attaches the
blocks of a :class:`medattn.placement.Placement` through :mod:`medattn.insertion`. Both
encoder types of dynamic-network-architectures are supported:

=====================  ==========================  ===========================================
encoder                a stage is                  positions (each after the conv's norm,
                                                   before its LeakyReLU)
=====================  ==========================  ===========================================
``PlainConvEncoder``   ``StackedConvBlocks``: one  ``after_conv1``, ``after_conv2`` (the
                       stack of conv layers        stage's 1st and 2nd ``ConvDropoutNormReLU``),
                                                   ``stage``, ``shared``
``ResidualEncoder``    ``StackedResidualBlocks``   per ``BasicBlockD``/``BottleneckD``:
                       of residual blocks          ``after_conv1``, ``after_conv2``,
                                                   ``after_conv3`` (bottleneck), ``before_add``
                                                   (the branch's last norm); ``stage``, ``shared``
=====================  ==========================  ===========================================

Default positions of a bare block name:

- plain encoder: every per-feature-map block after the norm of each stage's second conv
  (the first when a stage has one), before the LeakyReLU. The stage output is no default,
  because its every consumer is conv → InstanceNorm, which removes a per-channel offset
  such as DSM's (see :class:`medattn.blocks.dsm.DSM`); ``@stage`` still places it there.
- residual encoder: ``dsm`` after conv1 of every residual block (DSNet50-B, DSNet
  Table 4), every other block at ``before_add`` (SENet/SNA position).
- DIA units: ``shared``, one unit per stage. On residual blocks it recalibrates the
  residual branch before the add (``x + f(x) ⊗ h``, DIA paper Eq. 4); on the plain
  encoder, which has no residual branch, each conv layer's output after its LeakyReLU
  (``f(x) ⊗ h``, the paper's plain-stage form).

Stock state-dict keys never change; new keys are appended (``...stages.3.0.convs.1.norm.attention.*``),
so a stock checkpoint loads with :func:`load_stock_weights`. The network also carries its
placement as a buffer (``medattn_placement``), so that a checkpoint trained with another
placement of the same trainer name is refused with a message naming the trainer that has
it, instead of silently predicting with blocks in other places (SNA has no parameters, so
nothing else would notice).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from medattn import placement as placement_spec
from medattn.placement import Adapter, Placement, Stage

PLACEMENT_KEY = "medattn_placement"


def _conv_hosts(convs) -> dict[str, tuple[nn.Module, int]]:
    """``after_conv{i}`` -> (norm, channels) for ConvDropoutNormReLU layers that have a norm."""
    hosts = {}
    for index, conv in enumerate(convs[:3]):
        norm = getattr(conv, "norm", None)
        if norm is not None:
            hosts[f"after_conv{index + 1}"] = (norm, int(conv.output_channels))
    return hosts


def _residual_hosts(block) -> dict[str, tuple[nn.Module, int]]:
    convs = [getattr(block, name) for name in ("conv1", "conv2", "conv3") if hasattr(block, name)]
    hosts = _conv_hosts(convs)
    last = f"after_conv{len(convs)}"
    if last in hosts:
        hosts["before_add"] = hosts[last]
    return hosts


class NnUNetEncoderAdapter(Adapter):
    """Placement adapter of nnU-Net's ``PlainConvUNet`` and ``ResidualEncoderUNet`` encoders."""

    family = "nnU-Net encoder"

    def stages(self, network: nn.Module) -> list[Stage]:
        encoder = getattr(network, "encoder", None)
        stages = getattr(encoder, "stages", None)
        if stages is None or not hasattr(encoder, "output_channels"):
            raise ValueError(
                f"{type(network).__name__} has no encoder.stages: medattn supports nnU-Net's PlainConvUNet and "
                "ResidualEncoderUNet (dynamic-network-architectures)"
            )
        found = []
        for index, (stage, channels) in enumerate(zip(stages, encoder.output_channels)):
            core = stage[-1] if isinstance(stage, nn.Sequential) else stage  # skip a leading pooling op
            name = f"encoder.stages.{index}" + (f".{len(stage) - 1}" if core is not stage else "")
            if hasattr(core, "convs"):  # StackedConvBlocks: the stage is one stack of conv layers
                convs = list(core.convs)
                found.append(Stage(name, core, int(channels), [_conv_hosts(convs)], convs))
            elif hasattr(core, "blocks"):  # StackedResidualBlocks
                residual_blocks = list(core.blocks)
                ends = [b.conv3 if hasattr(b, "conv3") else b.conv2 for b in residual_blocks]
                found.append(Stage(name, core, int(channels), [_residual_hosts(b) for b in residual_blocks], ends))
            else:
                raise ValueError(f"unsupported encoder stage type {type(core).__name__}")
        return found

    def spatial_dims(self, network: nn.Module) -> int:
        return spatial_dims_of(network)

    def default_position(self, block: str, stages) -> str:
        residual = any(hasattr(stage.module, "blocks") for stage in stages)
        two_convs = all("after_conv2" in stage.blocks[0] for stage in stages)
        return default_position(block, residual, two_convs)


def default_position(block: str, residual: bool, two_convs: bool = True) -> str:
    """The position a bare block name gets on the plain (``residual=False``) or residual
    encoder; ``two_convs``: every plain stage has at least two conv layers."""
    if block in placement_spec.DIA_UNITS:
        return "shared"
    if residual:
        return "after_conv1" if block == "dsm" else "before_add"
    return "after_conv2" if two_convs else "after_conv1"


def describe(placement) -> str:
    """Where ``placement`` puts its blocks on each encoder type, for the trainer table."""
    spec = placement_spec.parse(placement)
    if spec is None:
        return "nothing (stock network)"
    if spec.position is not None:
        return f"`{spec.to_text()}`"
    plain, residual = (spec.at(default_position(spec.block, r)).to_text() for r in (False, True))
    return f"`{plain}` (plain), `{residual}` (ResEnc)" if plain != residual else f"`{plain}`"


ADAPTER = NnUNetEncoderAdapter()


def encoder_stages(network: nn.Module) -> list[Stage]:
    """The encoder stages of a PlainConvUNet or ResidualEncoderUNet, as the adapter sees them."""
    return ADAPTER.stages(network)


def spatial_dims_of(network: nn.Module) -> int:
    """2 or 3, from the encoder's convolution type."""
    conv_op = network.encoder.conv_op
    return {nn.Conv2d: 2, nn.Conv3d: 3}[conv_op]


def resolve(placement, network: nn.Module) -> Placement | None:
    """``placement`` (text or Placement) with its position filled in for ``network``."""
    spec = placement_spec.parse(placement)
    return None if spec is None else placement_spec.resolve(spec, ADAPTER, network)


def insert_attention(network: nn.Module, placement) -> nn.Module:
    """Insert ``placement``'s blocks into ``network``'s encoder, in place.

    Returns:
        The same network, for chaining.
    """
    return placement_spec.insert(network, placement, ADAPTER)


class LegacyPlacementError(ValueError):
    """A checkpoint of medattn < 0.2 whose trainer name now places its blocks elsewhere;
    :attr:`replacement` is the trainer that has the old placement (or None)."""

    def __init__(self, message: str, trainer: str, replacement: str | None):
        super().__init__(message)
        self.trainer, self.replacement = trainer, replacement


class _CheckPlacement:
    """``load_state_dict`` pre-hook: refuse a checkpoint trained with another placement.

    A checkpoint without the placement buffer was written before medattn recorded it; it
    is accepted when the trainer's placement then was the same (``legacy``), and refused
    otherwise with the name of the trainer that has the old placement now.
    """

    def __init__(self, text: str, trainer: str, legacy: str | None, replacement: str | None):
        self.text, self.trainer, self.legacy, self.replacement = text, trainer, legacy, replacement

    def __call__(self, module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        key = prefix + PLACEMENT_KEY
        if key in state_dict:
            saved = bytes(state_dict[key].tolist()).decode("utf-8", "replace")
            if saved != self.text:
                raise ValueError(f"this checkpoint was trained with attention {saved!r}, but {self.trainer} places "
                                 f"{self.text!r}; predict it with the trainer that places {saved!r}")
            return
        if self.legacy is None or self.legacy == self.text:
            state_dict[key] = getattr(module, PLACEMENT_KEY).clone()
            return
        hint = (f"it is now {self.replacement}: rename the model folder to {self.replacement}__... and set "
                f"'trainer_name' in its checkpoints, or predict with medattn predict, which does this for you"
                if self.replacement else "no trainer places it any more")
        raise LegacyPlacementError(f"this checkpoint was trained with {self.trainer} of medattn < 0.2, which placed "
                                   f"{self.legacy!r}; {self.trainer} now places {self.text!r}; {hint}",
                                   self.trainer, self.replacement)


def mark_placement(network: nn.Module, text: str, trainer: str = "this trainer", legacy: str | None = None,
                   replacement: str | None = None) -> None:
    """Record ``text`` in ``network``'s state dict and check it when a checkpoint is loaded."""
    network.register_buffer(PLACEMENT_KEY, torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8))
    network._register_load_state_dict_pre_hook(_CheckPlacement(text, trainer, legacy, replacement), with_module=True)


def build_network(
    plans_manager,
    configuration_manager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
    placement=None,
    trainer: str = "this trainer",
    legacy: tuple[str, str | None] | None = None,
) -> nn.Module:
    """Build nnU-Net's stock network from the plans, then insert ``placement`` (if any).

    Args:
        placement: a :class:`medattn.placement.Placement` or its text form; None: stock.
        trainer: the trainer's name, for messages.
        legacy: ``(placement text, replacement trainer)``: what the trainer placed before
            medattn recorded placements in checkpoints (see :class:`_CheckPlacement`).
    """
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    network = nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision
    )
    spec = resolve(placement, network)
    if spec is None:
        return network
    insert_attention(network, spec)
    legacy_text, replacement = legacy if legacy is not None else (None, None)
    if legacy_text is not None:
        legacy_text = resolve(legacy_text, network).to_text()
    mark_placement(network, spec.to_text(), trainer, legacy_text, replacement)
    return network


def load_stock_weights(network: nn.Module, checkpoint, trust: bool = False) -> list[str]:
    """Load a stock nnU-Net checkpoint into an attention network, for fine-tuning.

    Every stock key must exist in ``network`` with the same shape; the attention keys keep
    their initialisation (identity-like for DSM and GC, see their docstrings).

    Args:
        network: a network built by :func:`build_network`.
        checkpoint: a path to an nnU-Net ``checkpoint_*.pth`` (read by
            :func:`medattn.safe_loading.load_checkpoint`), a checkpoint dict, or a state dict.
        trust: read a path with full pickle support (``--trust-model``).

    Returns:
        The keys that the checkpoint did not provide (exactly the inserted blocks' keys).

    Raises:
        ValueError: if the checkpoint has keys the network lacks, i.e. it is not a stock
            checkpoint of the same plans.
    """
    if not isinstance(checkpoint, Mapping):
        from medattn.safe_loading import load_checkpoint

        checkpoint = load_checkpoint(checkpoint, trust=trust)
    state = dict(checkpoint.get("network_weights", checkpoint))
    if hasattr(network, PLACEMENT_KEY):
        state.setdefault(PLACEMENT_KEY, getattr(network, PLACEMENT_KEY).clone())
    result = network.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(
            f"checkpoint has {len(result.unexpected_keys)} keys the network lacks "
            f"(e.g. {result.unexpected_keys[:3]}): it was not trained with the same plans"
        )
    # Modules that tie parameters (DIA's shared units) may list tied aliases as missing
    # although their state dict never holds them; report only keys the state dict has.
    own_keys = set(network.state_dict())
    return [key for key in result.missing_keys if key in own_keys]
