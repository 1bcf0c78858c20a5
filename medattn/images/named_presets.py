"""The papers' placements as named ResNet presets: :func:`create` and :func:`presets`.

=======================  ===========  =============================================  =====================================
preset                   backbone     placement (text form of :mod:`medattn.placement`)  paper
=======================  ===========  =============================================  =====================================
``resnet18`` ...         (itself)     none (stock)                                    —
``dsnet50_a``            resnet50     ``dsm@after_conv2:last{"rd_ratio": 0.5}``        DSNet Table 4: DSM r=2 after conv2 of
                                                                                      every bottleneck of stage 4
``dsnet50_b``            resnet50     ``dsm@after_conv1{"rd_ratio": 0.0625}``          DSNet Table 4: DSM r=16 after conv1 of
                                                                                      every bottleneck
``sna_resnet18/20/50``   resnet18/…   ``sna@before_add``                              SNA paper: end of each residual branch
``dia_resnet164``        resnet164    ``dia`` (shared, r = 4)                          DIANet: one DIA-LSTM unit per stage
``dia_light_resnet164``  resnet164    ``dia_light``                                   DIANet: DIA-LSTM (Light)
``se_resnet50``          resnet50     ``se@before_add`` (r = 16)                       SENet
``eca_resnet50``         resnet50     ``eca@before_add``                              ECA-Net
=======================  ===========  =============================================  =====================================

Parameter increments over the stock backbone (``tests/images/test_presets.py`` anchors them
to the papers): DSNet50-A +3.551M (DSNet Tables 5/6/8: +3.54/+3.55/+3.552M; Table 7 swaps
the A and B rows); DSNet50-B +1.958M against the paper's about +1.81M. The difference is
SKNet's lower bound ``L = 32`` on the width of DSM's selection FC (``sk_min_width``,
:class:`medattn.blocks.dsm.DSM`), which medattn keeps because without it the selection
starts with every ReLU unit dead at small widths; with ``sk_min_width=0`` the increment is
the paper's (tested). SNA: 0. DIA-LSTM on ResNet164 (CIFAR-100): +0.22M (Table 10, r = 4).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from medattn import placement as placement_spec
from medattn.images.resnets import CIFAR_DEPTHS, ResNetAdapter, backbones, build_backbone

__all__ = ["Preset", "PRESETS", "create", "preset", "presets"]


@dataclass(frozen=True)
class Preset:
    """A backbone with a placement (None: stock) and the paper it follows."""

    backbone: str
    attention: str | None
    paper: str


def _stock(name: str) -> Preset:
    return Preset(name, None, "stock backbone")


PRESETS: dict[str, Preset] = {name: _stock(name) for name in backbones()} | {
    "dsnet50_a": Preset("resnet50", 'dsm@after_conv2:last{"rd_ratio": 0.5}',
                        "DSNet Table 4: DSM r=2 after conv2 of every bottleneck of stage 4"),
    "dsnet50_b": Preset("resnet50", 'dsm@after_conv1{"rd_ratio": 0.0625}',
                        "DSNet Table 4: DSM r=16 after conv1 of every bottleneck"),
    "sna_resnet18": Preset("resnet18", "sna@before_add", "SNA paper: SNA at the end of every residual branch"),
    "sna_resnet20": Preset("resnet20", "sna@before_add", "SNA paper: SNA at the end of every residual branch"),
    "sna_resnet50": Preset("resnet50", "sna@before_add", "SNA paper: SNA at the end of every residual branch"),
    "dia_resnet164": Preset("resnet164", "dia@shared", "DIANet: one DIA-LSTM unit (r=4) per stage"),
    "dia_light_resnet164": Preset("resnet164", "dia_light@shared", "DIANet: one DIA-LSTM (Light) unit per stage"),
    "se_resnet50": Preset("resnet50", "se@before_add", "SENet: SE (r=16) at the end of every residual branch"),
    "eca_resnet50": Preset("resnet50", "eca@before_add", "ECA-Net: ECA at the end of every residual branch"),
}


def presets() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(PRESETS)


def preset(name: str) -> Preset:
    """The :class:`Preset` called ``name``.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if not isinstance(name, str) or name.lower() not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {presets()}")
    return PRESETS[name.lower()]


def create(name: str, num_classes: int | None = None, attention=None, in_channels: int = 3,
           dilate: bool = False) -> nn.Module:
    """Build a preset (or a stock backbone with ``attention``) with its blocks attached.

    Args:
        name: one of :func:`presets`.
        num_classes: classifier outputs; default 1000 for the ImageNet backbones and 100
            for the CIFAR ones.
        attention: a placement (text form or :class:`medattn.placement.Placement`) for a
            stock backbone; refused for a preset that already has one.
        in_channels: image channels.
        dilate: replace the strides of the last two stages by dilation (output stride 8,
            torchvision's ``replace_stride_with_dilation=[False, True, True]``), for
            segmentation; Bottleneck ImageNet ResNets only.

    Returns:
        A torchvision ``ResNet`` with the blocks attached through :mod:`medattn.insertion`;
        ``network.medattn_config`` holds the arguments that rebuild it, the placement with
        its position resolved.

    Raises:
        ValueError: for an unknown preset, a second placement, or what
            :func:`medattn.placement.insert` refuses.
    """
    chosen = preset(name)
    if attention is not None and chosen.attention is not None:
        raise ValueError(f"preset {name!r} already places {chosen.attention!r}; "
                         f"use its backbone {chosen.backbone!r} with attention=...")
    spec = placement_spec.parse(chosen.attention if chosen.attention is not None else attention)
    depth = int(chosen.backbone[len("resnet"):])
    if num_classes is None:
        num_classes = 100 if depth in CIFAR_DEPTHS else 1000
    network = build_backbone(chosen.backbone, num_classes=num_classes, in_channels=in_channels, dilate=dilate)
    adapter = ResNetAdapter()
    if spec is not None:
        spec = placement_spec.resolve(spec, adapter, network)
        placement_spec.insert(network, spec, adapter)
    network.medattn_config = {"preset": name.lower(), "backbone": chosen.backbone, "num_classes": num_classes,
                              "in_channels": in_channels, "attention": None if spec is None else spec.to_text(),
                              "dilate": dilate}
    return network
