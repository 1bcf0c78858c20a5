"""Tiny inputs shared by the reliability tests: a phantom dataset and an untrained MONAI checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

SHAPE = (16, 32, 32)  # (z, y, x); 32 x 32 x 16 in RAS order


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    from medattn.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("raw"), n_cases=3, seed=0, shape=SHAPE)


@pytest.fixture(scope="session")
def monai_checkpoint(tmp_path_factory) -> Path:
    """A tiny untrained DynUNet checkpoint in medattn's MONAI format."""
    from medattn.networks import create, save_checkpoint
    from medattn.networks.transforms import TransformConfig

    path = tmp_path_factory.mktemp("model") / "checkpoint_best.pt"
    network = create("dynunet", 3, 1, 4, filters=[4, 8, 16, 32], patch_size=[32, 32, 16], spacing=[0.87, 0.87, 2.68])
    save_checkpoint(path, network, TransformConfig(spacing=[0.87, 0.87, 2.68], intensity="ct", roi=[32, 32, 16]),
                    labels={0: "background", 1: "a", 2: "b", 3: "c"}, channel_names=["CT"], epoch=1)
    return path
