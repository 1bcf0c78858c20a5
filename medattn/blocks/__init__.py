"""Attention blocks, one module per family, built through a small registry.

Per-feature-map blocks (output shape = input shape, one class for 2D and 3D)::

    >>> from medattn import blocks
    >>> blocks.available()
    ['cbam', 'dsm', 'eca', 'gc', 'se', 'sna']
    >>> block = blocks.create("dsm", 64, spatial_dims=3, rd_ratio=1/2)

Families:

- :mod:`medattn.blocks.dsm`: decoupled 3D self-attention (DSNet).
- :mod:`medattn.blocks.sna`: spectral norm attention, parameter-free.
- :mod:`medattn.blocks.classic`: the baselines SE, ECA, CBAM and GC (global context).
- :mod:`medattn.blocks.dia`: dense-and-implicit attention. DIA shares one unit across the
  blocks of a stage, so it is not a per-feature-map block; its stage-level API
  (:class:`~medattn.blocks.dia.DIAUnit`, :class:`~medattn.blocks.dia.DIAStage`,
  :class:`~medattn.blocks.dia.SharedAttentionUnit`) is documented in that module.
"""

# Importing the family modules registers their blocks (explicit, no folder scan).
from medattn.blocks import classic, dia, dsm, sna  # noqa: F401
from medattn.blocks.registry import available, create, get_block_class, register_block

__all__ = ["available", "create", "get_block_class", "register_block"]
