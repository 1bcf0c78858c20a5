"""Helpers shared by the evaluation tests: small label volumes written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medattn.data.io import Geometry, write_image

#: Anisotropic grid used by most folder tests: (z, y, x) shape, spacing in (x, y, z).
SHAPE = (10, 16, 18)
GEOMETRY = Geometry(shape=SHAPE, spacing=(0.8, 0.9, 2.5), origin=(-10.0, 5.0, 30.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1))


def box_labels(boxes: dict[int, tuple[slice, ...]], shape=SHAPE, dtype=np.uint8) -> np.ndarray:
    """Label volume with ``label -> (z, y, x) slices`` filled in order."""
    labels = np.zeros(shape, dtype=dtype)
    for label, box in boxes.items():
        labels[box] = label
    return labels


def write_labels(folder: Path, case: str, labels: np.ndarray, geometry: Geometry = GEOMETRY, suffix=".nii.gz") -> Path:
    """Write ``labels`` as ``folder/case+suffix`` with ``geometry``."""
    return write_image(labels, geometry, Path(folder) / f"{case}{suffix}")


def random_case(rng: np.random.Generator, shape=SHAPE, labels=(1, 2, 3)) -> np.ndarray:
    """A label volume with one random box per label (may overlap; later labels win)."""
    volume = np.zeros(shape, dtype=np.uint8)
    for label in labels:
        lo = [int(rng.integers(0, n - 3)) for n in shape]
        hi = [int(rng.integers(l + 2, n + 1)) for l, n in zip(lo, shape)]
        volume[tuple(slice(a, b) for a, b in zip(lo, hi))] = label
    return volume


def perturb(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift the volume by up to one voxel per axis and flip a few voxels' labels."""
    shifted = np.roll(labels, tuple(int(s) for s in rng.integers(-1, 2, size=labels.ndim)), axis=tuple(range(labels.ndim)))
    noise = rng.random(labels.shape) < 0.02
    shifted[noise] = rng.integers(0, labels.max() + 1, size=int(noise.sum()))
    return shifted


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def folders(tmp_path, rng):
    """gt/, pred/ and other/ with four cases of three labels (pred and other perturbed)."""
    gt_dir, pred_dir, other_dir = tmp_path / "gt", tmp_path / "pred", tmp_path / "other"
    for i in range(4):
        truth = random_case(rng)
        write_labels(gt_dir, f"case_{i:02d}", truth)
        write_labels(pred_dir, f"case_{i:02d}", perturb(truth, rng))
        write_labels(other_dir, f"case_{i:02d}", perturb(perturb(truth, rng), rng))
    return gt_dir, pred_dir, other_dir
