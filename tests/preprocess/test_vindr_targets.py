"""preprocess/vindr_targets.py: splits (multi-label stratified folds, split files), YOLO
lines and the box-mask rule."""

from __future__ import annotations

import numpy as np
import pytest

from medattn.preprocess.common import ConversionError
from medattn.preprocess.vindr_targets import assign_splits, box_mask, read_split_files, yolo_lines


def _labelled(n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = {f"img{k:03d}": [0] * 15 for k in range(n)}
    for k, image_id in enumerate(labels):
        labels[image_id][12] = int(k % 6 == 0)  # a rare class: 10 of 60
        labels[image_id][3] = int(rng.random() < 0.3)
        labels[image_id][0] = int(not any(labels[image_id][1:]))
    return labels


def test_stratified_folds_cover_the_training_images_and_spread_a_rare_class():
    labels = _labelled()
    folders = {i: "train" for i in labels} | {"t1": "test", "t2": "test"}
    roles, record = assign_splits(folders, labels, split="stratified-kfold", folds=5, val_fold=2, seed=3)
    folds = record["folds"]
    assert len(folds) == 5 and record["test"] == ["t1", "t2"]
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == set(labels) and sum(map(len, vals)) == len(labels)
    for fold in folds:
        assert set(fold["train"]) | set(fold["val"]) == set(labels) and not set(fold["train"]) & set(fold["val"])
    rare = [sum(labels[i][12] for i in v) for v in vals]
    assert rare == [2] * 5  # 10 positives over 5 folds; plain KFold need not give this
    assert {i for i, r in roles.items() if r == "val"} == vals[2]
    again, _ = assign_splits(folders, labels, split="stratified-kfold", folds=5, val_fold=2, seed=3)
    assert again == roles


def test_split_files_make_the_test_set(tmp_path):
    labels = _labelled(10)
    (tmp_path / "teKeys.txt").write_text("img001\nimg002\n\n# normal ones in the other file\n")
    (tmp_path / "teKeys_normal.txt").write_text("img009\n")
    test = read_split_files([tmp_path / "teKeys.txt", tmp_path / "teKeys_normal.txt"], set(labels))
    roles, record = assign_splits({i: "train" for i in labels}, labels, test_ids=test)
    assert record["test"] == ["img001", "img002", "img009"] and len(record["train"]) == 7
    assert roles["img001"] == "test" and roles["img000"] == "train"
    (tmp_path / "bad.txt").write_text("img001\nnot-an-image\n")
    with pytest.raises(ConversionError, match=r"bad.txt, line 2: 'not-an-image' is not an image"):
        read_split_files([tmp_path / "bad.txt"], set(labels))


def test_bad_fold_settings_are_refused():
    labels = _labelled(4)
    folders = {i: "train" for i in labels}
    with pytest.raises(ValueError, match="--val-fold must be in 0..2, got 3"):
        assign_splits(folders, labels, split="stratified-kfold", folds=3, val_fold=3)
    with pytest.raises(ValueError, match="4 labelled training image"):
        assign_splits(folders, labels, split="stratified-kfold", folds=5)
    with pytest.raises(ValueError, match="unknown split 'random'"):
        assign_splits(folders, labels, split="random")


def test_yolo_lines_normalise_x_by_width_and_y_by_height():
    text = yolo_lines([(3, [10.0, 20.0, 30.0, 10.0])], out_width=100, out_height=50)
    assert text == "3 0.250000 0.500000 0.300000 0.200000\n"
    assert yolo_lines([], 10, 10) == ""


def test_box_masks_fill_pixel_centres_and_later_findings_win():
    boxes = [("Cardiomegaly", [2.0, 2.0, 6.0, 4.0]), ("Pleural effusion", [4.0, 3.0, 4.0, 4.0]),
             ("Atelectasis", [0.0, 0.0, 2.0, 2.0])]  # not a chosen finding
    mask = box_mask(boxes, ["Cardiomegaly", "Pleural effusion"], 10, 8)
    expected = np.zeros((8, 10), np.uint8)
    expected[2:6, 2:8] = 1
    expected[3:7, 4:8] = 2
    np.testing.assert_array_equal(mask, expected)
