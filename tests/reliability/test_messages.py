"""Reliability: resumed outputs are checked, and bad files are named with the reason
(issue 17's findings 8 and 12)."""

from __future__ import annotations

import json
from pathlib import Path

import SimpleITK as sitk

from medattn.cli import main


def _predict(model: Path, inputs: Path, out: Path) -> int:
    return main(["predict", "--model", str(model), "--input", str(inputs), "--output", str(out), "--device", "cpu",
                 "--no-tta", "--no-progress"])


def test_a_zero_byte_or_foreign_output_is_predicted_again(monai_checkpoint, phantom, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(monai_checkpoint, phantom / "imagesTr", out) == 0
    maps = sorted(out.glob("*.nii.gz"))
    maps[0].write_bytes(b"")  # a 0-byte file used to count as done
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(maps[1]))  # another grid: not this input's map
    capsys.readouterr()
    assert _predict(monai_checkpoint, phantom / "imagesTr", out) == 0
    summary = capsys.readouterr().out
    assert f"{len(maps)} case(s): 2 predicted, {len(maps) - 2} skipped" in summary
    reference = sitk.ReadImage(str(sorted((phantom / "imagesTr").glob("*.nii.gz"))[1]))
    assert sitk.ReadImage(str(maps[1])).GetSize() == reference.GetSize()


def test_label_maps_of_another_model_or_other_settings_are_refused(monai_checkpoint, phantom, tmp_path, capsys):
    """Resuming used to skip every case written by any model; now the folder records the
    model (medattn_predict.json) and another one needs --overwrite."""
    import shutil

    from medattn.inference.batch import RECORD

    out = tmp_path / "out"
    case = sorted((phantom / "imagesTr").glob("*.nii.gz"))[0]
    assert _predict(monai_checkpoint, case, out) == 0
    other = tmp_path / "other" / "checkpoint_best.pt"
    other.parent.mkdir()
    shutil.copy(monai_checkpoint, other)
    before = (out / case.name.replace("_0000", "")).read_bytes()
    capsys.readouterr()
    assert _predict(other, case, out) == 2
    error = capsys.readouterr().err
    assert "written by another model" in error and str(monai_checkpoint) in error and "--overwrite" in error
    assert main(["predict", "--model", str(monai_checkpoint), "--input", str(case), "--output", str(out),
                 "--device", "cpu", "--no-progress"]) == 2  # TTA on this time
    assert "other settings" in capsys.readouterr().err
    assert (out / case.name.replace("_0000", "")).read_bytes() == before  # nothing replaced
    assert main(["predict", "--model", str(other), "--input", str(case), "--output", str(out), "--device", "cpu",
                 "--no-tta", "--no-progress", "--overwrite"]) == 0
    assert json.loads((out / RECORD).read_text())["model"] == str(other.resolve())
    (out / RECORD).unlink()  # maps with no record of their model
    assert _predict(other, case, out) == 2
    assert f"no {RECORD}" in capsys.readouterr().err


def test_an_empty_checkpoint_is_named_with_the_reason(tmp_path):
    import pytest

    from medattn.networks.training import read_checkpoint

    (tmp_path / "checkpoint_last.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"checkpoint_last.pt: the checkpoint is empty \(0 bytes\).*checkpoint_best"):
        read_checkpoint(tmp_path / "checkpoint_last.pt")


def test_a_corrupt_plans_json_is_named(tmp_path, phantom, capsys):
    model = tmp_path / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (model / "fold_0").mkdir(parents=True)
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0}}))
    (model / "plans.json").write_text('{"dataset_name": "x",\n  "plans_name": ')
    (model / "fold_0" / "checkpoint_final.pth").write_bytes(b"unused")
    assert _predict(model, phantom / "imagesTr", tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert f"{model / 'plans.json'}: not a readable JSON file (JSONDecodeError" in error


def test_an_anonymised_series_is_named_as_such():
    from medattn.preprocess.dicom import SeriesInfo

    series = SeriesInfo("", Path("study"), ("a.dcm",), "CT", "", (16, 16))
    assert series.label == "(no Series Instance UID)" and SeriesInfo("1.2", Path("s"), (), "", "", (0, 0)).label == "'1.2'"


def test_a_training_folder_without_checkpoints_is_named_as_such(phantom, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.csv").write_text("epoch\n")
    assert main(["predict", "--model", str(run), "--input", str(phantom / "imagesTr"), "--output",
                 str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert "training output folder (it has config.json) without checkpoint_best.pt or checkpoint_last.pt" in error


def test_missing_as_empty_names_the_cases_it_scored_empty(tmp_path, capsys):
    import numpy as np

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    for folder, cases in ((gt, ("c1", "c2", "c3")), (pred, ("c1",))):
        folder.mkdir()
        for case in cases:
            labels = np.zeros((6, 8, 8), np.uint8)
            labels[1:4, 2:6, 2:6] = 1
            sitk.WriteImage(sitk.GetImageFromArray(labels), str(folder / f"{case}.nii.gz"))
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "e"), "--labels",
                 "1=organ", "--missing-as-empty", "--no-progress"]) == 0
    assert "2 ground-truth case(s) have no prediction" in capsys.readouterr().err
    summary = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert summary["missing_scored_as_empty"] == {str(pred): ["c2", "c3"]}


def test_a_truncated_nnunet_checkpoint_is_named_by_its_file(stock_model, phantom, tmp_path, capsys):
    import shutil

    model = tmp_path / stock_model.name
    shutil.copytree(stock_model, model)
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:4096])
    assert main(["predict", "--model", str(model), "--input", str(phantom / "imagesTr"), "--output",
                 str(tmp_path / "out"), "--device", "cpu", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert str(checkpoint) in error and "Traceback" not in error, error
