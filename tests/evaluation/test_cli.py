"""``medattn evaluate`` end to end, including the real CT example."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medattn.cli import main
from medattn.data.io import read_image, write_image
from tests.cli_help import help_text


def test_help_describes_the_command_with_examples(capsys):
    text = help_text(capsys, "evaluate")
    assert "Dice, HD95 and ASSD" in text and "examples:" in text and "medattn evaluate --pred" in text
    for option in ("--labels", "--convention", "--spacing", "--compare", "--jobs", "--missing-as-empty"):
        assert option in text


def test_top_level_help_lists_evaluate(capsys):
    assert "evaluate" in help_text(capsys)


def test_run_writes_outputs_and_prints_the_table(folders, tmp_path, capsys):
    gt_dir, pred_dir, other_dir = folders
    out = tmp_path / "out"
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out),
                 "--compare", str(other_dir), "--labels", "1=liver,2=spleen,3=aorta", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "liver" in printed and "paired comparison" in printed and f"wrote {out / 'report.html'}" in printed
    table = pd.read_csv(out / "metrics.csv")
    assert set(table["name"]) == {"liver", "spleen", "aorta"}


def test_bad_input_exits_1_with_the_message(folders, tmp_path, capsys):
    gt_dir, pred_dir, _ = folders
    (pred_dir / "case_00.nii.gz").unlink()
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(tmp_path / "out"),
                 "--no-progress"])
    assert code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "case_00" in err and "--missing-as-empty" in err
    assert not (tmp_path / "out").exists()


def test_unknown_convention_is_a_usage_error(folders, tmp_path):
    gt_dir, pred_dir, _ = folders
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(tmp_path), "--convention", "x"])
    assert info.value.code == 2


BTCV = ("1=spleen,2=right kidney,3=left kidney,4=gallbladder,5=esophagus,6=liver,7=stomach,8=aorta,"
        "9=inferior vena cava,10=portal and splenic vein,11=pancreas,12=right adrenal,13=left adrenal")


def test_real_ct_labels_against_themselves_and_a_perturbed_copy(shared_data, tmp_path, capsys):
    source = shared_data / "ct-abdomen-example" / "label_btcv.nii.gz"
    labels, geometry = read_image(source)
    gt_dir, same_dir, moved_dir = tmp_path / "gt", tmp_path / "same", tmp_path / "moved"
    for folder in (gt_dir, same_dir):
        write_image(labels, geometry, folder / "ct_example.nii.gz")
    moved = np.roll(labels, 2, axis=2)  # two voxels (6 mm) along x
    moved[moved == 4] = 0  # gallbladder missed
    write_image(moved, geometry, moved_dir / "ct_example.nii.gz")

    out = tmp_path / "out"
    assert main(["evaluate", "--pred", str(moved_dir), "--gt", str(gt_dir), "--out", str(out),
                 "--compare", str(same_dir), "--labels", BTCV, "--no-progress"]) == 0
    capsys.readouterr()
    same = pd.read_csv(out / "metrics_compare.csv").set_index("name")
    present = same.drop(index="esophagus")  # absent from this scan
    assert (present["dice"] == 1.0).all() and (present["hd95"] == 0.0).all()
    assert np.isnan(same.loc["esophagus", "dice"])  # nnunet: both empty -> NaN
    moved_metrics = pd.read_csv(out / "metrics.csv").set_index("name")
    assert moved_metrics.loc["gallbladder", "dice"] == 0.0
    # A 6 mm shift: HD95 of 6 mm for organs larger than the shift (3 mm voxels).
    assert moved_metrics.loc["liver", "hd95"] == pytest.approx(6.0)
    assert 0.8 < moved_metrics.loc["liver", "dice"] < 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compare"]["mean"]["dice"] == 1.0

    # The TransUNet convention scores the same missed gallbladder as Dice 0, HD95 0.
    out_tu = tmp_path / "out_tu"
    assert main(["evaluate", "--pred", str(moved_dir), "--gt", str(gt_dir), "--out", str(out_tu),
                 "--labels", BTCV, "--convention", "transunet", "--spacing", "voxel", "--no-progress"]) == 0
    transunet = pd.read_csv(out_tu / "metrics.csv").set_index("name")
    assert transunet.loc["gallbladder", "hd95"] == 0.0 and transunet.loc["esophagus", "dice"] == 0.0
    assert transunet.loc["liver", "hd95"] == pytest.approx(2.0)  # voxels


def test_nnunet_dataset_folder_brings_its_own_label_map(folders, tmp_path, capsys):
    """--gt DatasetXXX/labelsTs without --labels: the dataset.json beside it is used (here a
    region map with an ignore label), giving what an explicit --labels gives; elsewhere the
    ground truth's values are scored."""
    import shutil

    gt_dir, pred_dir, _ = folders
    dataset = tmp_path / "Dataset777_Regions"
    shutil.copytree(gt_dir, dataset / "labelsTs")
    (dataset / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "ignore": 4},
        "regions_class_order": [1, 2],
    }))
    implicit, explicit, plain = tmp_path / "implicit", tmp_path / "explicit", tmp_path / "plain"
    base = ["evaluate", "--pred", str(pred_dir), "--no-progress"]
    assert main([*base, "--gt", str(dataset / "labelsTs"), "--out", str(implicit)]) == 0
    assert f"labels: {dataset / 'dataset.json'}" in capsys.readouterr().err
    assert main([*base, "--gt", str(dataset / "labelsTs"), "--out", str(explicit),
                 "--labels", str(dataset / "dataset.json")]) == 0
    assert main([*base, "--gt", str(gt_dir), "--out", str(plain)]) == 0
    assert "labels:" not in capsys.readouterr().err
    implicit_table, explicit_table = (pd.read_csv(folder / "metrics.csv") for folder in (implicit, explicit))
    pd.testing.assert_frame_equal(implicit_table, explicit_table)
    assert list(dict.fromkeys(implicit_table["name"])) == ["whole", "core"]
    assert json.loads((implicit / "summary.json").read_text())["ignore_label"] == 4
    assert set(pd.read_csv(plain / "metrics.csv")["name"]) == {"label_1", "label_2", "label_3"}
