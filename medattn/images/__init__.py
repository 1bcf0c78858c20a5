"""ResNet backbones for natural-image tasks, with the papers' block placements as presets.

    >>> from medattn import images
    >>> images.presets()[:3]  # doctest: +SKIP
    ['dia_light_resnet164', 'dia_resnet164', 'dsnet50_a']
    >>> net = images.create("dsnet50_a", num_classes=1000)  # doctest: +SKIP
    >>> net = images.create("resnet20", attention="sna@before_add", num_classes=10)  # doctest: +SKIP

Modules:

- :mod:`medattn.images.resnets`: torchvision's ResNets, CIFAR-style ResNets built from
  torchvision's blocks, and their placement adapter.
- :mod:`medattn.images.named_presets`: the named presets, :func:`create`, :func:`presets`
  (the module is not called ``presets`` so that it never shadows the function).

Attributes are imported lazily so that ``medattn --help`` does not load torch.
"""

from __future__ import annotations

from medattn._lazy import lazy_exports

_LAZY = {
    "create": "medattn.images.named_presets",
    "presets": "medattn.images.named_presets",
    "preset": "medattn.images.named_presets",
    "backbones": "medattn.images.resnets",
    "ResNetAdapter": "medattn.images.resnets",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
