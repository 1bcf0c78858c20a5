"""medattn convert vindr-cxr with every target: resized PNGs and to_original, fused boxes,
YOLO, stratified folds, the nnU-Net box-mask dataset (checked by nnU-Net's own
``nnUNetv2_plan_and_preprocess --verify_dataset_integrity``), PhysioNet's image labels,
reader exclusion, bad options, and a run killed mid-write that resumes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from medattn.cli import main
from tests.preprocess.vindr_download import make_download

NNUNET_ID = 621
FULL = ["--resize", "32", "--boxes", "wbf", "--yolo", "--split", "stratified-kfold", "--folds", "2", "--seed", "1",
        "--nnunet-dataset-id", str(NNUNET_ID), "--seg-findings", "cardiomegaly,Pleural effusion,nodule/mass"]


def _rows(path):
    with open(path, newline="") as handle:
        return {row["image_id"]: row for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    make_download(root / "src", "kaggle")
    code = main(["convert", "vindr-cxr", "--src", str(root / "src"), "--out", str(root / "out"), *FULL])
    return root / "out", code


def test_resized_images_and_the_manifest_geometry(full):
    from PIL import Image

    out, code = full
    assert code == 1  # d is broken
    manifest = _rows(out / "manifest.csv")
    a = manifest["a"]
    assert (a["width"], a["height"], a["out_width"], a["out_height"]) == ("64", "48", "32", "32")
    assert (float(a["scale_x"]), float(a["scale_y"]), a["pad_x"], a["pad_y"], a["resize"]) == (
        0.5, 0.5, "0", "4", "letterbox 32")
    image = np.asarray(Image.open(out / a["path"]))
    assert image.shape == (32, 32) and (image[:4] == 0).all() and (image[28:] == 0).all() and image[10].max() > 0


def test_fused_boxes_map_back_to_the_readers_mean(full):
    from pycocotools.coco import COCO

    from medattn.preprocess.vindr_cxr import to_original

    out, _ = full
    coco = {}
    for role in ("train", "val", "test"):
        path = out / "annotations" / f"instances_{role}.json"
        if path.is_file():
            coco[role] = COCO(str(path))
    assert {"train", "val", "test"} <= set(coco)  # two folds: one is val
    found = [(role, c, ann) for role, c in coco.items() for ann in c.dataset["annotations"]
             if c.imgs[ann["image_id"]]["image_id"] == "a"]
    (role, c, cardio), = found
    x, y, w, h = cardio["bbox"]
    np.testing.assert_allclose(to_original([[x, y, x + w, y + h]], "a", out / "manifest.csv"),
                               [[11, 21, 40.5, 44.5]], atol=1e-3)  # mean of R1's and R2's boxes
    assert cardio["agreement"] == pytest.approx(2 / 3) and cardio["readers"] == ["R1", "R2"]  # R3: No finding
    assert c.imgs[cardio["image_id"]]["width"] == 32


def test_yolo_labels_match_the_coco_boxes(full):
    out, _ = full
    labels = _rows(out / "labels.csv")
    text = (out / "yolo" / labels["a"]["split"] / "a.txt").read_text()
    class_id, *numbers = text.split()
    assert class_id == "3"
    # COCO box of a: the fused box scaled by 0.5 and shifted down by the 4-pixel pad
    np.testing.assert_allclose([float(v) for v in numbers], [(5.5 + 20.25) / 2 / 32, (14.5 + 26.25) / 2 / 32,
                                                             (20.25 - 5.5) / 32, (26.25 - 14.5) / 32], atol=1e-5)
    assert (out / "yolo" / "test" / "e.txt").read_text() == ""  # unlabelled, no box
    assert (out / "yolo" / "classes.txt").read_text().splitlines()[8] == "Nodule/Mass"


def test_splits_json_holds_the_folds_and_the_policy(full):
    out, _ = full
    record = json.loads((out / "splits.json").read_text())
    assert record["split"] == "stratified-kfold" and record["test"] == ["e"]
    assert sorted(record["folds"][0]["train"] + record["folds"][0]["val"]) == ["a", "b", "c"]
    assert record["policy"]["boxes"] == "wbf" and record["policy"]["resize"] == "letterbox 32"
    roles = {i: row["split"] for i, row in _rows(out / "labels.csv").items()}
    assert sorted(i for i, r in roles.items() if r == "val") == sorted(record["folds"][0]["val"])


def test_the_nnunet_dataset_passes_nnunets_own_integrity_check(full, tmp_path):
    from PIL import Image

    from medattn.nnunet.commands import nnunet_environment, run_nnunet

    out, _ = full
    folder = out / "nnUNet_raw" / f"Dataset{NNUNET_ID}_VinDrCXR"
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "Cardiomegaly": 1, "Pleural effusion": 2, "Nodule_Mass": 3}
    assert dataset["numTraining"] == 3 and dataset["file_ending"] == ".png"
    mask_c = np.asarray(Image.open(folder / "labelsTr" / "c.png"))
    assert set(np.unique(mask_c)) == {0, 2, 3}  # c's effusion covers the image; its nodules, named later, win
    assert np.isin(mask_c[4:28], (2, 3)).all() and (mask_c[:4] == 0).all()  # the letterbox pad stays background
    assert (mask_c[7:12, 3:8] == 3).all() and (mask_c[4:28] == 3).sum() < 50
    assert set(np.unique(np.asarray(Image.open(folder / "labelsTr" / "b.png")))) == {0}  # No finding
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["e_0000.png"]
    env = nnunet_environment(out / "nnUNet_raw", tmp_path / "pre", tmp_path / "res", n_proc=1)
    run_nnunet("nnUNetv2_plan_and_preprocess", ["-d", NNUNET_ID, "--verify_dataset_integrity", "--no_pp", "-np", 1],
               env, timeout=600)
    plans = json.loads((tmp_path / "pre" / folder.name / "nnUNetPlans.json").read_text())
    assert "2d" in plans["configurations"]


def _image_labels(root):
    """PhysioNet's image label files: per reader for train (rad_ID), consensus for test."""
    from medattn.preprocess.vindr_cxr import KAGGLE_CLASSES, PHYSIONET_GLOBAL, PHYSIONET_ONLY

    columns = sorted(KAGGLE_CLASSES + PHYSIONET_ONLY) + list(PHYSIONET_GLOBAL)
    rows = {("a", "R1"): {"Cardiomegaly"}, ("a", "R2"): {"Cardiomegaly", "COPD"}, ("a", "R3"): {"No finding"},
            ("b", "R1"): {"Pneumothorax"}, ("b", "R2"): {"Pneumothorax"}, ("b", "R3"): {"No finding"},
            ("c", "R4"): {"Nodule/Mass"}, ("c", "R5"): {"Aortic enlargement"}, ("c", "R6"): {"Nodule/Mass"}}
    with open(root / "annotations" / "image_labels_train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "rad_ID", *columns])
        for (image_id, reader), found in rows.items():
            writer.writerow([image_id, reader, *(int(c in found) for c in columns)])
    test_columns = [c if c != "Other diseases" else "Other disease" for c in columns]
    with open(root / "annotations" / "image_labels_test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", *test_columns])
        writer.writerow(["e", *(int(c in ("Cardiomegaly", "Other disease")) for c in test_columns)])


def test_physionet_image_labels_replace_the_box_findings(tmp_path):
    make_download(tmp_path / "src", "physionet")
    _image_labels(tmp_path / "src")
    assert main(["convert", "vindr-cxr", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                 "--label-policy", "majority"]) == 1
    labels = _rows(tmp_path / "out" / "labels.csv")
    assert sorted(labels) == ["a", "b", "c", "e"]  # e: the test consensus
    assert labels["b"]["Pneumothorax"] == "1" and labels["b"]["No finding"] == "0"  # 2 of 3, no box needed
    assert labels["c"]["Nodule/Mass"] == "1" and labels["c"]["Aortic enlargement"] == "0"
    assert (labels["e"]["Cardiomegaly"], labels["e"]["split"]) == ("1", "test")
    info = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())["info"]
    assert info["label_source"] == "image_labels_train.csv + image_labels_test.csv"
    assert any("COPD (1 image(s))" in note and "Other diseases (1 image(s))" in note for note in info["notes"])


def test_a_non_binary_image_label_is_named(tmp_path, capsys):
    make_download(tmp_path / "src", "physionet")
    _image_labels(tmp_path / "src")
    path = tmp_path / "src" / "annotations" / "image_labels_train.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(",1,", ",2,", 1)
    path.write_text("\n".join(lines) + "\n")
    assert main(["convert", "vindr-cxr", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")]) == 1
    assert "image_labels_train.csv, line 3: column" in capsys.readouterr().err


def test_excluded_readers_leave_labels_and_boxes(tmp_path):
    make_download(tmp_path / "src", "kaggle")
    assert main(["convert", "vindr-cxr", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                 "--exclude-readers", "R2,R5", "--label-policy", "all"]) == 1
    coco = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())
    assert {a["rad_id"] for a in coco["annotations"]} == {"R1", "R4", "R6"}
    labels = _rows(tmp_path / "out" / "labels.csv")
    assert labels["a"]["Cardiomegaly"] == "0"  # R1 yes, R3 no finding: not all
    assert any("--exclude-readers R2,R5: 3 annotation row(s) left out" in n for n in coco["info"]["notes"])


@pytest.mark.parametrize("options, message", [
    (["--nnunet-dataset-id", "7"], "--nnunet-dataset-id and --seg-findings go together"),
    (["--nnunet-dataset-id", "7", "--seg-findings", "No finding"], "'No finding' has no boxes"),
    (["--seg-findings", "Cardiomegly", "--nnunet-dataset-id", "7"], "unknown class 'Cardiomegly'"),
    (["--split", "stratified-kfold", "--folds", "2", "--val-fold", "2"], "--val-fold must be in 0..1, got 2"),
])
def test_bad_options_are_named_without_a_traceback(tmp_path, capsys, options, message):
    make_download(tmp_path / "src", "kaggle")
    assert main(["convert", "vindr-cxr", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                 *options]) == 1
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error


_KILLER = """
import os, signal, sys
import medattn.preprocess.vindr_cxr as converter
from medattn.data.io import atomic_write
written = []
original = converter._write_png
def dying(array, path):
    written.append(path)
    if len(written) == 3:  # the third image dies half-written: a temporary exists, no cleanup runs
        with atomic_write(path, suffix=".png") as tmp:
            tmp.write_bytes(b"\\x89PNG cut")
            os.kill(os.getpid(), signal.SIGKILL)
    original(array, path)
converter._write_png = dying
from medattn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    make_download(tmp_path / "src", "kaggle")
    command = ["convert", "vindr-cxr", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "-j", "1"]
    killed = subprocess.run([sys.executable, "-c", _KILLER, *command], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert killed.returncode == -9, killed.stderr
    images = tmp_path / "out" / "images" / "train"
    assert sorted(p.name for p in images.glob("[!.]*.png")) == ["a.png", "b.png"]
    assert [p.name for p in images.iterdir() if p.name.startswith(".c.png.")]  # the half-written temporary
    assert not (tmp_path / "out" / "manifest.csv").exists()
    stamps = {name: (images / name).stat().st_mtime_ns for name in ("a.png", "b.png")}
    assert main(command) == 1  # d is broken
    assert {name: (images / name).stat().st_mtime_ns for name in stamps} == stamps  # journalled: skipped
    assert sorted(p.name for p in images.iterdir()) == ["a.png", "b.png", "c.png"]  # temporary gone
    assert not (tmp_path / "out" / "manifest.inprogress.jsonl").exists()
    straight = tmp_path / "straight"
    assert main(["convert", "vindr-cxr", "--src", str(tmp_path / "src"), "--out", str(straight)]) == 1
    for name in ("manifest.csv", "labels.csv", "annotations/instances_train.json", "splits.json"):
        assert (tmp_path / "out" / name).read_text() == (straight / name).read_text(), name
    for name in ("a.png", "b.png", "c.png"):
        assert (images / name).read_bytes() == (straight / "images" / "train" / name).read_bytes()


def test_labels_csv_trains_the_sna_classifier_end_to_end(full, tmp_path):
    """The issue's end-to-end check: a converted fixture, then a few steps of multi-label training."""
    from medattn.images.training import ImageTrainConfig, ImageTrainer

    out, _ = full
    summary = ImageTrainer(ImageTrainConfig(task="multilabel", data=str(out / "labels.csv"), out=str(tmp_path / "run"),
                                            preset="sna_resnet18", epochs=1, batch_size=2, image_size=32,
                                            device="cpu", progress=False)).run()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["classes"][0] == "No finding" and len(config["classes"]) == 15
    roles = {i: row["split"] for i, row in _rows(out / "labels.csv").items()}
    assert config["split"]["source"] == "layout"  # the folds' val rows
    assert len(config["split"]["val"]) == sum(r == "val" for r in roles.values())
    assert "auroc_mean" in summary
