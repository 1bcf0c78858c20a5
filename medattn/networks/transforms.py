"""MONAI transform chains for the MONAI path: loading, orientation, spacing, intensity, crops.

Images are loaded with medattn's SimpleITK reader (:func:`medattn.data.io.read_image`) by
:class:`LoadImageSITKd`, which checks that every channel and the label share one grid and
that intensities are finite, and hands MONAI a ``MetaTensor`` whose affine is the image's
RAS affine (the one nibabel reports for NIfTI). Everything after loading is MONAI's own:

==================  ======================================================================
step                transform
==================  ======================================================================
orientation         ``Orientationd(axcodes="RAS")``
spacing             ``Spacingd(pixdim=target)``: bilinear for images, nearest for labels
intensity (CT)      ``ScaleIntensityRanged``: clip to [-125, 275] HU, scale to [0, 1]
intensity (MRI...)  ``NormalizeIntensityd(nonzero=True, channel_wise=True)``: z-score
crops (train)       ``SpatialPadd(roi)``, ``RandCropByPosNegLabeld(roi, pos=1, neg=1)``
flips (train)       ``RandFlipd`` on each spatial axis, p = 0.5
==================  ======================================================================

Axis order after ``Orientationd`` is RAS, i.e. (x, y, z) for 3D: ``spacing`` and ``roi``
are given in that order.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from medattn.data.io import Geometry, ImageReadError, check_nifti_file, check_same_geometry, read_image

__all__ = [
    "CT_WINDOW",
    "LoadImageSITKd",
    "TransformConfig",
    "ras_affine",
    "preprocessing",
    "train_transforms",
    "val_transforms",
]

#: CT intensity window (HU) of the MONAI tutorials: clipped, then scaled to [0, 1].
CT_WINDOW = (-125.0, 275.0)


@dataclass
class TransformConfig:
    """What a trained network expects of its input; stored in every checkpoint.

    Attributes:
        spacing: target voxel spacing in RAS axis order (mm).
        intensity: "ct" (window ``ct_window`` scaled to [0, 1]) or "zscore" (per channel,
            over non-zero voxels).
        roi: patch size in RAS axis order: training crops and sliding-window ROI.
        samples_per_case: crops drawn from each loaded case per iteration.
        ct_window: HU window for "ct".
        axcodes: target orientation.
    """

    spacing: list[float]
    intensity: str
    roi: list[int]
    samples_per_case: int = 1
    ct_window: list[float] = field(default_factory=lambda: list(CT_WINDOW))
    axcodes: str = "RAS"

    def __post_init__(self):
        if self.intensity not in ("ct", "zscore"):
            raise ValueError(f"intensity must be 'ct' or 'zscore', got {self.intensity!r}")
        if len(self.spacing) != len(self.roi) or len(self.roi) not in (2, 3):
            raise ValueError(f"spacing {self.spacing} and roi {self.roi} need 2 or 3 matching axes")
        if min(self.roi) < 1 or min(self.spacing) <= 0:
            raise ValueError(f"roi {self.roi} and spacing {self.spacing} must be positive")
        if self.samples_per_case < 1:
            raise ValueError(f"samples_per_case must be >= 1, got {self.samples_per_case!r}")
        self.spacing = [float(v) for v in self.spacing]
        self.roi = [int(v) for v in self.roi]
        self.ct_window = [float(v) for v in self.ct_window]
        self.axcodes = self.axcodes[: len(self.roi)]

    @property
    def spatial_dims(self) -> int:
        return len(self.roi)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TransformConfig":
        return cls(**dict(values))


def ras_affine(geometry: Geometry):
    """The RAS index-to-world affine of a SimpleITK geometry (nibabel's convention).

    SimpleITK maps index ``i`` to the LPS point ``origin + direction @ (spacing * i)``;
    flipping the first two world axes gives RAS.

    Returns:
        An (n+1, n+1) float64 numpy array for an n-dimensional image.
    """
    ndim = len(geometry.spacing)
    affine = geometry.index_to_physical()
    affine[:ndim, :ndim] = affine[:ndim, :ndim][:, ::-1]  # SimpleITK's (x, y, z) index, MONAI's array order here
    lps_to_ras = np.diag([-1.0, -1.0] + [1.0] * (ndim - 1))
    return lps_to_ras @ affine


def _load_channels(paths: Sequence[str], reference: Geometry | None, context: str):
    """Read image channels, check grids and finiteness; return (C, *spatial) array in (x, y, z) order."""
    arrays, geometry = [], None
    for path in paths:
        # SimpleITK reads NaN voxels of a NIfTI file as 0 and a truncated file as zeros.
        check_nifti_file(path)
        array, this_geometry = read_image(path)
        if reference is not None and array.ndim == len(reference.shape) + 1 and len(paths) == 1:
            # MSD multi-modal 4D file: channels are its first SimpleITK axis.
            this_geometry = _drop_last_axis(this_geometry)
            channels = list(array)
        else:
            channels = [array]
        if geometry is None:
            geometry = this_geometry
        else:
            check_same_geometry(geometry, this_geometry, names=(str(paths[0]), str(path)), context=context)
        for channel in channels:
            if np.issubdtype(channel.dtype, np.floating) and not np.all(np.isfinite(channel)):
                raise ValueError(f"{path}: image holds NaN or infinite values")
            arrays.append(np.ascontiguousarray(channel.T))  # (z, y, x) -> (x, y, z), MONAI's index order
    return np.stack(arrays).astype(np.float32), geometry


def _drop_last_axis(geometry: Geometry) -> Geometry:
    ndim = len(geometry.spacing) - 1
    direction = np.asarray(geometry.direction).reshape(ndim + 1, ndim + 1)[:ndim, :ndim]
    return Geometry(
        geometry.shape[1:], geometry.spacing[:ndim], geometry.origin[:ndim], tuple(direction.ravel().tolist())
    )


class LoadImageSITKd:
    """Load ``data["image"]`` (a path or a list of per-channel paths) and ``data["label"]``.

    A dictionary transform in MONAI's sense (``__call__(dict) -> dict``); the outputs are
    channel-first ``MetaTensor`` s with the RAS affine, ``filename_or_obj`` set to the first
    image path, and ``space`` RAS, ready for ``Orientationd``/``Spacingd``/``Invertd``.

    Raises:
        ImageReadError: for an unreadable file, naming it.
        GeometryMismatchError: when channels or label do not share one grid, naming both files.
        ValueError: for NaN or infinite intensities or a truncated NIfTI file, naming the file.
    """

    def __init__(self, image_key: str = "image", label_key: str | None = "label"):
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        from monai.data import MetaTensor
        from monai.utils import SpaceKeys

        data = dict(data)
        paths = data[self.image_key]
        paths = [str(paths)] if isinstance(paths, (str, bytes)) or not isinstance(paths, Sequence) else [str(p) for p in paths]
        if not paths:
            raise ImageReadError(f"case {data.get('case_id', '?')}: no image file given")
        label_array = label_geometry = None
        if self.label_key is not None and self.label_key in data:
            check_nifti_file(data[self.label_key])
            label_array, label_geometry = read_image(data[self.label_key])
        image, geometry = _load_channels(paths, label_geometry, context=f"case {data.get('case_id', paths[0])}")
        affine = ras_affine(geometry)
        meta = {
            "affine": affine,
            "filename_or_obj": paths[0],
            "space": SpaceKeys.RAS,
            "original_affine": affine.copy(),
            "spatial_shape": np.asarray(image.shape[1:]),
            "original_channel_dim": 0,
            "medattn_geometry": _geometry_dict(geometry),
        }
        data[self.image_key] = MetaTensor(image, meta=meta)
        if label_array is not None:
            check_same_geometry(
                label_geometry, geometry, names=("label", "image"), context=f"case {data.get('case_id', paths[0])}"
            )
            label_meta = dict(meta, affine=affine.copy(), filename_or_obj=str(data[self.label_key]))
            label = np.ascontiguousarray(label_array.T)[None].astype(np.float32)
            data[self.label_key] = MetaTensor(label, meta=label_meta)
        return data


def _geometry_dict(geometry: Geometry) -> dict:
    return {
        "shape": list(geometry.shape),
        "spacing": list(geometry.spacing),
        "origin": list(geometry.origin),
        "direction": list(geometry.direction),
    }


def _intensity(config: TransformConfig):
    from monai.transforms import NormalizeIntensityd, ScaleIntensityRanged

    if config.intensity == "ct":
        low, high = config.ct_window
        return ScaleIntensityRanged(keys="image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)
    return NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)


def preprocessing(config: TransformConfig, with_label: bool = True) -> list:
    """The deterministic steps shared by training, validation and inference.

    Args:
        config: spacing, intensity scheme and orientation.
        with_label: also load and resample ``data["label"]`` (nearest neighbour).
    """
    from monai.transforms import EnsureTyped, Orientationd, Spacingd

    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    return [
        LoadImageSITKd("image", "label" if with_label else None),
        Orientationd(keys=keys, axcodes=config.axcodes, labels=None),
        Spacingd(keys=keys, pixdim=config.spacing, mode=modes, dtype=np.float32),
        _intensity(config),
        EnsureTyped(keys=keys, dtype=np.float32, track_meta=True),
    ]


def train_transforms(config: TransformConfig):
    """Preprocessing, then pad to the ROI, crop by label (half foreground-centred) and flip."""
    from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd, SpatialPadd

    keys = ["image", "label"]
    steps = preprocessing(config, with_label=True) + [
        SpatialPadd(keys=keys, spatial_size=config.roi),
        RandCropByPosNegLabeld(
            keys=keys,
            label_key="label",
            spatial_size=config.roi,
            pos=1.0,
            neg=1.0,
            num_samples=config.samples_per_case,
        ),
    ]
    steps += [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(config.spatial_dims)]
    return Compose(steps)


def val_transforms(config: TransformConfig):
    """Preprocessing only: validation runs sliding-window inference on whole volumes."""
    from monai.transforms import Compose

    return Compose(preprocessing(config, with_label=True))


def inference_transforms(config: TransformConfig):
    """Preprocessing of images alone, invertible by ``monai.transforms.Invertd``."""
    from monai.transforms import Compose

    return Compose(preprocessing(config, with_label=False))
