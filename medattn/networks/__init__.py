"""MONAI networks with attention blocks in the encoder, their training path and checkpoints.

    >>> from medattn import networks
    >>> net = networks.create("dynunet", 3, 1, 3, attention="dsm", patch_size=(40, 56, 40))  # doctest: +SKIP
    >>> net, config = networks.load_checkpoint("runs/hippo/checkpoint_best.pt")  # doctest: +SKIP

Modules:

- :mod:`medattn.networks.builders`: :func:`create`, the network registry, encoder stages.
- :mod:`medattn.networks.data`: dataset discovery (nnU-Net raw and MSD layouts).
- :mod:`medattn.networks.transforms`: the MONAI transform chains (spacing, intensity, crops).
- :mod:`medattn.networks.training`: :class:`Trainer`, checkpoints, :func:`load_checkpoint`.
- :mod:`medattn.networks.inference`: sliding-window prediction of a folder (the bundle's).
- :mod:`medattn.networks.cli`: ``medattn train monai``.

Attributes are imported lazily so that ``medattn --help`` does not load torch or MONAI.
"""

from __future__ import annotations

from medattn._lazy import lazy_exports

_LAZY = {
    "create": "medattn.networks.builders",
    "available": "medattn.networks.builders",
    "attention_choices": "medattn.networks.builders",
    "encoder_stages": "medattn.networks.builders",
    "dynunet_layout": "medattn.networks.builders",
    "legacy_placement": "medattn.networks.builders",
    "load_checkpoint": "medattn.networks.training",
    "save_checkpoint": "medattn.networks.training",
    "Trainer": "medattn.networks.training",
    "TrainConfig": "medattn.networks.training",
    "Predictor": "medattn.networks.inference",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
