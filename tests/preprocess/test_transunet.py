"""TransUNet's npz/h5 layout: import into nnU-Net, export from BTCV, and the round trip."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from medattn.cli import main
from medattn.preprocess import synapse, transunet
from tests.preprocess.conftest import make_case, write_btcv
from tests.preprocess.test_synapse import ISSUE_TABLE, names, nifti, no_temp_files


def mapped_8(label: np.ndarray) -> np.ndarray:
    """The 8-organ label map, built organ by organ from the issue's table."""
    out = np.zeros(label.shape, dtype=np.uint8)
    for new, (_, btcv_id) in ISSUE_TABLE.items():
        out[label == btcv_id] = new
    return out


def test_hu_scaling_matches_the_published_window_and_inverts():
    hu = np.array([-3000, -1024, -125, 0, 75, 275, 276, 3000], dtype=np.int16)
    expected = (np.clip(hu.astype(np.float64), -125, 275) + 125) / 400
    unit = transunet.hu_to_unit(hu)
    assert unit.dtype == np.float32 and unit.min() == 0 and unit.max() == 1
    np.testing.assert_allclose(unit, expected, atol=1e-7)
    np.testing.assert_allclose(transunet.unit_to_hu(unit), np.clip(hu, -125, 275), atol=1e-3)
    window = np.arange(-125, 276, dtype=np.int16)
    error = np.abs(transunet.unit_to_hu(transunet.hu_to_unit(window)) - window).max()
    assert error < transunet.WHOLE_HU_TOLERANCE / 10
    restored = transunet._whole_hu(transunet.unit_to_hu(transunet.hu_to_unit(window)))
    assert restored.dtype == np.int16
    np.testing.assert_array_equal(restored, window)
    fractional = transunet._whole_hu(transunet.unit_to_hu(np.array([0.3337, 0.5], dtype=np.float32)))
    assert fractional.dtype == np.float32


@pytest.fixture(scope="module")
def exported(btcv_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("transunet")
    assert main(["convert", "synapse", "--src", str(btcv_raw), "--out", str(out), "--to", "transunet", "-j", "2"]) == 0
    return out


def test_export_writes_slices_volumes_and_lists(exported, btcv_raw):
    train = sorted(synapse.TRANSUNET_TRAIN_CASES)
    depth = {n: make_case(n)[0].shape[0] for n in synapse.TRANSUNET_TRAIN_CASES + synapse.TRANSUNET_TEST_CASES}
    lists = exported / "lists" / "lists_Synapse"
    expected_slices = [f"case{n:04d}_slice{k:03d}" for n in train for k in range(depth[n])]
    assert (lists / "train.txt").read_text().split() == expected_slices
    assert (lists / "test_vol.txt").read_text().split() == [f"case{n:04d}" for n in sorted(synapse.TRANSUNET_TEST_CASES)]
    assert names(exported / "test_vol_h5") == {f"case{n:04d}.npy.h5" for n in synapse.TRANSUNET_TEST_CASES}
    assert len(names(exported / "train_npz")) == sum(depth[n] for n in train)
    assert no_temp_files(exported)

    source, _ = nifti(btcv_raw / "Training" / "img" / "img0007.nii.gz")  # nibabel: (x, y, z)
    source_label, _ = nifti(btcv_raw / "Training" / "label" / "label0007.nii.gz")
    for k in range(depth[7]):
        with np.load(exported / "train_npz" / f"case0007_slice{k:03d}.npz") as data:
            image, label = data["image"], data["label"]
        # TransUNet slices are (y, x) rows of the (z, y, x) volume, i.e. nibabel's [:, :, k].T
        np.testing.assert_allclose(image, (np.clip(source[:, :, k].T, -125, 275) + 125) / 400, atol=1e-6)
        np.testing.assert_array_equal(label, mapped_8(source_label[:, :, k].T))

    source, _ = nifti(btcv_raw / "Training" / "img" / "img0022.nii.gz")
    source_label, _ = nifti(btcv_raw / "Training" / "label" / "label0022.nii.gz")
    with h5py.File(exported / "test_vol_h5" / "case0022.npy.h5", "r") as h5:
        image, label = h5["image"][()], h5["label"][()]
    np.testing.assert_allclose(image, (np.clip(source.transpose(2, 1, 0), -125, 275) + 125) / 400, atol=1e-6)
    np.testing.assert_array_equal(label, mapped_8(source_label.transpose(2, 1, 0)))


def test_round_trip_btcv_transunet_nnunet_keeps_labels_values_and_geometry(exported, btcv_raw, tmp_path):
    rc = main(["convert", "transunet", "--src", str(exported), "--out", str(tmp_path), "--reference", str(btcv_raw),
               "-j", "2"])
    assert rc == 0
    folder = tmp_path / "Dataset502_SynapseTransUNet"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["numTraining"] == 18 and meta["labels"] == synapse.TRANSUNET_LABELS
    for number in (5, 40, 1, 38):
        subset = "Ts" if number in synapse.TRANSUNET_TEST_CASES else "Tr"
        source, source_affine = nifti(btcv_raw / "Training" / "img" / f"img{number:04d}.nii.gz")
        source_label, _ = nifti(btcv_raw / "Training" / "label" / f"label{number:04d}.nii.gz")
        image, affine = nifti(folder / f"images{subset}" / f"synapse_{number:04d}_0000.nii.gz")
        label, label_affine = nifti(folder / f"labels{subset}" / f"synapse_{number:04d}.nii.gz")
        np.testing.assert_allclose(affine, source_affine, atol=1e-4)
        np.testing.assert_allclose(label_affine, source_affine, atol=1e-4)
        assert image.dtype == np.int16  # whole HU numbers come back exactly
        np.testing.assert_array_equal(image, np.clip(source, -125, 275))
        np.testing.assert_array_equal(label, mapped_8(source_label))


def test_without_reference_the_default_spacing_is_used_and_announced(exported, tmp_path, capsys):
    assert main(["convert", "transunet", "--src", str(exported), "--out", str(tmp_path)]) == 0
    assert "store no voxel spacing; assuming (0.76, 0.76, 3.0)" in capsys.readouterr().err
    image = nib.load(str(tmp_path / "Dataset502_SynapseTransUNet" / "imagesTr" / "synapse_0005_0000.nii.gz"))
    np.testing.assert_allclose(image.header.get_zooms(), transunet.DEFAULT_SPACING, rtol=1e-6)
    args = ["convert", "transunet", "--src", str(exported), "--out", str(tmp_path)]
    assert main(args + ["--spacing", "1", "1", "2"]) == 0
    assert "assuming" not in capsys.readouterr().err
    image = nib.load(str(tmp_path / "Dataset502_SynapseTransUNet" / "imagesTs" / "synapse_0001_0000.nii.gz"))
    np.testing.assert_allclose(image.header.get_zooms(), (1, 1, 2))


# --------------------------------------------------------------------------- a hand-written TransUNet folder


def write_transunet(root: Path, train: dict[int, int], test: dict[int, int], shuffle_lists: bool = True) -> Path:
    """A TransUNet folder written the way its own data look: uncompressed ``np.savez``,
    float32 labels, one h5 per test case. Each slice's image encodes its index, so the
    restacking order can be checked. ``train``/``test``: case number -> number of slices."""
    rng = np.random.default_rng(3)
    (root / "train_npz").mkdir(parents=True)
    (root / "test_vol_h5").mkdir()
    entries = []
    for number, depth in train.items():
        for k in range(depth):
            image = np.full((6, 5), k / 1000, dtype=np.float32)
            label = rng.integers(0, 9, size=(6, 5)).astype(np.float32)
            np.savez(root / "train_npz" / f"case{number:04d}_slice{k:03d}.npz", image=image, label=label)
            entries.append(f"case{number:04d}_slice{k:03d}")
    for number, depth in test.items():
        with h5py.File(root / "test_vol_h5" / f"case{number:04d}.npy.h5", "w") as h5:
            h5["image"] = rng.random((depth, 6, 5)).astype(np.float32)
            h5["label"] = rng.integers(0, 9, size=(depth, 6, 5)).astype(np.float32)
    if shuffle_lists:
        rng.shuffle(entries)
    lists = root / "lists" / "lists_Synapse"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"{e}\n" for e in entries))
    (lists / "test_vol.txt").write_text("".join(f"case{n:04d}\n" for n in test))
    return root


def test_slices_are_restacked_by_index_whatever_the_list_order(tmp_path):
    src = write_transunet(tmp_path / "src", train={5: 12, 6: 3}, test={1: 4})
    assert main(["convert", "transunet", "--src", str(src), "--out", str(tmp_path / "out"),
                 "--intensity", "scaled"]) == 0
    folder = tmp_path / "out" / "Dataset502_SynapseTransUNet"
    image, _ = nifti(folder / "imagesTr" / "synapse_0005_0000.nii.gz")
    assert image.shape == (5, 6, 12)  # nibabel (x, y, z)
    np.testing.assert_allclose(image[0, 0, :], np.arange(12) / 1000, atol=1e-7)
    for k in range(12):
        with np.load(src / "train_npz" / f"case0005_slice{k:03d}.npz") as data:
            np.testing.assert_array_equal(nifti(folder / "labelsTr" / "synapse_0005.nii.gz")[0][:, :, k].T,
                                          data["label"])
    with h5py.File(src / "test_vol_h5" / "case0001.npy.h5", "r") as h5:
        np.testing.assert_array_equal(nifti(folder / "imagesTs" / "synapse_0001_0000.nii.gz")[0].transpose(2, 1, 0),
                                      h5["image"][()])
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2


def test_broken_transunet_cases_are_skipped_with_reasons(tmp_path, capsys):
    src = write_transunet(tmp_path / "src", train={5: 4, 6: 4, 7: 4, 9: 4, 10: 3}, test={1: 3, 2: 3, 3: 3, 4: 3})
    (src / "train_npz" / "case0006_slice002.npz").unlink()  # listed but missing
    (src / "train_npz" / "case0007_slice001.npz").write_bytes(b"PK\x03\x04 truncated zip")  # corrupt
    np.savez(src / "train_npz" / "case0009_slice000.npz", image=np.zeros((6, 5), np.float32),
             label=np.full((6, 5), 9, np.float32))  # label 9 does not exist with 8 labels
    np.savez(src / "train_npz" / "case0010_slice001.npz", image=np.zeros((7, 5), np.float32),
             label=np.zeros((7, 5), np.float32))  # wrong slice shape
    with h5py.File(src / "test_vol_h5" / "case0002.npy.h5", "w") as h5:
        h5["image"] = np.zeros((3, 6, 5), np.float32)  # no label
    with h5py.File(src / "test_vol_h5" / "case0003.npy.h5", "w") as h5:
        h5["image"] = np.full((3, 6, 5), 40.0, np.float32)  # HU, not [0, 1]
        h5["label"] = np.zeros((3, 6, 5), np.float32)
    (src / "test_vol_h5" / "case0004.npy.h5").unlink()  # listed but missing

    rc = main(["convert", "transunet", "--src", str(src), "--out", str(tmp_path / "out")])

    assert rc == 1
    out = capsys.readouterr().out
    expected = {
        "synapse_0006": "slice(s) [2] listed in train.txt are missing",
        "synapse_0007": "cannot read",
        "synapse_0009": "unexpected label value(s) [9]",
        "synapse_0010": "slices have different shapes",
        "synapse_0002": "has no ['label'] dataset",
        "synapse_0003": "not TransUNet's [0, 1] scaling",
        "synapse_0004": "listed in test_vol.txt but missing",
    }
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  synapse_")}
    assert set(lines) == set(expected), out
    for case, reason in expected.items():
        assert reason in lines[case], lines[case]
    folder = tmp_path / "out" / "Dataset502_SynapseTransUNet"
    assert names(folder / "imagesTr") == {"synapse_0005_0000.nii.gz"}
    assert names(folder / "imagesTs") == {"synapse_0001_0000.nii.gz"}
    assert no_temp_files(tmp_path / "out")


def test_gaps_in_slice_indices_fail_the_case_without_lists(tmp_path, capsys):
    src = write_transunet(tmp_path / "src", train={5: 5}, test={})
    for path in (src / "lists" / "lists_Synapse").iterdir():
        path.unlink()
    (src / "train_npz" / "case0005_slice003.npz").unlink()
    assert main(["convert", "transunet", "--src", str(src), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "no " in captured.err and "train.txt; using every slice" in captured.err
    assert "synapse_0005 (case0005): slice indices must run 0..4 without gaps; missing [3]" in captured.out


def test_reference_shape_mismatch_is_an_error(tmp_path, capsys):
    raw = write_btcv(tmp_path / "raw", numbers=(5,))
    src = write_transunet(tmp_path / "src", train={5: 3}, test={})
    assert main(["convert", "transunet", "--src", str(src), "--out", str(tmp_path / "out"),
                 "--reference", str(raw)]) == 1
    assert "differs from reference img0005.nii.gz" in capsys.readouterr().out


def test_not_a_transunet_folder(tmp_path, capsys):
    assert main(["convert", "transunet", "--src", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert "not a TransUNet Synapse folder" in capsys.readouterr().err


def test_slices_not_in_the_lists_are_left_out_with_a_warning(tmp_path, capsys):
    src = write_transunet(tmp_path / "src", train={5: 3}, test={1: 2})
    np.savez(src / "train_npz" / "case0008_slice000.npz", image=np.zeros((6, 5), np.float32),
             label=np.zeros((6, 5), np.float32))
    assert main(["convert", "transunet", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    assert "1 slice file(s) in train_npz are not named in" in capsys.readouterr().err
    assert names(tmp_path / "out" / "Dataset502_SynapseTransUNet" / "imagesTr") == {"synapse_0005_0000.nii.gz"}
