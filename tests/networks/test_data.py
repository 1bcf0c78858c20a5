"""Dataset discovery, up-front checks, and the SimpleITK loader of the MONAI path."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from medattn.data.io import GeometryMismatchError, read_image, write_image
from medattn.networks.data import discover_dataset, intensity_mode, ras_axes, split_cases, verify_dataset
from medattn.networks.transforms import LoadImageSITKd, TransformConfig, train_transforms, val_transforms


def test_nnunet_layout(phantom):
    info = verify_dataset(discover_dataset(phantom), progress=False)
    assert info.layout == "nnunet" and info.channel_names == ["CT"]
    assert info.labels == {0: "background", 1: "organ_a", 2: "organ_b", 3: "organ_c"}
    assert [c.case_id for c in info.cases] == [f"phantom_{i:03d}" for i in range(4)]
    assert info.cases[0].images[0].endswith("imagesTr/phantom_000_0000.nii.gz")
    # Spacing and shape come back in RAS order: nibabel's affine says which axis is which.
    image = nib.load(info.cases[0].images[0])
    ras_order = nib.orientations.io_orientation(image.affine)[:, 0].astype(int)
    zooms, shape = image.header.get_zooms()[:3], image.shape[:3]
    for index_axis, world_axis in enumerate(ras_order):
        assert info.spacings[0][world_axis] == pytest.approx(zooms[index_axis], rel=1e-5)
        assert info.shapes[0][world_axis] == shape[index_axis]
    assert intensity_mode(info.channel_names) == "ct"


def test_msd_layout(phantom_msd):
    info = verify_dataset(discover_dataset(phantom_msd), progress=False)
    assert info.layout == "msd" and info.channel_names == ["MRI"] and len(info.cases) == 4
    assert info.labels[3] == "organ_c"
    assert intensity_mode(info.channel_names) == "zscore"


def test_real_msd_hippocampus_is_discovered(shared_data):
    info = discover_dataset(shared_data / "Task04_Hippocampus")
    assert info.layout == "msd" and len(info.cases) == 208
    assert info.labels == {0: "background", 1: "Anterior", 2: "Posterior"}
    assert intensity_mode(info.channel_names) == "zscore"


def test_intensity_mode_refuses_mixed_channels():
    with pytest.raises(ValueError, match="mix CT and non-CT"):
        intensity_mode(["CT", "PET"])


def test_ras_axes_follow_the_direction_matrix():
    assert ras_axes((1, 0, 0, 0, 1, 0, 0, 0, 1), 3) == [0, 1, 2]
    assert ras_axes((0, 0, 1, 1, 0, 0, 0, 1, 0), 3) == [1, 2, 0]  # index axis 0 runs along world y
    with pytest.raises(ValueError, match="degenerate"):
        ras_axes((1, 0, 0, 1, 0, 0, 0, 0, 1), 3)


def test_split_is_seeded_and_disjoint():
    ids = [f"c{i}" for i in range(10)]
    train, val = split_cases(ids, 0.2, seed=3)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == ids
    assert split_cases(ids, 0.2, seed=3) == (train, val)
    with pytest.raises(ValueError, match="at least 2"):
        split_cases(["only"], 0.2, 0)


def _copy(phantom, tmp_path):
    root = tmp_path / phantom.name
    shutil.copytree(phantom, root)
    return root


def test_missing_image_is_named(phantom, tmp_path):
    root = _copy(phantom, tmp_path)
    (root / "imagesTr" / "phantom_002_0000.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="phantom_002_0000.nii.gz"):
        discover_dataset(root)


def test_undeclared_label_value_is_named(phantom, tmp_path):
    root = _copy(phantom, tmp_path)
    path = root / "labelsTr" / "phantom_001.nii.gz"
    label, geometry = read_image(path)
    label[0, 0, 0] = 7
    write_image(label, geometry, path)
    with pytest.raises(ValueError, match=r"phantom_001.nii.gz: label values \[7\] are not declared"):
        verify_dataset(discover_dataset(root), progress=False)


def test_image_label_grid_mismatch_is_named(phantom, tmp_path):
    root = _copy(phantom, tmp_path)
    path = root / "imagesTr" / "phantom_003_0000.nii.gz"
    image, geometry = read_image(path)
    shifted = type(geometry)(geometry.shape, geometry.spacing, (0.0, 0.0, 0.0), geometry.direction)
    write_image(image, shifted, path)
    with pytest.raises(GeometryMismatchError, match="phantom_003.*origin differs"):
        verify_dataset(discover_dataset(root), progress=False)


def test_nan_and_truncated_images_are_caught_up_front(phantom, tmp_path):
    from medattn.data.io import ImageReadError, NonFiniteImageError

    root = _copy(phantom, tmp_path)
    path = root / "imagesTr" / "phantom_002_0000.nii.gz"
    image, geometry = read_image(path)
    image = image.astype(np.float32)
    image[1, 2, 3] = np.nan  # SimpleITK would read this voxel back as 0
    write_image(image, geometry, path)
    with pytest.raises(NonFiniteImageError, match="phantom_002_0000.nii.gz: 1 NaN"):
        verify_dataset(discover_dataset(root), progress=False)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(ImageReadError, match="phantom_002_0000.nii.gz"):
        verify_dataset(discover_dataset(root), progress=False)


def test_empty_label_map_warns(phantom, tmp_path):
    root = _copy(phantom, tmp_path)
    path = root / "labelsTr" / "phantom_000.nii.gz"
    label, geometry = read_image(path)
    write_image(np.zeros_like(label), geometry, path)
    with pytest.warns(UserWarning, match="phantom_000.nii.gz: label map is empty"):
        verify_dataset(discover_dataset(root), progress=False)


def test_region_labels_and_bad_json_are_refused(phantom, tmp_path):
    root = _copy(phantom, tmp_path)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["organs"] = [1, 2]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="region-based"):
        discover_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        discover_dataset(root)
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        discover_dataset(tmp_path / "nowhere")


def test_loader_matches_nibabel(phantom):
    """Array and RAS affine of the SimpleITK loader equal nibabel's reading of the NIfTI."""
    case = discover_dataset(phantom).cases[0].as_dict()
    data = LoadImageSITKd()(case)
    reference = nib.load(case["image"][0])
    np.testing.assert_allclose(data["image"].affine.numpy(), reference.affine, atol=1e-4)
    np.testing.assert_array_equal(data["image"][0].numpy(), reference.get_fdata().astype(np.float32))
    np.testing.assert_array_equal(data["label"][0].numpy(), nib.load(case["label"]).get_fdata())


def test_loader_rejects_nan_and_mismatched_channels(phantom, tmp_path):
    case = discover_dataset(phantom).cases[1].as_dict()
    image, geometry = read_image(case["image"][0])
    bad = image.astype(np.float32)
    bad[3, 4, 5] = np.nan
    nan_path = write_image(bad, geometry, tmp_path / "nan_0000.nii.gz")
    with pytest.raises(ValueError, match="nan_0000.nii.gz: 1 NaN and 0 infinite voxel"):
        LoadImageSITKd()({"image": [str(nan_path)], "label": case["label"]})
    other = discover_dataset(phantom).cases[2].images[0]
    with pytest.raises(GeometryMismatchError):
        LoadImageSITKd()({"image": [case["image"][0], other], "label": case["label"]})


def test_transform_chain_orients_resamples_normalises_and_crops(phantom):
    info = verify_dataset(discover_dataset(phantom), progress=False)
    config = TransformConfig(spacing=[1.0, 1.0, 3.0], intensity="ct", roi=[16, 16, 8], samples_per_case=3)
    case = info.cases[0].as_dict()
    volume = val_transforms(config)(case)
    np.testing.assert_allclose(volume["image"].pixdim.numpy(), [1.0, 1.0, 3.0], rtol=1e-5)
    # RAS orientation: the affine's diagonal signs are positive (axis codes R, A, S).
    assert "".join(nib.orientations.aff2axcodes(volume["image"].affine.numpy())) == "RAS"
    assert 0.0 <= float(volume["image"].min()) and float(volume["image"].max()) <= 1.0  # CT window scaled
    assert volume["image"].shape[1:] == volume["label"].shape[1:]
    assert set(np.unique(volume["label"].numpy())) <= {0.0, 1.0, 2.0, 3.0}  # nearest-neighbour labels
    crops = train_transforms(config)(case)
    assert len(crops) == 3 and all(tuple(c["image"].shape) == (1, 16, 16, 8) for c in crops)
    zscore = TransformConfig(spacing=[1.0, 1.0, 3.0], intensity="zscore", roi=[16, 16, 8])
    normalised = val_transforms(zscore)(case)["image"].numpy()
    nonzero = normalised[normalised != 0]
    assert abs(nonzero.mean()) < 0.1 and abs(nonzero.std() - 1) < 0.1
