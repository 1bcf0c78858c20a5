"""``medattn convert dicom``: synthetic series written with SimpleITK, and the real JPEG 2000 CT."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from medattn.cli import main
from medattn.preprocess import dicom
from tests.preprocess.conftest import rotation_direction


def write_series(folder: Path, volume: np.ndarray, *, uid: str, spacing=(0.7, 0.8, 2.5),
                 origin=(-100.0, 20.0, -300.0), direction=None, description="synthetic CT") -> sitk.Image:
    """Write ``volume`` (z, y, x) as a CT series, one file per slice, tags set as scanners do."""
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction or rotation_direction(2))
    d = image.GetDirection()
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.shape[0]):
        section = image[:, :, k]
        tags = {
            "0008|0060": "CT",
            "0008|103e": description,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0008|0018": f"{uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": str(spacing[2]),
        }
        for key, value in tags.items():
            section.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{uid}_{k:03d}.dcm"))
        writer.Execute(section)
    return image


def volume(depth=6, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2000, size=(depth, 10, 12)).astype(np.int16)


def test_series_converts_with_values_and_patient_geometry(tmp_path):
    source = write_series(tmp_path / "dcm", volume(), uid="1.2.3.4.1")
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", "dicom", "--src", str(tmp_path / "dcm"), "--out", str(out)]) == 0
    result = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), sitk.GetArrayFromImage(source))
    np.testing.assert_allclose(result.GetSpacing(), source.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(result.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(result.GetDirection(), source.GetDirection(), atol=1e-5)
    # a corner voxel lands at the same physical point as in the source
    corner = tuple(s - 1 for s in source.GetSize())
    np.testing.assert_allclose(result.TransformIndexToPhysicalPoint(corner),
                               source.TransformIndexToPhysicalPoint(corner), atol=1e-3)


def test_several_series_need_a_uid_and_are_listed(tmp_path, capsys):
    first = write_series(tmp_path / "study", volume(seed=1), uid="1.2.3.4.1", description="arterial")
    write_series(tmp_path / "study" / "sub", volume(depth=4, seed=2), uid="1.2.3.4.2", description="venous")
    out = tmp_path / "ct.nii.gz"

    assert main(["convert", "dicom", "--src", str(tmp_path / "study"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "holds 2 DICOM series; choose one with --series-uid" in err
    assert "1.2.3.4.1  6 file(s)" in err and "1.2.3.4.2  4 file(s)" in err and "'venous'" in err
    assert not out.exists()

    assert main(["convert", "dicom", "--src", str(tmp_path / "study"), "--list"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2

    study = str(tmp_path / "study")
    assert main(["convert", "dicom", "--src", study, "--out", str(out), "--series-uid", "1.2.3.4.1"]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), sitk.GetArrayFromImage(first))

    assert main(["convert", "dicom", "--src", str(tmp_path / "study"), "--out", str(out), "--series-uid", "9.9"]) == 1
    assert "no series with UID '9.9'" in capsys.readouterr().err


def test_missing_slice_single_slice_and_empty_folder_are_clear_errors(tmp_path, capsys):
    write_series(tmp_path / "gap", volume(), uid="1.2.3.4.5")
    sorted((tmp_path / "gap").iterdir())[3].unlink()
    assert main(["convert", "dicom", "--src", str(tmp_path / "gap"), "--out", str(tmp_path / "a.nii.gz")]) == 1
    assert "uneven slice gaps" in capsys.readouterr().err

    write_series(tmp_path / "one", volume(depth=1), uid="1.2.3.4.6")
    assert main(["convert", "dicom", "--src", str(tmp_path / "one"), "--out", str(tmp_path / "b.nii.gz")]) == 1
    assert "not a 3D volume" in capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no dicom here")
    assert main(["convert", "dicom", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "c.nii.gz")]) == 1
    assert "no DICOM series found" in capsys.readouterr().err

    assert main(["convert", "dicom", "--src", str(tmp_path / "gap"), "--out", str(tmp_path / "x.png")]) == 1
    assert "output must end in .nii.gz" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.nii.gz"))


def _corners(image: sitk.Image) -> np.ndarray:
    size = image.GetSize()
    points = [image.TransformIndexToPhysicalPoint(tuple(int(c) for c in corner))
              for corner in itertools.product(*[(0, s - 1) for s in size])]
    return np.array(sorted(points))


def test_real_jpeg2000_series_aligns_with_its_label_in_physical_space(shared_data, tmp_path):
    example = shared_data / "ct-abdomen-example"
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", "dicom", "--src", str(example / "dicom"), "--out", str(out)]) == 0
    ct = sitk.ReadImage(str(out))
    hu = sitk.GetArrayFromImage(ct)

    # geometry against pydicom's reading of the headers
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((example / "dicom").iterdir())]
    headers.sort(key=lambda h: float(h.ImagePositionPatient[2]))
    assert ct.GetSize() == (int(headers[0].Columns), int(headers[0].Rows), len(headers))
    np.testing.assert_allclose(ct.GetOrigin(), [float(v) for v in headers[0].ImagePositionPatient], atol=1e-3)
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    row_spacing, column_spacing = (float(v) for v in headers[0].PixelSpacing)
    np.testing.assert_allclose(ct.GetSpacing(), (column_spacing, row_spacing, np.diff(z).mean()), atol=1e-4)
    # decoding and rescaling: each slice's range is the stored range times slope plus intercept
    for k, header in enumerate(headers):
        slope, intercept = float(header.RescaleSlope), float(header.RescaleIntercept)
        if "SmallestImagePixelValue" in header:
            assert hu[k].min() == header.SmallestImagePixelValue * slope + intercept
            assert hu[k].max() == header.LargestImagePixelValue * slope + intercept

    # the label is stored with y flipped: same physical grid, different index order
    label = sitk.ReadImage(str(example / "dicom_label_btcv.nii.gz"))
    assert label.GetDirection() != ct.GetDirection()
    np.testing.assert_allclose(_corners(label), _corners(ct), atol=1e-3)
    aligned = sitk.GetArrayFromImage(sitk.Resample(label, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    by_index = sitk.GetArrayFromImage(label)
    np.testing.assert_array_equal(np.bincount(aligned.ravel(), minlength=14),
                                  np.bincount(by_index.ravel(), minlength=14))

    liver, aorta = 6, 8
    liver_hu, aorta_hu = hu[aligned == liver].mean(), hu[aligned == aorta].mean()
    assert 20 < liver_hu < 200, liver_hu  # contrast-enhanced parenchyma
    assert 100 < aorta_hu < 400, aorta_hu  # contrast-filled vessel
    assert abs(liver_hu - hu[by_index == liver].mean()) > 100  # index-order alignment is wrong
    assert abs(aorta_hu - hu[by_index == aorta].mean()) > 100


def test_list_series_reports_the_anonymised_real_series(shared_data):
    series = dicom.list_series(shared_data / "ct-abdomen-example" / "dicom")
    assert len(series) == 1 and len(series[0].files) == 20 and series[0].modality == "CT"


def test_a_garbled_image_position_is_named_by_file(tmp_path, capsys):
    """Found by the reader fuzz: a slice whose Image Position (Patient) is not three numbers."""
    write_series(tmp_path / "dcm", volume(), uid="1.2.3.4.9")
    victim = sorted((tmp_path / "dcm").iterdir())[2]
    header = pydicom.dcmread(victim)
    del header[0x00200032]
    header.add_new(0x00200032, "LO", "0>0 \\0\\0")  # what a flipped bit makes of "0.0\0\0"
    header.save_as(victim)
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", "dicom", "--src", str(tmp_path / "dcm"), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert victim.name in err and "Image Position (Patient)" in err and "Traceback" not in err
    assert not out.exists()
