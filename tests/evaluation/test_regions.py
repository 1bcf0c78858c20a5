"""Region-based label maps (nnU-Net v2's region-based training): parsing, metrics against
nnU-Net's own evaluator and medpy, folders, the CLI and the paired comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from medpy.metric import binary as medpy_binary

from medattn.cli import main
from medattn.data.io import read_image
from medattn.evaluation.api import EvaluationError, evaluate_folders
from medattn.evaluation.labels import LabelMap, LabelMapError, Region, label_column_value, parse_label_map
from medattn.evaluation.metrics import binary_metrics, label_metrics

from tests.cli_help import help_text
from .conftest import box_labels, perturb, random_case, write_labels

#: BraTS in nnU-Net v2 (Dataset137_BraTS21): nested regions over the labels 1, 2, 3.
BRATS = {"background": 0, "whole_tumor": [1, 2, 3], "tumor_core": [2, 3], "enhancing_tumor": [3]}
REGIONS = {"whole_tumor": (1, 2, 3), "tumor_core": (2, 3), "enhancing_tumor": (3,)}
KEYS = ["1+2+3", "2+3", "3"]
INLINE = "whole_tumor=1+2+3,tumor_core=2+3,enhancing_tumor=3"
CASES = [f"case_{i:02d}" for i in range(4)]


def write_dataset_json(tmp_path, labels=BRATS, **extra):
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": labels, **extra}))
    return path


def evaluate(pred, gt, **kwargs):
    return evaluate_folders(pred, gt, progress=False, **kwargs)


@pytest.fixture
def brats_json(tmp_path):
    return write_dataset_json(tmp_path, regions_class_order=[1, 2, 3], file_ending=".nii.gz")


# ------------------------------------------------------------------ parsing


def test_dataset_json_with_regions_class_order(brats_json):
    label_map = parse_label_map(brats_json)
    assert label_map.has_regions and label_map.names == {}
    assert [(region.name, region.values) for region in label_map.scored] == list(REGIONS.items())
    assert label_map.regions == label_map.scored
    assert label_map.valid_values == frozenset({0, 1, 2, 3})
    assert [label_column_value(region) for region in label_map.scored] == KEYS
    assert label_map.name_of(label_map.scored[1]) == "tumor_core"


def test_inline_spelling_gives_the_same_regions(brats_json):
    inline = parse_label_map(INLINE)
    assert inline.regions == parse_label_map(brats_json).regions
    assert inline.source == "inline label map"


def test_mapping_spelling_is_the_labels_object_of_a_dataset_json():
    assert parse_label_map(BRATS).regions == parse_label_map(INLINE).regions


def test_integer_entries_of_a_region_map_are_single_value_regions(tmp_path):
    # KiTS2023 in nnU-Net v2: "tumor" is an integer, still scored as a region; values
    # given out of order are stored ascending.
    labels = {"background": 0, "kidney": [3, 1, 2], "masses": [2, 3], "tumor": 2}
    label_map = parse_label_map(write_dataset_json(tmp_path, labels, regions_class_order=[1, 3, 2]))
    assert label_map.scored == (Region("kidney", (1, 2, 3)), Region("masses", (2, 3)), Region("tumor", (2,)))
    # Inline, VALUE=NAME entries of a region map become regions of one value too.
    assert parse_label_map("2=tumor,kidney=1+2+3").scored == (Region("tumor", (2,)), Region("kidney", (1, 2, 3)))


def test_single_value_lists_alone_are_labels_as_in_nnunet(tmp_path):
    label_map = parse_label_map(write_dataset_json(tmp_path, {"background": 0, "a": [1], "b": [2]}))
    assert not label_map.has_regions
    assert label_map.names == {1: "a", 2: "b"} and label_map.scored == (1, 2)
    assert parse_label_map("aorta=1,liver=2").names == {1: "aorta", 2: "liver"}  # NAME=VALUE


def test_evaluate_labels_names_regions_kept_in_map_order(tmp_path):
    path = write_dataset_json(tmp_path, evaluate_labels=["enhancing_tumor", "whole_tumor"])
    label_map = parse_label_map(path)
    assert [region.name for region in label_map.scored] == ["whole_tumor", "enhancing_tumor"]
    assert label_map.valid_values == frozenset({0, 1, 2, 3})  # tumor_core's values stay valid


def test_regions_class_order_is_ignored_without_regions(tmp_path):
    # nnU-Net reads regions_class_order only for region-based maps.
    label_map = parse_label_map(write_dataset_json(tmp_path, {"background": 0, "a": 1}, regions_class_order=[7]))
    assert label_map.scored == (1,)


@pytest.mark.parametrize(
    "labels, extra, message",
    [
        (BRATS, {"regions_class_order": [1, 4, 3]}, r"gives 4 for region 'tumor_core' \(2\+3\)"),
        (BRATS, {"regions_class_order": [1, 2]}, r"one value per region \(3\), got \[1, 2\]"),
        (BRATS, {"regions_class_order": [1, 2, "x"]}, r"label value 'x' is not an integer"),
        ({"background": 0, "whole_tumor": [1, 2, 3], "necrosis": []}, {}, r"'necrosis' lists no values"),
        ({"background": 0, "whole_tumor": [1, 2, 3], "all": [0, 1]}, {}, r"region 'all' lists 0"),
        ({"background": 0, "whole_tumor": [1, 2, 2]}, {}, r"region 'whole_tumor' lists value 2 more than once"),
        ({"background": 0, "whole_tumor": [1, 2, 3], "all": [3, 2, 1]}, {},
         r"regions 'whole_tumor' and 'all' are both 1\+2\+3"),
        ({"background": 0, "whole_tumor": [1, "x"]}, {}, r"label value 'x' is not an integer"),
        ({"background": 0, "whole_tumor": [1, -3]}, {}, r"label value -3 is negative"),
        (BRATS, {"evaluate_labels": ["necrosis"]}, r"entry 'necrosis' is not a region name"),
        (BRATS, {"evaluate_labels": [3]}, r"entry 3 is not a region name"),
        (BRATS, {"evaluate_labels": []}, r"non-empty list"),
    ],
)
def test_malformed_region_maps_name_the_file_and_the_value(tmp_path, labels, extra, message):
    path = write_dataset_json(tmp_path, labels, **extra)
    with pytest.raises(LabelMapError, match=message) as info:
        parse_label_map(path)
    assert str(path) in str(info.value)


def test_a_name_given_twice_in_the_json_is_an_error(tmp_path):
    # json.loads would silently keep the last of the two.
    path = tmp_path / "dataset.json"
    path.write_text('{"labels": {"background": 0, "tumor_core": [1, 2, 3], "tumor_core": [2, 3]}}')
    with pytest.raises(LabelMapError, match=r"gives name 'tumor_core' more than once"):
        parse_label_map(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("whole_tumor=1+2+3,whole_tumor=2+3", r"name 'whole_tumor' is used by 1\+2\+3 and 2\+3"),
        ("3=whole_tumor,whole_tumor=1+2+3", r"name 'whole_tumor' is used by 3 and 1\+2\+3"),
        ("whole_tumor=1+2+x", r"label value 'x' is not an integer"),
        ("whole_tumor=1+2+", r"label value '' is not an integer"),
        ("core=2+3,other=3+2", r"regions 'core' and 'other' are both 2\+3"),
        ("whole_tumor=1+0", r"region 'whole_tumor' lists 0"),
        ("whole_tumor=", r"'whole_tumor=' is not of the form VALUE=NAME or NAME=VALUE\[\+VALUE...\]"),
    ],
)
def test_malformed_inline_region_maps(text, message):
    with pytest.raises(LabelMapError, match=message):
        parse_label_map(text)


def test_label_map_checks_regions_built_directly():
    with pytest.raises(LabelMapError, match="region 'empty' lists no values"):
        Region("empty", ())
    with pytest.raises(LabelMapError, match=r"scored regions \['core'\] are not in the label map"):
        LabelMap(names={}, scored=(Region("core", (2, 3)),), regions=(Region("whole", (1, 2, 3)),))


# ------------------------------------------------------------------ metrics of regions


def test_region_metrics_equal_binary_metrics_and_medpy_on_the_region_masks():
    # Member labels far apart, so a region's box must span all of theirs.
    spacing = (2.5, 0.75, 0.9)
    boxes = {1: np.s_[1:5, 2:8, 1:6], 2: np.s_[8:13, 12:18, 10:16], 3: np.s_[2:6, 13:19, 11:17],
             4: np.s_[9:12, 2:5, 2:5]}
    gt = box_labels(boxes, shape=(14, 20, 18))
    pred = np.roll(gt, (1, -1, 2), axis=(0, 1, 2))  # no noise: it would spread every box over the volume
    entries = [(1, 2, 3), (2, 3), (3,), 3, (4, 1)]
    ours = label_metrics(pred, gt, entries, spacing)
    assert list(ours) == entries
    for entry in entries:
        values = entry if isinstance(entry, tuple) else (entry,)
        pred_mask, gt_mask = np.isin(pred, values), np.isin(gt, values)
        assert ours[entry] == binary_metrics(pred_mask, gt_mask, spacing, crop=False)
        assert ours[entry]["hd95"] == medpy_binary.hd95(pred_mask, gt_mask, voxelspacing=spacing)
    assert ours[(3,)] == ours[3]  # a region of one value is that label


def test_region_of_labels_absent_from_both_images_follows_the_convention():
    empty = np.zeros((4, 5, 6), dtype=np.uint8)
    assert math.isnan(label_metrics(empty, empty, [(1, 2)], convention="nnunet")[(1, 2)]["dice"])
    assert label_metrics(empty, empty, [(1, 2)], convention="strict")[(1, 2)]["dice"] == 1.0


@pytest.mark.parametrize("entry, message", [((), r"got \(\)"), ((2, 0), r"got \(2, 0\)"), (0, "got 0")])
def test_label_metrics_rejects_regions_without_foreground_values(entry, message):
    labels = np.ones((3, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=message):
        label_metrics(labels, labels, [entry])


# ------------------------------------------------------------------ folders


@pytest.fixture
def region_folders(tmp_path, rng):
    """gt/, pred/ and other/ with four cases holding the labels 1, 2, 3 (pred and other perturbed)."""
    gt_dir, pred_dir, other_dir = tmp_path / "gt", tmp_path / "pred", tmp_path / "other"
    for case in CASES:
        truth = random_case(rng)
        write_labels(gt_dir, case, truth)
        write_labels(pred_dir, case, perturb(truth, rng))
        write_labels(other_dir, case, perturb(perturb(truth, rng), rng))
    return gt_dir, pred_dir, other_dir


def test_region_dice_and_counts_match_nnunet_and_hd95_matches_medpy(region_folders, brats_json):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    gt_dir, pred_dir, _ = region_folders
    result = evaluate(pred_dir, gt_dir, labels=brats_json)
    assert list(result.metrics["label"].unique()) == KEYS
    assert list(result.metrics["name"].unique()) == list(REGIONS)
    regions = list(REGIONS.values())
    for case in CASES:
        gt_file, pred_file = gt_dir / f"{case}.nii.gz", pred_dir / f"{case}.nii.gz"
        reference = compute_metrics(str(gt_file), str(pred_file), SimpleITKIO(), regions, None)["metrics"]
        gt, geometry = read_image(gt_file)
        pred, _ = read_image(pred_file)
        voxel_volume = float(np.prod(geometry.spacing_zyx))
        rows = result.metrics[result.metrics["case"] == case].set_index("label")
        for key, region in zip(KEYS, regions):
            nnunet, ours = reference[region], rows.loc[key]
            assert ours["dice"] == pytest.approx(nnunet["Dice"], abs=1e-12)
            assert ours["vol_pred"] == pytest.approx((nnunet["TP"] + nnunet["FP"]) * voxel_volume, rel=1e-12)
            assert ours["vol_gt"] == pytest.approx((nnunet["TP"] + nnunet["FN"]) * voxel_volume, rel=1e-12)
            pred_mask, gt_mask = np.isin(pred, region), np.isin(gt, region)
            assert nnunet["n_pred"] == np.count_nonzero(pred_mask) and nnunet["n_ref"] == np.count_nonzero(gt_mask)
            assert ours["hd95"] == medpy_binary.hd95(pred_mask, gt_mask, voxelspacing=geometry.spacing_zyx)


def test_predictions_written_with_regions_class_order_score_the_predicted_regions(tmp_path, rng):
    # nnU-Net turns region probabilities into a label image with regions_class_order
    # (later regions on top); scoring that image must give back the predicted regions.
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    order = [1, 2, 3]
    manager = LabelManager(BRATS, regions_class_order=order)
    truth = random_case(rng)
    nested = np.stack([np.isin(truth, region) for region in REGIONS.values()])  # WT ⊇ TC ⊇ ET
    predicted = np.stack([np.roll(mask, 1, axis=2) for mask in nested])
    written = manager.convert_probabilities_to_segmentation(predicted.astype(np.float32))
    write_labels(tmp_path / "gt", "case", truth)
    write_labels(tmp_path / "pred", "case", np.asarray(written, dtype=np.uint8))
    path = write_dataset_json(tmp_path, regions_class_order=order)
    result = evaluate(tmp_path / "pred", tmp_path / "gt", labels=path, spacing="voxel")
    for row, pred_mask, gt_mask in zip(result.metrics.to_dict(orient="records"), predicted, nested):
        expected = binary_metrics(pred_mask, gt_mask)
        assert row["dice"] == expected["dice"] and row["hd95"] == expected["hd95"]


def test_one_value_region_gives_the_numbers_of_that_label(region_folders):
    gt_dir, pred_dir, _ = region_folders
    regions = evaluate(pred_dir, gt_dir, labels=INLINE).metrics.query("label == '3'")
    label = evaluate(pred_dir, gt_dir, labels="1=edema,2=necrosis,3=enhancing_tumor").metrics.query("label == 3")
    columns = ["dice", "hd95", "assd", "vol_pred", "vol_gt"]
    np.testing.assert_array_equal(regions[columns].to_numpy(), label[columns].to_numpy())


def test_values_in_no_region_are_unknown(region_folders, tmp_path):
    gt_dir, pred_dir, _ = region_folders
    truth, _ = read_image(gt_dir / "case_01.nii.gz")
    truth[0, 0, :2] = 4
    write_labels(pred_dir, "case_01", truth)
    with pytest.raises(EvaluationError, match=r"case_01.nii.gz: label values \[4\] are not in the label map"):
        evaluate(pred_dir, gt_dir, labels=INLINE)
    # The same value is valid once a region lists it, even if that region is not scored.
    labels = {**BRATS, "with_resection_cavity": [1, 2, 3, 4]}
    path = write_dataset_json(tmp_path, labels, evaluate_labels=["whole_tumor", "tumor_core"])
    result = evaluate(pred_dir, gt_dir, labels=path)
    assert list(result.metrics["name"].unique()) == ["whole_tumor", "tumor_core"]


def test_compare_with_regions(region_folders, tmp_path):
    gt_dir, pred_dir, other_dir = region_folders
    out = tmp_path / "out"
    result = evaluate(pred_dir, gt_dir, labels=INLINE, compare=other_dir, out_dir=out)
    assert list(result.per_class["label"]) == KEYS and list(result.compare_per_class["label"]) == KEYS
    dice = result.comparison[result.comparison["metric"] == "dice"].set_index("label")
    assert list(dice.index) == KEYS + ["all"]
    merged = result.metrics.merge(result.compare_metrics, on=["case", "label"])
    for key in KEYS:
        rows = merged[merged["label"] == key]
        assert dice.loc[key, "n"] == 4
        assert dice.loc[key, "mean_diff"] == pytest.approx((rows["dice_x"] - rows["dice_y"]).mean())
        assert dice.loc[key, "wins"] == (rows["dice_x"] > rows["dice_y"]).sum()
    case_means = merged.groupby("case")[["dice_x", "dice_y"]].mean()
    assert dice.loc["all", "mean_diff"] == pytest.approx((case_means["dice_x"] - case_means["dice_y"]).mean())
    comparison = pd.read_csv(out / "comparison.csv", dtype={"label": str})
    assert list(comparison["label"].unique()) == KEYS + ["all"]
    report = (out / "report.md").read_text()
    assert "| 1+2+3 | whole_tumor |" in report and "| tumor_core | Dice | 4 |" in report


@pytest.mark.slow
def test_parallel_jobs_give_the_same_region_tables(region_folders):
    gt_dir, pred_dir, other_dir = region_folders
    serial = evaluate(pred_dir, gt_dir, labels=INLINE, compare=other_dir, jobs=1)
    parallel = evaluate(pred_dir, gt_dir, labels=INLINE, compare=other_dir, jobs=2)
    assert serial.metrics.equals(parallel.metrics)
    assert serial.comparison.equals(parallel.comparison)


# ------------------------------------------------------------------ command line


def test_help_shows_the_region_spelling(capsys):
    text = help_text(capsys, "evaluate")
    assert "whole_tumor=1+2+3,tumor_core=2+3,enhancing=3" in text
    assert '"regions_class_order"' in text


def test_cli_run_with_a_region_dataset_json(region_folders, brats_json, tmp_path, capsys):
    gt_dir, pred_dir, other_dir = region_folders
    out = tmp_path / "out"
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(out),
                 "--labels", str(brats_json), "--compare", str(other_dir), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in REGIONS) and "paired comparison" in printed
    table = pd.read_csv(out / "metrics.csv", dtype={"label": str})
    assert list(table["label"].unique()) == KEYS and list(table["name"].unique()) == list(REGIONS)
    assert len(table) == len(CASES) * len(REGIONS)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == dict(zip(KEYS, REGIONS))
    assert summary["per_class"]["tumor_core"]["label"] == "2+3"
    assert summary["label_map"] == str(brats_json)


def test_cli_reports_a_malformed_region_map(region_folders, tmp_path, capsys):
    gt_dir, pred_dir, _ = region_folders
    path = write_dataset_json(tmp_path, regions_class_order=[1, 2, 5])
    code = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--out", str(tmp_path / "out"),
                 "--labels", str(path), "--no-progress"])
    assert code == 1
    assert "gives 5 for region 'enhancing_tumor' (3)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
