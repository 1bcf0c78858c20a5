"""Training datasets for the MONAI path: nnU-Net raw and MSD layouts, checked up front.

Two layouts are accepted (the folder holds ``dataset.json``, ``imagesTr`` and ``labelsTr``):

- **nnU-Net v2 raw**: ``dataset.json`` has ``channel_names`` (``{"0": "CT"}``), ``labels``
  (``{"background": 0, "organ": 1}``) and ``file_ending``; images are
  ``imagesTr/{case}_{channel:04d}{file_ending}``, labels ``labelsTr/{case}{file_ending}``.
- **Medical Segmentation Decathlon**: ``dataset.json`` has ``modality`` (``{"0": "MRI"}``),
  ``labels`` (``{"0": "background", "1": "Anterior"}``) and a ``training`` list of
  ``{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}``; multi-modal images
  are single 4D files.

:func:`verify_dataset` reads every label map and every image header once before training,
so that a missing file, an image/label grid mismatch or a label value that
``dataset.json`` does not declare fails immediately with the file named, not hours into
a run.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medattn.data.io import Geometry, ImageReadError, check_nifti_file, check_same_geometry, read_header, read_image

__all__ = [
    "Case",
    "DatasetInfo",
    "discover_dataset",
    "intensity_mode",
    "ras_axes",
    "verify_dataset",
]

#: Channel names that select the CT intensity scheme (clip to [-125, 275] HU, scale to [0, 1]).
CT_NAMES = ("ct",)


@dataclass(frozen=True)
class Case:
    """One training case: its id, its image file(s) (one per channel, or one 4D file) and its label."""

    case_id: str
    images: tuple[str, ...]
    label: str

    def as_dict(self) -> dict:
        """The dict the MONAI transform chain consumes."""
        return {"case_id": self.case_id, "image": list(self.images), "label": self.label}


@dataclass
class DatasetInfo:
    """What :func:`discover_dataset` found.

    Attributes:
        root: the dataset folder.
        layout: "nnunet" or "msd".
        cases: the labelled training cases, sorted by id.
        channel_names: one name per input channel ("CT", "MRI", "T2", ...).
        labels: label value -> name, background (0) included.
        spacings: per case, voxel spacing in RAS axis order (filled by :func:`verify_dataset`).
        shapes: per case, array shape in RAS axis order (filled by :func:`verify_dataset`).
    """

    root: Path
    layout: str
    cases: list[Case]
    channel_names: list[str]
    labels: dict[int, str]
    spacings: list[tuple[float, ...]] = field(default_factory=list)
    shapes: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        """Output channels of a network for this dataset (background included)."""
        return max(self.labels) + 1

    def median_spacing(self) -> list[float]:
        """Median voxel spacing per RAS axis (nnU-Net's default target spacing)."""
        if not self.spacings:
            raise ValueError("spacings unknown: call verify_dataset first")
        return [float(v) for v in np.median(np.asarray(self.spacings), axis=0)]

    def median_shape(self, target_spacing) -> list[float]:
        """Median array shape per RAS axis after resampling to ``target_spacing``."""
        if not self.shapes:
            raise ValueError("shapes unknown: call verify_dataset first")
        resampled = np.asarray(self.shapes) * np.asarray(self.spacings) / np.asarray(target_spacing, dtype=float)
        return [float(v) for v in np.median(resampled, axis=0)]


def discover_dataset(root: str | Path) -> DatasetInfo:
    """Find the cases, channels and labels of a dataset in nnU-Net raw or MSD layout.

    Args:
        root: folder holding ``dataset.json``, ``imagesTr`` and ``labelsTr``.

    Returns:
        The :class:`DatasetInfo` (headers not read yet; see :func:`verify_dataset`).

    Raises:
        FileNotFoundError: if ``dataset.json`` or a listed image or label file is missing,
            naming the file.
        ValueError: if ``dataset.json`` is malformed or describes no labelled case.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found; --data must be a dataset folder in nnU-Net raw or MSD layout")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path}: not valid JSON ({err})") from err
    if "training" in meta:
        info = _msd(root, meta, meta_path)
    elif "channel_names" in meta:
        info = _nnunet(root, meta, meta_path)
    else:
        raise ValueError(
            f"{meta_path}: neither an MSD dataset.json (no 'training' list) nor an nnU-Net v2 one "
            "(no 'channel_names')"
        )
    if not info.cases:
        raise ValueError(f"{root}: no labelled training cases found")
    if 0 not in info.labels:
        raise ValueError(f"{meta_path}: labels {info.labels} do not declare background 0")
    return info


def _nnunet(root: Path, meta: dict, meta_path: Path) -> DatasetInfo:
    channel_names = [str(meta["channel_names"][k]) for k in sorted(meta["channel_names"], key=int)]
    labels = {}
    for name, value in meta.get("labels", {}).items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(
                f"{meta_path}: label {name!r} has value {value!r}; region-based (list) labels are not "
                "supported by the MONAI path, only integer labels"
            )
        labels[value] = str(name)
    ending = meta.get("file_ending", ".nii.gz")
    label_dir = root / "labelsTr"
    if not label_dir.is_dir():
        raise FileNotFoundError(f"{label_dir}: not found")
    cases = []
    for label_path in sorted(label_dir.glob(f"*{ending}")):
        case_id = label_path.name[: -len(ending)]
        images = tuple(str(root / "imagesTr" / f"{case_id}_{c:04d}{ending}") for c in range(len(channel_names)))
        for image in images:
            if not Path(image).is_file():
                raise FileNotFoundError(f"{image}: missing image for case {case_id!r} (label {label_path})")
        cases.append(Case(case_id, images, str(label_path)))
    return DatasetInfo(root, "nnunet", cases, channel_names, dict(sorted(labels.items())))


def _msd(root: Path, meta: dict, meta_path: Path) -> DatasetInfo:
    modality = meta.get("modality") or meta.get("channel_names")
    if not modality:
        raise ValueError(f"{meta_path}: MSD dataset.json without a 'modality' entry")
    channel_names = [str(modality[k]) for k in sorted(modality, key=int)]
    try:
        labels = {int(k): str(v) for k, v in meta["labels"].items()}
    except (KeyError, ValueError, AttributeError) as err:
        raise ValueError(f"{meta_path}: 'labels' must map label values to names ({err})") from err
    cases = []
    for entry in meta["training"]:
        image, label = (root / entry[key] for key in ("image", "label"))
        for path in (image, label):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: listed in {meta_path} but missing")
        case_id = image.name.split(".")[0]
        cases.append(Case(case_id, (str(image),), str(label)))
    cases.sort(key=lambda c: c.case_id)
    return DatasetInfo(root, "msd", cases, channel_names, dict(sorted(labels.items())))


def intensity_mode(channel_names: list[str]) -> str:
    """"ct" when every channel is CT, "zscore" (MRI and everything else) when none is.

    Raises:
        ValueError: for a mix of CT and non-CT channels, which one scheme cannot serve.
    """
    is_ct = [name.strip().lower() in CT_NAMES for name in channel_names]
    if all(is_ct):
        return "ct"
    if not any(is_ct):
        return "zscore"
    raise ValueError(f"channels {channel_names} mix CT and non-CT images; normalise them separately first")


def ras_axes(direction: tuple[float, ...], ndim: int) -> list[int]:
    """For each array index axis, the world (RAS/LPS) axis it runs closest to.

    ``Orientationd(axcodes="RAS")`` permutes the array axes into this order, so voxel
    spacings and sizes reorder the same way.

    Raises:
        ValueError: if two index axes point along the same world axis (degenerate direction).
    """
    matrix = np.asarray(direction, dtype=float).reshape(ndim, ndim)
    axes = [int(np.argmax(np.abs(matrix[:, i]))) for i in range(ndim)]
    if len(set(axes)) != ndim:
        raise ValueError(f"direction {tuple(direction)} is degenerate: index axes share a world axis")
    return axes


def _in_ras_order(values, axes) -> tuple:
    ordered = [0] * len(values)
    for index_axis, world_axis in enumerate(axes):
        ordered[world_axis] = values[index_axis]
    return tuple(ordered)


def verify_dataset(info: DatasetInfo, progress: bool = True) -> DatasetInfo:
    """Check every case and record spacings and shapes (RAS axis order) on ``info``.

    Checks: all files readable, NIfTI files complete and free of NaN/infinite voxels; every
    image channel on the label's grid (shape, spacing, origin, direction); label values all
    declared in ``dataset.json``. A case whose label
    map holds only background is allowed (it trains the background) but warned about.

    Returns:
        ``info``, with :attr:`DatasetInfo.spacings` and :attr:`DatasetInfo.shapes` filled.

    Raises:
        ImageReadError: for an unreadable, corrupt or truncated file, naming it (NaN or
            infinite voxels raise its subclass ``NonFiniteImageError``).
        GeometryMismatchError: for an image whose grid differs from its label's.
        ValueError: for a label value missing from ``dataset.json``, naming file and values.
    """
    from tqdm.auto import tqdm

    declared = set(info.labels)
    spacings, shapes = [], []
    for case in tqdm(info.cases, desc="checking dataset", unit="case", disable=not progress, leave=False):
        for path in (*case.images, case.label):
            check_nifti_file(path)  # SimpleITK would read NaN as 0 and a truncated file as zeros
        label, label_geometry = read_image(case.label)
        if not np.issubdtype(label.dtype, np.integer):
            if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
                raise ValueError(f"{case.label}: label map holds non-integer values")
        values = set(np.unique(label).astype(int).tolist())
        unknown = sorted(values - declared)
        if unknown:
            raise ValueError(
                f"{case.label}: label values {unknown} are not declared in dataset.json (declared: {sorted(declared)})"
            )
        if values <= {0}:
            warnings.warn(f"{case.label}: label map is empty (background only)", stacklevel=2)
        for image in case.images:
            geometry = read_header(image)
            if len(geometry.shape) == len(label_geometry.shape) + 1 and len(case.images) == 1:
                continue  # an MSD 4D multi-modal file: channels last, grid checked by the loader
            check_same_geometry(label_geometry, geometry, names=("label", "image"), context=f"case {case.case_id} ({image})")
        ndim = len(label_geometry.shape)
        axes = ras_axes(label_geometry.direction, ndim)
        spacings.append(_in_ras_order(label_geometry.spacing, axes))
        shapes.append(_in_ras_order(tuple(reversed(label_geometry.shape)), axes))
    info.spacings, info.shapes = spacings, shapes
    return info


def split_cases(case_ids: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded train/validation split of case ids (at least one case on each side).

    Raises:
        ValueError: for fewer than two cases or ``val_fraction`` outside (0, 1).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if len(case_ids) < 2:
        raise ValueError(f"need at least 2 labelled cases to hold one out for validation, got {len(case_ids)}")
    order = np.random.default_rng(seed).permutation(len(case_ids))
    n_val = min(len(case_ids) - 1, max(1, math.floor(len(case_ids) * val_fraction + 0.5)))
    val = sorted(case_ids[i] for i in order[:n_val])
    train = sorted(case_ids[i] for i in order[n_val:])
    return train, val
