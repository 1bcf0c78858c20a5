"""medattn.data.io: geometry-safe reading and writing, checks, atomic writes.

References: SimpleITK reads back what medattn writes, and nibabel's affine (RAS) must be
the LPS geometry SimpleITK reports, converted by hand from the NIfTI convention.
"""

from __future__ import annotations

import gzip
import json
import os
import stat

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk

from medattn.data.io import (
    Geometry,
    GeometryMismatchError,
    ImageReadError,
    NonFiniteImageError,
    atomic_write,
    case_name,
    check_nifti_file,
    check_same_geometry,
    image_suffix,
    list_images,
    read_image,
    write_image,
    write_json_atomic,
)

#: A rotated frame with a flipped axis and anisotropic voxels, like real scanner output.
ANGLE = np.radians(12.0)
GEOMETRY = Geometry(
    shape=(5, 6, 7),
    spacing=(0.8, 0.7, 2.5),
    origin=(-12.5, 40.0, 7.25),
    direction=(np.cos(ANGLE), np.sin(ANGLE), 0.0, np.sin(ANGLE), -np.cos(ANGLE), 0.0, 0.0, 0.0, 1.0),
)


def _volume(dtype=np.int16) -> np.ndarray:
    return np.arange(np.prod(GEOMETRY.shape), dtype=dtype).reshape(GEOMETRY.shape)


def test_written_image_has_the_geometry_for_simpleitk_and_nibabel(tmp_path):
    path = write_image(_volume(), GEOMETRY, tmp_path / "case.nii.gz")
    image = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _volume())
    np.testing.assert_allclose(image.GetSpacing(), GEOMETRY.spacing, rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), GEOMETRY.origin, atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), GEOMETRY.direction, atol=1e-6)
    # NIfTI stores RAS; SimpleITK reports LPS: flip x and y of both frame and origin.
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    expected = np.eye(4)
    expected[:3, :3] = lps_to_ras @ np.reshape(GEOMETRY.direction, (3, 3)) @ np.diag(GEOMETRY.spacing)
    expected[:3, 3] = lps_to_ras @ np.asarray(GEOMETRY.origin)
    np.testing.assert_allclose(nibabel.load(str(path)).affine, expected, atol=1e-4)


def test_read_image_returns_zyx_array_and_geometry(tmp_path):
    write_image(_volume(), GEOMETRY, tmp_path / "case.nrrd")
    array, geometry = read_image(tmp_path / "case.nrrd")
    np.testing.assert_array_equal(array, _volume())
    check_same_geometry(GEOMETRY, geometry)
    assert geometry.spacing_zyx == tuple(reversed(geometry.spacing))


def test_write_image_refuses_a_shape_that_is_not_the_geometrys(tmp_path):
    target = tmp_path / "case.nii.gz"
    with pytest.raises(GeometryMismatchError, match=r"case.nii.gz.*\(5, 6, 8\).*\(5, 6, 7\)"):
        write_image(np.zeros((5, 6, 8)), GEOMETRY, target)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("shape", (5, 6, 8), "shape differs"),
        ("spacing", (0.8, 0.7, 3.0), "spacing differs"),
        ("origin", (-12.5, 41.0, 7.25), "origin differs"),
        ("direction", (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), "direction differs"),
    ],
)
def test_check_same_geometry_names_the_field_and_both_values(field, value, message):
    other = Geometry(**{**GEOMETRY.__dict__, field: value})
    with pytest.raises(GeometryMismatchError, match=f"case_7: {message}") as info:
        check_same_geometry(GEOMETRY, other, names=("image", "label"), context="case_7")
    assert "image" in str(info.value) and "label" in str(info.value)


def test_check_same_geometry_tolerates_rounding_in_the_header():
    rounded = Geometry(**{**GEOMETRY.__dict__, "origin": tuple(np.float32(v) for v in GEOMETRY.origin)})
    check_same_geometry(GEOMETRY, rounded)


def test_read_image_names_missing_corrupt_and_multichannel_files(tmp_path):
    with pytest.raises(ImageReadError, match="absent.nii.gz: file not found"):
        read_image(tmp_path / "absent.nii.gz")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="garbage.nii.gz: cannot read image"):
        read_image(garbage)
    vector = sitk.GetImageFromArray(np.zeros((4, 4, 4, 3), np.float32), isVector=True)
    sitk.WriteImage(vector, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(ImageReadError, match="rgb.nrrd: expected a single-channel image, got 3"):
        read_image(tmp_path / "rgb.nrrd")


def test_check_nifti_file_catches_a_bad_gzip_checksum(tmp_path):
    path = write_image(_volume(np.float32), GEOMETRY, tmp_path / "case.nii.gz")
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the CRC-32 of the gzip trailer; the compressed data stay intact
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match="case.nii.gz: cannot read image"):
        check_nifti_file(path)


def test_check_nifti_file_counts_nan_and_infinite_voxels(tmp_path):
    volume = _volume(np.float32)
    volume.flat[[0, 3]] = np.nan
    volume.flat[5] = np.inf
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), str(tmp_path / "bad.nii"))
    with pytest.raises(NonFiniteImageError, match="bad.nii: 2 NaN and 1 infinite"):
        check_nifti_file(tmp_path / "bad.nii")


def test_check_nifti_file_accepts_good_files_and_ignores_other_formats(tmp_path):
    check_nifti_file(write_image(_volume(np.float32), GEOMETRY, tmp_path / "good.nii.gz"))
    check_nifti_file(write_image(_volume(), GEOMETRY, tmp_path / "good.nii"))
    other = tmp_path / "other.nrrd"
    other.write_bytes(b"anything")
    check_nifti_file(other)


def test_a_truncated_nii_is_reported_with_both_sizes(tmp_path):
    path = write_image(_volume(np.float32), GEOMETRY, tmp_path / "case.nii")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ImageReadError, match=r"case.nii: file is truncated \(\d+ bytes, its header needs \d+\)"):
        check_nifti_file(path)
    # The gzip stream of the same cut file is checked too.
    cut = gzip.compress(path.read_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(cut)
    with pytest.raises(ImageReadError, match="cut.nii.gz: file is truncated"):
        check_nifti_file(tmp_path / "cut.nii.gz")


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out" / "report.csv"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".tmp.csv")
        tmp.write_text("first\n")
    assert target.read_text() == "first\n"
    with pytest.raises(RuntimeError, match="midway"):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed midway")
    assert target.read_text() == "first\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.csv"]


def test_atomic_write_gives_the_permissions_of_a_plain_open(tmp_path):
    with atomic_write(tmp_path / "a.txt") as tmp:
        tmp.write_text("x")
    (tmp_path / "b.txt").write_text("x")
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode)


def test_write_json_atomic_writes_nan_as_null_and_numpy_scalars_as_numbers(tmp_path):
    path = write_json_atomic(tmp_path / "s.json", {"dice": np.float32(0.5), "hd95": float("nan"),
                                                   "per_case": [np.int64(3), (float("nan"), 1.0)]})
    assert json.loads(path.read_text()) == {"dice": 0.5, "hd95": None, "per_case": [3, [None, 1.0]]}


@pytest.mark.parametrize(
    "name, suffix, case",
    [("a_0000.nii.gz", ".nii.gz", "a_0000"), ("B.NII.GZ", ".nii.gz", "B"), ("c.nii", ".nii", "c"),
     ("d.v2.nrrd", ".nrrd", "d.v2"), ("e.mha", ".mha", "e"), ("notes.txt", "", "notes")],
)
def test_image_suffix_and_case_name(name, suffix, case):
    assert image_suffix(name) == suffix
    assert case_name(name) == case


def test_list_images_sorts_and_skips_other_files(tmp_path):
    for name in ("b.nii.gz", "a.nrrd", "readme.md", "c.nii"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.nii.gz").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.nrrd", "b.nii.gz", "c.nii"]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list_images(tmp_path / "absent")


def test_index_to_physical_is_simpleitks_and_comes_back():
    image = sitk.GetImageFromArray(_volume())
    GEOMETRY.apply_to(image)
    matrix = GEOMETRY.index_to_physical()
    for index_zyx in [(0, 0, 0), (4, 5, 6), (2, 1, 3)]:
        expected = image.TransformIndexToPhysicalPoint(tuple(int(i) for i in reversed(index_zyx)))
        np.testing.assert_allclose((matrix @ [*index_zyx, 1.0])[:3], expected, atol=1e-9)
    back = Geometry.from_index_to_physical(GEOMETRY.shape, matrix)
    check_same_geometry(GEOMETRY, back, atol=1e-9, rtol=1e-9)
    # an array with its axes in another order is the same grid in physical space
    swapped = matrix[:, [2, 1, 0, 3]]
    other = Geometry.from_index_to_physical(GEOMETRY.shape[::-1], swapped)
    assert other.spacing == pytest.approx(GEOMETRY.spacing[::-1])
    with pytest.raises(ValueError, match="non-orthogonal"):
        Geometry.from_index_to_physical((2, 2, 2), np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]))
