"""Reliability: no lost model, no orphaned data file, no half-written output (issue 17's
findings 1-3, 5-7, 9 and 11, one test each, on tiny inputs each test builds)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medattn.cli import main
from tests.data.test_fuzz_readers import _dicom_series

ROI = "32,32,16"


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "monai", "--data", str(data), "--out", str(out), "--roi", ROI, "--no-progress",
                 "--epochs", "1", "--limit-cases", "2", "--batch-size", "1", "--device", "cpu",
                 "--network-kwargs", '{"filters": [4, 8, 16, 32]}', "--val-fraction", "0.5", *extra])


# 1 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--resume"]])
def test_a_run_folder_keeping_only_its_best_checkpoint_is_never_overwritten(phantom, monai_checkpoint, tmp_path,
                                                                           capsys, extra):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(monai_checkpoint, out / "checkpoint_best.pt")
    (out / "config.json").write_text("{}")
    before = (out / "checkpoint_best.pt").read_bytes()
    assert _train(phantom, out, "--network", "segresnet", *extra) == 2
    error = capsys.readouterr().err
    assert "checkpoint_best.pt" in error and ("--resume" in error or "no checkpoint_last.pt" in error)
    assert (out / "checkpoint_best.pt").read_bytes() == before


# 2, 3 ------------------------------------------------------------------------------------


def test_mhd_predictions_stay_readable_across_reruns(phantom, monai_checkpoint, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    image = sitk.ReadImage(str(sorted((phantom / "imagesTr").glob("*.nii.gz"))[0]))
    sitk.WriteImage(image, str(inputs / "m.mhd"))
    argv = ["predict", "--model", str(monai_checkpoint), "--input", str(inputs), "--output", str(out),
            "--device", "cpu", "--no-tta", "--no-progress"]
    for _ in range(2):
        assert main(argv) == 0
        assert _hidden(out) == []  # no temporary-named voxel file that the header points to
        assert sitk.ReadImage(str(out / "m.mhd")).GetSize() == image.GetSize()
    (out / ".m.mhd.abcd1234.tmpdir").mkdir()  # what a kill during the write leaves
    (out / ".m.mhd.abcd1234.tmpdir" / "m.zraw").write_bytes(b"x" * 100)
    assert main(argv) == 0
    assert _hidden(out) == []


def test_dicom_to_mhd_writes_header_and_voxels_under_their_names(tmp_path):
    from medattn.preprocess.dicom import convert_dicom

    series = tmp_path / "series"
    series.mkdir()
    _dicom_series(series, slices=3)
    for _ in range(2):
        convert_dicom(series, tmp_path / "out" / "ct.mhd")
        assert _hidden(tmp_path / "out") == []
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ct.mhd", "ct.zraw"]
        assert sitk.ReadImage(str(tmp_path / "out" / "ct.mhd")).GetSize() == (16, 16, 3)


# 5, 6 ------------------------------------------------------------------------------------


def test_converters_remove_the_temporaries_a_killed_run_left(tmp_path):
    """Every converter names its dataset folder through dataset_folder, which clears them:
    nnU-Net would count a 0-byte .synapse_0001_0000.nii.gz.XXXX.tmp.nii.gz as a case."""
    from medattn.preprocess.common import dataset_folder

    stale = tmp_path / "Dataset501_Synapse" / "imagesTr" / ".synapse_0001_0000.nii.gz.a1b2c3d4.tmp.nii.gz"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"")
    keep = stale.parent / "synapse_0002_0000.nii.gz"
    keep.write_bytes(b"real")
    dataset_folder(tmp_path, 501, "Synapse")
    assert not stale.exists() and keep.exists()


def test_training_clears_checkpoint_temporaries_a_kill_left(phantom, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint_last.pt.k1ll3d00.tmp.pt"
    stale.write_bytes(b"\0" * 1000)
    assert _train(phantom, out, "--resume") == 0  # nothing to resume: a new run starts
    assert not stale.exists() and (out / "checkpoint_last.pt").is_file()
    assert _hidden(out) == []


# 7 ---------------------------------------------------------------------------------------


def test_ctrl_c_during_predict_ends_with_a_summary_and_exit_130(monai_checkpoint, phantom, tmp_path, capsys,
                                                                monkeypatch):
    from medattn.inference import batch

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(batch, "predict", interrupted)
    code = main(["predict", "--model", str(monai_checkpoint), "--input", str(phantom / "imagesTr"),
                 "--output", str(tmp_path / "out"), "--device", "cpu", "--no-progress"])
    error = capsys.readouterr().err
    assert code == 130
    assert "interrupted" in error and "run the same command again" in error and "Traceback" not in error


# 9 ---------------------------------------------------------------------------------------


def test_a_2d_image_given_to_a_3d_model_is_named(monai_checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.float32)), str(inputs / "flat.nii.gz"))
    assert main(["predict", "--model", str(monai_checkpoint), "--input", str(inputs), "--output",
                 str(tmp_path / "out"), "--device", "cpu", "--no-progress"]) == 1
    assert "flat.nii.gz: a 2D image of size (32, 32), but the model is 3D" in capsys.readouterr().err


# 11 --------------------------------------------------------------------------------------


def test_outputs_that_are_files_are_refused_in_medattns_words(monai_checkpoint, phantom, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    runs = [
        ["predict", "--model", str(monai_checkpoint), "--input", str(phantom / "imagesTr"), "--output",
         str(blocker), "--device", "cpu", "--no-progress"],
        ["evaluate", "--pred", str(phantom / "labelsTr"), "--gt", str(phantom / "labelsTr"), "--out",
         str(blocker / "eval"), "--no-progress"],
    ]
    for argv, code in zip(runs, (2, 1)):  # predict's usage errors exit 2, evaluate's errors 1
        assert main(argv) == code, argv[0]
        error = capsys.readouterr().err
        assert "a_file" in error and ("is a file, not a folder" in error or "which is a file" in error), error
        assert "Errno" not in error and ".tmp" not in error
    series = tmp_path / "series"
    series.mkdir()
    _dicom_series(series, slices=2)
    assert main(["convert", "dicom", "--src", str(series), "--out", str(blocker / "ct.nii.gz")]) != 0
    error = capsys.readouterr().err
    assert "a_file" in error and "not a folder" in error and "Errno" not in error


# 10 --------------------------------------------------------------------------------------


def _label_folders(root: Path) -> tuple[Path, Path, Path]:
    folders = [root / name for name in ("gt", "a", "b")]
    for index, folder in enumerate(folders):
        folder.mkdir()
        for case in ("c1", "c2"):
            labels = np.zeros((8, 16, 16), np.uint8)
            labels[2:6, 4:12, 4 + index:12] = 1
            sitk.WriteImage(sitk.GetImageFromArray(labels), str(folder / f"{case}.nii.gz"))
    return tuple(folders)


def test_evaluate_replaces_its_output_set_as_a_unit(tmp_path, monkeypatch, capsys):
    gt, a, b = _label_folders(tmp_path)
    out = tmp_path / "eval"
    base = ["evaluate", "--gt", str(gt), "--out", str(out), "--labels", "1=organ", "--no-progress", "-j", "1"]
    assert main(base + ["--pred", str(a), "--compare", str(b)]) == 0
    assert (out / "comparison.csv").is_file()
    assert main(base + ["--pred", str(b)]) == 0
    # the comparison of the first run must not sit beside the second run's metrics
    assert not (out / "comparison.csv").exists() and not (out / "metrics_compare.csv").exists()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    from medattn.evaluation import report

    def broken(result):
        raise OSError("No space left on device")

    monkeypatch.setattr(report, "html_report", broken)
    assert main(base + ["--pred", str(a)]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old set, whole; no temporaries


# 7, for every long command ---------------------------------------------------------------


@pytest.mark.parametrize("command, target, hint", [
    (["evaluate", "--pred", "P", "--gt", "G", "--out", "O"], "medattn.evaluation.api.evaluate_folders",
     "nothing was written"),
    (["convert", "dicom", "--src", "S", "--out", "O.nii.gz"], "medattn.preprocess.dicom.convert_dicom",
     "no temporary file is left"),
    (["demo", "--out", "D"], "medattn.pipelines.demo.run_demo", "finished steps are kept"),
    (["bench", "image", "--quick"], "medattn.pipelines.bench_image.bench_trainer_overhead", "no table was written"),
])
def test_ctrl_c_in_every_long_command_ends_with_one_line_and_exit_130(command, target, hint, tmp_path, monkeypatch,
                                                                     capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(target, interrupted)
    assert main(command) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and hint in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2, err


# 4 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", [-1, 2])  # an end slice (no gap shows it) and a middle one
def test_a_corrupt_slice_is_named_not_dropped(tmp_path, capsys, which):
    series = tmp_path / "series"
    series.mkdir()
    slices = _dicom_series(series, slices=5)
    bad = slices[which]
    bad.write_bytes(bad.read_bytes()[:-300])  # cut off inside the pixel data
    (series / "notes.txt").write_text("not a slice, and not reported")
    out = tmp_path / "ct.nii.gz"
    assert main(["convert", "dicom", "--src", str(series), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert str(bad) in error and "truncated" in error and "--allow-missing" in error and "notes.txt" not in error
    assert not out.exists()
    assert main(["convert", "dicom", "--src", str(series), "--list"]) == 0
    assert "1 file(s) in the folder skipped" in capsys.readouterr().out
    if which == -1:
        assert main(["convert", "dicom", "--src", str(series), "--out", str(out), "--allow-missing"]) == 0
        assert f"skipped {bad}" in capsys.readouterr().err
        assert sitk.ReadImage(str(out)).GetSize()[2] == 4


# passing cases of the sweep, kept ---------------------------------------------------------


def test_non_ascii_paths_work_end_to_end(phantom, monai_checkpoint, tmp_path):
    root = tmp_path / "données_ü 非"
    inputs, predictions, gt = root / "entrée", root / "prédictions", root / "vérité"
    inputs.mkdir(parents=True)
    gt.mkdir()
    case = sorted((phantom / "imagesTr").glob("*.nii.gz"))[0]
    shutil.copy(case, inputs / case.name)
    shutil.copy(phantom / "labelsTr" / case.name.replace("_0000", ""), gt / case.name.replace("_0000", ""))
    model = root / "modèle" / "checkpoint_best.pt"
    model.parent.mkdir()
    shutil.copy(monai_checkpoint, model)
    assert main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(predictions),
                 "--device", "cpu", "--no-tta", "--no-progress"]) == 0
    assert main(["evaluate", "--pred", str(predictions), "--gt", str(gt), "--out", str(root / "éval"), "--labels",
                 "1=a,2=b,3=c", "--no-progress"]) == 0
    assert (root / "éval" / "report.html").is_file()
