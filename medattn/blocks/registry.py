"""The block registry: names to classes, with argument checking.

Block families register their classes with :func:`register_block`; users build them with
:func:`create`. A block class must take ``channels`` as its first argument and accept
``spatial_dims`` (2 or 3) as a keyword, and its output must have the input's shape.
"""

from __future__ import annotations

import inspect
from typing import Callable, TypeVar

from torch import nn

_BLOCKS: dict[str, type[nn.Module]] = {}

T = TypeVar("T", bound=type[nn.Module])


def register_block(name: str) -> Callable[[T], T]:
    """Class decorator that registers a block under ``name`` (lower case)."""

    def decorator(cls: T) -> T:
        key = name.lower()
        if key in _BLOCKS and _BLOCKS[key] is not cls:
            raise ValueError(f"block name {key!r} is already registered to {_BLOCKS[key].__name__}")
        _BLOCKS[key] = cls
        return cls

    return decorator


def available() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_BLOCKS)


def get_block_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    if not isinstance(name, str) or name.lower() not in _BLOCKS:
        raise ValueError(f"unknown attention block {name!r}; choose one of {available()}")
    return _BLOCKS[name.lower()]


def create(name: str, channels: int, spatial_dims: int = 2, **kwargs) -> nn.Module:
    """Build the block registered under ``name``.

    Args:
        name: a name from :func:`available`, e.g. "dsm", "sna", "se".
        channels: number of input (and output) channels.
        spatial_dims: 2 for (B, C, H, W) inputs, 3 for (B, C, D, H, W).
        **kwargs: options of that block (see its docstring), e.g. ``rd_ratio=1/16``.

    Returns:
        The block, whose output has the shape of its input.

    Raises:
        ValueError: for an unknown name, an unknown keyword (listing the valid ones),
            or a bad value (raised by the block itself).
    """
    cls = get_block_class(name)
    check_channels(channels)
    check_spatial_dims(spatial_dims)
    valid = keyword_names(cls)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(
            f"unknown argument(s) {unknown} for block {name!r}; valid arguments are {sorted(valid)}"
        )
    return cls(channels, spatial_dims=spatial_dims, **kwargs)


def keyword_names(cls: type) -> set[str]:
    """The keyword options of a block class (everything but ``channels`` and ``spatial_dims``)."""
    params = inspect.signature(cls.__init__).parameters
    return {
        p.name
        for p in params.values()
        if p.name not in ("self", "channels", "spatial_dims")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def check_channels(channels) -> None:
    """Raise ``ValueError`` unless ``channels`` is a positive int."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive int, got {channels!r}")


def check_spatial_dims(spatial_dims) -> None:
    """Raise ``ValueError`` unless ``spatial_dims`` is 2 or 3."""
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
