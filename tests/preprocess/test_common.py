"""Shared converter pieces: label checks, remapping, the parallel case runner, dataset folders."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from medattn.preprocess.common import (
    ConversionError,
    check_nifti_file,
    check_volume,
    dataset_folder,
    discover_numbered,
    label_values,
    map_cases,
    prune_stale_outputs,
    remap_labels,
    write_dataset_json,
)


def test_label_values_matches_numpy_unique():
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.int16, np.float32):
        label = rng.choice([0, 2, 5, 13], size=(4, 9, 7)).astype(dtype)
        assert label_values(label, "case", max_label=13).tolist() == np.unique(label).astype(int).tolist()


@pytest.mark.parametrize(
    "bad, fragment",
    [(14, "unexpected label value(s) [14]"), (-1, "unexpected label value(s) [-1]"), (2.5, "non-integer"),
     (np.nan, "NaN")],
)
def test_label_values_rejects_bad_values_naming_the_case(bad, fragment):
    label = np.zeros((3, 4, 5), dtype=np.float32)
    label[1, 2, 3] = bad
    with pytest.raises(ConversionError, match="case_7") as err:
        label_values(label, "case_7", max_label=13)
    assert fragment in str(err.value)


def test_remap_labels_matches_brute_force():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 14, size=(5, 6, 7)).astype(np.int16)
    mapping = {8: 1, 4: 2, 3: 3, 2: 4, 6: 5, 11: 6, 1: 7, 7: 8}
    expected = np.zeros(label.shape, dtype=np.uint8)
    for index in np.ndindex(label.shape):
        expected[index] = mapping.get(int(label[index]), 0)
    result = remap_labels(label, mapping, "case", max_label=13)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, expected)


def test_check_volume_rejects_non_3d_and_nan():
    with pytest.raises(ConversionError, match=r"c1: expected a 3D volume, got a 2D array of shape \(4, 5\)"):
        check_volume(np.zeros((4, 5)), "c1")
    data = np.zeros((2, 3, 4), dtype=np.float32)
    data[0, 1, 2] = np.nan
    with pytest.raises(ConversionError, match="c2: 1 voxel"):
        check_volume(data, "c2")
    check_volume(np.zeros((2, 3, 4), dtype=np.int16), "fine")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_check_nifti_file_catches_what_simpleitk_reads_silently(tmp_path, suffix):
    import SimpleITK as sitk

    data = np.arange(4 * 30 * 40, dtype=np.float32).reshape(4, 30, 40)
    good = tmp_path / f"good{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(data), str(good))
    check_nifti_file(good, "c0")
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    sitk.ReadImage(str(truncated))  # SimpleITK itself reads it without complaint
    with pytest.raises(ConversionError, match=r"c1: .*(cannot read|is truncated)"):
        check_nifti_file(truncated, "c1")
    data[1, 2, 3] = np.nan
    with_nan = tmp_path / f"nan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(data), str(with_nan))
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(with_nan)))).any()  # NaN read as 0
    with pytest.raises(ConversionError, match=f"c2: .*nan{suffix}: 1 NaN"):
        check_nifti_file(with_nan, "c2")


def _square_or_fail(x):
    if x == 3:
        raise ConversionError("item 3 is broken")
    if x == 4:
        raise OSError("disk gone")
    return x * x


@pytest.mark.parametrize("jobs", [1, 3])
def test_map_cases_collects_failures_and_keeps_going(jobs):
    cases = {f"case{i}": i for i in range(8)}
    results, failures = map_cases(_square_or_fail, cases, jobs=jobs)
    assert results == {f"case{i}": i * i for i in range(8) if i not in (3, 4)}
    assert [(f.case, f.message) for f in failures] == [
        ("case3", "case3: item 3 is broken"),
        ("case4", "case4: disk gone"),
    ]


def test_map_cases_runs_in_parallel_threads():
    seen, barrier = set(), threading.Barrier(2, timeout=10)

    def work(x):
        barrier.wait()  # deadlocks (BrokenBarrierError) unless two cases run at once
        seen.add(threading.get_ident())
        return x

    results, failures = map_cases(work, {"a": 1, "b": 2}, jobs=2)
    assert results == {"a": 1, "b": 2} and not failures and len(seen) == 2


def test_map_cases_lets_bugs_propagate():
    def buggy(_):
        raise TypeError("a bug, not bad data")

    with pytest.raises(TypeError):
        map_cases(buggy, {"a": 1}, jobs=2)
    with pytest.raises(ValueError, match="jobs must be at least 1, got 0"):
        map_cases(buggy, {"a": 1}, jobs=0)


def test_dataset_folder_naming_and_id_clash(tmp_path):
    assert dataset_folder(tmp_path, 7, "Synapse").name == "Dataset007_Synapse"
    (tmp_path / "Dataset501_Other").mkdir()
    with pytest.raises(ValueError, match="already used by Dataset501_Other"):
        dataset_folder(tmp_path, 501, "Synapse")
    for bad_id in (0, 1000, "5"):
        with pytest.raises(ValueError, match="1..999"):
            dataset_folder(tmp_path, bad_id, "Synapse")
    with pytest.raises(ValueError, match="dataset name"):
        dataset_folder(tmp_path, 5, "has space")


def test_write_dataset_json_requires_consecutive_labels(tmp_path):
    path = write_dataset_json(tmp_path, channel_names={"0": "CT"}, labels={"background": 0, "a": 1}, num_training=3)
    assert json.loads(path.read_text()) == {
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}, "numTraining": 3, "file_ending": ".nii.gz"
    }
    with pytest.raises(ValueError, match=r"consecutive from 0, got \[0, 2\]"):
        write_dataset_json(tmp_path, channel_names={"0": "CT"}, labels={"background": 0, "a": 2}, num_training=1)


def test_prune_stale_outputs_touches_only_matching_names(tmp_path):
    for name in ("synapse_0001.nii.gz", "synapse_0002.nii.gz", "notes.txt", "other_0003.nii.gz"):
        (tmp_path / name).write_text("x")
    removed = prune_stale_outputs(tmp_path, [tmp_path / "synapse_0001.nii.gz"], r"synapse_\d{4}\.nii\.gz")
    assert [p.name for p in removed] == ["synapse_0002.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "other_0003.nii.gz", "synapse_0001.nii.gz"]


def test_discover_numbered_rejects_two_files_for_one_case(tmp_path):
    (tmp_path / "img0001.nii.gz").write_text("x")
    (tmp_path / "img0002.nii.gz").write_text("x")
    assert list(discover_numbered(tmp_path, r"img(\d{4})\.nii(?:\.gz)?")) == [1, 2]
    (tmp_path / "img0001.nii").write_text("x")
    with pytest.raises(ConversionError, match="two files for case 1"):
        discover_numbered(tmp_path, r"img(\d{4})\.nii(?:\.gz)?")


# --------------------------------------------------------------------------- nnU-Net's own integrity check


@pytest.mark.slow
def test_converted_datasets_pass_nnunet_verify_dataset_integrity(btcv_raw, tmp_path):
    from medattn.cli import main
    from medattn.preprocess.common import verify_with_nnunet

    raw = tmp_path / "nnUNet_raw"
    base = ["convert", "synapse", "--src", str(btcv_raw), "--out", str(raw)]
    assert main(base + ["--dataset-id", "501"]) == 0
    assert main(base + ["--dataset-id", "503", "--labels", "13", "--split", "all", "--dataset-name", "Synapse13"]) == 0
    assert main(base + ["--to", "transunet", "--out", str(tmp_path / "transunet")]) == 0
    assert main(["convert", "transunet", "--src", str(tmp_path / "transunet"), "--out", str(raw),
                 "--dataset-id", "502"]) == 0
    folders = sorted(raw.iterdir())
    assert [f.name for f in folders] == ["Dataset501_Synapse", "Dataset502_SynapseTransUNet", "Dataset503_Synapse13"]

    result = verify_with_nnunet(folders, timeout=300)

    assert result.ok, result.output[-3000:]
    assert "verify_dataset_integrity Done" in result.output
    assert result.output.count("verify_dataset_integrity Done") == 3
    assert not result.warnings, result.warnings


@pytest.mark.slow
def test_cli_verify_passes_and_the_check_catches_a_broken_dataset(tmp_path, capsys):
    import SimpleITK as sitk

    from medattn.cli import main
    from medattn.preprocess.common import verify_with_nnunet
    from tests.preprocess.conftest import write_btcv

    source = write_btcv(tmp_path / "src", numbers=(5, 6))
    raw = tmp_path / "nnUNet_raw"
    assert main(["convert", "synapse", "--src", str(source), "--out", str(raw), "--split", "all", "--verify"]) == 0
    assert "nnU-Net's integrity check passed" in capsys.readouterr().out

    label_path = raw / "Dataset501_Synapse" / "labelsTr" / "synapse_0005.nii.gz"
    label = sitk.ReadImage(str(label_path))
    broken = sitk.GetArrayFromImage(label)
    broken[0, 0, 0] = 9  # not a label of the 8-organ dataset
    corrupt = sitk.GetImageFromArray(broken)
    corrupt.CopyInformation(label)
    sitk.WriteImage(corrupt, str(label_path))

    result = verify_with_nnunet(raw / "Dataset501_Synapse", timeout=300)

    assert not result.ok
    assert "Unexpected labels found in file" in result.output and "synapse_0005" in result.output
