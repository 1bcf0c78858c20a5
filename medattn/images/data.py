"""Image datasets of ``medattn train image``: layouts, reading, checks, splits, transforms.

Layouts (``--data``), detected from what the folder holds:

- **classification**: an ImageFolder (one sub-folder of images per class, sorted names
  give the class indices), or a folder with ``train/`` and ``val/`` ImageFolders (the
  layout gives the split).
- **multilabel**: a CSV with a ``path`` column (relative to the CSV's folder) and one 0/1
  column per class; ``--data`` is the CSV itself, or a folder holding ``train.csv`` (and
  ``val.csv`` for a given split). ``labels.csv`` of ``medattn convert vindr-cxr`` reads as
  it is: its ``image_id`` column is not a class, and its ``split`` column gives the split
  (train and val rows; test rows stay out of training).
- **segmentation**: a VOC-style folder (``JPEGImages/``, palette or grayscale PNG masks
  in ``SegmentationClass/``, 255 = ignore, ``ImageSets/Segmentation/{train,val}.txt``), or
  ``images/`` + ``masks/`` folders whose files pair by stem (``a.jpg`` with ``a.png``),
  optionally under ``train/`` and ``val/``.

Without a split in the layout, a seeded split holds out ``val_fraction`` of the samples
(per class for classification); the split is recorded in ``config.json``.

Decisions:

- Pixels: 8-bit and 16-bit grayscale and RGB(A) images are read with Pillow. Values are
  scaled to [0, 1] by the type's range (``ToDtype(scale=True)``), then standardised with
  the per-channel mean and std of (up to 256) training images, stored in the checkpoint:
  a 12-bit X-ray in a 16-bit PNG uses a small part of [0, 1], and fixed ImageNet statistics
  would leave it near zero.
- Channels: 1 when every image is grayscale, else 3 (grayscale images are repeated).
- Bad input raises :class:`ImageDataError` naming the file and the problem, before
  training: a file Pillow cannot open, an empty class folder, a mask whose size differs
  from its image, a label value outside the classes, a non-0/1 multi-label entry. Decoding
  errors found later (a file truncated after its header) name the file too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["IGNORE_INDEX", "IMAGE_SUFFIXES", "TASKS", "ImageData", "ImageDataError", "ImageDataset", "Sample",
           "build_transforms", "channel_statistics", "discover", "discover_test", "read_image", "read_mask"]

TASKS = ("classification", "multilabel", "segmentation")
IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Columns of a multi-label CSV that are not classes (labels.csv of ``medattn convert vindr-cxr``).
METADATA_COLUMNS = ("image_id",)
#: How many training images the normalisation statistics are computed from.
STATISTICS_SAMPLES = 256


class ImageDataError(ValueError):
    """Unusable input data; the message names the file or folder and the problem."""


@dataclass
class Sample:
    """One image and its target: a class index, a multi-hot list, a mask path, or None;
    ``split`` is the part a CSV's split column names, if any."""

    image: Path
    target: Any = None
    split: str | None = None


@dataclass
class ImageData:
    """What :func:`discover` found."""

    task: str
    root: Path
    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    channels: int
    split_source: str  # "layout" or "seeded"
    notes: list[str] = field(default_factory=list)

    def split_record(self) -> dict:
        """The split as paths relative to the data root (for config.json)."""
        def rel(samples):
            return [_relative(s.image, self.root) for s in samples]

        return {"source": self.split_source, "train": rel(self.train), "val": rel(self.val)}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- reading


def _open(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError as err:
        raise ImageDataError(f"{path}: file not found") from err
    except (UnidentifiedImageError, OSError) as err:
        raise ImageDataError(f"{path}: not a readable image ({err.__class__.__name__}: {err})") from err


def image_header(path: Path) -> tuple[str, tuple[int, int]]:
    """``(Pillow mode, (width, height))`` without decoding the pixels."""
    with _open(path) as image:
        return image.mode, image.size


def _is_gray(mode: str) -> bool:
    return mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_image(path: str | os.PathLike, channels: int | None = None) -> np.ndarray:
    """An image as an (H, W, C) uint8 or uint16 array (C = ``channels``, or as stored).

    Raises:
        ImageDataError: for a file Pillow cannot decode, or a 32-bit float / integer image
            whose range is unknown.
    """
    path = Path(path)
    image = _open(path)
    try:
        with image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
                array = np.asarray(image)
                if array.dtype != np.uint16:
                    if array.min() < 0 or array.max() > 65535:
                        raise ImageDataError(f"{path}: 32-bit integer pixels outside 0..65535; save as 8- or "
                                             "16-bit PNG")
                    array = array.astype(np.uint16)
            elif mode == "F":
                raise ImageDataError(f"{path}: 32-bit float pixels have no known range; save as 8- or 16-bit PNG")
            elif _is_gray(mode):
                array = np.asarray(image.convert("L"))
            else:
                array = np.asarray(image.convert("RGB"))
    except ImageDataError:
        raise
    except (OSError, ValueError, SyntaxError) as err:  # Pillow's errors for truncated or broken data
        raise ImageDataError(f"{path}: the image cannot be decoded ({err.__class__.__name__}: {err})") from err
    if array.ndim == 2:
        array = array[:, :, None]
    if channels == 3 and array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif channels == 1 and array.shape[2] == 3:
        raise ImageDataError(f"{path}: a colour image in a grayscale dataset")
    return np.array(array, copy=True, order="C")  # writable: torch.from_numpy warns on read-only arrays


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A label mask as an (H, W) int64 array: the palette indices of a palette PNG, or the
    values of a grayscale (8/16-bit) image.

    Raises:
        ImageDataError: for an unreadable file or a colour (RGB) mask.
    """
    path = Path(path)
    image = _open(path)
    try:
        with image:
            image.load()
            if image.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "1"):
                raise ImageDataError(f"{path}: a mask must be a palette or grayscale image of class indices, "
                                     f"got mode {image.mode} (colour-coded masks need converting to indices)")
            return np.array(image, dtype=np.int64)
    except ImageDataError:
        raise
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageDataError(f"{path}: the mask cannot be decoded ({err.__class__.__name__}: {err})") from err


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _channels(paths: Sequence[Path]) -> int:
    """1 when every image is grayscale, else 3; every file's header is checked on the way."""
    gray = True
    for path in paths:
        mode, _ = image_header(path)
        gray = gray and _is_gray(mode)
    return 1 if gray else 3


# ----------------------------------------------------------------------------- layouts


def discover(task: str, data: str | os.PathLike, val_fraction: float = 0.2, seed: int = 0,
             num_classes: int | None = None) -> ImageData:
    """Find the samples, classes and split of ``data`` for ``task`` (layouts: module docstring).

    Args:
        task: one of :data:`TASKS`.
        data: the dataset folder (or, for multilabel, the CSV file).
        val_fraction: share held out when the layout gives no split.
        seed: seed of that split.
        num_classes: segmentation only: the number of classes (background included);
            default: the largest label value in the masks plus one.

    Raises:
        ImageDataError: naming the file or folder and the problem.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    root = Path(data)
    if not root.exists():
        raise ImageDataError(f"{root}: not found")
    found = {"classification": _classification, "multilabel": _multilabel, "segmentation": _segmentation}[task](
        root, val_fraction, seed, num_classes)
    if not found.train:
        raise ImageDataError(f"{root}: no training samples")
    if not found.val:
        raise ImageDataError(f"{root}: no validation samples (add some, or raise --val-fraction)")
    return found


def _seeded_split(samples: list[Sample], val_fraction: float, seed: int, strata=None):
    rng = np.random.default_rng(seed)
    groups: dict[Any, list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault(strata(sample) if strata else 0, []).append(index)
    val = set()
    for indices in groups.values():
        n_val = max(1, int(round(len(indices) * val_fraction))) if len(indices) > 1 else 0
        val.update(rng.permutation(indices)[:n_val].tolist())
    return [s for i, s in enumerate(samples) if i not in val], [s for i, s in enumerate(samples) if i in val]


def _image_folder(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[Sample]]:
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subfolders:
        raise ImageDataError(f"{folder}: no class folders (an ImageFolder holds one sub-folder of images per class)")
    if classes is not None and subfolders != classes:
        raise ImageDataError(f"{folder}: class folders {subfolders} differ from the training classes {classes}")
    samples = []
    for index, name in enumerate(subfolders):
        images = _images_in(folder / name)
        if not images:
            raise ImageDataError(f"{folder / name}: empty class folder (no {'/'.join(IMAGE_SUFFIXES)} files)")
        samples += [Sample(p, index) for p in images]
    return subfolders, samples


def _classification(root: Path, val_fraction, seed, num_classes) -> ImageData:
    if not root.is_dir():
        raise ImageDataError(f"{root}: an ImageFolder must be a folder")
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, train = _image_folder(root / "train")
        _, val = _image_folder(root / "val", classes)
        source = "layout"
    else:
        classes, samples = _image_folder(root)
        train, val = _seeded_split(samples, val_fraction, seed, strata=lambda s: s.target)
        source = "seeded"
    return ImageData("classification", root, classes, train, val, _channels([s.image for s in train + val]), source)


def read_multilabel_csv(path: Path, classes: list[str] | None = None) -> tuple[list[str], list[Sample]]:
    """Samples of a multi-label CSV (``path`` + one 0/1 column per class).

    Args:
        path: the CSV file.
        classes: the training classes, which the columns must equal (test sets); a CSV
            with only a ``path`` column is then read without targets.
    """
    import pandas as pd

    try:
        table = pd.read_csv(path, dtype={"path": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ImageDataError(f"{path}: not a readable CSV ({err})") from err
    if "path" not in table.columns:
        raise ImageDataError(f"{path}: no 'path' column (columns: {list(table.columns)})")
    split = table.pop("split").astype(str).tolist() if "split" in table.columns else None
    table = table.drop(columns=[c for c in METADATA_COLUMNS if c in table.columns])
    table = table[["path", *[c for c in table.columns if c != "path"]]]
    names = [c for c in table.columns if c != "path"]
    if classes is not None and names and names != classes:
        raise ImageDataError(f"{path}: class columns {names} differ from the training classes {classes}")
    if not names and classes is None:
        raise ImageDataError(f"{path}: no class columns beside 'path'")
    samples = []
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        image = (path.parent / str(row[0])).resolve() if not os.path.isabs(str(row[0])) else Path(row[0])
        if not image.is_file():
            raise ImageDataError(f"{path}, line {row_number}: image {image} not found")
        values = list(row[1:])
        bad = [(n, v) for n, v in zip(names, values) if not (isinstance(v, (int, float, np.integer, np.floating))
                                                            and v in (0, 1))]
        if bad:
            raise ImageDataError(f"{path}, line {row_number}: class values must be 0 or 1, got "
                                 + ", ".join(f"{n}={v!r}" for n, v in bad))
        samples.append(Sample(image, [int(v) for v in values] if names else None))
    if not samples:
        raise ImageDataError(f"{path}: no rows")
    if split is not None:
        for sample, part in zip(samples, split):
            sample.split = part
    return names or list(classes), samples


def _csv_split(samples: list[Sample], val_fraction: float, seed: int):
    """A ``split`` column (labels.csv of ``medattn convert vindr-cxr``) gives train and val
    rows ("test" rows are left for ``medattn predict``); without val rows, or without the
    column, a seeded split of the training rows."""
    parts = [s.split for s in samples]
    if all(p is None for p in parts):
        return (*_seeded_split(samples, val_fraction, seed), "seeded")
    train = [s for s, p in zip(samples, parts) if p == "train"]
    val = [s for s, p in zip(samples, parts) if p == "val"]
    if val:
        return train, val, "layout"
    return (*_seeded_split(train, val_fraction, seed), "seeded")


def _multilabel(root: Path, val_fraction, seed, num_classes) -> ImageData:
    if root.is_file():
        classes, samples = read_multilabel_csv(root)
        train, val, source = _csv_split(samples, val_fraction, seed)
        data_root = root.parent
    elif (root / "train.csv").is_file():
        classes, train = read_multilabel_csv(root / "train.csv")
        if (root / "val.csv").is_file():
            _, val = read_multilabel_csv(root / "val.csv", classes)
            source = "layout"
        else:
            train, val = _seeded_split(train, val_fraction, seed)
            source = "seeded"
        data_root = root
    else:
        raise ImageDataError(f"{root}: a multi-label dataset is a CSV file, or a folder holding train.csv")
    return ImageData("multilabel", data_root, classes, train, val, _channels([s.image for s in train + val]), source)


def _pairs(images: Path, masks: Path) -> list[Sample]:
    if not images.is_dir() or not masks.is_dir():
        raise ImageDataError(f"{images.parent}: expected folders images/ and masks/")
    by_stem = {p.stem: p for p in _images_in(masks)}
    samples = []
    for image in _images_in(images):
        if image.stem not in by_stem:
            raise ImageDataError(f"{image}: no mask {masks / (image.stem + '.png')}")
        samples.append(Sample(image, by_stem[image.stem]))
    return samples


def _voc_list(root: Path, name: str) -> list[Sample] | None:
    listing = root / "ImageSets" / "Segmentation" / f"{name}.txt"
    if not listing.is_file():
        return None
    samples = []
    for line_number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), start=1):
        stem = line.strip()
        if not stem:
            continue
        candidates = [root / "JPEGImages" / f"{stem}{s}" for s in (".jpg", ".jpeg", ".png")]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise ImageDataError(f"{listing}, line {line_number}: no image {root / 'JPEGImages' / stem}.jpg")
        mask = root / "SegmentationClass" / f"{stem}.png"
        if not mask.is_file():
            raise ImageDataError(f"{listing}, line {line_number}: no mask {mask}")
        samples.append(Sample(image, mask))
    return samples


def _voc_all(root: Path) -> list[Sample]:
    masks = {p.stem: p for p in _images_in(root / "SegmentationClass")}
    return [Sample(p, masks[p.stem]) for p in _images_in(root / "JPEGImages") if p.stem in masks]


def _segmentation(root: Path, val_fraction, seed, num_classes) -> ImageData:
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        train, val = _voc_list(root, "train"), _voc_list(root, "val")
        source = "layout" if train is not None and val is not None else "seeded"
        if source == "seeded":
            train, val = _seeded_split(train if train is not None else _voc_all(root), val_fraction, seed)
    elif (root / "train" / "images").is_dir() and (root / "val" / "images").is_dir():
        train, val = _pairs(root / "train" / "images", root / "train" / "masks"), _pairs(
            root / "val" / "images", root / "val" / "masks")
        source = "layout"
    elif (root / "images").is_dir():
        train, val = _seeded_split(_pairs(root / "images", root / "masks"), val_fraction, seed)
        source = "seeded"
    else:
        raise ImageDataError(f"{root}: not a segmentation dataset (expected JPEGImages/ + SegmentationClass/, "
                             "or images/ + masks/)")
    classes = _check_masks(train + val, num_classes, root)
    return ImageData("segmentation", root, classes, train, val, _channels([s.image for s in train + val]), source)


def _class_names(root: Path, count: int) -> list[str]:
    names_file = root / "labels.txt"
    if names_file.is_file():
        names = [n.strip() for n in names_file.read_text(encoding="utf-8").splitlines() if n.strip()]
        if len(names) != count:
            raise ImageDataError(f"{names_file}: {len(names)} names for {count} classes")
        return names
    return [f"class_{i}" for i in range(count)]


def _check_masks(samples: list[Sample], num_classes: int | None, root: Path) -> list[str]:
    """Every mask has its image's size and values in 0..num_classes-1 or 255; the class names."""
    seen = set()
    for sample in samples:
        _, size = image_header(sample.image)
        mask = read_mask(sample.target)
        if mask.shape[::-1] != size:
            raise ImageDataError(f"{sample.target}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image "
                                 f"{sample.image} ({size[0]}x{size[1]})")
        values = set(np.unique(mask).tolist()) - {IGNORE_INDEX}
        if num_classes is not None and values and max(values) >= num_classes:
            raise ImageDataError(f"{sample.target}: label values {sorted(v for v in values if v >= num_classes)} "
                                 f"outside the {num_classes} classes 0..{num_classes - 1} (255 = ignore)")
        seen |= values
    if num_classes is None:
        if not seen:
            raise ImageDataError(f"{root}: every mask is empty (only the ignore value 255)")
        num_classes = max(max(seen) + 1, 2)
    return _class_names(root, num_classes)


def discover_test(task: str, path: str | os.PathLike, classes: list[str]) -> tuple[list[Sample], bool, Path]:
    """The samples of a test set, labelled when its layout carries labels.

    - classification: an ImageFolder with the training classes (labelled), or a folder of
      images (unlabelled);
    - multilabel: a CSV (labelled when it has the class columns);
    - segmentation: a VOC folder (``test.txt``, else ``val.txt``, else every image with a
      mask), an ``images/`` + ``masks/`` folder (labelled), or a folder of images.

    Returns:
        ``(samples, labelled, root)``; paths in outputs are relative to ``root``.
    """
    root = Path(path)
    if not root.exists():
        raise ImageDataError(f"{root}: not found")
    if task == "multilabel":
        if not root.is_file():
            raise ImageDataError(f"{root}: a multi-label test set is a CSV file (path + class columns)")
        _, samples = read_multilabel_csv(root, classes)
        return samples, samples[0].target is not None, root.parent
    if not root.is_dir():
        raise ImageDataError(f"{root}: not a folder")
    if task == "classification":
        if any(p.is_dir() for p in root.iterdir()):
            _, samples = _image_folder(root, classes)
            return samples, True, root
        samples = [Sample(p) for p in _images_in(root)]
    elif (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        samples = _voc_list(root, "test") or _voc_list(root, "val") or _voc_all(root)
        _check_masks(samples, len(classes), root)
        return samples, True, root
    elif (root / "images").is_dir() and (root / "masks").is_dir():
        samples = _pairs(root / "images", root / "masks")
        _check_masks(samples, len(classes), root)
        return samples, True, root
    else:
        samples = [Sample(p) for p in _images_in(root)]
    if not samples:
        raise ImageDataError(f"{root}: no images ({'/'.join(IMAGE_SUFFIXES)})")
    for sample in samples:
        image_header(sample.image)
    return samples, False, root


# ----------------------------------------------------------------------------- tensors


def channel_statistics(samples: Sequence[Sample], channels: int, seed: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the [0, 1]-scaled pixels of up to 256 images (seeded choice)."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(samples))[:STATISTICS_SAMPLES]
    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    for index in chosen:
        array = read_image(samples[int(index)].image, channels)
        scaled = array.reshape(-1, channels).astype(np.float64) / np.iinfo(array.dtype).max
        total += scaled.sum(0)
        total_sq += (scaled**2).sum(0)
        count += scaled.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0))
    return [float(m) for m in mean], [float(s) if s > 1e-6 else 1.0 for s in std]


def build_transforms(task: str, train: bool, image_size: int, mean, std, crop: str = "resized"):
    """torchvision transforms v2 for (image, target); masks are ``tv_tensors.Mask`` and
    follow every geometric transform (nearest-neighbour, padded with 255).

    Args:
        task: one of :data:`TASKS`.
        train: training augmentation (random crop and horizontal flip) or evaluation
            (resize to ``image_size`` squared).
        image_size: side of the square network input.
        mean, std: per-channel normalisation of the [0, 1]-scaled pixels.
        crop: training crop, "resized" (RandomResizedCrop, scale 0.35-1, ImageNet style)
            or "pad" (4-pixel padding and a random crop, the CIFAR recipe).
    """
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    steps = []
    if train:
        if crop == "pad":
            fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
            steps += [v2.Resize((image_size, image_size), antialias=True),
                      v2.RandomCrop(image_size, padding=image_size // 8, fill=fill)]
        else:
            steps.append(v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True))
        steps.append(v2.RandomHorizontalFlip())
    else:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
              v2.Normalize(mean, std)]
    return v2.Compose(steps)


class ImageDataset:
    """(image tensor, target) pairs for a list of :class:`Sample`.

    Targets: a class index (classification), a float multi-hot tensor (multilabel), or
    for segmentation the transformed mask; in evaluation mode segmentation also returns
    the untouched full-size mask, so that IoU is computed at the label's own resolution.
    """

    def __init__(self, samples: Sequence[Sample], task: str, transform, channels: int, keep_full_mask: bool = False):
        self.samples, self.task, self.transform, self.channels = list(samples), task, transform, channels
        self.keep_full_mask = keep_full_mask

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        import torch
        from torchvision import tv_tensors

        sample = self.samples[index]
        array = read_image(sample.image, self.channels)
        if array.dtype == np.uint16:  # ToDtype scales by the tensor type's range; torch has no uint16 math
            pixels = torch.from_numpy(array.astype(np.float32) / 65535.0)
        else:
            pixels = torch.from_numpy(array)
        image = tv_tensors.Image(pixels.permute(2, 0, 1))
        if self.task == "segmentation":
            mask = read_mask(sample.target) if sample.target is not None else np.zeros(array.shape[:2], np.int64)
            image, target = self.transform(image, tv_tensors.Mask(torch.from_numpy(mask)))
            target = target.as_subclass(torch.Tensor)
            if self.keep_full_mask:
                return image.as_subclass(torch.Tensor), target, torch.from_numpy(mask)
            return image.as_subclass(torch.Tensor), target
        image = self.transform(image).as_subclass(torch.Tensor)
        if self.task == "multilabel":
            target = torch.tensor(sample.target if sample.target is not None else [], dtype=torch.float32)
        else:
            target = -1 if sample.target is None else int(sample.target)
        return image, target


def collate_with_full_masks(batch):
    """Stack images and transformed masks; keep the full-size masks as a list."""
    import torch

    images, targets, masks = zip(*batch)
    return torch.stack(images), torch.stack(targets), list(masks)
