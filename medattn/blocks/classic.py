"""The baseline attention blocks the papers compare against: SE, ECA, CBAM and GC.

Each class serves 2D (B, C, H, W) and 3D (B, C, D, H, W) inputs through ``spatial_dims``.
In 2D every block computes exactly what timm 1.0.22 computes (``timm.layers.SEModule``,
``EcaModule``, ``CbamModule``, ``GlobalContext``) and uses timm's parameter names, so a
timm state dict loads directly (``block.load_state_dict(timm_block.state_dict())``). In 3D
the same parameters carry one more kernel axis (1x1 convs become 1x1x1, CBAM's 7x7 becomes
7x7x7) and every pooling reduces over ``range(2, x.ndim)``.

Registered names: ``"se"``, ``"eca"``, ``"cbam"``, ``"gc"``::

    >>> from medattn import blocks
    >>> block = blocks.create("cbam", 64, spatial_dims=3)

References:
    - SE: Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018 (arXiv:1709.01507).
    - ECA: Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional
      Neural Networks", CVPR 2020 (arXiv:1910.03151).
    - CBAM: Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018
      (arXiv:1807.06521).
    - GC: Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
      Beyond", ICCVW 2019 (arXiv:1904.11492).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medattn.blocks.layers import LayerSpec, check_input, conv_nd, create_act, reduced_channels, spatial_dims_of
from medattn.blocks.registry import check_channels, check_spatial_dims, register_block

__all__ = [
    "CBAMBlock",
    "CBAMChannelAttention",
    "CBAMSpatialAttention",
    "ChannelLayerNorm",
    "ECABlock",
    "GCBlock",
    "SEBlock",
    "eca_kernel_size",
]


def _check_odd_kernel(name: str, kernel_size) -> int:
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(
            f"{name} must be a positive odd int (an even kernel would shift the output), got {kernel_size!r}"
        )
    return kernel_size


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


@register_block("se")
class SEBlock(nn.Module):
    """Squeeze-and-Excitation channel attention (Hu et al., CVPR 2018, Sec. 3).

    Squeeze by global average pooling (Eq. 2), excite with a bottleneck MLP of two 1x1
    convolutions ``sigmoid(fc2(relu(fc1(z))))`` (Eq. 3), and rescale every channel (Eq. 4).

    Args:
        channels: input (and output) channels C.
        spatial_dims: 2 for (B, C, H, W) inputs, 3 for (B, C, D, H, W).
        rd_ratio: bottleneck width as a fraction of C (the paper's 1/r, r = 16).
        rd_channels: bottleneck width; overrides ``rd_ratio`` when given.
        rd_divisor: the width from ``rd_ratio`` is rounded to a multiple of this.
        add_maxpool: squeeze with ``0.5 * (mean + max)`` instead of the mean (timm's
            experimental option; not in the paper).
        bias: whether the two 1x1 convolutions have a bias.
        act_layer: activation inside the bottleneck (name, class or None for ReLU).
        gate_layer: gating function (name, class or None for sigmoid).

    Shapes:
        input and output: (B, C, *spatial) with ``spatial_dims`` spatial axes.

    Raises:
        ValueError: for a bad ``channels``, ``spatial_dims``, ``rd_ratio``,
            ``rd_channels`` or activation name, or at call time for a wrongly shaped input.

    Decisions:
        - Defaults are timm's: ``rd_ratio=1/16`` (paper's r = 16), ``rd_divisor=8`` with no
          lower round limit, biased 1x1 convolutions, ReLU, sigmoid.
        - timm's optional ``norm_layer`` between fc1 and the activation is not offered: it
          is off by default in timm and not part of the paper.
        - Parameter names ``fc1``, ``fc2`` follow timm so its state dicts load directly.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 2,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        add_maxpool: bool = False,
        bias: bool = True,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
    ):
        super().__init__()
        check_channels(channels)
        check_spatial_dims(spatial_dims)
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.add_maxpool = _check_bool("add_maxpool", add_maxpool)
        hidden = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor)
        conv = conv_nd(spatial_dims)
        self.fc1 = conv(channels, hidden, kernel_size=1, bias=_check_bool("bias", bias))
        self.act = create_act(act_layer, default="relu")
        self.fc2 = conv(hidden, channels, kernel_size=1, bias=bias)
        self.gate = create_act(gate_layer, default="sigmoid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale the channels of ``x`` (B, C, *spatial); returns the same shape."""
        check_input(x, self.channels, self.spatial_dims, "SEBlock")
        axes = spatial_dims_of(x)
        squeezed = x.mean(axes, keepdim=True)
        if self.add_maxpool:
            squeezed = 0.5 * squeezed + 0.5 * x.amax(axes, keepdim=True)
        excitation = self.fc2(self.act(self.fc1(squeezed)))
        return x * self.gate(excitation)


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA's adaptive 1D kernel size ``k = |log2(C) / gamma + beta / gamma|_odd``
    (Wang et al., CVPR 2020, Sec. 3.2.3), at least 3.

    ``|t|_odd`` is the nearest odd number of the truncated value, rounding even values up,
    as in the official code and timm.

    Raises:
        ValueError: if ``channels`` is not a positive int or ``gamma`` is not positive.
    """
    check_channels(channels)
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma!r}")
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


@register_block("eca")
class ECABlock(nn.Module):
    """Efficient Channel Attention (Wang et al., CVPR 2020, Sec. 3.2).

    Global average pooling, then a 1D convolution of size k across the channel axis (local
    cross-channel interaction without dimensionality reduction), a sigmoid, and a
    per-channel rescale: ``x * sigmoid(conv1d_k(GAP(x)))``.

    Args:
        channels: input (and output) channels C.
        spatial_dims: 2 for (B, C, H, W) inputs, 3 for (B, C, D, H, W).
        kernel_size: odd size of the channel convolution; None picks it from C with
            :func:`eca_kernel_size` (the paper's adaptive choice).
        gamma: gamma of the adaptive kernel size (paper: 2).
        beta: b of the adaptive kernel size (paper: 1).
        gate_layer: gating function (name, class or None for sigmoid).

    Shapes:
        input and output: (B, C, *spatial) with ``spatial_dims`` spatial axes.

    Raises:
        ValueError: for a bad ``channels``, ``spatial_dims``, even or non-positive
            ``kernel_size``, non-positive ``gamma``, or at call time a wrongly shaped input.

    Decisions:
        - The kernel size is adaptive by default (paper and timm, which always derives it
          from C when C is known); an explicit ``kernel_size`` overrides it, which timm's
          signature suggests but ignores.
        - The convolution has no bias and zero padding, as in the paper and timm; timm's
          experimental ``use_mlp`` / ``act_layer`` variants are not offered.
        - Parameter name ``conv`` (a ``Conv1d(1, 1, k)``) follows timm; the same weight
          serves 2D and 3D because it acts on the pooled channel vector only.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 2,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        gate_layer: LayerSpec = "sigmoid",
    ):
        super().__init__()
        check_channels(channels)
        check_spatial_dims(spatial_dims)
        self.channels = channels
        self.spatial_dims = spatial_dims
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        self.kernel_size = _check_odd_kernel("kernel_size", kernel_size)
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.gate = create_act(gate_layer, default="sigmoid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale the channels of ``x`` (B, C, *spatial); returns the same shape."""
        check_input(x, self.channels, self.spatial_dims, "ECABlock")
        pooled = x.mean(spatial_dims_of(x)).unsqueeze(1)  # (B, 1, C): channels as a sequence
        weights = self.gate(self.conv(pooled))
        return x * weights.reshape(x.shape[:2] + (1,) * self.spatial_dims)


class CBAMChannelAttention(nn.Module):
    """CBAM's channel attention (Woo et al., ECCV 2018, Eq. 2):
    ``x * sigmoid(MLP(AvgPool(x)) + MLP(MaxPool(x)))`` with one MLP shared by both pools.

    Args:
        channels: input (and output) channels C.
        spatial_dims: 2 or 3.
        rd_ratio: hidden width of the shared MLP as a fraction of C (paper: r = 16).
        rd_channels: hidden width; overrides ``rd_ratio`` when given.
        rd_divisor: the width from ``rd_ratio`` is rounded to a multiple of this.
        act_layer: activation of the MLP (name, class or None for ReLU).
        gate_layer: gating function (name, class or None for sigmoid).
        mlp_bias: whether the MLP's 1x1 convolutions have a bias.

    Shapes:
        input and output: (B, C, *spatial).
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 2,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        mlp_bias: bool = False,
    ):
        super().__init__()
        check_channels(channels)
        check_spatial_dims(spatial_dims)
        hidden = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor)
        conv = conv_nd(spatial_dims)
        self.fc1 = conv(channels, hidden, kernel_size=1, bias=_check_bool("mlp_bias", mlp_bias))
        self.act = create_act(act_layer, default="relu")
        self.fc2 = conv(hidden, channels, kernel_size=1, bias=mlp_bias)
        self.gate = create_act(gate_layer, default="sigmoid")

    def _mlp(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = spatial_dims_of(x)
        logits = self._mlp(x.mean(axes, keepdim=True)) + self._mlp(x.amax(axes, keepdim=True))
        return x * self.gate(logits)


class _ConvNorm(nn.Module):
    """Convolution without bias followed by batch norm; the attribute names ``conv`` and
    ``bn`` mirror timm's ``ConvNormAct`` so CBAM state dicts load directly."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, spatial_dims: int):
        super().__init__()
        self.conv = conv_nd(spatial_dims)(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False
        )
        self.bn = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class CBAMSpatialAttention(nn.Module):
    """CBAM's spatial attention (Woo et al., ECCV 2018, Eq. 3):
    ``x * sigmoid(BN(conv_k([mean_c(x); max_c(x)])))``.

    Args:
        kernel_size: odd size of the convolution over the 2-channel pooled map (paper: 7).
        spatial_dims: 2 or 3 (a k x k or k x k x k kernel).
        gate_layer: gating function (name, class or None for sigmoid).

    Shapes:
        input and output: (B, C, *spatial).
    """

    def __init__(self, kernel_size: int = 7, spatial_dims: int = 2, gate_layer: LayerSpec = "sigmoid"):
        super().__init__()
        check_spatial_dims(spatial_dims)
        _check_odd_kernel("spatial_kernel_size", kernel_size)
        self.conv = _ConvNorm(2, 1, kernel_size, spatial_dims)
        self.gate = create_act(gate_layer, default="sigmoid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.conv(pooled))


@register_block("cbam")
class CBAMBlock(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018, Sec. 3, Eq. 1):
    channel attention, then spatial attention, applied in sequence.

    Args:
        channels: input (and output) channels C.
        spatial_dims: 2 for (B, C, H, W) inputs, 3 for (B, C, D, H, W).
        rd_ratio: hidden width of the channel MLP as a fraction of C (paper: r = 16).
        rd_channels: hidden width; overrides ``rd_ratio`` when given.
        rd_divisor: the width from ``rd_ratio`` is rounded to a multiple of this.
        spatial_kernel_size: odd kernel size of the spatial attention (paper: 7).
        act_layer: activation of the channel MLP (name, class or None for ReLU).
        gate_layer: gating function of both attentions (name, class or None for sigmoid).
        mlp_bias: whether the channel MLP's 1x1 convolutions have a bias.

    Shapes:
        input and output: (B, C, *spatial) with ``spatial_dims`` spatial axes.

    Raises:
        ValueError: for a bad ``channels``, ``spatial_dims``, ``rd_ratio``,
            ``rd_channels``, an even ``spatial_kernel_size``, or at call time a wrongly
            shaped input.

    Decisions:
        - Defaults are timm's: ``rd_ratio=1/16``, ``rd_divisor=1``, MLP without bias,
          spatial kernel 7, sequential channel-then-spatial order (the paper's best, Sec. 4.1).
        - The spatial convolution is followed by batch norm (no bias in the conv), as in the
          official CBAM code and timm; the paper's Eq. 3 omits it. In training mode this BN
          uses batch statistics like any BN layer.
        - In 3D the spatial kernel is cubic (k x k x k): the paper gives no 3D variant, and a
          cubic kernel is the direct generalisation.
        - Parameter names (``channel.fc1``, ``spatial.conv.conv``, ``spatial.conv.bn``)
          follow timm so its state dicts load directly.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 2,
        rd_ratio: float = 1.0 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        spatial_kernel_size: int = 7,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        mlp_bias: bool = False,
    ):
        super().__init__()
        check_channels(channels)
        check_spatial_dims(spatial_dims)
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.channel = CBAMChannelAttention(
            channels,
            spatial_dims=spatial_dims,
            rd_ratio=rd_ratio,
            rd_channels=rd_channels,
            rd_divisor=rd_divisor,
            act_layer=act_layer,
            gate_layer=gate_layer,
            mlp_bias=mlp_bias,
        )
        self.spatial = CBAMSpatialAttention(spatial_kernel_size, spatial_dims=spatial_dims, gate_layer=gate_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply channel then spatial attention to ``x`` (B, C, *spatial); same shape out."""
        check_input(x, self.channels, self.spatial_dims, "CBAMBlock")
        return self.spatial(self.channel(x))


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channel axis of a (B, C, *spatial) tensor, for any number of
    spatial axes (timm's ``LayerNorm2d`` generalised; parameters ``weight``, ``bias``).

    Args:
        channels: C.
        eps: added to the variance (timm's 1e-6).
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        check_channels(channels)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = x.movedim(1, -1)
        normed = F.layer_norm(channels_last, self.weight.shape, self.weight, self.bias, self.eps)
        return normed.movedim(-1, 1)


class _ContextTransform(nn.Module):
    """GC's bottleneck transform ``fc2(relu(LN(fc1(context))))``; attribute names mirror
    timm's ``ConvMlp`` (fc1, norm, fc2)."""

    def __init__(self, channels: int, hidden: int, spatial_dims: int, act_layer: LayerSpec):
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.fc1 = conv(channels, hidden, kernel_size=1)
        self.norm = ChannelLayerNorm(hidden)
        self.act = create_act(act_layer, default="relu")
        self.fc2 = conv(hidden, channels, kernel_size=1)

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.norm(self.fc1(context))))


def _drop_softmax_invariant_bias(module, state_dict, prefix, *_) -> None:
    """Load-time hook of :class:`GCBlock`: discard the attention-logit bias that timm's
    ``GlobalContext`` stores; the softmax over positions cancels it exactly."""
    state_dict.pop(prefix + "conv_attn.bias", None)


@register_block("gc")
class GCBlock(nn.Module):
    """Global Context block (Cao et al., GCNet, ICCVW 2019, Sec. 4).

    Context modelling by attention pooling: one context vector per sample,
    ``c = sum_j softmax_j(W_k x_j) x_j`` over all spatial positions j; a bottleneck
    transform ``W_v2 ReLU(LN(W_v1 c))``; and fusion with every position, by addition
    (the paper's GC block, ``z_i = x_i + transform(c)``) and/or by scaling
    (``z_i = x_i * sigmoid(transform'(c))``).

    Args:
        channels: input (and output) channels C.
        spatial_dims: 2 for (B, C, H, W) inputs, 3 for (B, C, D, H, W).
        use_attn: attention pooling (True) or plain global average pooling (False, the
            paper's "avg" ablation).
        fuse_add: fuse the transformed context by addition (the paper's default fusion).
        fuse_scale: fuse by multiplying with the gated context (the paper's "scale"
            ablation; timm's default).
        init_last_zero: zero the weight and bias of the last 1x1 conv of each fusion
            branch at construction (GCNet's initialisation).
        rd_ratio: bottleneck width as a fraction of C.
        rd_channels: bottleneck width; overrides ``rd_ratio`` when given.
        rd_divisor: the width from ``rd_ratio`` is rounded to a multiple of this.
        act_layer: activation of the transform (name, class or None for ReLU).
        gate_layer: gating function of the scale fusion (name, class or None for sigmoid).

    Shapes:
        input and output: (B, C, *spatial) with ``spatial_dims`` spatial axes.

    Raises:
        ValueError: for a bad ``channels``, ``spatial_dims``, ``rd_ratio``,
            ``rd_channels``, if both fusions are off (the block would be the identity), or
            at call time for a wrongly shaped input.

    Decisions:
        - Fusion defaults follow timm (``fuse_scale=True``, ``fuse_add=False``), as do
          ``rd_ratio=1/8``, ``rd_divisor=1``, LayerNorm eps 1e-6 and the Kaiming-normal
          (fan_in) init of the attention conv. The paper's own GC block is
          ``fuse_add=True, fuse_scale=False`` with ``rd_ratio=1/16``.
        - ``init_last_zero`` defaults to True, the GCNet paper's choice (its official code's
          ``last_zero_init`` zeroes weight and bias of the last conv of each fusion branch).
          timm 1.0.22 defaults the flag to False, ignores it, and always zeroes only
          ``mlp_add.fc2.weight``. With the default scale fusion the zeroed branch starts as
          a constant gate of sigmoid(0) = 0.5; with add fusion the block starts as the
          identity. Pass ``init_last_zero=False`` for PyTorch's default init there.
        - ``conv_attn`` has no bias, unlike timm's and GCNet's code: softmax ignores a
          constant added to every logit, so that bias never changes the output and its
          gradient is identically zero. A ``conv_attn.bias`` in a loaded state dict (from
          timm) is therefore dropped, which is exact; loading ours into timm needs
          ``strict=False`` for that one key, whatever value timm keeps there.
        - Parameter names (``conv_attn``, ``mlp_add``, ``mlp_scale`` with ``fc1``, ``norm``,
          ``fc2``) follow timm so its state dicts load directly. When both fusions are on,
          scaling is applied before adding, as in timm.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 2,
        use_attn: bool = True,
        fuse_add: bool = False,
        fuse_scale: bool = True,
        init_last_zero: bool = True,
        rd_ratio: float = 1.0 / 8,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
    ):
        super().__init__()
        check_channels(channels)
        check_spatial_dims(spatial_dims)
        if not (_check_bool("fuse_add", fuse_add) or _check_bool("fuse_scale", fuse_scale)):
            raise ValueError("GCBlock needs fuse_add=True or fuse_scale=True (both False makes it the identity)")
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.init_last_zero = _check_bool("init_last_zero", init_last_zero)
        hidden = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor)
        conv = conv_nd(spatial_dims)
        self.conv_attn = conv(channels, 1, kernel_size=1, bias=False) if _check_bool("use_attn", use_attn) else None
        self.mlp_add = _ContextTransform(channels, hidden, spatial_dims, act_layer) if fuse_add else None
        self.mlp_scale = _ContextTransform(channels, hidden, spatial_dims, act_layer) if fuse_scale else None
        self.gate = create_act(gate_layer, default="sigmoid")
        self.register_load_state_dict_pre_hook(_drop_softmax_invariant_bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal attention conv; zero last convs if ``init_last_zero``."""
        if self.conv_attn is not None:
            nn.init.kaiming_normal_(self.conv_attn.weight, mode="fan_in", nonlinearity="relu")
        if self.init_last_zero:
            for branch in (self.mlp_add, self.mlp_scale):
                if branch is not None:
                    nn.init.zeros_(branch.fc2.weight)
                    nn.init.zeros_(branch.fc2.bias)

    def _context(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *spatial) -> (B, C, 1, ..., 1): attention-weighted (or mean) pooling."""
        if self.conv_attn is None:
            return x.mean(spatial_dims_of(x), keepdim=True)
        logits = self.conv_attn(x).flatten(2)  # (B, 1, N)
        weights = logits.softmax(dim=-1).transpose(1, 2)  # (B, N, 1)
        context = torch.bmm(x.flatten(2), weights)  # (B, C, 1)
        return context.reshape(x.shape[:2] + (1,) * self.spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fuse the global context into every position of ``x`` (B, C, *spatial)."""
        check_input(x, self.channels, self.spatial_dims, "GCBlock")
        context = self._context(x)
        out = x
        if self.mlp_scale is not None:
            out = out * self.gate(self.mlp_scale(context))
        if self.mlp_add is not None:
            out = out + self.mlp_add(context)
        return out
