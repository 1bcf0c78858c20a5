"""Dense-and-Implicit Attention (DIA): one attention unit shared by all blocks of a stage.

Huang, Liang, Liang, He, Lin, "Layer-wise shared attention network on dynamical system
perspective" (DIANet), /work/shared/papers/dia-dense-implicit-attention.md.

DIA is not a per-feature-map block, so nothing here is in the :func:`medattn.blocks.create`
registry. A stage of ``T`` blocks ``f_0 .. f_{T-1}`` (all with the same output channels)
shares **one** unit ``A`` (Eq. 2, Table 2)::

    residual stage:  x_{t+1} = shortcut_t(x_t) + f_t(x_t) ⊗ A_t
    plain stage:     x_{t+1} = f_t(x_t) ⊗ A_t

The stage-level API:

- **Unit protocol.** Every DIA unit is an ``nn.Module`` whose ``forward(x, state=None)``
  returns ``(y, new_state)``: ``x`` is a (B, C, *spatial) feature map, ``y = x ⊗ attention``
  has its shape, and ``state=None`` means "first block of the stage". The state is passed
  explicitly from block to block; nothing is kept on the module between calls.
- :class:`DIAUnit`: GAP + the modified LSTM (:class:`DIALSTMCell`, Sec. 4.2, Eq. 4);
  its state is the pair ``(h, c)`` of (B, C) tensors.
- :class:`SharedAttentionUnit`: any channel-attention block (e.g. "se", "eca" from
  :mod:`medattn.blocks.classic`) shared across ``num_blocks`` blocks (Sec. 4.1, Table 3),
  with normalisation layers kept per block (Sec. 7.3.2); its state is the block index.
- :class:`DIAStage`: wires a unit into a sequence of residual or plain blocks.
- :func:`create_unit` / :func:`unit_kinds`: build a unit by name ("lstm", "light", "se", "eca").

Example::

    >>> import torch
    >>> from torch import nn
    >>> from medattn.blocks.dia import DIAStage, create_unit
    >>> blocks = [nn.Sequential(nn.Conv3d(32, 32, 3, padding=1), nn.InstanceNorm3d(32),
    ...                         nn.LeakyReLU()) for _ in range(3)]
    >>> stage = DIAStage(blocks, create_unit("lstm", 32, spatial_dims=3), residual=False)
    >>> stage(torch.randn(2, 32, 8, 8, 8)).shape
    torch.Size([2, 32, 8, 8, 8])

Parameter counts (Sec. 7.2), with ``N = channels`` and ``R = rd_channels`` (``N/r``):

- DIA-LSTM (:class:`DIALSTMCell`, ``light=False``): ``10·N·R + 2·R + 8·N``, i.e.
  ``10N²/r`` weights (the paper's count) plus ``2N/r + 8N`` biases. For ResNet164 on
  CIFAR-100 (stages of 64, 128, 256 channels) this gives +0.22M at r=4, +0.86M at r=1 and
  +0.11M at r=8, the increments of the paper's Table 10.
- DIA-LSTM (Light) (``light=True``): ``5·N·R + R + 12·N``.

Paper anchors (Sec. 7.3.1, ResNet164): inference with DIA-LSTM is about 12% slower than the
plain network; DIA-LSTM (Light) brings that overhead down to about 1%.

Decisions (choices the paper leaves open):

- Reduction width ``R = round(N * rd_ratio)`` with ``rd_divisor=1`` by default (not timm's
  8), so that ``R = N/r`` exactly whenever r divides N and the count above is the paper's
  ``10N²/r``; the official code uses ``N // 4``.
- The four gate transforms of each path (Fig. 5, middle) are stored as one
  ``Linear(R, 4N)`` (same parameters as four ``Linear(R, N)``), gate order i, f, g, o.
- Every linear transform has a bias (the paper omits biases when counting).
- Light variant (Fig. 5, right; Eq. 5): the whole hidden-state path (reduction, ReLU and four
  gate transforms) is replaced by four element-wise "IE" transforms ``W ⊗ h + b``, one per
  gate; the input path keeps its cross-channel reduction. Why the hidden path: ``h_{t-1}`` is
  the previous attention map, already aligned channel by channel with the gates it feeds,
  whereas ``GAP(a_t)`` carries the new cross-channel information an SE-style excitation
  needs. The paper does not say which transforms it replaced; its Table 4 reports about
  +0.02M for ResNet164 (Light), which this choice does not reproduce (+0.11M at r=4).
- IE weights start at one and biases at zero (identity transform, like a norm's affine);
  linear layers keep PyTorch's default initialisation, as in the official code.
- ``h_0 = c_0 = 0`` (Sec. 4.2.1) are created on the input's device and dtype; the hidden
  path is still evaluated at t=0 (its bias terms contribute), as in the official code.
- Only one LSTM cell is stacked (Table 12: three stacked cells do not help with sigmoid).
- The output activation (``gate_layer``, default sigmoid, Sec. 4.2.2(2)) is configurable
  for the Table 12 ablation ("tanh" restores the standard LSTM).
- :class:`SharedAttentionUnit` keeps per block every ``torch.nn`` normalisation layer
  (BatchNorm, InstanceNorm, GroupNorm, LayerNorm, LocalResponseNorm, RMSNorm) and any
  layer whose class name ends in "Norm" or "Norm1d/2d/3d" (timm's and medattn's own
  channel layer norms); everything else is shared. Shared tensors appear once in its
  state dict, under ``blocks.0``.
- :class:`DIAStage` applies ``post_act`` after the addition (the ResNet's final ReLU in the
  official code); it defaults to none.
"""

from __future__ import annotations

import copy
import re
from collections import OrderedDict
from typing import Callable, Sequence, Union

import torch
from torch import nn

from medattn.blocks.layers import LayerSpec, check_input, create_act, reduced_channels
from medattn.blocks.registry import available, check_channels, check_spatial_dims, create

__all__ = [
    "DIALSTMCell",
    "DIAStage",
    "DIAUnit",
    "ElementwiseAffine",
    "SharedAttentionUnit",
    "create_unit",
    "unit_kinds",
]

LSTMState = tuple[torch.Tensor, torch.Tensor]
BlockFactory = Union[str, Callable[..., nn.Module]]

# Layers whose statistics describe one position in the network; Sec. 7.3.2 keeps them per block.
PER_BLOCK_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

_NUM_GATES = 4  # i, f, g, o

#: Options of the DIA-LSTM units ("lstm", "light") accepted by :func:`create_unit`.
LSTM_UNIT_OPTIONS = ("rd_ratio", "rd_channels", "rd_divisor", "act_layer", "gate_layer", "impl", "identity_init")
#: ``impl`` of the DIA-LSTM cell: "fast" (default) or "reference" (the equations as written, the test oracle).
IMPLS = ("fast", "reference")


class ElementwiseAffine(nn.Module):
    """The "IE" transform of Eq. 5, ``W_IE ⊗ x + b_IE``, ``num_transforms`` times at once.

    Args:
        features: length ``n`` of the input vector.
        num_transforms: how many independent transforms to apply; their outputs are
            concatenated along the feature axis.

    Shapes:
        input (B, n) -> output (B, num_transforms * n).
    """

    def __init__(self, features: int, num_transforms: int = 1):
        super().__init__()
        check_channels(features)
        if isinstance(num_transforms, bool) or not isinstance(num_transforms, int) or num_transforms < 1:
            raise ValueError(f"num_transforms must be a positive int, got {num_transforms!r}")
        self.weight = nn.Parameter(torch.ones(num_transforms, features))
        self.bias = nn.Parameter(torch.zeros(num_transforms, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(1) * self.weight + self.bias).flatten(1)


def _reduced_gate_path(channels: int, rd_channels: int, act_layer: LayerSpec) -> nn.Sequential:
    """Fig. 5 (middle): Linear N -> R, activation, then the four gate transforms R -> N."""
    return nn.Sequential(
        OrderedDict(
            reduce=nn.Linear(channels, rd_channels),
            act=create_act(act_layer, default="relu"),
            gates=nn.Linear(rd_channels, _NUM_GATES * channels),
        )
    )


class DIALSTMCell(nn.Module):
    """The modified LSTM cell of DIA-LSTM (Sec. 4.2.2, Fig. 5 middle and right).

    For the input ``y_t`` and the hidden state ``h_{t-1}`` (both length N)::

        z   = P_y(y_t) + P_h(h_{t-1})              P = Linear(N->R) -> ReLU -> Linear(R->4N)
        i, f, g, o = σ(z_i), σ(z_f), tanh(z_g), σ(z_o)
        c_t = f ⊙ c_{t-1} + i ⊙ g
        h_t = o ⊙ σ(c_t)                            (sigmoid instead of tanh, Sec. 4.2.2(2))

    With ``light=True``, ``P_h`` is four element-wise IE transforms (Eq. 5) instead.

    Parameter count (N = channels, R = rd_channels):
        ``light=False``: ``10·N·R + 2·R + 8·N`` (``10N²/r`` weights, Sec. 7.2, plus biases).
        ``light=True``: ``5·N·R + R + 12·N`` (input path ``5N²/r + N/r + 4N``, IE ``8N``).

    Args:
        channels: N, the length of ``y_t``, ``h_t`` and ``c_t``.
        rd_ratio: reduction fraction 1/r (the paper's r=4 is ``1/4``), in (0, 1].
        rd_channels: R directly; overrides ``rd_ratio``.
        rd_divisor: R is rounded to a multiple of this (1 keeps R = N/r exactly).
        light: use the light-weight cell (IE on the hidden-state path).
        act_layer: activation after each reduction (paper: ReLU).
        gate_layer: output activation applied to ``c_t`` (paper: sigmoid; "tanh" is the
            standard LSTM, Table 12).
        impl: "fast" (default; the same step with fewer kernels, equal to the reference to
            float32 rounding, tested) or "reference" (the equations as written).

    Shapes:
        ``y``: (B, N); ``state``: ``(h, c)`` each (B, N), or None for zeros.
        Returns ``(h_t, c_t)``, each (B, N).

    Raises:
        ValueError: for a non-positive ``channels``/``rd_channels``/``rd_divisor``, an
            ``rd_ratio`` outside (0, 1], an unknown activation, or badly shaped inputs.
    """

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 4,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        light: bool = False,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        impl: str = "fast",
    ):
        super().__init__()
        check_channels(channels)
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; choose one of {list(IMPLS)}")
        if isinstance(rd_divisor, bool) or not isinstance(rd_divisor, int) or rd_divisor < 1:
            raise ValueError(f"rd_divisor must be a positive int, got {rd_divisor!r}")
        if not isinstance(light, bool):
            raise ValueError(f"light must be True or False, got {light!r}")
        self.channels = channels
        self.rd_channels = reduced_channels(channels, rd_ratio, rd_channels, rd_divisor)
        self.light = light
        self.input_path = _reduced_gate_path(channels, self.rd_channels, act_layer)
        if light:
            self.hidden_path: nn.Module = ElementwiseAffine(channels, _NUM_GATES)
        else:
            self.hidden_path = _reduced_gate_path(channels, self.rd_channels, act_layer)
        self.output_act = create_act(gate_layer, default="sigmoid")
        self.impl = impl

    def forward(self, y: torch.Tensor, state: LSTMState | None = None) -> LSTMState:
        """One step of Eq. 4: ``(h_t, c_t) = LSTM(y_t, h_{t-1}, c_{t-1})``."""
        if y.ndim != 2 or y.shape[1] != self.channels:
            raise ValueError(
                f"DIALSTMCell expects a (B, {self.channels}) input, got shape {tuple(y.shape)}"
            )
        if self.impl == "fast":
            return self._fast_step(y, None if state is None else _checked_state(state, y.shape))
        h_prev, c_prev = self._initial_state(y) if state is None else _checked_state(state, y.shape)
        gates = self.input_path(y) + self.hidden_path(h_prev)
        i_gate, f_gate, g_gate, o_gate = gates.chunk(_NUM_GATES, dim=1)
        c_t = torch.sigmoid(f_gate) * c_prev + torch.sigmoid(i_gate) * torch.tanh(g_gate)
        h_t = torch.sigmoid(o_gate) * self.output_act(c_t)
        return h_t, c_t

    def _fast_step(self, y: torch.Tensor, state: LSTMState | None) -> LSTMState:
        """The reference step with fewer kernels (the cell runs once per block, on (B, N)
        vectors, so its cost is per-kernel overhead): one sigmoid over the i, f, o gates
        together, ``c_t = f c + i g`` as one fused multiply-add, and at the stage's first
        block (``h = c = 0``) the hidden path evaluated on a single zero row and ``f c_0``
        left out."""
        if state is None:
            # one zero row, broadcast over the batch; every weight still gets its (zero)
            # gradient, as in the reference, so optimizers treat the parameters alike
            gates = self.input_path(y) + self.hidden_path(y.new_zeros(1, self.channels))
        else:
            gates = self.input_path(y) + self.hidden_path(state[0])
        sigmoid = torch.sigmoid(gates)
        i_gate, f_gate, _, o_gate = sigmoid.chunk(_NUM_GATES, dim=1)
        g_gate = torch.tanh(gates[:, 2 * self.channels:3 * self.channels])
        c_t = i_gate * g_gate if state is None else torch.addcmul(i_gate * g_gate, f_gate, state[1])
        return o_gate * self.output_act(c_t), c_t

    @staticmethod
    def _initial_state(y: torch.Tensor) -> LSTMState:
        """``h_0 = c_0 = 0`` on ``y``'s device and dtype (Sec. 4.2.1)."""
        return torch.zeros_like(y), torch.zeros_like(y)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, rd_channels={self.rd_channels}, light={self.light}"


def _checked_state(state, batch_shape: torch.Size) -> LSTMState:
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(f"DIA-LSTM state must be a pair (h, c) or None, got {type(state).__name__}")
    h, c = state
    if tuple(h.shape) != tuple(batch_shape) or tuple(c.shape) != tuple(batch_shape):
        raise ValueError(
            f"DIA-LSTM state (h, c) must both have shape {tuple(batch_shape)}, "
            f"got {tuple(h.shape)} and {tuple(c.shape)}"
        )
    return h, c


class DIAUnit(nn.Module):
    """DIA-LSTM unit (Sec. 4.2, Fig. 4): GAP, the shared :class:`DIALSTMCell`, recalibration.

    For the block output ``a_t`` (B, C, *spatial)::

        (h_t, c_t) = LSTM(GAP(a_t), h_{t-1}, c_{t-1})      (Eq. 4)
        y_t = a_t ⊗ h_t                                    (channel-wise)

    Args:
        channels: C, the channels of every block output in the stage.
        spatial_dims: 2 for (B, C, H, W), 3 for (B, C, D, H, W).
        rd_ratio: reduction fraction 1/r of the LSTM (paper default r=4).
        light: use DIA-LSTM (Light) (see :class:`DIALSTMCell`).
        **cell_kwargs: ``rd_channels``, ``rd_divisor``, ``act_layer``, ``gate_layer``,
            ``impl`` of :class:`DIALSTMCell`.
        identity_init: recalibrate by ``h' = 1 + γ ⊙ (h − 1)`` with ``γ`` (one per channel,
            shared by the stage like the cell) initialised to zero, so that the stage starts
            as the stock one; ``channels`` parameters. Off by default (the paper's unit, the
            same in every engine). ``medattn bench study`` (Task04, 3 seeds, 441 steps): the
            paper's unit loses 0.0045 mean Dice to stock (p = 3e-5), the identity start is
            equal (p = 0.74); short segmentation budgets should turn it on.

    Shapes:
        ``forward(x, state=None) -> (y, (h, c))`` with x, y (B, C, *spatial) and h, c (B, C);
        ``state=None`` starts the stage with zero h and c.

    Raises:
        ValueError: for bad arguments, a wrongly shaped input or state.
    """

    def __init__(
        self,
        channels: int,
        spatial_dims: int = 2,
        rd_ratio: float = 1 / 4,
        light: bool = False,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: LayerSpec = "relu",
        gate_layer: LayerSpec = "sigmoid",
        impl: str = "fast",
        identity_init: bool = False,
    ):
        super().__init__()
        check_channels(channels)
        check_spatial_dims(spatial_dims)
        if not isinstance(identity_init, bool):
            raise ValueError(f"identity_init must be True or False, got {identity_init!r}")
        self.channels = channels
        self.spatial_dims = spatial_dims
        if identity_init:
            self.gamma = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("gamma", None)
        self.cell = DIALSTMCell(
            channels,
            rd_ratio=rd_ratio,
            rd_channels=rd_channels,
            rd_divisor=rd_divisor,
            light=light,
            act_layer=act_layer,
            gate_layer=gate_layer,
            impl=impl,
        )

    def forward(self, x: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        check_input(x, self.channels, self.spatial_dims, type(self).__name__)
        pooled = x.mean(dim=tuple(range(2, x.ndim)))
        h_t, c_t = self.cell(pooled, state)
        # identity_init: h' = 1 + γ ⊙ (h − 1); the LSTM state stays h
        gate = h_t if self.gamma is None else 1 + self.gamma.to(h_t.dtype) * (h_t - 1)
        attention = gate.reshape(gate.shape + (1,) * (x.ndim - 2))
        return x * attention, (h_t, c_t)


# Normalisation layers outside torch.nn (timm's LayerNorm2d, medattn's ChannelLayerNorm,
# MONAI's norms) are recognised by a class name ending in "Norm", "Norm1d", "Norm2d", "Norm3d".
_NORM_CLASS_NAME = re.compile(r"Norm([123]d)?$")


def _is_per_block(module: nn.Module) -> bool:
    return isinstance(module, PER_BLOCK_LAYER_TYPES) or bool(_NORM_CLASS_NAME.search(type(module).__name__))


def _contains_per_block(module: nn.Module) -> bool:
    return any(_is_per_block(m) for m in module.modules())


def _tie_to(replica: nn.Module, shared: nn.Module) -> None:
    """Make ``replica`` (a deep copy of ``shared``) use ``shared``'s layers, except
    normalisation layers, which stay the replica's own.

    Whole sub-modules without any normalisation inside are shared as module objects (so
    ``.to()``/``.double()`` keep them tied); a module that holds a norm somewhere below it
    is walked into, and its own direct parameters and buffers are tied one by one.
    """
    for name, shared_param in shared.named_parameters(recurse=False):
        setattr(replica, name, shared_param)
    for name, shared_buffer in shared.named_buffers(recurse=False):
        persistent = name not in shared._non_persistent_buffers_set
        replica.register_buffer(name, shared_buffer, persistent=persistent)
    for name, shared_child in shared.named_children():
        if _is_per_block(shared_child):
            continue
        if _contains_per_block(shared_child):
            _tie_to(getattr(replica, name), shared_child)
        else:
            setattr(replica, name, shared_child)


class SharedAttentionUnit(nn.Module):
    """A DIA unit around any channel-attention block (Sec. 4.1, Fig. 3, Table 3).

    One attention block's parameters serve all ``num_blocks`` blocks of a stage; its
    normalisation layers (BatchNorm, InstanceNorm, GroupNorm, LayerNorm, ...) are *not*
    shared: block ``t`` uses its own copies (Sec. 7.3.2). ``self.blocks[t]`` is the
    attention as seen by block ``t``: a module whose non-normalisation layers are the same
    objects for every ``t``, so ``parameters()`` lists each shared weight once and its
    gradient accumulates over all blocks. ``state_dict()`` also holds each shared tensor
    once, under ``blocks.0``; ``blocks.t`` (t > 0) holds only block t's norm layers.

    Args:
        block_factory_or_name: a block name for :func:`medattn.blocks.create` (e.g. "se",
            "eca"), or a callable ``factory(channels, spatial_dims=..., **block_kwargs)``
            returning an ``nn.Module`` with ``y = x ⊗ attention(x)``, shape preserved.
        channels: C of the stage's block outputs.
        num_blocks: T, the number of blocks in the stage.
        spatial_dims: 2 or 3.
        **block_kwargs: options of the attention block (e.g. ``rd_ratio=1/16`` for "se").

    Shapes:
        ``forward(x, state=None) -> (y, t + 1)``: x, y (B, C, *spatial); ``state`` is the
        index ``t`` of the current block (None means 0).

    Raises:
        ValueError: for an unknown block name, a bad ``num_blocks``, a block index outside
            ``[0, num_blocks)``, or a block that changes the shape.
    """

    def __init__(
        self,
        block_factory_or_name: BlockFactory,
        channels: int,
        num_blocks: int,
        spatial_dims: int = 2,
        **block_kwargs,
    ):
        super().__init__()
        check_channels(channels)
        check_spatial_dims(spatial_dims)
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.num_blocks = num_blocks
        shared = _build_attention(block_factory_or_name, channels, spatial_dims, block_kwargs)
        replicas = [shared]
        for _ in range(num_blocks - 1):
            replica = copy.deepcopy(shared)
            _tie_to(replica, shared)
            replicas.append(replica)
        self.blocks = nn.ModuleList(replicas)
        self._shared_names = _shared_state_names(replicas)
        self.register_state_dict_post_hook(_drop_shared_duplicates)
        self.register_load_state_dict_pre_hook(_restore_shared_duplicates)

    def forward(self, x: torch.Tensor, state: int | None = None) -> tuple[torch.Tensor, int]:
        check_input(x, self.channels, self.spatial_dims, type(self).__name__)
        index = 0 if state is None else state
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.num_blocks:
            raise ValueError(
                f"SharedAttentionUnit state must be a block index in [0, {self.num_blocks}) or None, "
                f"got {state!r}"
            )
        y = self.blocks[index](x)
        if y.shape != x.shape:
            raise ValueError(
                f"the shared attention block must keep the shape {tuple(x.shape)}, got {tuple(y.shape)}"
            )
        return y, index + 1

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_blocks={self.num_blocks}"


def _drop_shared_duplicates(unit: SharedAttentionUnit, state_dict, prefix: str, local_metadata) -> None:
    """State-dict post-hook: keep each shared tensor once, under ``blocks.0``."""
    for t in range(1, unit.num_blocks):
        for name in unit._shared_names:
            state_dict.pop(f"{prefix}blocks.{t}.{name}", None)


def _restore_shared_duplicates(unit: SharedAttentionUnit, state_dict, prefix: str, *args) -> None:
    """Load pre-hook: feed the ``blocks.0`` entry of each shared tensor to every replica."""
    for name in unit._shared_names:
        source = state_dict.get(f"{prefix}blocks.0.{name}")
        if source is None:
            continue
        for t in range(1, unit.num_blocks):
            state_dict.setdefault(f"{prefix}blocks.{t}.{name}", source)


def _shared_state_names(replicas: Sequence[nn.Module]) -> tuple[str, ...]:
    """State-dict names (relative to a replica) whose tensor every replica shares."""
    if len(replicas) < 2:
        return ()
    first = replicas[0].state_dict(keep_vars=True)
    others = [replica.state_dict(keep_vars=True) for replica in replicas[1:]]
    return tuple(name for name, tensor in first.items() if all(other.get(name) is tensor for other in others))


def _build_attention(factory: BlockFactory, channels: int, spatial_dims: int, kwargs: dict) -> nn.Module:
    if isinstance(factory, str):
        return create(factory, channels, spatial_dims=spatial_dims, **kwargs)
    if isinstance(factory, nn.Module) or not callable(factory):
        raise ValueError(
            "block_factory_or_name must be a block name from medattn.blocks.available() "
            f"{available()} or a callable factory(channels, spatial_dims=..., **kwargs), got {factory!r}"
        )
    block = factory(channels, spatial_dims=spatial_dims, **kwargs)
    if not isinstance(block, nn.Module):
        raise ValueError(
            f"the attention factory {factory!r} returned {type(block).__name__}, not an nn.Module"
        )
    return block


class DIAStage(nn.Module):
    """A stage of blocks sharing one DIA unit (Eq. 2, Table 2, Fig. 4).

    With ``a_t = f_t(x_t)`` and ``(y_t, s_t) = unit(a_t, s_{t-1})`` (``s_{-1} = None``)::

        residual=True:   x_{t+1} = post_act_t(shortcut_t(x_t) + y_t)
        residual=False:  x_{t+1} = post_act_t(y_t)

    The plain form serves encoders without residual blocks (nnU-Net's default
    ``PlainConvUNet``), where ``f_t`` is a whole conv-norm-nonlinearity block.

    Args:
        blocks: the modules ``f_t`` (residual mappings when ``residual=True``); every block
            output must have the unit's channel count.
        unit: a DIA unit (:class:`DIAUnit`, :class:`SharedAttentionUnit`, or any module with
            ``forward(x, state=None) -> (y, new_state)``), shared by all blocks.
        residual: add the shortcut ``shortcut_t(x_t)``.
        shortcuts: per-block shortcut modules (e.g. a strided 1x1 conv for the first block);
            ``None`` entries, or ``shortcuts=None``, mean identity. Only with ``residual=True``.
        post_act: applied after each block's update: None (nothing), an activation name or
            class (one instance per block), or a sequence of one module per block.

    Shapes:
        (B, C_in, *spatial_in) -> (B, C, *spatial_out), as the blocks dictate.

    Raises:
        ValueError: for an empty ``blocks``, a non-module entry, ``shortcuts`` or
            ``post_act`` of the wrong length, shortcuts on a plain stage, or a
            :class:`SharedAttentionUnit` built for another number of blocks.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        unit: nn.Module,
        residual: bool = True,
        shortcuts: Sequence[nn.Module | None] | None = None,
        post_act: LayerSpec | Sequence[nn.Module] = None,
    ):
        super().__init__()
        blocks = list(blocks)
        if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
            raise ValueError(f"blocks must be a non-empty sequence of nn.Module, got {blocks!r}")
        if not isinstance(unit, nn.Module):
            raise ValueError(f"unit must be an nn.Module with forward(x, state), got {unit!r}")
        unit_blocks = getattr(unit, "num_blocks", None)
        if unit_blocks is not None and unit_blocks != len(blocks):
            raise ValueError(
                f"the unit was built for num_blocks={unit_blocks} but the stage has {len(blocks)} blocks"
            )
        if not isinstance(residual, bool):
            raise ValueError(f"residual must be True or False, got {residual!r}")
        if shortcuts is not None and not residual:
            raise ValueError("shortcuts were given for a plain stage (residual=False)")
        self.blocks = nn.ModuleList(blocks)
        self.unit = unit
        self.residual = residual
        self.shortcuts = nn.ModuleList(_per_block_modules(shortcuts, len(blocks), "shortcuts"))
        self.post_acts = nn.ModuleList(_post_acts(post_act, len(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = None
        for block, shortcut, post_act in zip(self.blocks, self.shortcuts, self.post_acts):
            attended, state = self.unit(block(x), state)
            x = post_act((shortcut(x) + attended) if self.residual else attended)
        return x


def _per_block_modules(modules, num_blocks: int, what: str) -> list[nn.Module]:
    if modules is None:
        return [nn.Identity() for _ in range(num_blocks)]
    modules = list(modules)
    if len(modules) != num_blocks:
        raise ValueError(f"{what} must have one entry per block ({num_blocks}), got {len(modules)}")
    for m in modules:
        if m is not None and not isinstance(m, nn.Module):
            raise ValueError(f"{what} entries must be nn.Module or None, got {m!r}")
    return [nn.Identity() if m is None else m for m in modules]


def _post_acts(post_act, num_blocks: int) -> list[nn.Module]:
    if post_act is None:
        return [nn.Identity() for _ in range(num_blocks)]
    if isinstance(post_act, (list, tuple, nn.ModuleList)):
        return _per_block_modules(post_act, num_blocks, "post_act")
    if isinstance(post_act, nn.Module):
        raise ValueError(
            "post_act must be a name, a class, or one module per block; "
            f"a single module instance {post_act!r} would be shared"
        )
    return [create_act(post_act) for _ in range(num_blocks)]


_UNIT_KINDS = ("lstm", "light", "se", "eca")


def unit_kinds() -> list[str]:
    """Names accepted by :func:`create_unit`: "lstm" (DIA-LSTM), "light" (DIA-LSTM
    (Light)), "se" and "eca" (classic blocks shared across a stage)."""
    return list(_UNIT_KINDS)


def create_unit(
    kind: str, channels: int, spatial_dims: int = 2, num_blocks: int | None = None, **kwargs
) -> nn.Module:
    """Build a DIA unit by name.

    Args:
        kind: one of :func:`unit_kinds`.
        channels: C of the stage's block outputs.
        spatial_dims: 2 or 3.
        num_blocks: number of blocks in the stage; required for "se" and "eca" (each block
            gets its own normalisation layers), ignored by the LSTM units, which serve any
            number of blocks.
        **kwargs: options of :class:`DIAUnit` (``rd_ratio``, ``rd_channels``, ``rd_divisor``,
            ``act_layer``, ``gate_layer``) or of the shared block (e.g. ``rd_ratio`` for "se").

    Returns:
        A module following the unit protocol ``forward(x, state=None) -> (y, new_state)``.

    Raises:
        ValueError: for an unknown kind or keyword (listing the valid ones), a missing
            ``num_blocks``, or a classic block that is not registered.
    """
    key = kind.lower() if isinstance(kind, str) else kind
    if key not in _UNIT_KINDS:
        raise ValueError(f"unknown DIA unit kind {kind!r}; choose one of {unit_kinds()}")
    if key in ("lstm", "light"):
        valid = set(LSTM_UNIT_OPTIONS)
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise ValueError(
                f"unknown argument(s) {unknown} for DIA unit {key!r}; valid arguments are {sorted(valid)}"
            )
        return DIAUnit(channels, spatial_dims=spatial_dims, light=key == "light", **kwargs)
    if num_blocks is None:
        raise ValueError(f"DIA unit {key!r} needs num_blocks (its normalisation layers are per block)")
    if key not in available():
        raise ValueError(f"attention block {key!r} is not registered; registered blocks are {available()}")
    return SharedAttentionUnit(key, channels, num_blocks, spatial_dims=spatial_dims, **kwargs)
