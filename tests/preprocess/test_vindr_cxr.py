"""preprocess/vindr_cxr.py, the pixel pipeline, on real radiographs from pydicom-data and
pydicom's own test files: decoders agree, the window is DICOM's linear formula, MONOCHROME1 is
inverted within the output range, a lying Bits Stored changes nothing, bad files are named."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medattn.preprocess.vindr_cxr import (DecoderMissingError, RadiographError, _repair_transfer_syntax,
                                          read_radiograph)


def _file(name: str):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not in the installed pydicom-data")
    return path


@pytest.fixture(scope="module")
def chest():
    """RG1: a real PA chest radiograph, MONOCHROME1, 15 bits, window 15000/30000."""
    return {kind: read_radiograph(_file(f"RG1_{kind}.dcm")) for kind in ("UNCI", "J2KI", "J2KR")}


def test_the_jpeg2000_decoder_gives_the_uncompressed_twins_pixels(chest):
    # RG1_UNCI holds the decoded pixels of the lossy RG1_J2KI (its LossyImageCompression is 01)
    np.testing.assert_array_equal(chest["UNCI"][0], chest["J2KI"][0])
    # RG1_J2KR was compressed losslessly from the original: within 3 of 255 grey levels of it
    difference = np.abs(chest["UNCI"][0].astype(int) - chest["J2KR"][0])
    assert difference.max() <= 3 and difference.mean() < 0.6


def test_window_follows_dicoms_linear_formula_and_monochrome1_is_inverted_within_the_range(chest):
    """PS3.3 C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min,
    clipped; 15 bits give [0, 32767]; MONOCHROME1 is then y_min + y_max - y."""
    ds = pydicom.dcmread(_file("RG1_UNCI.dcm"))
    x = ds.pixel_array.astype(np.float64)
    c, w, y_min, y_max = 15000.0, 30000.0, 0.0, 2.0**15 - 1
    y = np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * (y_max - y_min) + y_min, y_min, y_max)
    reference = np.rint((y_min + y_max - y) / (y_max - y_min) * 255)
    array, record = chest["UNCI"]
    assert np.abs(array.astype(int) - reference).max() <= 1
    assert record.inverted and record.voi == "window center 15000, width 30000 (1 of 1)"
    # against the image's own maximum (the notebooks' np.max - y) the picture would differ
    notebook = np.rint((x.max() - x) / (x.max() - x.min()) * 255)
    assert np.abs(array.astype(int) - notebook).mean() > 5


def test_a_wrong_bits_stored_changes_nothing(chest, tmp_path):
    ds = pydicom.dcmread(_file("RG1_J2KI.dcm"))
    ds.BitsStored, ds.HighBit = 12, 11  # what some VinDr JPEG 2000 files declare
    path = tmp_path / "lying.dcm"
    ds.save_as(path)
    array, record = read_radiograph(path)
    np.testing.assert_array_equal(array, chest["J2KI"][0])
    assert (record.bits_stored, record.bits_effective) == (12, 15)


def test_sixteen_bit_output_and_the_record(chest):
    wide, record = read_radiograph(_file("RG1_UNCI.dcm"), output_bits=16)
    assert wide.dtype == np.uint16 and record.output_bits == 16
    assert np.abs(np.rint(wide / 257.0) - chest["UNCI"][0]).max() <= 1
    assert record.pixel_spacing is None and record.spacing_source.startswith("none")  # [0, 0] in this file
    assert (record.width, record.height) == (1841, 1955)


def test_voi_lut_and_modality_lut_files():
    _, lut = read_radiograph(_file("vlut_04.dcm"))
    assert lut.voi.startswith("VOI LUT Sequence")
    array, modality = read_radiograph(_file("mlut_18.dcm"))
    assert modality.voi.startswith("full range") and array.dtype == np.uint8


def test_a_missing_transfer_syntax_is_sniffed_from_the_pixel_data():
    ds = pydicom.dcmread(_file("RG1_J2KI.dcm"))
    del ds.file_meta.TransferSyntaxUID
    assert _repair_transfer_syntax(ds, "x.dcm")
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"  # lossy flag 01: JPEG 2000
    native = pydicom.dcmread(_file("RG1_UNCI.dcm"))
    del native.file_meta.TransferSyntaxUID
    assert _repair_transfer_syntax(native, "x.dcm") and not native.file_meta.TransferSyntaxUID.is_compressed


@pytest.mark.parametrize("name, message", [
    ("rtplan.dcm", "no Pixel Data"),
    ("SC_rgb.dcm", "3 samples per pixel"),
    ("emri_small.dcm", "10 frames"),
])
def test_unusable_files_are_named_with_the_reason(name, message):
    path = _file(name)
    with pytest.raises(RadiographError, match=message) as error:
        read_radiograph(path)
    assert str(path) in str(error.value)


def test_not_dicom_and_a_missing_decoder_are_named(tmp_path, monkeypatch):
    text = tmp_path / "notes.dicom"
    text.write_text("not a radiograph")
    with pytest.raises(RadiographError, match="not a DICOM file"):
        read_radiograph(text)
    copy = tmp_path / "j2k.dicom"
    shutil.copy(_file("RG1_J2KR.dcm"), copy)

    def no_plugin(self):
        raise RuntimeError("Unable to decode the pixel data as there are no pixel data decoder plugins available")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_plugin))
    with pytest.raises(DecoderMissingError, match=r"JPEG 2000 .*install pylibjpeg-openjpeg") as error:
        read_radiograph(copy)
    assert str(copy) in str(error.value)
