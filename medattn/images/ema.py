"""Model EMA that is correct for tied parameters (DIA's shared units).

Built on ``torch.optim.swa_utils.AveragedModel``: it averages ``module.parameters()``,
which lists a tensor shared under several names once, so each step is exactly
``ema = decay * ema + (1 - decay) * weight``. timm's ``ModelEmaV3`` with its default
``exclude_buffers=False`` walks ``state_dict().values()`` instead and applies the update
once per name a tied tensor has (decay 0.5 then moves it by 0.75, not 0.5).

Buffers: BatchNorm running means and variances are averaged with the same decay;
every other buffer (counters such as ``num_batches_tracked``, state vectors) is copied.
The first update copies the model (AveragedModel's convention).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ModelEma"]

_AVERAGED_BUFFERS = ("running_mean", "running_var")


class ModelEma(nn.Module):
    """An exponential moving average of a model.

    Args:
        model: the model being trained (not wrapped in DDP or compiled).
        decay: weight of the old average, in [0, 1).

    Attributes:
        module: the averaged copy; evaluate with ``ema.module``.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        self.averaged.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step from ``model``'s current weights and buffers."""
        first = int(self.averaged.n_averaged) == 0
        self.averaged.update_parameters(model)
        for (name, mine), theirs in zip(self.module.named_buffers(), model.buffers()):
            if not first and name.rsplit(".", 1)[-1] in _AVERAGED_BUFFERS and mine.is_floating_point():
                mine.lerp_(theirs, 1 - self.decay)
            else:
                mine.copy_(theirs)
