"""Real-pixel datasets for the image trainer: :mod:`medattn.images.samples` (scikit-image's
textures, no download), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from medattn.images import samples
from medattn.images.training import ImageTrainConfig, ImageTrainer


@pytest.fixture(scope="session")
def texture_folder(tmp_path_factory) -> Path:
    """3-class ImageFolder, 8-bit grayscale, train/ (32 per class), val/ (12), test/ (8)."""
    return samples.make_textures(tmp_path_factory.mktemp("textures"))


@pytest.fixture(scope="session")
def multilabel_data(tmp_path_factory) -> Path:
    """Two-texture mosaics, 16-bit PNGs, train.csv (120), val.csv (48), test.csv (16)."""
    return samples.make_multilabel(tmp_path_factory.mktemp("multilabel"))


@pytest.fixture(scope="session")
def voc_folder(tmp_path_factory) -> Path:
    """VOC-style folder, 48x48 RGB JPEGs, palette masks with 255 borders, train (48) / val (16)."""
    return samples.make_segmentation(tmp_path_factory.mktemp("voc"))


def _train(tmp_path_factory, name, **kwargs):
    out = tmp_path_factory.mktemp(name) / "run"
    summary = ImageTrainer(ImageTrainConfig(out=str(out), device="cpu", progress=False, **kwargs)).run()
    return out, summary


@pytest.fixture(scope="session")
def classification_run(tmp_path_factory, texture_folder):
    """Stock ResNet-20 trained 8 epochs on the textures: (run folder, summary)."""
    return _train(tmp_path_factory, "cls", task="classification", data=str(texture_folder), preset="resnet20",
                  epochs=8, batch_size=16, lr=0.05)


@pytest.fixture(scope="session")
def segmentation_run(tmp_path_factory, voc_folder):
    """Stock ResNet-20 with an FCN head trained 12 epochs on the VOC sample: (run folder, summary)."""
    return _train(tmp_path_factory, "seg", task="segmentation", data=str(voc_folder), preset="resnet20", epochs=12,
                  batch_size=8, lr=0.05, image_size=48)
