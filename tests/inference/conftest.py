"""Fixtures for the prediction tests: models trained by the shared one-epoch demo run."""

from __future__ import annotations

import pytest

from tests.inference.shared import held_out_images, model_dir, smoke_demo


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
