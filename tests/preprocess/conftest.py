"""Fixtures laid out like the real downloads, generated on the fly in tmp_path.

Volumes are small (x 14, y 12, z 6..9 voxels) but have what the real ones have and what
a careless converter loses: anisotropic spacing, a non-zero origin, a direction matrix
that is neither identity nor diagonal, int16 HU values beyond TransUNet's window, and all
13 BTCV labels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

BTCV_LABELLED = tuple(range(1, 11)) + tuple(range(21, 41))  # the 30 labelled BTCV cases
SIZE_XY = (14, 12)


def rotation_direction(seed: int) -> tuple[float, ...]:
    """A proper rotation (det +1) about an oblique axis, row-major, different per seed."""
    angle = 0.3 + 0.05 * seed
    axis = np.array([1.0, 2.0, 0.5 + seed % 3])
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    return tuple(rotation.ravel().tolist())


def make_case(number: int, seed: int | None = None):
    """``(image, label, geometry)`` of one synthetic BTCV-like case; z depth varies with the case."""
    from medattn.data.io import Geometry

    rng = np.random.default_rng(number if seed is None else seed)
    depth = 6 + number % 4
    shape = (depth, SIZE_XY[1], SIZE_XY[0])
    image = rng.integers(-1024, 1500, size=shape).astype(np.int16)
    label = np.zeros(shape, dtype=np.uint8)
    flat = label.reshape(-1)
    # every BTCV id 1..13 in a run of voxels, at a case-dependent offset
    for organ in range(1, 14):
        start = (organ * 53 + number * 7) % (flat.size - 20)
        flat[start : start + 4 + organ % 5] = organ
    geometry = Geometry(
        shape=shape,
        spacing=(0.7 + 0.01 * (number % 5), 0.8, 2.5 + 0.5 * (number % 3)),
        origin=(-120.5 + number, 33.25, -400.0 - 2 * number),
        direction=rotation_direction(number),
    )
    return image, label, geometry


def write_btcv(root: Path, numbers=BTCV_LABELLED, testing=()) -> Path:
    """Write a BTCV ``RawData`` tree under ``root`` and return the RawData folder."""
    from medattn.data.io import write_image

    raw = root / "RawData"
    for number in numbers:
        image, label, geometry = make_case(number)
        write_image(image, geometry, raw / "Training" / "img" / f"img{number:04d}.nii.gz")
        write_image(label, geometry, raw / "Training" / "label" / f"label{number:04d}.nii.gz")
    for number in testing:
        image, _, geometry = make_case(number)
        write_image(image, geometry, raw / "Testing" / "img" / f"img{number:04d}.nii.gz")
    return raw


@pytest.fixture(scope="session")
def btcv_raw(tmp_path_factory) -> Path:
    """All 30 labelled BTCV cases plus two unlabelled Testing scans; treat as read-only."""
    return write_btcv(tmp_path_factory.mktemp("btcv"), testing=(61, 62))
