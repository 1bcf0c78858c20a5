"""MONAI's own segmentation networks with attention blocks in their encoder stages.

:func:`create` builds the stock MONAI network (``DynUNet``, ``SegResNet``, ``BasicUNet``)
with MONAI's constructor arguments and then inserts blocks through
:mod:`medattn.insertion`, so the result *is* the MONAI class: same ``forward``, same stock
state-dict keys, same deep-supervision behaviour, and MONAI inferers and losses work on it
unchanged.

Which modules count as *encoder stages* (one stage = one resolution level of the
contracting path, its output is what the skip connection carries):

============  ===========================================================  ===============================
network       encoder stages, in order                                     layers a shared DIA unit sees
============  ===========================================================  ===============================
dynunet       ``input_block``, ``downsamples.0`` ..., ``bottleneck``        ``norm1``, ``norm2`` of the stage
                                                                           block (its two conv layers)
segresnet     ``down_layers.0`` ... ``down_layers.{n-1}``                  ``conv2`` of every ``ResBlock``
                                                                           (residual branch, before the add)
basicunet     ``conv_0``, ``down_1`` ... ``down_4``                         ``conv_0``, ``conv_1`` of the
                                                                           stage's ``TwoConv``
============  ===========================================================  ===============================

``attention`` is a placement of :mod:`medattn.placement` (``"dsm"``, ``"sna@stage:0,1"``,
``'dsm@after_conv1{"rd_ratio": 0.5}'``). Positions per network (in-block positions sit after
the conv's norm and before its nonlinearity):

============  =====================================================  ===============================
network       positions                                              default of a bare block name
============  =====================================================  ===============================
dynunet       ``after_conv1`` (``norm1``), ``after_conv2``            ``after_conv2``; DIA ``shared``
              (``norm2``), ``before_add`` (``norm2``, ``res_block``
              only), ``stage``, ``shared``
segresnet     per ``ResBlock``: ``after_conv1`` (``norm2``, which     ``dsm``: ``after_conv1``; others
              follows conv1), ``after_conv2`` = ``before_add``        ``before_add``; DIA ``shared``
              (``conv2``); ``stage``, ``shared``
basicunet     ``after_conv1`` (``conv_0.adn.N``), ``after_conv2``     ``after_conv2``; DIA ``shared``
              (``conv_1.adn.N``), ``stage``, ``shared``
============  =====================================================  ===============================

The stage output is no default: in DynUNet and BasicUNet every consumer of a stage's output
is conv → InstanceNorm, which removes a per-channel offset such as DSM's
(:class:`medattn.blocks.dsm.DSM`); ``@stage`` still places a block there. A DIA unit is
shared by the layers of a stage and threads its recurrent state through them in execution
order (DIA paper, section 4.2.1, :func:`medattn.insertion.attach_shared_unit`).

Checkpoints written before the placement language (``attention`` a bare name plus
``attention_stages``/``attention_kwargs``) meant the stage output; :func:`legacy_placement`
turns such a configuration into the placement it built, so they load and predict unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from torch import nn

from medattn import placement as placement_spec
from medattn.placement import Adapter, Stage

__all__ = [
    "MonaiAdapter",
    "NetworkSpec",
    "NETWORKS",
    "available",
    "attention_choices",
    "create",
    "dynunet_layout",
    "dynunet_patch_size",
    "encoder_stages",
    "legacy_placement",
    "network_spec",
    "normalise_attention",
    "size_divisor",
]


@dataclass(frozen=True)
class NetworkSpec:
    """How to build one network family and where its encoder stages are.

    Attributes:
        build: ``build(spatial_dims, in_channels, out_channels, **kwargs) -> (network, kwargs)``,
            returning the MONAI network and the complete constructor kwargs it used (so that
            a checkpoint can rebuild it without the helper arguments).
        stages: ``stages(network) -> list[medattn.placement.Stage]``.
        divisor: ``divisor(network_kwargs, spatial_dims) -> tuple[int, ...]``: per-axis
            factor every input size must be a multiple of.
        defaults: block -> default position (``"*"``: every other per-feature-map block).
    """

    build: Callable[..., tuple[nn.Module, dict[str, Any]]]
    stages: Callable[[nn.Module], list[Stage]]
    divisor: Callable[[dict[str, Any], int], tuple[int, ...]]
    defaults: dict[str, str]


# ----------------------------------------------------------------------------- DynUNet


def dynunet_layout(
    patch_size: Sequence[int],
    spacing: Sequence[float] | None = None,
    min_feature_map_size: int = 4,
) -> tuple[list[list[int]], list[list[int]]]:
    """DynUNet kernel sizes and strides for a patch size and voxel spacing, planned by nnU-Net.

    This calls nnU-Net's own topology planner
    (``nnunetv2.experiment_planning.experiment_planners.network_topology.get_pool_and_conv_props``),
    so DynUNet gets the layout nnU-Net would plan: an axis is downsampled while its spacing
    is within twice the finest spacing and its feature map stays at least
    ``min_feature_map_size``; too-coarse axes get kernel 1 until the others catch up.
    For MSD Task04 (patch 40 x 56 x 40 at 1 mm) this gives three stride-2 levels, the layout
    of MONAI's DynUNet tutorial.

    Args:
        patch_size: training patch (ROI) size per spatial axis.
        spacing: voxel spacing per axis in the same order (defaults to isotropic).
        min_feature_map_size: smallest feature-map size along a downsampled axis.

    Returns:
        ``(kernel_size, strides)``, one entry per level; ``strides[0]`` is all ones.

    Raises:
        ValueError: if sizes or spacings are not positive or do not match, or if the patch
            size is not a multiple of the planned downsampling (the message names the
            patch size nnU-Net would use instead).
    """
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    sizes = [int(s) for s in patch_size]
    spacings = [1.0] * len(sizes) if spacing is None else [float(s) for s in spacing]
    if len(sizes) not in (2, 3) or len(spacings) != len(sizes):
        raise ValueError(f"patch_size {tuple(patch_size)} and spacing {spacing} need 2 or 3 matching axes")
    if min(sizes) < 1 or min(spacings) <= 0:
        raise ValueError(f"patch_size {tuple(patch_size)} and spacing {spacing} must be positive")
    _, strides, kernels, planned_size, _ = get_pool_and_conv_props(spacings, sizes, min_feature_map_size, 999999)
    planned_size = [int(v) for v in planned_size]
    if planned_size != sizes:
        raise ValueError(
            f"patch size {sizes} does not divide by the planned downsampling {[list(s) for s in strides]}; "
            f"use {planned_size} instead"
        )
    return [[int(k) for k in kernel] for kernel in kernels], [[int(v) for v in stride] for stride in strides]


def dynunet_patch_size(patch_size: Sequence[int], spacing: Sequence[float] | None = None) -> list[int]:
    """The patch size nnU-Net's planner makes of ``patch_size``: rounded up to a multiple of
    its planned downsampling, so that :func:`dynunet_layout` accepts it."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    spacings = [1.0] * len(patch_size) if spacing is None else [float(s) for s in spacing]
    return [int(v) for v in get_pool_and_conv_props(spacings, [int(s) for s in patch_size], 4, 999999)[3]]


def _build_dynunet(spatial_dims, in_channels, out_channels, *, patch_size=None, spacing=None, **kwargs):
    from monai.networks.nets import DynUNet

    if ("kernel_size" in kwargs) != ("strides" in kwargs):
        raise ValueError("dynunet: give both kernel_size and strides, or neither (then patch_size/spacing derive them)")
    if "kernel_size" not in kwargs:
        patch = patch_size if patch_size is not None else (64,) * spatial_dims
        if len(patch) != spatial_dims:
            raise ValueError(f"dynunet: patch_size {tuple(patch)} does not have {spatial_dims} axes")
        kwargs["kernel_size"], kwargs["strides"] = dynunet_layout(patch, spacing)
    strides = [list(s) if isinstance(s, (list, tuple)) else s for s in kwargs["strides"]]
    if len(strides) < 2:
        raise ValueError(f"dynunet: strides {kwargs['strides']} give no downsampling level")
    kwargs.setdefault("upsample_kernel_size", strides[1:])
    # nnU-Net trains DynUNet-like networks with deep supervision; MONAI's default is off.
    n_up = len(strides) - 1
    kwargs.setdefault("deep_supervision", n_up > 1)
    if kwargs["deep_supervision"]:
        kwargs.setdefault("deep_supr_num", min(2, n_up - 1))
    kwargs = {k: _plain(v) for k, v in kwargs.items()}
    network = DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
    kwargs.setdefault("filters", [int(f) for f in network.filters])
    return network, kwargs


def _dynunet_stages(network) -> list[Stage]:
    named = [("input_block", network.input_block)]
    named += [(f"downsamples.{i}", m) for i, m in enumerate(network.downsamples)]
    named.append(("bottleneck", network.bottleneck))
    stages = []
    for i, (name, module) in enumerate(named):
        channels = int(network.filters[i])
        hosts = {"after_conv1": (module.norm1, channels), "after_conv2": (module.norm2, channels)}
        if hasattr(module, "conv3") or type(module).__name__ == "UnetResBlock":
            hosts["before_add"] = (module.norm2, channels)
        stages.append(Stage(name, module, channels, [hosts], [module.norm1, module.norm2]))
    return stages


def _dynunet_divisor(kwargs, spatial_dims):
    divisor = [1] * spatial_dims
    for stride in kwargs["strides"]:
        per_axis = stride if isinstance(stride, (list, tuple)) else [stride] * spatial_dims
        divisor = [d * int(s) for d, s in zip(divisor, per_axis)]
    return tuple(divisor)


# ----------------------------------------------------------------------------- SegResNet


def _build_segresnet(spatial_dims, in_channels, out_channels, **kwargs):
    from monai.networks.nets import SegResNet

    kwargs = {k: _plain(v) for k, v in kwargs.items()}
    network = SegResNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
    return network, kwargs


def _segresnet_stages(network) -> list[Stage]:
    from monai.networks.blocks.segresnet_block import ResBlock

    stages = []
    for i, stage in enumerate(network.down_layers):
        channels = int(network.init_filters * 2**i)
        res_blocks = [m for m in stage if isinstance(m, ResBlock)]
        # Pre-activation blocks (norm1, act, conv1, norm2, act, conv2, + x): conv1's norm is norm2.
        hosts = [{"after_conv1": (b.norm2, channels), "after_conv2": (b.conv2, channels),
                  "before_add": (b.conv2, channels)} for b in res_blocks]
        stages.append(Stage(f"down_layers.{i}", stage, channels, hosts, [b.conv2 for b in res_blocks]))
    return stages


def _segresnet_divisor(kwargs, spatial_dims):
    levels = len(kwargs.get("blocks_down", (1, 2, 2, 4)))
    return (2 ** (levels - 1),) * spatial_dims


# ----------------------------------------------------------------------------- BasicUNet


def _build_basicunet(spatial_dims, in_channels, out_channels, **kwargs):
    from monai.networks.nets import BasicUNet

    kwargs = {k: _plain(v) for k, v in kwargs.items()}
    network = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
    return network, kwargs


def _basicunet_stages(network) -> list[Stage]:
    named = [("conv_0", network.conv_0)] + [(f"down_{i}", getattr(network, f"down_{i}")) for i in range(1, 5)]
    stages = []
    for name, module in named:
        two_conv = module if name == "conv_0" else module.convs
        channels = int(two_conv.conv_1.conv.out_channels)
        hosts = {}
        for index, conv in enumerate((two_conv.conv_0, two_conv.conv_1)):
            norm = getattr(getattr(conv, "adn", None), "N", None)
            if norm is not None:
                hosts[f"after_conv{index + 1}"] = (norm, int(conv.conv.out_channels))
        stages.append(Stage(name, module, channels, [hosts], [two_conv.conv_0, two_conv.conv_1]))
    return stages


def _basicunet_divisor(kwargs, spatial_dims):
    return (16,) * spatial_dims


#: Network names accepted by :func:`create`.
NETWORKS: dict[str, NetworkSpec] = {
    "dynunet": NetworkSpec(_build_dynunet, _dynunet_stages, _dynunet_divisor, {"*": "after_conv2"}),
    "segresnet": NetworkSpec(_build_segresnet, _segresnet_stages, _segresnet_divisor,
                             {"dsm": "after_conv1", "*": "before_add"}),
    "basicunet": NetworkSpec(_build_basicunet, _basicunet_stages, _basicunet_divisor, {"*": "after_conv2"}),
}


class MonaiAdapter(Adapter):
    """Placement adapter of one MONAI network family (see the module docstring)."""

    def __init__(self, name: str, spatial_dims: int):
        self.family = f"MONAI {name}"
        self.spec = NETWORKS[name]
        self.defaults = self.spec.defaults
        self.dims = spatial_dims

    def stages(self, network: nn.Module) -> list[Stage]:
        return self.spec.stages(network)

    def spatial_dims(self, network: nn.Module) -> int:
        return self.dims


def available() -> list[str]:
    """Network names accepted by :func:`create`, sorted."""
    return sorted(NETWORKS)


def attention_choices() -> list[str]:
    """Block names accepted in ``attention``: the block registry's names plus the DIA units."""
    return placement_spec.block_names()


def network_spec(name: str) -> NetworkSpec:
    """The :class:`NetworkSpec` registered under ``name``.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if not isinstance(name, str) or name.lower() not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {available()}")
    return NETWORKS[name.lower()]


def create(
    name: str,
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    attention=None,
    **network_kwargs,
) -> nn.Module:
    """Build a MONAI segmentation network and insert attention into its encoder stages.

    Args:
        name: "dynunet", "segresnet" or "basicunet" (see :func:`available`).
        spatial_dims: 2 for (B, C, H, W) inputs, 3 for (B, C, D, H, W).
        in_channels: input image channels.
        out_channels: output classes (background included).
        attention: a placement of :mod:`medattn.placement`, as text
            (``'dsm@after_conv1:0,1{"rd_ratio": 0.25}'``; a bare ``"dsm"`` takes the
            network's default position, see the module docstring) or a
            :class:`~medattn.placement.Placement`; None / "none" for the plain network.
        **network_kwargs: MONAI's own constructor arguments of that network (e.g.
            ``filters``, ``res_block`` for DynUNet; ``init_filters``, ``blocks_down`` for
            SegResNet; ``features`` for BasicUNet). DynUNet also takes ``patch_size`` and
            ``spacing``, from which :func:`dynunet_layout` derives ``kernel_size`` and
            ``strides`` when those are not given (default patch: 64 per axis); its deep
            supervision is on by default (``deep_supr_num`` = min(2, levels - 2)).

    Returns:
        The MONAI network (e.g. a ``monai.networks.nets.DynUNet`` instance) with the blocks
        attached. ``network.medattn_config`` holds the arguments that rebuild it, the
        placement with its position resolved (what
        :func:`medattn.networks.training.save_checkpoint` stores).

    Raises:
        ValueError: for an unknown network, a placement the network cannot take (the
            message lists its positions), an unknown block argument, MONAI's own argument
            errors, or the retired ``attention_stages``/``attention_kwargs`` arguments.

    Example:
        >>> net = create("dynunet", 3, 1, 3, attention="dsm", patch_size=(40, 56, 40))  # doctest: +SKIP
    """
    from medattn.blocks.registry import check_spatial_dims

    retired = sorted({"attention_stages", "attention_kwargs"} & set(network_kwargs))
    if retired:
        raise ValueError(f"{retired} are part of the placement now: attention='dsm:0,1{{\"rd_ratio\": 0.25}}' "
                         "(BLOCK[@POSITION][:STAGES][{JSON options}], see medattn.placement)")
    spec = network_spec(name)
    check_spatial_dims(spatial_dims)
    for label, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    placement = normalise_attention(attention)
    network, used_kwargs = spec.build(spatial_dims, in_channels, out_channels, **copy.deepcopy(network_kwargs))
    if placement is not None:
        adapter = MonaiAdapter(name.lower(), spatial_dims)
        placement = placement_spec.resolve(placement, adapter, network)
        placement_spec.insert(network, placement, adapter)
    network.medattn_config = {
        "name": name.lower(),
        "spatial_dims": spatial_dims,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "attention": None if placement is None else placement.to_text(),
        "network_kwargs": used_kwargs,
    }
    return network


def encoder_stages(network: nn.Module) -> list[Stage]:
    """The encoder stages of a network built by :func:`create` (or a stock MONAI one).

    Raises:
        ValueError: if the network is not one of the supported MONAI classes.
    """
    from monai.networks.nets import BasicUNet, DynUNet, SegResNet

    for cls, name in ((DynUNet, "dynunet"), (SegResNet, "segresnet"), (BasicUNet, "basicunet")):
        if isinstance(network, cls):
            return NETWORKS[name].stages(network)
    raise ValueError(f"no encoder-stage layout known for {type(network).__name__}; supported: {available()}")


def size_divisor(name: str, spatial_dims: int, network_kwargs: dict[str, Any]) -> tuple[int, ...]:
    """Per-axis factor that every input size of the network must be a multiple of.

    Args:
        name: network name.
        spatial_dims: 2 or 3.
        network_kwargs: the complete constructor kwargs (``network.medattn_config["network_kwargs"]``).
    """
    return network_spec(name).divisor(network_kwargs, spatial_dims)


def normalise_attention(attention) -> placement_spec.Placement | None:
    """``attention`` as a :class:`~medattn.placement.Placement`, or None for no attention.

    Raises:
        ValueError: for anything :func:`medattn.placement.parse` refuses.
    """
    return placement_spec.parse(attention)


def legacy_placement(config: dict) -> str | None:
    """The placement text of a network configuration; configurations written before the
    placement language (with ``attention_stages``/``attention_kwargs``) placed every block
    on the stage output and every DIA unit as ``shared``."""
    if "attention_stages" not in config and "attention_kwargs" not in config:
        return config.get("attention")
    block = config.get("attention")
    if block is None or str(block).lower() in placement_spec.NONE_TEXTS:
        return None
    block = placement_spec.canonical_block(block)
    position = "shared" if block in placement_spec.DIA_UNITS else "stage"
    stages = config.get("attention_stages")
    return placement_spec.Placement(block, position, "all" if stages is None else stages,
                                    config.get("attention_kwargs") or {}).to_text()


def _plain(value):
    """Tuples to lists, recursively, so configs are JSON- and ``weights_only``-friendly."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
