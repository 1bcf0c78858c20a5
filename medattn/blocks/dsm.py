"""DSM: the decoupled 3D self-attention module of DSNet.

Paper: "Does the attention mechanism act as a correction factor?" (DSNet), section 4,
Fig. 2, Table 3 (ablation) and Table 4 (placements). The block decouples a 3D attention
map into a channel map ``C`` and a spatial map ``S`` (section 4.1), recouples them in
series and in parallel and mixes the two with a selective-kernel weight (section 4.3),
turns the result into a per-channel softmax over positions (section 4.2) and uses it to
pool a gated copy of the input, which is added back to the input.

Example::

    >>> import torch
    >>> from medattn.blocks.dsm import DSM
    >>> block = DSM(32, spatial_dims=3, rd_ratio=1/2)
    >>> x = torch.randn(2, 32, 8, 16, 16)
    >>> torch.equal(block(x), x)  # identity at initialisation (see ``identity_init``)
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medattn.blocks.layers import LayerSpec, check_input, conv_nd, create_act, reduced_channels
from medattn.blocks.registry import check_channels, check_spatial_dims, register_block

__all__ = ["DSM", "MODES", "SK_MIN_WIDTH"]

#: Accepted values of ``DSM(mode=...)``, the rows of the paper's Table 3.
MODES = ("full", "series", "parallel", "channel", "spatial")

#: SKNet's lower bound ``L`` on the width of the selection FC (SKNet, section 3.1).
SK_MIN_WIDTH = 32
#: ``impl`` values: the fast path and the reference it is tested against.
IMPLS = ("fast", "reference")

_USES_CHANNEL = {"full", "series", "channel"}
_USES_SPATIAL = {"full", "series", "parallel", "spatial"}
_USES_SELF_ATTENTION = {"full", "series", "parallel"}


@register_block("dsm")
class DSM(nn.Module):
    """Decoupled 3D self-attention module (DSNet, section 4), for 2D and 3D feature maps.

    With ``X`` of shape (B, C, *spatial) flattened to (B, C, N), ``r`` the reduced width
    and ``σ`` the gate (sigmoid), the full block computes:

    - Channel attention (section 4.1), ``C ∈ (B, C)``: Polarized Self-Attention's
      channel-only branch without its LayerNorm,
      ``C = σ(W_z (W_v X × softmax_N(W_q X)))`` with 1x1 convs ``W_q: C→1``,
      ``W_v: C→r``, ``W_z: r→C``.
    - Spatial attention (section 4.1), ``S ∈ (B, N)``: PSA's spatial-only branch with
      global max pooling in place of average pooling,
      ``S = σ(softmax_r(maxpool_N(W_q' X))ᵀ × W_v' X)`` with ``W_q', W_v': C→r``.
    - Recoupling (section 4.3): series ``Q = C ⊙ S``, parallel ``P = C + S`` (both
      broadcast to (B, C, N)), mixed as ``A = α Q + (1 − α) P``. ``α ∈ (B, C)`` is
      SKNet's selection: ``s = GAP(Q + P)``, ``z = act(FC_d(s))``,
      ``[α, 1 − α] = softmax over the 2 branches of FC_2C(z)``, per channel.
    - Self-attention (section 4.2): ``M = softmax_N(A)`` per channel.
    - Output (section 4.2): ``Z = X + γ ⊙ F_aggr(M ⊙ σ(W_x X))`` where
      ``F_aggr(Y)_c = Σ_n Y_c(n)`` pools each channel over positions and the sum with
      ``X`` broadcasts over positions; ``W_x: C→C``. ``γ`` is the zero-initialised
      per-channel scale of ``identity_init`` (absent, i.e. 1, when that is off).

    Ablation modes (Table 3), selected with ``mode``:

    - ``"full"``: the block above.
    - ``"series"``: ``A = Q`` (``α ≡ 1``), hence ``M_c = softmax_N(C_c · S)``.
    - ``"parallel"``: ``A = P`` (``α ≡ 0``). ``C_c`` is constant over positions and
      cancels in the softmax, so ``M_c = softmax_N(S)`` for every channel and the output
      does not depend on ``C`` at all; the channel branch is therefore not built (it
      would receive no gradient). This is what the paper's equations give, not a choice.
    - ``"channel"`` (2D attention): the channel map gates the input directly,
      ``Z = C ⊙ X`` (PSA's channel-only block). A softmax over positions of a map that
      is constant over positions would be uniform and ignore ``C``.
    - ``"spatial"`` (2D attention): ``Z = S ⊙ X`` (PSA's spatial-only block, max pooled).

    With ``identity_init`` the gating modes compute ``Z = X + γ ⊙ (G ⊙ X − X)`` for their
    gate ``G``, so in every mode ``Z = X + γ ⊙ (paper output − X)``: ``γ = 0`` is the
    identity and ``γ = 1`` the paper's block.

    Efficiency: nothing larger than (B, C, N) is materialised. Because ``W_v`` is linear
    and a softmax sums to 1, ``W_v X × softmax(W_q X) = W_v (X × softmax(W_q X))`` and
    ``pᵀ (W_v' X) = (W_v'ᵀ p)ᵀ X``; the value convs of both branches are therefore
    applied to pooled (B, C) vectors, never to the (B, r, N) maps. ``A`` itself is never
    formed: per channel ``A_c = k_c S + (1 − α_c) C_c`` with ``k = α C + 1 − α``, and the
    constant second term cancels in the softmax, so ``M_c = softmax_N(k_c S)`` (and
    ``GAP(Q + P) = C·mean(S) + C + mean(S)`` is computed from the pooled maps).
    Softmaxes over positions run in at least float32, also under bf16 autocast.

    Note: with the sigmoid gate, ``C`` and ``S`` lie in (0, 1), hence ``k_c S`` lies in
    (0, 1) and each ``M_c`` stays within a factor ``e^{k_c} < e`` of uniform: as the
    paper's equations define it, the self-attention is a soft reweighting of the mean.

    Placement in InstanceNorm networks (nnU-Net, DynUNet, BasicUNet): the block adds one
    value per (sample, channel), ``Z = X ⊕ F_aggr(...)``. Where its output feeds a conv
    followed by InstanceNorm, as every stage output of those networks does, the norm removes
    that constant except near the zero-padded borders: with ``γ = 1`` and random weights,
    DSM on the first stage's output of a PlainConvUNet changes the next conv + InstanceNorm
    by 6 % in the interior of a 48³ volume (a border effect that halves as the size
    doubles), against 25 % when DSM sits after the stage's last norm and before its
    LeakyReLU (``tests/nnunet/test_instance_norm.py``). DSNet itself uses BatchNorm, whose
    running statistics keep the offset. So every engine's default position for DSM is
    inside the stage, after a norm and before the nonlinearity (:mod:`medattn.placement`);
    ``@stage`` still puts it on the stage output.

    Decisions (the paper leaves these open):

    - Reduction: ``r = round(C · rd_ratio)`` (``rd_divisor`` 1 by default so the paper's
      ratios 1/2 and 1/16 hold as written) for ``W_v``, ``W_q'`` and ``W_v'``;
      ``W_q`` maps to one channel as in PSA. Default ``rd_ratio=1/16``
      (DSNet50-B, Table 4; DSNet50-A uses 1/2). ``r`` is at least 2: the softmax over
      the ``r`` pooled query channels of ``S`` is identically 1 for ``r = 1``, which
      would leave ``W_q'`` without effect (e.g. C=16 at 1/16); an explicit
      ``rd_channels=1`` is refused in the modes that build ``S``.
    - No LayerNorm in the channel branch (PSA has one; the paper's equation does not).
    - MaxPooling in ``S`` is global max pooling over all positions, the counterpart of
      PSA's global average pooling; the softmax after it runs over the ``r`` channels.
    - The selection (``Conv_SK``) follows SKNet: the fused map is the sum of the two
      recoupled maps, its hidden width is ``d = max(r, 32)`` (SKNet's ``max(C/r, L)``
      with ``L = 32``) and ``act_layer`` (ReLU) follows the reduction. SKNet's BatchNorm
      is left out (batch size 1 is common in 3D segmentation and BatchNorm on a (B, d)
      vector fails there). Without it the FC's input is positive (``C``, ``S`` in
      (0, 1)), so each ReLU unit is alive or dead for every input at once; SKNet's
      ``L = 32`` keeps the selection from starting with every unit dead, as it did in
      tests with ``d = r = 2``.
    - ``F_aggr`` is the sum over positions; since ``M_c`` sums to 1 it is the
      ``M``-weighted mean of ``σ(W_x X)_c``, one value per channel, broadcast-added to X.
    - ``W_x`` maps C to C channels (``M`` has one map per channel), followed by the gate.
    - All 1x1 convs and FCs have biases.
    - ``identity_init`` (default True) adds the per-channel scale ``γ``, zero-initialised
      as in GCNet's zero-initialised last layer, so that an inserted block starts as the
      identity and a pretrained network's output is unchanged. The paper has no ``γ``;
      ``identity_init=False`` builds the paper's block exactly.

    Args:
        channels: input (and output) channels C.
        spatial_dims: 2 for (B, C, H, W) inputs, 3 for (B, C, D, H, W).
        mode: one of :data:`MODES`: "full", "series", "parallel", "channel", "spatial".
        rd_ratio: reduction ratio as a fraction in (0, 1], e.g. 1/16 or 1/2.
        rd_channels: reduced width r; overrides ``rd_ratio`` when given (at least 2 in
            the modes with a spatial map).
        rd_divisor: ``r`` is rounded to a multiple of this (timm's ``make_divisible``).
        act_layer: activation after the selection FC's reduction (name, class or None).
        gate_layer: the gate σ of ``C``, ``S`` and ``σ(W_x X)`` (default sigmoid).
        identity_init: add a zero-initialised per-channel scale so that ``Z == X`` at
            initialisation; False gives the paper's block without it.
        sk_min_width: SKNet's lower bound ``L`` on the selection FC's width (default 32);
            0 makes the width ``r``, which reproduces DSNet50-B's parameter count
            (+1.81M, DSNet Tables 5/6/8) instead of +1.958M.
        impl: "fast" (default) or "reference". The fast path computes the same block
            with fewer passes over the (B, C, N) maps: both query convs of a mode that
            has them in one convolution (one read of ``X``), the gate of ``W_x X`` in place,
            and ``F_aggr(softmax_N(k_c S) ⊙ V)`` as ``Σ exp(k_c S − m_c) V / Σ exp(k_c S − m_c)``
            with the shift ``m_c = max_n k_c S_n`` taken from the extremes of ``S``, so the
            (B, C, N) map is written once and exponentiated in place. Equal to the reference
            to float32 rounding, forward and gradients (tested); "reference" is the oracle.

    Shapes:
        input (B, C, *spatial) with 2 or 3 spatial axes; output: the same shape.

    Raises:
        ValueError: for a bad ``channels``, ``spatial_dims``, ``mode``, ``rd_ratio``,
            ``rd_channels`` or ``rd_divisor`` (naming the value and the valid choices),
            and, in ``forward``, for an input of the wrong shape.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 2,
        mode: str = "full",
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        identity_init: bool = True,
        sk_min_width: int = SK_MIN_WIDTH,
        impl: str = "fast",
    ):
        super().__init__()
        check_channels(channels)
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; choose one of {list(IMPLS)}")
        self.impl = impl
        if isinstance(sk_min_width, bool) or not isinstance(sk_min_width, int) or sk_min_width < 0:
            raise ValueError(f"sk_min_width must be a non-negative int, got {sk_min_width!r}")
        check_spatial_dims(spatial_dims)
        _check_options(mode, rd_ratio, rd_channels, rd_divisor)
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.mode = mode
        self.rd_channels = _reduced_width(channels, mode, rd_ratio, rd_channels, rd_divisor)
        self.gate = create_act(gate_layer, default="sigmoid")
        conv = conv_nd(spatial_dims)
        rd = self.rd_channels

        if mode in _USES_CHANNEL:
            self.channel_query = conv(channels, 1, kernel_size=1)  # W_q
            self.channel_value = conv(channels, rd, kernel_size=1)  # W_v
            self.channel_expand = conv(rd, channels, kernel_size=1)  # W_z
        if mode in _USES_SPATIAL:
            self.spatial_query = conv(channels, rd, kernel_size=1)  # W_q'
            self.spatial_value = conv(channels, rd, kernel_size=1)  # W_v'
        if mode in _USES_SELF_ATTENTION:
            self.value_proj = conv(channels, channels, kernel_size=1)  # W_x
        if mode == "full":
            select_width = max(rd, sk_min_width)
            self.select_reduce = nn.Linear(channels, select_width)
            self.select_act = create_act(act_layer, default="relu")
            self.select_expand = nn.Linear(select_width, 2 * channels)  # Q, P logits
        if identity_init:
            self.gamma = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("gamma", None)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, spatial_dims={self.spatial_dims}, mode={self.mode!r}, "
            f"rd_channels={self.rd_channels}, identity_init={self.gamma is not None}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: (B, C, *spatial) feature map.

        Returns:
            Tensor of the shape and dtype of ``x``.

        Raises:
            ValueError: if ``x`` is not (B, channels, *spatial) with ``spatial_dims`` axes.
        """
        check_input(x, self.channels, self.spatial_dims, "DSM")
        x_flat = x.flatten(2)
        queries = self._fused_queries(x) if self.impl == "fast" else {}
        if self.mode == "channel":
            return self._gated(x, self._per_channel(self._channel_attention(x, x_flat, queries.get("channel"))))
        spatial = self._spatial_attention(x, x_flat, queries.get("spatial"))
        if self.mode == "spatial":
            return self._gated(x, spatial.view(x.shape[0], 1, *x.shape[2:]))
        context = self._self_attention_context(x, x_flat, spatial, queries.get("channel"))
        if self.gamma is not None:
            context = self.gamma * context
        return x + self._per_channel(context.to(x.dtype))

    def _self_attention_context(
        self, x: torch.Tensor, x_flat: torch.Tensor, spatial: torch.Tensor, channel_query=None
    ) -> torch.Tensor:
        """``F_aggr(M ⊙ σ(W_x X))`` as (B, C), with ``M_c = softmax_N(k_c S)`` (see class doc)."""
        values = self._values(x)
        if self.mode == "parallel":
            attention = _softmax(spatial)  # (B, N): C cancels, one map serves every channel
            return torch.einsum("bn,bcn->bc", attention.to(values.dtype), values)
        channel = self._channel_attention(x, x_flat, channel_query)
        if self.mode == "series":
            temperature = channel
        else:
            alpha = self.selection_weight(channel, spatial)
            temperature = alpha * channel + (1 - alpha)
        if self.impl == "fast":
            return _softmax_pool(temperature, spatial, values)
        attention = _softmax(temperature[:, :, None] * spatial[:, None, :])  # (B, C, N)
        return torch.einsum("bcn,bcn->bc", attention.to(values.dtype), values)

    def _values(self, x: torch.Tensor) -> torch.Tensor:
        """``σ(W_x X)`` as (B, C, N); the fast path gates the fresh conv output in place
        (a sigmoid's backward needs only its output)."""
        projected = self.value_proj(x)
        if self.impl == "fast" and isinstance(self.gate, nn.Sigmoid):
            return torch.sigmoid_(projected).flatten(2)
        return self.gate(projected).flatten(2)

    def _fused_queries(self, x: torch.Tensor) -> dict:
        """Both 1x1 query convs of the mode in one convolution (one read of ``x``):
        {"channel": (B, 1, *spatial), "spatial": (B, r, *spatial)}, or {} with fewer than two."""
        convs = {name: getattr(self, attribute) for name, attribute in (("channel", "channel_query"),
                                                                        ("spatial", "spatial_query"))
                 if hasattr(self, attribute)}
        if len(convs) < 2:
            return {}
        weight = torch.cat([conv.weight for conv in convs.values()])
        bias = torch.cat([conv.bias for conv in convs.values()])
        conv = F.conv3d if self.spatial_dims == 3 else F.conv2d
        out = conv(x, weight, bias)
        return dict(zip(convs, out.split([c.out_channels for c in convs.values()], dim=1)))

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The channel map ``C`` of section 4.1.

        Args:
            x: (B, C, *spatial) feature map.

        Returns:
            (B, C, 1, ..., 1) tensor in (0, 1) for the sigmoid gate.

        Raises:
            ValueError: for a bad input shape, or if this mode has no channel branch.
        """
        self._require("channel_query", "channel")
        check_input(x, self.channels, self.spatial_dims, "DSM")
        return self._per_channel(self._channel_attention(x, x.flatten(2)))

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """The spatial map ``S`` of section 4.1.

        Args:
            x: (B, C, *spatial) feature map.

        Returns:
            (B, 1, *spatial) tensor in (0, 1) for the sigmoid gate.

        Raises:
            ValueError: for a bad input shape, or if this mode has no spatial branch.
        """
        self._require("spatial_query", "spatial")
        check_input(x, self.channels, self.spatial_dims, "DSM")
        return self._spatial_attention(x, x.flatten(2)).view(x.shape[0], 1, *x.shape[2:])

    def selection_weight(self, channel: torch.Tensor, spatial: torch.Tensor) -> torch.Tensor:
        """SKNet's selection weight ``α`` of the series map ``Q`` (section 4.3).

        Args:
            channel: (B, C) channel map ``C``.
            spatial: (B, N) spatial map ``S`` (positions flattened).

        Returns:
            (B, C) tensor ``α`` in (0, 1); the parallel map ``P`` gets ``1 − α``.

        Raises:
            ValueError: if this mode has no selection (only mode "full" has one).
        """
        self._require("select_reduce", "selection")
        spatial_mean = spatial.mean(dim=-1, keepdim=True)
        # GAP(Q + P) per channel, from the pooled maps instead of the (B, C, N) maps.
        fused = channel * spatial_mean + channel + spatial_mean
        logits = self.select_expand(self.select_act(self.select_reduce(fused)))
        return torch.softmax(logits.unflatten(-1, (2, self.channels)), dim=1)[:, 0]

    def _channel_attention(self, x: torch.Tensor, x_flat: torch.Tensor, query=None) -> torch.Tensor:
        weights = _softmax((self.channel_query(x) if query is None else query).flatten(1))  # (B, N)
        pooled = torch.einsum("bcn,bn->bc", x_flat, weights.to(x_flat.dtype))
        context = _as_linear(self.channel_value, pooled)  # = W_v X × softmax: softmax sums to 1
        return self.gate(_as_linear(self.channel_expand, context))

    def _spatial_attention(self, x: torch.Tensor, x_flat: torch.Tensor, query_map=None) -> torch.Tensor:
        query_map = self.spatial_query(x) if query_map is None else query_map
        query = torch.softmax(query_map.flatten(2).amax(dim=-1), dim=-1)  # (B, r)
        # queryᵀ (W_v' X + b) = (W_v'ᵀ query)ᵀ X + queryᵀ b: no (B, r, N) value map is formed.
        projected = query @ self.spatial_value.weight.flatten(1)  # (B, C)
        offset = query @ self.spatial_value.bias  # (B,)
        return self.gate(torch.einsum("bc,bcn->bn", projected, x_flat) + offset[:, None])

    def _per_channel(self, values: torch.Tensor) -> torch.Tensor:
        """(B, C) -> (B, C, 1, ..., 1), broadcastable against the input."""
        return values.view(*values.shape, *([1] * self.spatial_dims))

    def _gated(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """``G ⊙ X`` for a gate broadcastable to ``x``; ``X + γ ⊙ (G ⊙ X − X)`` with ``γ``."""
        if self.gamma is not None:
            gate = 1 + self.gamma.view(-1, *([1] * self.spatial_dims)) * (gate - 1)
        return x * gate.to(x.dtype)

    def _require(self, attribute: str, what: str) -> None:
        if not hasattr(self, attribute):
            raise ValueError(f"DSM mode {self.mode!r} has no {what} branch")


def _check_options(mode, rd_ratio, rd_channels, rd_divisor) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown DSM mode {mode!r}; choose one of {list(MODES)}")
    if isinstance(rd_ratio, bool) or not isinstance(rd_ratio, (int, float)):
        raise ValueError(f"rd_ratio must be a number in (0, 1] (e.g. 1/16), got {rd_ratio!r}")
    if not (0 < rd_ratio <= 1) or math.isnan(rd_ratio):
        raise ValueError(
            f"rd_ratio must be in (0, 1] as a fraction (the paper's ratio 16 is rd_ratio=1/16), "
            f"got {rd_ratio!r}"
        )
    if rd_channels is not None and (
        isinstance(rd_channels, bool) or not isinstance(rd_channels, int) or rd_channels < 1
    ):
        raise ValueError(f"rd_channels must be a positive int or None, got {rd_channels!r}")
    if isinstance(rd_divisor, bool) or not isinstance(rd_divisor, int) or rd_divisor < 1:
        raise ValueError(f"rd_divisor must be a positive int, got {rd_divisor!r}")


def _reduced_width(channels: int, mode: str, rd_ratio, rd_channels, rd_divisor) -> int:
    if rd_channels is None:
        return max(2, reduced_channels(channels, rd_ratio, None, rd_divisor))
    if rd_channels < 2 and mode in _USES_SPATIAL:
        raise ValueError(
            f"rd_channels must be at least 2 in DSM mode {mode!r}: the spatial map's softmax over "
            f"{rd_channels!r} query channel is constant; got rd_channels={rd_channels!r}"
        )
    return rd_channels


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis in at least float32: N can be ~10^6 positions."""
    return torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def _softmax_pool(temperature: torch.Tensor, spatial: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``Σ_n softmax_N(k_c S)_n V_cn`` (B, C) without a separate softmax map.

    The shift ``m_c = max_n k_c S_n`` is ``k_c max S`` or ``k_c min S`` by the sign of
    ``k_c``; the (B, C, N) logits are written once (a fused multiply-add), exponentiated in
    place and contracted with ``V``; their sum is the softmax's denominator. In at least
    float32, as :func:`_softmax`.
    """
    dtype = torch.promote_types(values.dtype, torch.float32)
    k, s = temperature.to(dtype), spatial.to(dtype)
    shift = torch.maximum(k * s.amax(-1, keepdim=True), k * s.amin(-1, keepdim=True))  # (B, C)
    weights = torch.exp_(torch.addcmul(-shift[:, :, None], k[:, :, None], s[:, None, :]))  # (B, C, N)
    numerator = torch.einsum("bcn,bcn->bc", weights, values.to(dtype))
    return numerator / weights.sum(-1)


def _as_linear(conv: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """Apply a 1x1 conv to a pooled (B, C_in) vector as the linear map it is."""
    return F.linear(pooled, conv.weight.flatten(1), conv.bias)
