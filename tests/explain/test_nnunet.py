"""``medattn explain`` on an nnU-Net model folder (the shared smoke demo's DSM model).

The phantom's grids are rotated, flipped and anisotropic, so a map that missed nnU-Net's
transposition, crop or resampling on the way back would not line up with the input.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from medattn.cli import main
from medattn.data.io import check_same_geometry, read_header, read_image
from tests.inference.shared import model_dir

pytestmark = pytest.mark.slow

DSM_TRAINER = "nnUNetTrainerDSM_demo"


def _explained_images(small_images):
    """Two of the crops: each is explained with 8 mirrorings and Grad-CAM's backward passes."""
    return sorted(small_images.glob("*_0000.nii.gz"))[:2]


@pytest.fixture(scope="module")
def explained(demo_out, small_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain_nnunet")
    code = main(["explain", "--model", str(model_dir(demo_out, DSM_TRAINER)), "--input",
                 *map(str, _explained_images(small_images)),
                 "--out", str(out), "--gradcam", "1", "--stage-grids", "--device", "cpu", "--no-progress"])
    assert code == 0
    return out


def test_every_map_has_the_input_geometry_and_dsm_maps_are_there(explained, small_images):
    for image in _explained_images(small_images):
        case = image.name.removesuffix("_0000.nii.gz")
        maps = sorted(m for m in (explained / case).glob("*.nii.gz") if not m.name.endswith("__stage.nii.gz"))
        names = {m.name for m in maps}
        assert any(n.endswith("__S.nii.gz") for n in names) and any(n.endswith("__M_mean.nii.gz") for n in names)
        assert any(n.startswith("gradcam_") for n in names), names
        for path in maps:
            check_same_geometry(read_header(image), read_header(path), names=("input", "map"), context=path.name)
            values, _ = read_image(path)
            assert np.isfinite(values).all()
        s_map = read_image(next(p for p in maps if p.name.endswith("__S.nii.gz")))[0]
        inside = s_map[s_map != 0]  # zero only outside nnU-Net's crop to the non-zero region
        assert inside.size > 0.9 * s_map.size and 0 < inside.min() and inside.max() < 1  # S is a sigmoid map
    with open(explained / case / "channel_weights.csv", newline="") as handle:
        assert {row["map"] for row in csv.DictReader(handle)} == {"C"}
    assert "nnU-Net nnUNetTrainerDSM_demo" in (explained / "index.html").read_text()


def test_stage_grids_have_the_plans_spacing_times_the_stride_and_lie_on_the_maps(explained, demo_out, small_images):
    """nnU-Net's stage grids: in the network's axis order, the plans' spacing times the stage's
    pooling stride, placed over the crop, matching the input-grid map after SimpleITK
    resamples them."""
    import json

    from tests.explain.stage_grids import assert_aligned

    plans = json.loads((model_dir(demo_out, DSM_TRAINER) / "plans.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    spacing = np.asarray(configuration["spacing"])[::-1]  # the network's axes, in SimpleITK's index order
    strides = np.cumprod(np.asarray(configuration["architecture"]["arch_kwargs"]["strides"]), axis=0)
    strides_xyz = {tuple(s[::-1]) for s in strides}
    checked = 0
    for image in _explained_images(small_images):
        case = explained / image.name.removesuffix("_0000.nii.gz")
        stages = sorted(case.glob("*__stage.nii.gz"))
        assert any("__S__" in p.name for p in stages)
        for path in stages:
            ratio = np.asarray(read_header(path).spacing) / spacing
            # nnU-Net rounds the resampled shape, so its voxels are the plans' spacing only to
            # within one voxel over the case (these crops are 20 slices deep: up to 3 %)
            assert tuple(np.round(ratio).astype(int)) in strides_xyz
            np.testing.assert_allclose(ratio, np.round(ratio), rtol=0.03)
            checked += assert_aligned(path, case / path.name.replace("__stage.nii.gz", ".nii.gz")) is not None
    assert checked >= 4


def test_the_way_back_lines_up_the_preprocessed_image_with_the_input(demo_out, phantom_images):
    """The route of the maps, applied to nnU-Net's own preprocessed image, gives back the input."""
    import torch

    from medattn.explain.sources import NnUNetSource
    from medattn.inference.naming import collect_inputs, group_cases

    source = NnUNetSource(model_dir(demo_out, DSM_TRAINER), None, torch.device("cpu"), tta=False)
    cases, _ = group_cases(collect_inputs([phantom_images]), 1)
    # nnU-Net's CT normalisation of the input, on the input grid
    intensity = source.backend.plans_manager.foreground_intensity_properties_per_channel["0"]
    assert source.backend.configuration_manager.normalization_schemes == ["CTNormalization"]
    for case in cases[:2]:
        prepared = source.prepare(case)
        back = source.to_input_grid(prepared, prepared.data[:1])[0]
        original, _ = read_image(case.files[0])
        expected = ((np.clip(original, intensity["percentile_00_5"], intensity["percentile_99_5"]) - intensity["mean"])
                    / intensity["std"])
        assert back.shape == expected.shape
        correlation = np.corrcoef(back.ravel(), expected.ravel())[0, 1]
        # below 1 only by resampling to the plans' spacing and back (it smooths the noise);
        # an axis flipped, swapped or shifted on the way back would drop it far below
        assert correlation > 0.9, correlation
        for axis in range(expected.ndim):
            assert np.corrcoef(np.flip(back, axis).ravel(), expected.ravel())[0, 1] < correlation - 0.15


def test_labels_are_what_medattn_predict_writes(demo_out, small_images, tmp_path):
    """The contours in the pictures are the prediction's (same backend, same grid)."""
    import torch

    from medattn.explain.sources import NnUNetSource
    from medattn.inference.naming import collect_inputs, group_cases

    output = tmp_path / "predicted"
    image = _explained_images(small_images)[0]
    assert main(["predict", "--model", str(model_dir(demo_out, DSM_TRAINER)), "--input", str(image),
                 "--output", str(output), "--device", "cpu", "--no-tta", "--no-progress"]) == 0
    source = NnUNetSource(model_dir(demo_out, DSM_TRAINER), None, torch.device("cpu"), tta=False)
    case = group_cases(collect_inputs([image]), 1)[0][0]
    predicted, _ = read_image(case.label_path(output))
    np.testing.assert_array_equal(source.labels(source.prepare(case)), predicted)


def test_unsupported_models_are_refused_by_name(demo_out, tmp_path, capsys):
    model = model_dir(demo_out, DSM_TRAINER)
    code = main(["explain", "--model", str(model), "--input", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--layer", "encoder.nowhere", "--gradcam", "1", "--no-progress"])
    assert code == 2
    assert "encoder.nowhere" in capsys.readouterr().err
