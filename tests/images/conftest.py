"""Real-pixel datasets for the image trainer, built from scikit-image's textures (no download).

- ``texture_folder``: 3-class ImageFolder (brick, grass, gravel) of random 32x32 crops,
  8-bit grayscale PNGs, with ``train/`` and ``val/`` (the layout's split) and ``test/``;
- ``multilabel_data``: 32x32 two-texture mosaics (left half, right half), 16-bit PNGs, a
  ``train.csv`` / ``val.csv`` / ``test.csv`` of ``path`` + one 0/1 column per texture;
- ``voc_folder``: a VOC-style segmentation folder: gravel background with a brick and a
  grass rectangle (classes 1 and 2), JPEG images, palette-PNG masks with a 255 border
  around each object, ``ImageSets/Segmentation/{train,val}.txt``.

Crops of the three textures come from disjoint rows (train: top 60 %, val and test: the
rest), so validation pixels are never seen in training.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

TEXTURES = ("brick", "grass", "gravel")


def _textures() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)() for name in TEXTURES}


def _crop(texture: np.ndarray, rng, size: int, part: str) -> np.ndarray:
    split = int(texture.shape[0] * 0.6)
    low, high = (0, split - size) if part == "train" else (split, texture.shape[0] - size)
    y = int(rng.integers(low, high))
    x = int(rng.integers(0, texture.shape[1] - size))
    return texture[y:y + size, x:x + size]


def _save_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="session")
def texture_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("textures")
    rng = np.random.default_rng(0)
    textures = _textures()
    for part, count in (("train", 32), ("val", 12), ("test", 8)):
        for name, texture in textures.items():
            for index in range(count):
                _save_png(_crop(texture, rng, 32, part), root / part / name / f"{name}_{index:03d}.png")
    return root


@pytest.fixture(scope="session")
def multilabel_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multilabel")
    rng = np.random.default_rng(1)
    textures = _textures()
    for part, count in (("train", 120), ("val", 48), ("test", 16)):
        rows = []
        for index in range(count):
            left, right = rng.choice(len(TEXTURES), size=2)
            image = np.concatenate([_crop(textures[TEXTURES[left]], rng, 32, part)[:, :16],
                                    _crop(textures[TEXTURES[right]], rng, 32, part)[:, 16:]], axis=1)
            relative = f"images/{part}_{index:03d}.png"
            _save_png(image.astype(np.uint16) * 257, root / relative)  # 16-bit grayscale
            rows.append([relative] + [int(i in (left, right)) for i in range(len(TEXTURES))])
        with open(root / f"{part}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", *TEXTURES])
            writer.writerows(rows)
    return root


def voc_sample(rng, textures, part: str, size: int = 48):
    """One image and its mask: gravel, with a brick (1) and a grass (2) rectangle."""
    image = _crop(textures["gravel"], rng, size, part).copy()
    mask = np.zeros((size, size), np.uint8)
    for label, name in ((1, "brick"), (2, "grass")):
        h, w = (int(v) for v in rng.integers(14, 26, 2))
        y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        image[y:y + h, x:x + w] = _crop(textures[name], rng, size, part)[:h, :w]
        mask[y:y + h, x:x + w] = label
    from scipy import ndimage

    edges = ndimage.morphological_gradient(mask, size=3) > 0  # VOC's 255 border around objects
    mask[edges] = 255
    return image, mask


@pytest.fixture(scope="session")
def voc_folder(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("voc")
    rng = np.random.default_rng(2)
    textures = _textures()
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    for part, count in (("train", 48), ("val", 16)):
        stems = []
        for index in range(count):
            image, mask = voc_sample(rng, textures, part)
            stem = f"{part}_{index:03d}"
            Image.fromarray(np.stack([image] * 3, axis=-1)).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
            palette_mask = Image.fromarray(mask, mode="P")
            palette_mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
            palette_mask.save(root / "SegmentationClass" / f"{stem}.png")
            stems.append(stem)
        (root / "ImageSets" / "Segmentation" / f"{part}.txt").write_text("\n".join(stems) + "\n")
    return root
