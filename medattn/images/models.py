"""Networks of ``medattn train image``: a block-carrying ResNet with a classifier or a
torchvision segmentation head, rebuilt from a plain config, and local pretrained weights.

- Classification and multi-label: the ResNet of :func:`medattn.images.create` (its ``fc``
  has one output per class; multi-label treats them as independent logits).
- Segmentation: torchvision's own ``FCN`` or ``DeepLabV3`` module on the ResNet's features
  (``IntermediateLayerGetter``), with ``FCNHead``/``DeepLabHead`` and an auxiliary
  ``FCNHead`` on the stage before (torchvision's references: weight 0.5). ImageNet ResNets
  give output stride 32, or 8 with ``output_stride=8`` (dilated layer3/layer4, Bottleneck
  ResNets); the CIFAR ResNets give output stride 4 and their auxiliary head reads layer2.

The blocks are inserted into the backbone before the head wraps it, so their state-dict
keys are ``backbone.<stock path>.attention.*`` and a stock torchvision checkpoint of the
backbone loads with exactly those keys missing (:func:`load_pretrained`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from torch import nn

from medattn.images import named_presets

__all__ = ["HEADS", "ModelConfig", "PretrainedReport", "build_model", "load_pretrained"]

HEADS = ("fcn", "deeplabv3")


@dataclass
class ModelConfig:
    """The arguments that rebuild a network (stored in checkpoints and config.json).

    Attributes:
        task: "classification", "multilabel" or "segmentation".
        name: a preset of :func:`medattn.images.presets` (a stock backbone name included).
        attention: a placement text for a stock backbone, or None.
        num_classes: outputs (classes; segmentation: background included).
        in_channels: image channels (1 grayscale, 3 RGB).
        head: segmentation head, "fcn" or "deeplabv3".
        output_stride: segmentation: 8 (dilated) or None (the backbone's own).
        aux_loss: segmentation: an auxiliary FCN head on the previous stage.
    """

    task: str
    name: str
    attention: str | None
    num_classes: int
    in_channels: int = 3
    head: str = "fcn"
    output_stride: int | None = None
    aux_loss: bool = True

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {list(HEADS)}")
        if self.output_stride not in (None, 8):
            raise ValueError(f"output_stride must be 8 or None (the backbone's own), got {self.output_stride!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def build_model(config: ModelConfig) -> nn.Module:
    """The network ``config`` describes, its blocks attached; ``model.medattn_config`` holds
    ``config.to_dict()`` plus the resolved placement.

    Raises:
        ValueError: for an unknown preset or head, a placement the backbone refuses, or
            output stride 8 on a backbone without dilation.
    """
    segmentation = config.task == "segmentation"
    backbone = named_presets.create(config.name, num_classes=config.num_classes, attention=config.attention,
                                    in_channels=config.in_channels, dilate=segmentation and config.output_stride == 8)
    resolved = backbone.medattn_config["attention"]
    model = _segmentation_model(backbone, config) if segmentation else backbone
    model.medattn_config = dict(config.to_dict(), resolved_attention=resolved,
                                backbone=backbone.medattn_config["backbone"])
    return model


def _segmentation_model(backbone: nn.Module, config: ModelConfig) -> nn.Module:
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    cifar = isinstance(backbone.layer4, nn.Identity)
    last, previous = ("layer3", "layer2") if cifar else ("layer4", "layer3")
    channels = {name: _out_channels(getattr(backbone, name)) for name in (last, previous)}
    layers = {last: "out", previous: "aux"} if config.aux_loss else {last: "out"}
    features = IntermediateLayerGetter(backbone, return_layers=layers)
    aux = FCNHead(channels[previous], config.num_classes) if config.aux_loss else None
    if config.head == "deeplabv3":
        return DeepLabV3(features, DeepLabHead(channels[last], config.num_classes), aux)
    return FCN(features, FCNHead(channels[last], config.num_classes), aux)


def _out_channels(layer: nn.Sequential) -> int:
    block = layer[-1]
    norm = getattr(block, "bn3", None) or block.bn2
    return norm.num_features


@dataclass
class PretrainedReport:
    """What :func:`load_pretrained` did: keys of the model not in the file (the inserted
    blocks, and a head that was not in it), keys of the file the model lacks, and keys
    skipped because their shapes differ (a classifier with another class count)."""

    missing: list[str]
    unexpected: list[str]
    skipped: list[str]

    def describe(self) -> str:
        return (f"{len(self.missing)} missing (new) key(s), {len(self.unexpected)} unused key(s), "
                f"{len(self.skipped)} skipped for their shape")


def load_pretrained(model: nn.Module, path: str | os.PathLike) -> PretrainedReport:
    """Load a local state dict (a stock torchvision ResNet's, or a medattn checkpoint's
    ``model`` entry) into ``model``'s backbone; nothing is downloaded.

    The file is read with ``weights_only`` loading. A torchvision ResNet state dict
    (``conv1.weight``, ``layer1.0...``) goes into a classifier as it is and into a
    segmentation model's ``backbone``; entries whose shape differs (``fc`` with another
    class count, a stem with another channel count) are skipped and reported.

    Raises:
        ValueError: naming the file, when it is not a readable state dict.
    """
    from medattn.safe_loading import load_checkpoint

    state = load_checkpoint(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    elif isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(hasattr(v, "shape") for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors")
    target = model.backbone if hasattr(model, "backbone") and not any(k.startswith("backbone.") for k in state) else model
    own = target.state_dict()
    skipped = sorted(k for k, v in state.items() if k in own and tuple(own[k].shape) != tuple(v.shape))
    loadable = {k: v for k, v in state.items() if k not in skipped}
    result = target.load_state_dict(loadable, strict=False)
    return PretrainedReport(sorted(result.missing_keys), sorted(result.unexpected_keys), skipped)
