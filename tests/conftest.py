"""Shared pytest configuration.

Slow tests (real nnU-Net subprocesses, torch.compile, MONAI training) are skipped by a
plain ``pytest`` so the local loop stays fast; ``make test`` (and CI) passes
``--run-slow`` and runs everything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.inference.shared import held_out_images, model_dir, smoke_demo

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --run-slow (make test)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only real data beside the checkout; skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared/data is only on the dev machine)")
    return SHARED_DATA


# The models trained by the shared one-epoch demo run (tests/inference/shared.py): built once
# per session, on first use, for the prediction, demo and benchmark tests.
@pytest.fixture(scope="session")
def demo_out(tmp_path_factory):
    """The folder of the shared smoke demo run (nnU-Net and MONAI models, phantom test cases)."""
    result, _ = smoke_demo(tmp_path_factory)
    return result.out


@pytest.fixture(scope="session")
def stock_model(demo_out):
    """nnUNetTrainerStock_demo trained for one epoch (fold 0; mirroring allowed)."""
    return model_dir(demo_out)


@pytest.fixture(scope="session")
def phantom_images(demo_out):
    """The six held-out phantom images (``phantom_008_0000.nii.gz`` ...; rotated, flipped grids)."""
    return held_out_images(demo_out)


@pytest.fixture(scope="session")
def small_images(phantom_images, tmp_path_factory):
    """Crops of the held-out images (20 x 36 x 36 voxels, same rotated and flipped frames) that
    fit in one sliding window: cheap enough for tests that predict many times."""
    import SimpleITK as sitk

    from medattn.data.io import list_images

    folder = tmp_path_factory.mktemp("small")
    for path in list_images(phantom_images):
        image = sitk.ReadImage(str(path))
        sitk.WriteImage(image[6:42, 6:42, 6:26], str(folder / path.name), True)
    return folder
