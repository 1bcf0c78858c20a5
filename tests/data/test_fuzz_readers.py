"""Readers under malformed input: a bounded, seeded fuzz of NIfTI, PNG and DICOM files.

Each of about two hundred byte-level mutations (bit flips, truncations, inserted bytes) of a
valid file goes through medattn's readers in a child process with a memory ceiling. Every
outcome must be a valid read or medattn's own clear error that names the file: no crash of
the interpreter, no hang, no other exception, no allocation far above the file's size."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

MUTATIONS_PER_SOURCE = 40
TIMEOUT_S = 240  # the whole run; about 30 s on 2 cores


def _nifti(folder: Path, suffix: str) -> Path:
    import SimpleITK as sitk

    array = (np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8) % 13) - 4
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.5))
    path = folder / f"valid{suffix}"
    sitk.WriteImage(image, str(path))
    return path


def _png(folder: Path) -> Path:
    import SimpleITK as sitk

    array = (np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 97 % 4096).astype(np.uint16)
    path = folder / "valid.png"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def _dicom_series(folder: Path, slices: int = 2) -> list[Path]:
    """A generated CT series (pydicom): 16 x 16 int16 slices, 2.5 mm apart."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series_uid, study_uid = generate_uid(), generate_uid()
    paths = []
    for index in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, series_uid, "CT"
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * index]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [0.7, 0.7], 2.5, index + 1
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.arange(256, dtype=np.int16).reshape(16, 16) * (index + 1)).tobytes()
        path = folder / f"slice_{index:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _mutate(data: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(("flip", "flip", "truncate", "insert", "overwrite"))
    buffer = bytearray(data)
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(buffer))
            buffer[position] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buffer[rng.randrange(1, len(buffer)):]
    elif kind == "insert":
        position = rng.randrange(len(buffer))
        buffer[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    else:  # overwrite a run, often inside the header where sizes and offsets live
        position = rng.randrange(min(len(buffer), 512))
        buffer[position:position + 4] = rng.choice((b"\xff\xff\xff\x7f", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"))
    return bytes(buffer)


def _corpus(root: Path, shared_dicom: Path | None) -> Path:
    """``root/inputs``: every mutation as a file (images) or a two-slice folder (DICOM)."""
    sources = root / "sources"
    sources.mkdir()
    inputs = root / "inputs"
    inputs.mkdir()
    rng = random.Random(0)
    for source in (_nifti(sources, ".nii"), _nifti(sources, ".nii.gz"), _png(sources)):
        data = source.read_bytes()
        shutil.copy(source, inputs / f"intact_{source.name}")
        for index in range(MUTATIONS_PER_SOURCE):
            (inputs / f"m{index:03d}_{source.name}").write_bytes(_mutate(data, rng))
    series = {"generated": _dicom_series(sources)}
    if shared_dicom is not None:
        series["jpeg2000"] = sorted(p for p in shared_dicom.iterdir() if p.is_file())[:2]
    for name, files in series.items():
        for index in range(MUTATIONS_PER_SOURCE):
            folder = inputs / f"m{index:03d}_dicom_{name}"
            folder.mkdir()
            victim = rng.randrange(len(files))
            for position, path in enumerate(files):
                data = path.read_bytes()
                (folder / path.name).write_bytes(_mutate(data, rng) if position == victim else data)
    return inputs


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory, request) -> list[dict]:
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ct-abdomen-example" / "dicom"
    root = tmp_path_factory.mktemp("fuzz")
    inputs = _corpus(root, shared if shared.is_dir() else None)
    results = root / "results.jsonl"
    script = Path(__file__).with_name("fuzz_readers.py")
    try:
        process = subprocess.run([sys.executable, str(script), str(inputs), str(results)], capture_output=True,
                                 text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        process = None
    lines = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    begun = [line["begin"] for line in lines if "begin" in line]
    finished = {line["input"] for line in lines if "input" in line}
    stuck = [name for name in begun if name not in finished]
    if process is None:
        pytest.fail(f"the readers hung (more than {TIMEOUT_S} s) on {stuck or 'start-up'}")
    assert process.returncode == 0, (f"the reader process died (exit {process.returncode}) on {stuck}: "
                                     f"{process.stderr[-2000:]}")
    assert len(finished) == len(list(inputs.iterdir()))
    return [line for line in lines if "input" in line]


def test_every_mutation_is_read_or_refused_with_medattns_error(fuzz_results):
    unexpected = [r for r in fuzz_results if r["result"] == "unexpected"]
    assert not unexpected, json.dumps(unexpected[:3], indent=1)


def test_the_intact_files_read_and_most_mutations_are_caught(fuzz_results):
    by_name = {r["input"]: r for r in fuzz_results}
    assert all(r["result"] == "read" for name, r in by_name.items() if name.startswith("intact_")), by_name
    refused = [r for r in fuzz_results if r["result"] == "refused"]
    assert len(refused) > len(fuzz_results) // 4  # the mutations are not harmless: the check has teeth
    unnamed = [r for r in refused if r["input"] not in r["message"]]  # each message names its file or folder
    assert not unnamed, unnamed[:3]
    shared = Path(__file__).resolve().parents[2].parent / "shared"
    if not shared.is_dir():
        pytest.skip("../shared absent: the real JPEG 2000 DICOM slices were not fuzzed")
    assert any("dicom_jpeg2000" in name for name in by_name)


def test_a_header_declaring_more_voxels_than_the_file_holds_is_refused_before_allocation(tmp_path):
    """A NIfTI header claiming 30000^3 voxels, in a file of a few hundred bytes."""
    import nibabel

    from medattn.data.io import ImageReadError, read_image

    image = nibabel.Nifti1Image(np.zeros((4, 4, 4), dtype=np.uint8), np.eye(4))
    path = tmp_path / "bomb.nii"
    nibabel.save(image, path)
    data = bytearray(path.read_bytes())
    data[42:48] = np.array([30000, 30000, 30000], dtype="<i2").tobytes()  # dim[1..3] at byte 42
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"bomb.nii: header declares \[30000, 30000, 30000\] voxels"):
        read_image(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_an_all_zero_mask_compressed_to_the_limit_still_reads(tmp_path, suffix):
    """The size bound must not refuse real files: deflate's best case, an all-zero uint8
    mask, comes to about 1017 values per byte, under the bound of 1100."""
    import SimpleITK as sitk

    from medattn.data.io import MAX_EXPANSION, read_image

    path = tmp_path / f"empty{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((96, 256, 256), np.uint8)), str(path), True)
    assert 900 < 96 * 256 * 256 / path.stat().st_size < MAX_EXPANSION
    array, _ = read_image(path)
    assert array.shape == (96, 256, 256) and not array.any()
