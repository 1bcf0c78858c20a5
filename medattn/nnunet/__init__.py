"""The nnU-Net v2 engine: networks built from nnU-Net's plans with attention inserted.

- :mod:`medattn.nnunet.network`: the placement adapter of nnU-Net's encoders,
  :func:`insert_attention`, :func:`build_network`, :func:`load_stock_weights`.
- :mod:`medattn.nnunet.trainer`: the trainer base class and the smoke schedule.
- ``medattn/nnunet/trainers/``: the trainer modules nnU-Net finds through
  ``nnUNet_extTrainer`` (see :func:`ext_trainer_env`).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "nnUNet_extTrainer"


def trainer_folder() -> Path:
    """The folder holding medattn's trainer modules."""
    return Path(__file__).resolve().parent / "trainers"


def ext_trainer_value(current: str | None = None) -> str:
    """The value ``nnUNet_extTrainer`` should have: medattn's folder first, then any
    folders already listed in ``current`` (default: the environment), without repeats."""
    current = os.environ.get(ENV_VAR, "") if current is None else current
    folder = str(trainer_folder())
    others = [p for p in current.split(os.pathsep) if p and p != folder]
    return os.pathsep.join([folder, *others])


def register_trainers() -> None:
    """Make medattn's trainers findable by nnU-Net in this process (and its children)."""
    os.environ[ENV_VAR] = ext_trainer_value()
