"""medattn convert vindr-cxr on synthetic downloads of both layouts with known readers,
findings and boxes: labels per policy, COCO boxes loaded by pycocotools, the manifest, a
broken file recorded while the rest goes on, resume, and labels.csv read by the trainer."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medattn.cli import main

from tests.preprocess.vindr_download import SIZE, make_download as _download


@pytest.fixture(scope="module", params=["kaggle", "physionet"])
def converted(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    broken = _download(root / "src", request.param)
    return request.param, root, broken, main(["convert", "vindr-cxr", "--src", str(root / "src"), "--out",
                                               str(root / "out"), "-j", "2"])


def _labels(path):
    return {row["image_id"]: row for row in csv.DictReader(open(path))}


def test_labels_follow_the_reader_policy(converted, tmp_path):
    layout, root, _, _ = converted
    labels = _labels(root / "out" / "labels.csv")
    assert list(labels) == ["a", "b", "c"]  # d failed; e is unlabelled (Kaggle's hidden test set)
    assert list(labels["a"])[:5] == ["image_id", "split", "path", "No finding", "Aortic enlargement"]
    assert (labels["a"]["Cardiomegaly"], labels["a"]["No finding"]) == ("1", "0")
    assert labels["b"]["No finding"] == "1" and labels["c"]["Nodule/Mass"] == labels["c"]["Aortic enlargement"] == "1"
    assert main(["convert", "vindr-cxr", "--src", str(root / "src"), "--out", str(tmp_path), "--label-policy",
                 "majority"]) == 1
    majority = _labels(tmp_path / "labels.csv")
    assert majority["a"]["Cardiomegaly"] == "1" and majority["c"]["Aortic enlargement"] == "0"
    assert main(["convert", "vindr-cxr", "--src", str(root / "src"), "--out", str(tmp_path / "all"),
                 "--label-policy", "all"]) == 1
    every = _labels(tmp_path / "all" / "labels.csv")
    assert (every["a"]["Cardiomegaly"], every["a"]["No finding"]) == ("0", "1")


def test_coco_boxes_load_in_pycocotools(converted):
    from pycocotools.coco import COCO

    _, root, _, _ = converted
    coco = COCO(str(root / "out" / "annotations" / "instances_train.json"))
    assert sorted(c["id"] for c in coco.loadCats(coco.getCatIds())) == list(range(14))
    by_name = {img["image_id"]: img["id"] for img in coco.dataset["images"]}
    assert set(by_name) == {"a", "b", "c"}
    boxes_a = sorted(a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=[by_name["a"]])))
    assert boxes_a == [[10.0, 20.0, 30.0, 24.0], [12.0, 22.0, 29.0, 23.0]]
    boxes_c = coco.loadAnns(coco.getAnnIds(imgIds=[by_name["c"]]))
    assert {a["category_id"] for a in boxes_c} == {0, 8, 10}
    assert [a["bbox"] for a in boxes_c if a["category_id"] == 10] == [[0.0, 0.0, 64.0, 48.0]]


def test_the_manifest_records_the_pixels_and_the_broken_file(converted):
    layout, root, broken, code = converted
    assert code == 1  # one file failed, the others were converted
    manifest = {row["image_id"]: row for row in csv.DictReader(open(root / "out" / "manifest.csv"))}
    assert set(manifest) == set("abcde")
    assert str(broken) in manifest["d"]["error"]
    assert manifest["a"]["voi"] == "window center 2048, width 4096 (1 of 1)" and manifest["a"]["bits_effective"] == "12"
    assert manifest["a"]["spacing_source"] == "PixelSpacing"
    from PIL import Image

    assert Image.open(root / "out" / "images" / "test" / "e.png").size == (SIZE[1], SIZE[0])
    if layout == "physionet":
        notes = json.loads((root / "out" / "annotations" / "instances_train.json").read_text())["info"]["notes"]
        assert any("Edema (1 image(s))" in note for note in notes)


def test_a_rerun_skips_finished_images(converted):
    _, root, _, _ = converted
    png = root / "out" / "images" / "train" / "a.png"
    before = png.stat().st_mtime_ns
    assert main(["convert", "vindr-cxr", "--src", str(root / "src"), "--out", str(root / "out")]) == 1
    assert png.stat().st_mtime_ns == before


def test_the_trainer_reads_labels_csv_as_it_is(converted):
    from medattn.images.data import discover

    _, root, _, _ = converted
    data = discover("multilabel", root / "out" / "labels.csv", val_fraction=0.34)
    assert data.classes[0] == "No finding" and len(data.classes) == 15
    assert len(data.train) + len(data.val) == 3 and data.split_source == "seeded"


def test_an_unknown_class_is_refused_naming_its_line(tmp_path, capsys):
    _download(tmp_path / "src", "kaggle")
    path = tmp_path / "src" / "train.csv"
    path.write_text(path.read_text().replace("Aortic enlargement,0", "Aortic enlargment,0"))
    assert main(["convert", "vindr-cxr", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "o")]) == 1
    error = capsys.readouterr().err
    assert "unknown class 'Aortic enlargment'" in error and "train.csv, line" in error


def test_resized_coco_boxes_map_back_to_the_csv_boxes(converted, tmp_path):
    from pycocotools.coco import COCO

    from medattn.preprocess.vindr_boxes import read_manifest
    from medattn.preprocess.vindr_cxr import to_original
    from tests.preprocess.vindr_download import BOXES

    _, root, _, _ = converted
    assert main(["convert", "vindr-cxr", "--src", str(root / "src"), "--out", str(tmp_path), "--resize", "40",
                 "--resize-mode", "square"]) == 1
    coco = COCO(str(tmp_path / "annotations" / "instances_train.json"))
    manifest = read_manifest(tmp_path / "manifest.csv")
    back = sorted((coco.imgs[a["image_id"]]["image_id"], a["rad_id"], *np.round(to_original(
        [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]],
        coco.imgs[a["image_id"]]["image_id"], manifest)[0], 6)) for a in coco.dataset["annotations"])
    expected = sorted((i, r, *np.clip(box, 0, [SIZE[1], SIZE[0]] * 2)) for i, r, _, box in BOXES
                      if box and i in "abc")
    assert [row[:2] for row in back] == [row[:2] for row in expected]
    np.testing.assert_allclose([row[2:] for row in back], [row[2:] for row in expected], atol=1e-6)
    assert {img["width"] for img in coco.dataset["images"]} == {40}
