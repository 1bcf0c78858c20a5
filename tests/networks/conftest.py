"""Fixtures for the MONAI-path tests: a tiny phantom dataset and small network settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

#: Phantom array shape in SimpleITK (z, y, x) order; in RAS order the volumes are 32 x 32 x 16.
PHANTOM_SHAPE = (16, 32, 32)
#: One sliding window covers a whole phantom volume, which keeps validation fast.
PHANTOM_ROI = "32,32,16"
#: Small DynUNet filters for the four levels nnU-Net plans for that ROI and spacing.
TINY_DYNUNET = '{"filters": [4, 8, 16, 32]}'


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """A 4-case nnU-Net raw phantom dataset (CT-like, anisotropic, rotated and flipped grids)."""
    from medattn.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("raw"), n_cases=4, seed=0, shape=PHANTOM_SHAPE)


@pytest.fixture(scope="session")
def phantom_msd(phantom, tmp_path_factory) -> Path:
    """The same cases in MSD layout, declared as MRI (so the z-score scheme is chosen)."""
    root = tmp_path_factory.mktemp("msd") / "Task99_Phantom"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for label in sorted((phantom / "labelsTr").glob("*.nii.gz")):
        case = label.name[: -len(".nii.gz")]
        shutil.copy(phantom / "imagesTr" / f"{case}_0000.nii.gz", root / "imagesTr" / label.name)
        shutil.copy(label, root / "labelsTr" / label.name)
        training.append({"image": f"./imagesTr/{label.name}", "label": f"./labelsTr/{label.name}"})
    meta = {
        "name": "Phantom",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "organ_a", "2": "organ_b", "3": "organ_c"},
        "numTraining": len(training),
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
