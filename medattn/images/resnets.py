"""ResNet backbones and the placement adapter of the ResNet family.

Two kinds of backbone, both made of torchvision's own ``BasicBlock`` and ``Bottleneck``:

- ImageNet ResNets (``resnet18`` ... ``resnet152``): torchvision's builders, untouched
  (7x7 stem, max pooling, four stages of 64-512 base widths).
- CIFAR-style ResNets (He et al. 2016, Sec. 4.2): a 3x3 stem of 16 channels, no max
  pooling, three stages of 16, 32, 64 base widths (stride 2 at stages 2 and 3), global
  average pooling and a linear classifier. Depth ``6n + 2`` with ``BasicBlock``
  (``resnet20``/``32``/``44``/``56``/``110``) or ``9n + 2`` with ``Bottleneck``
  (``resnet164``, 18 bottlenecks per stage, outputs of 64, 128, 256 channels: the DIANet
  backbone, DIA paper Sec. 5).

Decisions:

- The CIFAR ResNets are torchvision ``ResNet`` objects: the layers come from torchvision's
  ``_make_layer``, so blocks, shortcut projections and initialisation are torchvision's.
  Stage changes use its 1x1-conv + BatchNorm projection (option B of the ResNet paper);
  the CIFAR paper's option A pads with zeros and has no parameters, which makes our
  ResNet-20 0.6 % larger (272,474 vs about 0.27M). ``maxpool`` and ``layer4`` are
  ``nn.Identity`` so that torchvision's ``forward`` runs unchanged.
- The blocks are post-activation (torchvision's); DIANet's ResNet164 is the pre-activation
  network of He et al. (ECCV 2016). Parameter counts agree within 0.2 % (1.73M for 100
  classes), and the DIA unit sits at the same place: the end of each residual branch.

Positions of the placement language (:mod:`medattn.placement`) in a ResNet: ``after_conv1``
/ ``after_conv2`` / ``after_conv3`` follow ``bn1`` / ``bn2`` / ``bn3`` (after the conv's
norm, before the ReLU); ``before_add`` is the branch's last norm (``bn2`` of a BasicBlock,
``bn3`` of a Bottleneck); ``stage`` is ``layerN``'s output; ``shared`` threads one DIA unit
through the branch ends of a stage.
"""

from __future__ import annotations

from torch import nn

from medattn.placement import Adapter, Stage

__all__ = ["CIFAR_DEPTHS", "IMAGENET_DEPTHS", "ResNetAdapter", "backbones", "block_hosts", "build_backbone",
           "cifar_resnet"]

#: torchvision's ImageNet ResNets.
IMAGENET_DEPTHS = (18, 34, 50, 101, 152)
#: CIFAR ResNets: depth -> (block, blocks per stage).
CIFAR_DEPTHS = {20: ("basic", 3), 32: ("basic", 5), 44: ("basic", 7), 56: ("basic", 9), 110: ("basic", 18),
                164: ("bottleneck", 18)}


def backbones() -> list[str]:
    """Backbone names accepted by :func:`build_backbone`."""
    return [f"resnet{d}" for d in sorted(set(IMAGENET_DEPTHS) | set(CIFAR_DEPTHS))]


def build_backbone(name: str, num_classes: int, in_channels: int = 3, dilate: bool = False) -> nn.Module:
    """A stock ResNet by name, with ``num_classes`` outputs.

    Args:
        name: one of :func:`backbones`.
        num_classes: outputs of the final linear layer.
        in_channels: image channels; the stem conv is rebuilt with the same shape when it
            is not 3 (e.g. 1 for radiographs).
        dilate: output stride 8 (dilated ``layer3``/``layer4``) for segmentation heads;
            torchvision supports it for its Bottleneck ResNets (50, 101, 152) only.

    Raises:
        ValueError: for an unknown name, non-positive sizes, or ``dilate`` on a backbone
            without it.
    """
    if name not in backbones():
        raise ValueError(f"unknown backbone {name!r}; choose one of {backbones()}")
    for label, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    depth = int(name[len("resnet"):])
    if dilate and depth not in (50, 101, 152):
        raise ValueError(f"output stride 8 (dilation) needs a Bottleneck ImageNet ResNet (resnet50/101/152), not "
                         f"{name!r}; torchvision's BasicBlock has no dilation and the CIFAR ResNets stop at stride 4")
    if depth in CIFAR_DEPTHS:
        network = cifar_resnet(depth, num_classes)
    else:
        import torchvision.models as tvm

        network = getattr(tvm, name)(weights=None, num_classes=num_classes,
                                     replace_stride_with_dilation=[False, True, True] if dilate else None)
    if in_channels != 3:
        stem = network.conv1
        network.conv1 = nn.Conv2d(in_channels, stem.out_channels, stem.kernel_size, stem.stride, stem.padding,
                                  bias=False)
        nn.init.kaiming_normal_(network.conv1.weight, mode="fan_out", nonlinearity="relu")
    return network


def cifar_resnet(depth: int, num_classes: int = 10) -> nn.Module:
    """A CIFAR-style ResNet of ``depth`` (see the module docstring) as a torchvision ``ResNet``.

    Raises:
        ValueError: for a depth not in :data:`CIFAR_DEPTHS`.
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    if depth not in CIFAR_DEPTHS:
        raise ValueError(f"CIFAR ResNet depth must be one of {sorted(CIFAR_DEPTHS)}, got {depth!r}")
    kind, per_stage = CIFAR_DEPTHS[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    network = ResNet.__new__(ResNet)
    nn.Module.__init__(network)
    # The attributes torchvision's _make_layer reads.
    network._norm_layer, network.inplanes, network.dilation, network.groups, network.base_width = (
        nn.BatchNorm2d, 16, 1, 1, 64)
    network.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
    network.bn1 = nn.BatchNorm2d(16)
    network.relu = nn.ReLU(inplace=True)
    network.maxpool = nn.Identity()
    network.layer1 = network._make_layer(block, 16, per_stage)
    network.layer2 = network._make_layer(block, 32, per_stage, stride=2)
    network.layer3 = network._make_layer(block, 64, per_stage, stride=2)
    network.layer4 = nn.Identity()
    network.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    network.fc = nn.Linear(64 * block.expansion, num_classes)
    for module in network.modules():  # torchvision ResNet's initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
    return network


def block_hosts(block: nn.Module) -> dict[str, tuple[nn.Module, int]]:
    """``position -> (host module, channels)`` of one torchvision BasicBlock or Bottleneck."""
    norms = [getattr(block, f"bn{i}") for i in (1, 2, 3) if hasattr(block, f"bn{i}")]
    hosts = {f"after_conv{i + 1}": (norm, norm.num_features) for i, norm in enumerate(norms)}
    hosts["before_add"] = hosts[f"after_conv{len(norms)}"]
    return hosts


class ResNetAdapter(Adapter):
    """Placement adapter of torchvision's ResNets and the CIFAR ResNets (``layer1``...).

    Default positions (a bare block name): ``dsm`` after conv1 of every block (DSNet50-B,
    DSNet Table 4); every other block at ``before_add`` (SENet, CBAM, GCNet, ECA-Net and
    the SNA paper put theirs at the end of the residual branch); DIA units ``shared``.
    """

    family = "ResNet"
    defaults = {"dsm": "after_conv1", "*": "before_add"}

    def stages(self, network: nn.Module) -> list[Stage]:
        found = []
        for index in range(1, 5):
            layer = getattr(network, f"layer{index}", None)
            if not isinstance(layer, nn.Sequential) or len(layer) == 0:
                continue
            blocks = [block_hosts(block) for block in layer]
            ends = [hosts["before_add"] for hosts in blocks]
            found.append(Stage(f"layer{index}", layer, ends[-1][1], blocks, [host for host, _ in ends]))
        if not found:
            raise ValueError(f"{type(network).__name__} has no ResNet layers (layer1 ...)")
        return found

    def spatial_dims(self, network: nn.Module) -> int:
        return 2


