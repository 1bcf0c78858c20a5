"""Real-pixel datasets for the image trainer: :mod:`medattn.images.samples` (scikit-image's
textures, no download), built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from medattn.images import samples


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
