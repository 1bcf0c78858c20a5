"""``medattn convert synapse``: BTCV RawData to nnU-Net v2 raw.

Outputs are checked with nibabel (an independent reader) against the source files, and
labels against a brute-force per-organ comparison with the BTCV ids.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medattn.cli import main
from medattn.preprocess import synapse
from tests.preprocess.conftest import BTCV_LABELLED, make_case, write_btcv

# The issue's table: new label -> (organ, BTCV id).
ISSUE_TABLE = {1: ("aorta", 8), 2: ("gallbladder", 4), 3: ("left_kidney", 3), 4: ("right_kidney", 2),
               5: ("liver", 6), 6: ("pancreas", 11), 7: ("spleen", 1), 8: ("stomach", 7)}


def nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob(".*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def converted(btcv_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nnunet_raw")
    rc = main(["convert", "synapse", "--src", str(btcv_raw), "--out", str(out), "--dataset-id", "501", "-j", "2"])
    assert rc == 0
    return out / "Dataset501_Synapse"


def test_split_and_label_mapping_follow_the_published_protocol():
    assert set(synapse.TRANSUNET_TRAIN_CASES).isdisjoint(synapse.TRANSUNET_TEST_CASES)
    assert sorted(synapse.TRANSUNET_TRAIN_CASES + synapse.TRANSUNET_TEST_CASES) == sorted(BTCV_LABELLED)
    assert len(synapse.TRANSUNET_TEST_CASES) == 12
    names_8, mapping = synapse.label_scheme(8)
    for new, (organ, btcv_id) in ISSUE_TABLE.items():
        assert names_8[organ] == new and mapping[btcv_id] == new and synapse.BTCV_LABELS[organ] == btcv_id
    assert set(mapping) == {btcv for _, btcv in ISSUE_TABLE.values()}  # every other id -> background
    with pytest.raises(ValueError, match="8 or 13, got 9"):
        synapse.label_scheme(9)


def test_transunet_split_layout_and_dataset_json(converted):
    train = {n for n in BTCV_LABELLED if n not in synapse.TRANSUNET_TEST_CASES}
    assert names(converted / "imagesTr") == {f"synapse_{n:04d}_0000.nii.gz" for n in train}
    assert names(converted / "labelsTr") == {f"synapse_{n:04d}.nii.gz" for n in train}
    assert names(converted / "labelsTs") == {f"synapse_{n:04d}.nii.gz" for n in synapse.TRANSUNET_TEST_CASES}
    unlabelled = {"synapse_0061_0000.nii.gz", "synapse_0062_0000.nii.gz"}
    test_images = {f"synapse_{n:04d}_0000.nii.gz" for n in synapse.TRANSUNET_TEST_CASES}
    assert names(converted / "imagesTs") == test_images | unlabelled
    meta = json.loads((converted / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["numTraining"] == 18 == len(train)
    assert meta["file_ending"] == ".nii.gz"
    assert meta["labels"] == {"background": 0, **{organ: new for new, (organ, _) in ISSUE_TABLE.items()}}
    subset = json.loads((converted / synapse.EVALUATE_LABELS_FILE).read_text())
    assert subset == {"labels": meta["labels"], "evaluate_labels": [ISSUE_TABLE[i][0] for i in range(1, 9)]}
    assert no_temp_files(converted)


@pytest.mark.parametrize("number", [5, 1, 61])  # a training, a test and an unlabelled case
def test_images_keep_values_and_geometry_and_labels_follow_the_table(converted, btcv_raw, number):
    subset = "Tr" if number in synapse.TRANSUNET_TRAIN_CASES else "Ts"
    folder = "Testing" if number == 61 else "Training"
    source, source_affine = nifti(btcv_raw / folder / "img" / f"img{number:04d}.nii.gz")
    image, affine = nifti(converted / f"images{subset}" / f"synapse_{number:04d}_0000.nii.gz")
    assert image.dtype == source.dtype
    np.testing.assert_array_equal(image, source)
    np.testing.assert_allclose(affine, source_affine, atol=1e-4)
    if number == 61:
        return
    source_label, _ = nifti(btcv_raw / "Training" / "label" / f"label{number:04d}.nii.gz")
    label, label_affine = nifti(converted / f"labels{subset}" / f"synapse_{number:04d}.nii.gz")
    np.testing.assert_allclose(label_affine, source_affine, atol=1e-4)
    assert label.dtype == np.uint8
    for new, (_, btcv_id) in ISSUE_TABLE.items():
        np.testing.assert_array_equal(label == new, source_label == btcv_id)
    kept = np.isin(source_label, [btcv for _, btcv in ISSUE_TABLE.values()])
    assert np.all(label[~kept] == 0) and np.count_nonzero(label) == np.count_nonzero(kept)


def test_labels_13_keep_btcv_ids_and_write_the_8_organ_subset(tmp_path):
    raw = write_btcv(tmp_path / "src", numbers=(5, 6))
    rc = main(["convert", "synapse", "--src", str(raw), "--out", str(tmp_path / "out"), "--labels", "13",
               "--split", "all", "--dataset-id", "503"])
    assert rc == 0
    folder = tmp_path / "out" / "Dataset503_Synapse"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == synapse.BTCV_LABELS and meta["numTraining"] == 2
    for number in (5, 6):
        source, _ = nifti(raw / "Training" / "label" / f"label{number:04d}.nii.gz")
        label, _ = nifti(folder / "labelsTr" / f"synapse_{number:04d}.nii.gz")
        np.testing.assert_array_equal(label, source)
    subset = json.loads((folder / "evaluate_labels_8organs.json").read_text())
    assert subset["labels"] == synapse.BTCV_LABELS
    assert sorted(subset["evaluate_labels"]) == sorted(organ for organ, _ in ISSUE_TABLE.values())
    assert all(organ in subset["labels"] for organ in subset["evaluate_labels"])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): np.asarray(nib.load(str(p)).dataobj).tobytes()
            for p in sorted(folder.rglob("*.nii.gz"))}


def test_rerun_is_idempotent_and_prunes_cases_of_an_earlier_split(tmp_path):
    raw = write_btcv(tmp_path / "src", numbers=(1, 2, 5, 6, 7))
    out = tmp_path / "out"
    args = ["convert", "synapse", "--src", str(raw), "--out", str(out)]
    assert main(args + ["--split", "all"]) == 0
    folder = out / "Dataset501_Synapse"
    assert len(names(folder / "imagesTr")) == 5
    assert main(args) == 0  # now the TransUNet split: 1 and 2 are test cases
    first = _snapshot(folder)
    assert names(folder / "imagesTr") == {f"synapse_{n:04d}_0000.nii.gz" for n in (5, 6, 7)}
    assert names(folder / "imagesTs") == {f"synapse_{n:04d}_0000.nii.gz" for n in (1, 2)}
    assert main(args + ["-j", "2"]) == 0
    assert _snapshot(folder) == first
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 3


def test_missing_split_cases_are_reported_but_do_not_stop_the_run(tmp_path, capsys):
    raw = write_btcv(tmp_path / "src", numbers=(1, 5))
    assert main(["convert", "synapse", "--src", str(raw), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "28 case(s) of the TransUNet split are not in" in err and "[2, 3, 4, 6," in err


def test_bad_cases_are_skipped_with_a_clear_reason_each(tmp_path, capsys):
    from medattn.data.io import Geometry, write_image

    raw = write_btcv(tmp_path / "src", numbers=(5, 6, 7, 9, 10, 21, 23, 24, 26, 27, 28))
    labels = raw / "Training" / "label"
    images = raw / "Training" / "img"
    image, label, geometry = make_case(7)
    shifted = Geometry(geometry.shape, geometry.spacing, (geometry.origin[0] + 5.0, *geometry.origin[1:]),
                       geometry.direction)
    write_image(label, shifted, labels / "label0007.nii.gz")  # 7: origin mismatch
    image, label, geometry = make_case(9)
    small = Geometry(label[:-1].shape, geometry.spacing, geometry.origin, geometry.direction)
    write_image(label[:-1], small, labels / "label0009.nii.gz")  # 9: shape mismatch
    (labels / "label0010.nii.gz").unlink()  # 10: missing label
    image, label, geometry = make_case(21)
    label[0, 0, 0] = 14
    write_image(label, geometry, labels / "label0021.nii.gz")  # 21: unknown label value
    flat = Geometry(image.shape[1:], geometry.spacing[:2], geometry.origin[:2], (1.0, 0.0, 0.0, 1.0))
    write_image(make_case(23)[0][0], flat, images / "img0023.nii.gz")  # 23: 2D image
    (images / "img0024.nii.gz").write_bytes(gzip.compress(b"not a nifti file at all"))  # 24: unreadable
    image, label, geometry = make_case(26)
    write_image(np.zeros_like(label), geometry, labels / "label0026.nii.gz")  # 26: empty label map
    image, label, geometry = make_case(27)
    image = image.astype(np.float32)
    image[2, 3, 4] = np.nan
    write_image(image, geometry, images / "img0027.nii.gz")  # 27: NaN in the CT
    data = (labels / "label0028.nii.gz").read_bytes()
    (labels / "label0028.nii.gz").write_bytes(data[: len(data) // 2])  # 28: truncated download
    out = tmp_path / "out"

    rc = main(["convert", "synapse", "--src", str(raw), "--out", str(out), "--split", "all", "-j", "2"])

    assert rc == 1
    summary = capsys.readouterr().out
    assert "skipped 9 case(s):" in summary
    expected = {
        "synapse_0007": "origin differs",
        "synapse_0009": "shape differs",
        "synapse_0010": "missing label file",
        "synapse_0021": "unexpected label value(s) [14]",
        "synapse_0023": "expected a 3D volume",
        "synapse_0024": "img0024.nii.gz: cannot read",
        "synapse_0026": "the label map is empty (background only)",
        "synapse_0027": "img0027.nii.gz: 1 NaN and 0 infinite voxel(s)",
        "synapse_0028": "label0028.nii.gz: cannot read",
    }
    lines = {line.split()[0].rstrip(":"): line for line in summary.splitlines() if line.startswith("  synapse_")}
    assert set(lines) == set(expected)
    for case, reason in expected.items():
        assert reason in lines[case], lines[case]
    folder = out / "Dataset501_Synapse"
    assert names(folder / "labelsTr") == {"synapse_0005.nii.gz", "synapse_0006.nii.gz"}
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    assert no_temp_files(out)


def test_cli_errors_for_a_folder_that_is_not_btcv(tmp_path, capsys):
    assert main(["convert", "synapse", "--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "not a BTCV RawData folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["convert"], ["convert", "synapse"], ["convert", "transunet"],
                                     ["convert", "dicom"]])
def test_every_convert_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "medattn convert" in text


def test_group_without_subcommand_prints_help(capsys):
    assert main(["convert"]) == 2
    assert "synapse" in capsys.readouterr().out


def test_real_ct_as_one_case_btcv(shared_data, tmp_path):
    """The real CT keeps geometry and HU values; 8-label mapping gives each organ's voxel count."""
    example = shared_data / "ct-abdomen-example"
    raw = tmp_path / "RawData"
    (raw / "Training" / "img").mkdir(parents=True)
    (raw / "Training" / "label").mkdir(parents=True)
    os.symlink(example / "ct.nii.gz", raw / "Training" / "img" / "img0005.nii.gz")
    os.symlink(example / "label_btcv.nii.gz", raw / "Training" / "label" / "label0005.nii.gz")

    rc = main(["convert", "synapse", "--src", str(raw), "--out", str(tmp_path / "out"), "--split", "all"])

    assert rc == 0
    folder = tmp_path / "out" / "Dataset501_Synapse"
    source, source_affine = nifti(example / "ct.nii.gz")
    image, affine = nifti(folder / "imagesTr" / "synapse_0005_0000.nii.gz")
    np.testing.assert_allclose(affine, source_affine, atol=1e-4)
    assert image.dtype == source.dtype == np.int16
    np.testing.assert_array_equal(image, source)
    source_label, _ = nifti(example / "label_btcv.nii.gz")
    label, _ = nifti(folder / "labelsTr" / "synapse_0005.nii.gz")
    for new, (organ, btcv_id) in ISSUE_TABLE.items():
        expected = np.count_nonzero(source_label == btcv_id)
        assert expected > 0, f"{organ} absent from the example; the check would be vacuous"
        assert np.count_nonzero(label == new) == expected, organ
    assert np.count_nonzero(label) == sum(np.count_nonzero(source_label == b) for _, b in ISSUE_TABLE.values())


@pytest.mark.parametrize("labels", [8, 13])
def test_evaluate_labels_file_is_read_by_medattn_evaluate(tmp_path, labels):
    from medattn.evaluation import labels as evaluation

    names_out, _ = synapse.label_scheme(labels)
    path = synapse.write_evaluate_labels(tmp_path, names_out)
    label_map = evaluation.parse_label_map(path)
    scored = {label_map.name_of(value) for value in label_map.scored}
    assert scored == {organ for organ, _ in ISSUE_TABLE.values()}
    assert len(label_map.names) == labels
