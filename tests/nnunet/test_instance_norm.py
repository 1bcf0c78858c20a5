"""Why DSM's default position in an InstanceNorm network is inside the stage, before the
nonlinearity: at the stage output, the next conv → InstanceNorm removes DSM's per-channel
offset except near the zero-padded borders (the finding in medattn.blocks.dsm.DSM)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medattn.nnunet.network import insert_attention, resolve

SIZE = 48  # the interior must be large against the 3x3x3 borders for the effect to show
BORDER = 8


def _network():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    torch.manual_seed(0)
    return PlainConvUNet(
        input_channels=1, n_stages=2, features_per_stage=[8, 16], conv_op=nn.Conv3d, kernel_sizes=3,
        strides=[1, 2], n_conv_per_stage=2, num_classes=2, n_conv_per_stage_decoder=1, conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    ).eval()


def _open_block(network):
    """gamma = 1 (DSM) or a non-zero last layer (GC): the paper's block, not the identity."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if ".attention." not in name:
                continue
            if name.endswith("gamma"):
                parameter.fill_(1.0)
            elif not parameter.any():  # GC's zero-initialised last conv
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def _next_conv_norm_output(network, x):
    """Output of the next stage's first conv + InstanceNorm (before its LeakyReLU)."""
    seen = {}
    norm = network.encoder.stages[1][0].convs[0].norm
    handle = norm.register_forward_hook(lambda m, a, out: seen.update(y=out.clone()))
    with torch.no_grad():
        network.encoder(x)
    handle.remove()
    return seen["y"]


def _interior_change(placement: str) -> float:
    x = torch.randn(1, 1, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    reference = _next_conv_norm_output(_network(), x)
    network = insert_attention(_network(), placement)
    _open_block(network)
    changed = _next_conv_norm_output(network, x)
    inner = (slice(None), slice(None)) + (slice(BORDER // 2, -BORDER // 2),) * 3  # stage 1 is half the size
    difference = (changed - reference)[inner]
    return float(difference.norm() / reference[inner].norm())


#: Blocks that add one value per (sample, channel): DSM, and GC with the paper's add fusion
#: (GC's default scale fusion multiplies, which an InstanceNorm does not undo).
ADDITIVE = {"dsm": "{}", "gc_add": '{"fuse_add": true, "fuse_scale": false}'}


def _placement(block: str, position: str) -> str:
    return f"{block.split('_')[0]}{position}:0{ADDITIVE[block]}"


@pytest.mark.parametrize("block", sorted(ADDITIVE))
def test_the_default_position_survives_the_next_instance_norm(block):
    assert resolve(_placement(block, ""), _network()).position == "after_conv2"
    assert _interior_change(_placement(block, "")) >= 0.10


@pytest.mark.parametrize("block", sorted(ADDITIVE))
def test_the_stage_output_is_erased_by_the_next_instance_norm(block):
    """The measurement that moved the default: the same block at the stage output changes
    the interior of the next conv + InstanceNorm by far less."""
    assert _interior_change(_placement(block, "@stage")) < 0.10
