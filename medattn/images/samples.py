"""Small real-pixel datasets for ``medattn train image``, from scikit-image's textures (offline).

``python -m medattn.images.samples OUT`` writes three datasets under ``OUT``, one per task,
in the layouts the trainer reads; the tests, the README's commands and ``medattn bench
image`` use them:

- ``OUT/textures``: a 3-class ImageFolder (brick, grass, gravel) of random 32x32 crops,
  8-bit grayscale PNGs, with ``train/``, ``val/`` and ``test/``;
- ``OUT/multilabel``: 32x32 two-texture mosaics (left half, right half), 16-bit PNGs, with
  ``train.csv`` / ``val.csv`` / ``test.csv`` (``path`` + one 0/1 column per texture);
- ``OUT/voc``: a VOC-style segmentation folder: gravel with a brick and a grass rectangle
  (classes 1 and 2), RGB JPEG images, palette-PNG masks with a 255 border around each
  object (VOC's convention), ``ImageSets/Segmentation/{train,val}.txt``.

Crops for training come from the top 60 % of each texture's rows and the others from the
rest, so validation and test pixels are never seen in training. Deterministic per seed.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

__all__ = ["TEXTURES", "make_multilabel", "make_segmentation", "make_textures", "segmentation_sample"]

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


def _save(image, path: Path, **kwargs) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, **kwargs)


def make_textures(root, counts=(("train", 32), ("val", 12), ("test", 8)), seed: int = 0) -> Path:
    """The 3-class texture ImageFolder (counts per class and part)."""
    root, rng, textures = Path(root), np.random.default_rng(seed), _textures()
    for part, count in counts:
        for name, texture in textures.items():
            for index in range(count):
                _save(_crop(texture, rng, 32, part), root / part / name / f"{name}_{index:03d}.png")
    return root


def make_multilabel(root, counts=(("train", 120), ("val", 48), ("test", 16)), seed: int = 1) -> Path:
    """Two-texture mosaics as 16-bit PNGs, with one CSV per part."""
    root, rng, textures = Path(root), np.random.default_rng(seed), _textures()
    for part, count in counts:
        rows = []
        for index in range(count):
            left, right = rng.choice(len(TEXTURES), size=2)
            image = np.concatenate([_crop(textures[TEXTURES[left]], rng, 32, part)[:, :16],
                                    _crop(textures[TEXTURES[right]], rng, 32, part)[:, 16:]], axis=1)
            relative = f"images/{part}_{index:03d}.png"
            _save(image.astype(np.uint16) * 257, root / relative)
            rows.append([relative] + [int(i in (left, right)) for i in range(len(TEXTURES))])
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{part}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", *TEXTURES])
            writer.writerows(rows)
    return root


def segmentation_sample(rng, textures, part: str, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """One image and its mask: gravel with a brick (1) and a grass (2) rectangle, 255 borders."""
    from scipy import ndimage

    image = _crop(textures["gravel"], rng, size, part).copy()
    mask = np.zeros((size, size), np.uint8)
    for label, name in ((1, "brick"), (2, "grass")):
        h, w = (int(v) for v in rng.integers(14, 26, 2))
        y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        image[y:y + h, x:x + w] = _crop(textures[name], rng, size, part)[:h, :w]
        mask[y:y + h, x:x + w] = label
    mask[ndimage.morphological_gradient(mask, size=3) > 0] = 255
    return image, mask


def make_segmentation(root, counts=(("train", 48), ("val", 16)), seed: int = 2) -> Path:
    """The VOC-style segmentation folder."""
    from PIL import Image

    root, rng, textures = Path(root), np.random.default_rng(seed), _textures()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    for part, count in counts:
        stems = []
        for index in range(count):
            image, mask = segmentation_sample(rng, textures, part)
            stem = f"{part}_{index:03d}"
            _save(np.stack([image] * 3, axis=-1), root / "JPEGImages" / f"{stem}.jpg", quality=95)
            palette_mask = Image.fromarray(mask, mode="P")
            palette_mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
            _save(palette_mask, root / "SegmentationClass" / f"{stem}.png")
            stems.append(stem)
        (root / "ImageSets" / "Segmentation" / f"{part}.txt").write_text("\n".join(stems) + "\n")
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medattn.images.samples", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="folder that receives textures/, multilabel/ and voc/")
    args = parser.parse_args(argv)
    out = Path(args.out)
    existing = [name for name in ("textures", "multilabel", "voc") if (out / name).exists()]
    if existing:
        parser.error(f"{out} already holds {', '.join(existing)}; choose another folder")
    for name, make in (("textures", make_textures), ("multilabel", make_multilabel), ("voc", make_segmentation)):
        print(f"{make(out / name)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
