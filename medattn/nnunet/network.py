"""nnU-Net networks with attention in the encoder.

The stock network is built exactly as nnU-Net builds it from the plans
(``nnUNetTrainer.build_network_architecture``); then :func:`insert_attention` hangs blocks
on its encoder through :mod:`medattn.insertion`. Both encoder types of
dynamic-network-architectures are supported:

=====================  ==========================  =================================
encoder                a stage is                  a block of the stage is
=====================  ==========================  =================================
``PlainConvEncoder``   ``StackedConvBlocks``       each ``ConvDropoutNormReLU``
``ResidualEncoder``    ``StackedResidualBlocks``   each ``BasicBlockD``/``BottleneckD``
=====================  ==========================  =================================

Placements (:class:`AttentionPlan.placement`):

- ``"stage"``: one block after each chosen stage (DSNet's plug-in position).
- ``"blocks"``: one block after every conv/residual block of each chosen stage (SNA's
  optional "inside blocks" use).
- ``"shared"``: one DIA unit per chosen stage, shared by its blocks. On residual blocks it
  recalibrates the residual branch before the residual add (``x + f(x) ⊗ h``, DIA paper
  Eq. 4); on the plain encoder, which has no residual branch, it recalibrates the output of
  each conv block (``f(x) ⊗ h``).

Stock state-dict keys never change; new keys are appended (``...stages.3.0.attention.*``),
so a stock checkpoint loads with :func:`load_stock_weights`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from medattn import blocks
from medattn.blocks import dia
from medattn.insertion import attach_after, attach_shared_unit, resolve_stage_indices

PLACEMENTS = ("stage", "blocks", "shared")


@dataclass(frozen=True)
class AttentionPlan:
    """What to insert into an nnU-Net encoder, and where.

    Attributes:
        block: a block name from :func:`medattn.blocks.available` for the "stage" and
            "blocks" placements, or a DIA unit kind from
            :func:`medattn.blocks.dia.unit_kinds` for "shared".
        placement: "stage", "blocks" or "shared" (see the module docstring).
        stages: "all", "first", "last", or stage indices (negative counts from the end).
        kwargs: keyword arguments of the block or unit, e.g. ``{"rd_ratio": 1/2}``.
    """

    block: str
    placement: str = "stage"
    stages: Any = "all"
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {self.placement!r}; choose one of {PLACEMENTS}")
        valid = dia.unit_kinds() if self.placement == "shared" else blocks.available()
        if self.block not in valid:
            raise ValueError(
                f"unknown {'DIA unit' if self.placement == 'shared' else 'block'} {self.block!r} "
                f"for placement {self.placement!r}; choose one of {list(valid)}"
            )

    def describe(self) -> str:
        """One line for logs and the README table."""
        options = ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
        return f"{self.block} ({self.placement}, stages={self.stages}{', ' + options if options else ''})"


@dataclass
class EncoderStage:
    """One encoder stage of a built nnU-Net network."""

    module: nn.Module  # the StackedConvBlocks / StackedResidualBlocks
    channels: int
    blocks: list[nn.Module]  # conv blocks or residual blocks, in order
    residual_branch_ends: list[nn.Module] | None  # last conv of each residual branch


def encoder_stages(network: nn.Module) -> list[EncoderStage]:
    """The encoder stages of a PlainConvUNet or ResidualEncoderUNet.

    Raises:
        ValueError: if the network has no dynamic-network-architectures encoder.
    """
    encoder = getattr(network, "encoder", None)
    stages = getattr(encoder, "stages", None)
    if stages is None or not hasattr(encoder, "output_channels"):
        raise ValueError(
            f"{type(network).__name__} has no encoder.stages: medattn supports nnU-Net's PlainConvUNet and "
            "ResidualEncoderUNet (dynamic-network-architectures)"
        )
    found = []
    for stage, channels in zip(stages, encoder.output_channels):
        core = stage[-1] if isinstance(stage, nn.Sequential) else stage  # skip a leading pooling op
        if hasattr(core, "convs"):  # StackedConvBlocks
            found.append(EncoderStage(core, int(channels), list(core.convs), None))
        elif hasattr(core, "blocks"):  # StackedResidualBlocks
            residual_blocks = list(core.blocks)
            ends = [b.conv3 if hasattr(b, "conv3") else b.conv2 for b in residual_blocks]
            found.append(EncoderStage(core, int(channels), residual_blocks, ends))
        else:
            raise ValueError(f"unsupported encoder stage type {type(core).__name__}")
    return found


def spatial_dims_of(network: nn.Module) -> int:
    """2 or 3, from the encoder's convolution type."""
    conv_op = network.encoder.conv_op
    return {nn.Conv2d: 2, nn.Conv3d: 3}[conv_op]


def insert_attention(network: nn.Module, plan: AttentionPlan) -> nn.Module:
    """Insert ``plan``'s blocks into ``network``'s encoder, in place.

    Returns:
        The same network, for chaining.
    """
    spatial_dims = spatial_dims_of(network)
    stages = encoder_stages(network)
    for index in resolve_stage_indices(plan.stages, len(stages)):
        stage = stages[index]
        if plan.placement == "stage":
            attach_after(stage.module, blocks.create(plan.block, stage.channels, spatial_dims, **plan.kwargs))
        elif plan.placement == "blocks":
            for block in stage.blocks:
                attach_after(block, blocks.create(plan.block, stage.channels, spatial_dims, **plan.kwargs))
        else:
            unit = dia.create_unit(
                plan.block, stage.channels, spatial_dims, num_blocks=len(stage.blocks), **plan.kwargs
            )
            attach_shared_unit(stage.module, stage.residual_branch_ends or stage.blocks, unit)
    return network


def build_network(
    plans_manager,
    configuration_manager,
    num_input_channels: int,
    num_output_channels: int,
    enable_deep_supervision: bool = True,
    plan: AttentionPlan | None = None,
) -> nn.Module:
    """Build nnU-Net's stock network from the plans, then insert ``plan`` (if any)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    network = nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager, num_input_channels, num_output_channels, enable_deep_supervision
    )
    return network if plan is None else insert_attention(network, plan)


def load_stock_weights(network: nn.Module, checkpoint) -> list[str]:
    """Load a stock nnU-Net checkpoint into an attention network, for fine-tuning.

    Every stock key must exist in ``network`` with the same shape; the attention keys keep
    their initialisation (identity-like for DSM and GC, see their docstrings).

    Args:
        network: a network built by :func:`build_network`.
        checkpoint: a path to an nnU-Net ``checkpoint_*.pth``, a checkpoint dict, or a
            state dict.

    Returns:
        The keys that the checkpoint did not provide (exactly the inserted blocks' keys).

    Raises:
        ValueError: if the checkpoint has keys the network lacks, i.e. it is not a stock
            checkpoint of the same plans.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = checkpoint.get("network_weights", checkpoint)
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
