"""Small helpers shared by the block families: dimension-generic layers, activation
lookup and channel rounding. Kept here so each family module stays about its paper."""

from __future__ import annotations

from typing import Callable, Union

import torch
from torch import nn

LayerSpec = Union[str, type[nn.Module], Callable[[], nn.Module], None]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": nn.Hardsigmoid,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}


def create_act(layer: LayerSpec, default: str = "relu") -> nn.Module:
    """Instantiate an activation from a name ("relu", "sigmoid", ...), a class, or None.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if layer is None:
        layer = default
    if isinstance(layer, str):
        key = layer.lower()
        if key not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {layer!r}; choose one of {sorted(_ACTIVATIONS)}")
        return _ACTIVATIONS[key]()
    if isinstance(layer, nn.Module):
        return layer
    if callable(layer):
        return layer()
    raise ValueError(f"activation must be a name, a class or None, got {layer!r}")


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def max_pool_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to a multiple of ``divisor`` without dropping below ``round_limit``
    of it; the channel rounding that SE-style reductions use (timm's convention)."""
    min_value = min_value or divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:
        new_value += divisor
    return new_value


def reduced_channels(channels: int, rd_ratio: float, rd_channels: int | None, rd_divisor: int) -> int:
    """Channels of a reduction bottleneck: ``rd_channels`` if given, else
    ``channels * rd_ratio`` rounded by :func:`make_divisible`.

    Raises:
        ValueError: if ``rd_ratio`` is not in (0, 1] or ``rd_channels`` is not positive.
    """
    if rd_channels is not None:
        if rd_channels < 1:
            raise ValueError(f"rd_channels must be positive, got {rd_channels!r}")
        return int(rd_channels)
    if not 0 < rd_ratio <= 1:
        raise ValueError(f"rd_ratio must be in (0, 1] (e.g. 1/16), got {rd_ratio!r}")
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)


def spatial_dims_of(x: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of a (B, C, *spatial) tensor: ``range(2, x.ndim)``."""
    return tuple(range(2, x.ndim))


def check_input(x: torch.Tensor, channels: int, spatial_dims: int, block: str) -> None:
    """Raise ``ValueError`` if ``x`` is not (B, channels, *spatial) with ``spatial_dims`` axes."""
    if x.ndim != spatial_dims + 2 or x.shape[1] != channels:
        expected = "(B, C, " + ", ".join("DHW"[3 - spatial_dims :]) + ")"
        raise ValueError(
            f"{block} expects a {expected} tensor with C={channels}, got shape {tuple(x.shape)}"
        )
