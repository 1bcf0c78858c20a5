"""medattn.placement: the one placement language, its text form, and every engine using it."""

from __future__ import annotations

import pytest
import torch

from medattn import placement
from medattn.placement import Placement, parse


@pytest.mark.parametrize("text, block, position, stages, options", [
    ("dsm", "dsm", None, "all", {}),
    ("DSM@After_Conv2:LAST", "dsm", "after_conv2", "last", {}),
    ('dsm@after_conv2:last{"rd_ratio": 0.5}', "dsm", "after_conv2", "last", {"rd_ratio": 0.5}),
    ("sna@before_add:0,-1", "sna", "before_add", (0, -1), {}),
    ('se:first{"rd_ratio": 0.25}', "se", None, "first", {"rd_ratio": 0.25}),
    ("dia_light:1", "dia_light", None, (1,), {}),
    ("dia@shared", "dia", "shared", "all", {}),
])
def test_text_form_parses_and_round_trips(text, block, position, stages, options):
    spec = parse(text)
    assert (spec.block, spec.position, spec.stages, spec.options) == (block, position, stages, options)
    assert parse(spec.to_text()) == spec
    assert parse({"block": block, "position": position, "stages": stages, "options": options}) == spec


@pytest.mark.parametrize("text", ["", "none", "None", "stock", "plain", None])
def test_no_attention(text):
    assert parse(text) is None


@pytest.mark.parametrize("old, new", [("dia_lstm", "dia"), ("dia-lstm", "dia"), ("dia-light", "dia_light"),
                                      ("dia-se", "dia_se"), ("dia-eca", "dia_eca")])
def test_old_spellings_are_aliases(old, new):
    assert parse(old).block == new


@pytest.mark.parametrize("text, message", [
    ("lstm", "is now spelled 'dia'"),
    ("light", "is now spelled 'dia_light'"),
    ("nope", r"unknown block 'nope'; choose one of \['cbam', 'dia', 'dia_eca', 'dia_light', 'dia_se', 'dsm'"),
    ("dsm@inside", r"unknown position 'inside'; choose one of \['stage', 'after_conv1'"),
    ("dsm@", "'@' needs a position"),
    ("dsm:", "':' needs stages"),
    ("dsm:rd_ratio=0.5", r"block options are JSON: dsm\{\"rd_ratio\": 0.5\}"),
    ("dsm:everywhere", "unknown stages 'everywhere'"),
    ('dsm{"rd_ratio": 0.5', "options are not valid JSON"),
    ("dsm[1, 2]", r"unknown block 'dsm\[1, 2\]'"),
    ('dsm{"rd_ration": 0.5}', r"unknown option\(s\) \['rd_ration'\] for 'dsm'"),
    ('dia{"mode": "full"}', r"unknown option\(s\) \['mode'\] for 'dia'"),
    ("dia@stage", "DIA unit shared by a stage's blocks: its position is 'shared'"),
    ("se@shared", "position 'shared' is for DIA units"),
])
def test_bad_placements_name_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse(text)


def test_placements_are_values():
    assert Placement("DSM", options={"rd_ratio": 0.5}) == parse('dsm{"rd_ratio": 0.5}')
    assert parse("dsm").at("stage").to_text() == "dsm@stage"
    assert parse('dsm@stage:last{"rd_ratio": 0.5}').slug() == "dsm-stage-last-rd_ratio_0.5"


def test_cli_type_turns_errors_into_usage_errors():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="unknown block"):
        placement.argument("nope")
    assert placement.argument("sna@stage") == parse("sna@stage")


# The same text means the same module in every engine.
SPEC = 'dsm@after_conv1:0{"rd_ratio": 0.25, "identity_init": false}'


def _plain_conv_unet():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from torch import nn

    return PlainConvUNet(
        input_channels=1, n_stages=3, features_per_stage=[8, 16, 32], conv_op=nn.Conv2d, kernel_sizes=3,
        strides=[1, 2, 2], n_conv_per_stage=2, num_classes=2, n_conv_per_stage_decoder=1, conv_bias=True,
        norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )


def _engines():
    from medattn import images, networks
    from medattn.nnunet.network import insert_attention

    return {
        "resnet": lambda: images.create("resnet18", num_classes=10, attention=SPEC),
        "nnunet": lambda: insert_attention(_plain_conv_unet(), SPEC),
        "monai": lambda: networks.create("dynunet", 2, 1, 2, attention=SPEC, filters=[8, 16, 32, 64],
                                          patch_size=[32, 32]),
    }


@pytest.mark.parametrize("engine", ["resnet", "nnunet", "monai"])
def test_one_text_means_the_same_block_in_every_engine(engine):
    from medattn import blocks
    from medattn.blocks.dsm import DSM
    from medattn.insertion import attached_blocks

    torch.manual_seed(0)
    attached = attached_blocks(_engines()[engine]())
    assert attached, engine
    for name, block in attached.items():
        assert type(block) is DSM and block.gamma is None  # identity_init false reached the block
        assert block.rd_channels == round(block.channels * 0.25)
        reference = blocks.create("dsm", block.channels, 2, rd_ratio=0.25, identity_init=False)
        assert [p.shape for p in block.parameters()] == [p.shape for p in reference.parameters()], name
    # Stage 0 only, after conv1's norm.
    assert all(".attention" in name and ("bn1" in name or "norm1" in name or "convs.0.norm" in name)
               for name in attached)


def test_an_engine_lacking_the_position_lists_those_it_has():
    from medattn import images

    with pytest.raises(ValueError, match=r"ResNet stage 'layer1' has no position 'after_conv3'; it has "
                                         r"\['stage', 'after_conv1', 'after_conv2', 'before_add', 'shared'\]"):
        images.create("resnet18", attention="dsm@after_conv3")
    with pytest.raises(ValueError, match="out of range for a network with 4 stages"):
        images.create("resnet18", attention="dsm:4")
