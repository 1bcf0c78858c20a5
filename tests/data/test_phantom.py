"""medattn.data.phantom: what the tests and the demo rely on."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from medattn.data.io import check_same_geometry, read_image
from medattn.data.phantom import LABELS, main, make_phantom_case, make_phantom_dataset


def test_same_seed_same_case_other_seed_other_case():
    image, label, geometry = make_phantom_case(seed=3)
    again = make_phantom_case(seed=3)
    np.testing.assert_array_equal(image, again[0])
    np.testing.assert_array_equal(label, again[1])
    assert geometry == again[2]
    other = make_phantom_case(seed=4)
    assert not np.array_equal(image, other[0]) and geometry != other[2]


def test_every_organ_is_present_and_hard_to_tell_apart_by_intensity():
    image, label, _ = make_phantom_case((32, 64, 64), seed=0)
    assert image.dtype == np.int16 and label.dtype == np.uint8
    assert set(np.unique(label)) == set(range(len(LABELS)))
    means = [image[label == value].mean() for value in (1, 2, 3)]
    stds = [image[label == value].std() for value in (1, 2, 3)]
    # The largest mean contrast between organs is about the noise inside each organ (a
    # contrast-to-noise ratio near 1): intensity alone cannot separate them.
    assert min(stds) > 15
    assert max(means) - min(means) < 1.5 * min(stds)


def test_enhanced_contrast_separates_every_organ_and_keeps_noise_and_geometry():
    low_image, low_label, low_geometry = make_phantom_case((32, 48, 48), seed=2)
    image, label, geometry = make_phantom_case((32, 48, 48), seed=2, contrast="enhanced")
    assert geometry == low_geometry and set(np.unique(label)) == set(range(len(LABELS)))
    body = (image > -500) & (label == 0)
    means = [image[body].mean()] + [image[label == value].mean() for value in (1, 2, 3)]
    noise = image[body].std()
    assert noise > 15
    # every pair of tissues differs by at least twice the noise (contrast-to-noise ratio >= 2)
    assert min(abs(a - b) for i, a in enumerate(means) for b in means[i + 1:]) > 1.9 * noise
    # the small organs are larger than at low contrast, so that a short schedule finds them
    for value in (2, 3):
        assert (label == value).sum() > 2 * (low_label == value).sum()
    with pytest.raises(ValueError, match="contrast"):
        make_phantom_case(contrast="bright")


def test_geometry_is_anisotropic_rotated_and_flipped():
    _, _, geometry = make_phantom_case(seed=1)
    assert geometry.shape == (32, 48, 48)
    spacing_x, spacing_y, spacing_z = geometry.spacing
    assert spacing_x == spacing_y and spacing_z > 2 * spacing_x
    frame = np.reshape(geometry.direction, (3, 3))
    np.testing.assert_allclose(frame @ frame.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(frame) == pytest.approx(-1.0)  # a flipped axis
    assert not np.allclose(np.abs(frame), np.eye(3))  # and rotated


@pytest.mark.parametrize("shape", [(32, 48), (4, 48, 48)])
def test_bad_shapes_are_rejected(shape):
    with pytest.raises(ValueError, match="shape"):
        make_phantom_case(shape)


def test_dataset_has_nnunet_raw_layout_with_matching_geometry(tmp_path):
    root = make_phantom_dataset(tmp_path, n_cases=2, n_test=1, shape=(16, 24, 24), dataset_id=7, name="Tiny")
    assert root == tmp_path / "Dataset007_Tiny"
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["tiny_000_0000.nii.gz", "tiny_001_0000.nii.gz"]
    assert [p.name for p in (root / "labelsTs").iterdir()] == ["tiny_002.nii.gz"]
    dataset = json.loads((root / "dataset.json").read_text())
    assert dataset["numTraining"] == 2 and dataset["file_ending"] == ".nii.gz"
    assert dataset["labels"] == {name: value for value, name in enumerate(LABELS)}
    for case in ("tiny_000", "tiny_001"):
        image, image_geometry = read_image(root / "imagesTr" / f"{case}_0000.nii.gz")
        label, label_geometry = read_image(root / "labelsTr" / f"{case}.nii.gz")
        check_same_geometry(image_geometry, label_geometry)
        assert image.shape == label.shape == (16, 24, 24)
    first = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "tiny_000.nii.gz")))
    second = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "labelsTr" / "tiny_001.nii.gz")))
    assert not np.array_equal(first, second)  # each case has its own seed


def test_dataset_rewrites_identically(tmp_path):
    root = make_phantom_dataset(tmp_path, n_cases=1, shape=(16, 16, 16))
    first = read_image(root / "imagesTr" / "phantom_000_0000.nii.gz")
    make_phantom_dataset(tmp_path, n_cases=1, shape=(16, 16, 16))
    second = read_image(root / "imagesTr" / "phantom_000_0000.nii.gz")
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]


@pytest.mark.parametrize("kwargs", [{"n_cases": 0}, {"n_test": -1}, {"dataset_id": 1000}])
def test_dataset_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        make_phantom_dataset(tmp_path, **kwargs)


def test_command_line_writes_the_dataset_and_has_help(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--test-cases" in capsys.readouterr().out
    assert main([str(tmp_path), "--cases", "1", "--test-cases", "1", "--dataset-id", "12"]) == 0
    assert (tmp_path / "Dataset012_Phantom" / "imagesTs" / "phantom_001_0000.nii.gz").is_file()
