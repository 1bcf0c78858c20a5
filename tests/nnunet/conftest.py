"""Fixtures that run nnU-Net's real planning on the phantom dataset (in subprocesses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from medattn.data.phantom import make_phantom_dataset
from medattn.nnunet.commands import nnunet_environment, run_nnunet

DATASET_ID = 990
DATASET = "Dataset990_Phantom"


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory) -> dict:
    """A fresh nnU-Net raw/preprocessed/results tree holding the phantom dataset."""
    root = tmp_path_factory.mktemp("nnunet")
    dirs = {name: root / name for name in ("raw", "preprocessed", "results")}
    for folder in dirs.values():
        folder.mkdir()
    make_phantom_dataset(dirs["raw"], n_cases=5, n_test=2, seed=0, shape=(24, 40, 40), dataset_id=DATASET_ID)
    env = nnunet_environment(dirs["raw"], dirs["preprocessed"], dirs["results"], n_proc=2)
    return {**dirs, "env": env}


@pytest.fixture(scope="session")
def preprocessed_phantom(nnunet_dirs) -> dict:
    """The phantom planned and preprocessed by nnU-Net's own command (3d_fullres), plus
    ResEnc M plans; shared by every nnU-Net test of the session."""
    env = nnunet_dirs["env"]
    run_nnunet("nnUNetv2_plan_and_preprocess", ["-d", DATASET_ID, "-c", "3d_fullres", "-np", 2], env, timeout=600)
    run_nnunet("nnUNetv2_plan_experiment", ["-d", DATASET_ID, "-pl", "nnUNetPlannerResEncM"], env, timeout=300)
    return nnunet_dirs


@pytest.fixture(scope="session")
def phantom_plans(preprocessed_phantom) -> dict[str, Path]:
    """nnU-Net's own plans for the phantom: default (PlainConvUNet) and ResEnc M."""
    folder = preprocessed_phantom["preprocessed"] / DATASET
    return {"plain": folder / "nnUNetPlans.json", "resenc": folder / "nnUNetResEncUNetMPlans.json"}


@pytest.fixture(scope="session")
def preprocessed_resenc(preprocessed_phantom) -> dict:
    """The phantom preprocessed for nnU-Net's ResEnc M plans too (nnUNetv2_preprocess)."""
    run_nnunet("nnUNetv2_preprocess", ["-d", DATASET_ID, "-plans_name", "nnUNetResEncUNetMPlans", "-c", "3d_fullres",
                                       "-np", 2], preprocessed_phantom["env"], timeout=600)
    return preprocessed_phantom
