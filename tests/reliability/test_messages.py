"""Reliability: resumed outputs are checked, and bad files are named with the reason
(issue 17's findings 8 and 12, the parts fixed so far)."""

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
