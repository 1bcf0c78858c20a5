"""medattn.evaluation.detection and ``medattn evaluate detection``: AP against pycocotools'
COCOeval and a hand computation, the SNA hit rate as the recall it is, Kaggle's "No
finding" class, bad inputs named, and the COCO files of ``medattn convert vindr-cxr``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medattn.cli import main
from medattn.evaluation.detection import average_precision, evaluate_detection, hit_rate


def _scene(seed: int, images: int = 12, classes: int = 3):
    """Ground truth and detections where each detection overlaps at most one ground-truth box.

    Boxes live in separate 100-pixel cells, so VOC's and COCO's matching rules agree and
    pycocotools is an exact reference for the 101-point AP.
    """
    rng = np.random.default_rng(seed)
    gt = {"images": [{"id": k + 1, "width": 400, "height": 400} for k in range(images)], "annotations": [],
          "categories": [{"id": c, "name": f"class {c}"} for c in range(classes)]}
    detections = []
    for image in range(1, images + 1):
        for cell in rng.choice(16, size=int(rng.integers(1, 7)), replace=False):
            x, y = 100 * (cell % 4) + rng.uniform(5, 30), 100 * (cell // 4) + rng.uniform(5, 30)
            w, h = rng.uniform(30, 60), rng.uniform(30, 60)
            category = int(rng.integers(classes))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image, "category_id": category,
                                      "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            for _ in range(int(rng.integers(0, 3))):  # hits, near misses and duplicates in the same cell
                jitter = rng.normal(0, 6, 4)
                detections.append({"image_id": image, "category_id": category if rng.random() < 0.8 else
                                   int(rng.integers(classes)), "bbox": [x + jitter[0], y + jitter[1],
                                                                        max(w + jitter[2], 5), max(h + jitter[3], 5)],
                                   "score": float(rng.random())})
        for _ in range(int(rng.integers(0, 3))):  # false positives in an empty corner of a cell
            cell = int(rng.integers(16))
            detections.append({"image_id": image, "category_id": int(rng.integers(classes)),
                               "bbox": [100 * (cell % 4) + 92, 100 * (cell // 4) + 92, 6, 6],
                               "score": float(rng.random())})
    return gt, detections


def _pycocotools_ap(gt, detections, iou):
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = gt
        truth.createIndex()
        result = truth.loadRes(detections)
        cocoeval = COCOeval(truth, result, "bbox")
        cocoeval.params.iouThrs = np.array([iou])
        cocoeval.params.maxDets = [100]
        cocoeval.params.areaRng, cocoeval.params.areaRngLbl = [[0, 1e10]], ["all"]
        cocoeval.evaluate()
        cocoeval.accumulate()
    precision = cocoeval.eval["precision"][0, :, :, 0, 0]  # recall points x classes
    return {c: float(precision[:, k].mean()) if (precision[:, k] > -1).all() else float("nan")
            for k, c in enumerate(cocoeval.params.catIds)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_101_point_ap_equals_pycocotools(tmp_path, seed):
    gt, detections = _scene(seed)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(detections))
    reference = _pycocotools_ap(gt, detections, 0.4)
    report = evaluate_detection(tmp_path / "pred.json", tmp_path / "gt.json", interpolation="coco101")
    ours = {row["id"]: row["ap"] for row in report.classes}
    assert ours.keys() == reference.keys()
    for class_id in ours:
        assert ours[class_id] == pytest.approx(reference[class_id], abs=1e-9), class_id
    voc = evaluate_detection(tmp_path / "pred.json", tmp_path / "gt.json")
    for row in voc.classes:  # all-point and 101-point AP differ by less than one recall step
        assert abs(row["ap"] - ours[row["id"]]) < 0.02


def test_all_point_ap_by_hand():
    truths = {1: np.array([[0, 0, 10, 10], [50, 50, 10, 10]], float), 2: np.array([[0, 0, 10, 10]], float)}
    detections = [(1, 0.9, [0, 0, 10, 10]),  # TP
                  (2, 0.8, [30, 30, 10, 10]),  # FP
                  (1, 0.7, [51, 51, 10, 10]),  # TP (IoU 0.68)
                  (1, 0.6, [0, 0, 10, 10]),  # duplicate of the first: FP
                  (2, 0.5, [4, 0, 10, 10])]  # IoU 6/14 = 0.43 > 0.4: TP
    # precision 1, 1/2, 2/3, 2/4, 3/5 at recall 1/3, 1/3, 2/3, 2/3, 1
    expected = 1 / 3 * 1 + 1 / 3 * (2 / 3) + 1 / 3 * (3 / 5)
    assert average_precision(detections, truths) == pytest.approx(expected)
    assert average_precision(detections, truths, iou_threshold=0.45) == pytest.approx(1 / 3 + 1 / 3 * (2 / 3))
    assert np.isnan(average_precision(detections, {}))


def test_the_hit_rate_is_a_recall_blind_to_false_positives():
    truths = {1: np.array([[0, 0, 10, 10]], float)}
    flood = [(1, 0.99 - k / 100, [20 + k, 20, 5, 5]) for k in range(50)] + [(1, 0.01, [0, 0, 10, 10])]
    assert hit_rate(flood, truths) == (1, 1)
    assert average_precision(flood, truths) == pytest.approx(1 / 51)


def test_kaggle_no_finding_class_and_the_detector_rule(tmp_path):
    gt = {"images": [{"id": 1, "image_id": "abnormal"}, {"id": 2, "image_id": "normal"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "area": 400,
                           "iscrowd": 0}],
          "categories": [{"id": 3, "name": "Cardiomegaly"}]}
    preds = [{"image_id": "abnormal", "category_id": 3, "bbox": [10, 10, 20, 20], "score": 0.04},
             {"image_id": "normal", "category_id": 14, "bbox": [0, 0, 1, 1], "score": 1.0}]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    report = evaluate_detection(tmp_path / "pred.json", tmp_path / "gt.json", no_finding=True)
    rows = {row["name"]: row for row in report.classes}
    assert rows["No finding"]["ap"] == 1.0 and rows["No finding"]["gt_boxes"] == 1
    assert rows["Cardiomegaly"]["ap"] == 1.0 and rows["Cardiomegaly"]["hit_rate"] == 0.0  # below 0.05: no hit
    assert report.mean_ap == 1.0 and report.hit_rate_total == 0.5
    with pytest.raises(ValueError, match="unknown category 14"):
        evaluate_detection(tmp_path / "pred.json", tmp_path / "gt.json")


@pytest.mark.parametrize("content, message", [
    ('{"a": 1}', "is a list of detections"),
    ('[{"image_id": 9, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 1}]', "entry 0: image 9 is not in"),
    ('[{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1], "score": 1}]', "entry 0: bbox must be [x, y, w, h]"),
    ('[{"image_id": 1, "category_id": 0, "bbox": [0, 0, -1, 1], "score": 1}]', "width and height >= 0"),
    ('[{"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": NaN}]', "entry 0: score is nan"),
    ('[{"image_id": 1, "bbox": [0, 0, 1, 1]}]', "needs image_id, category_id, bbox and score"),
    ("[{", "not a readable JSON"),
])
def test_bad_predictions_are_named_without_a_traceback(tmp_path, capsys, content, message):
    gt, _ = _scene(0, images=2)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(content)
    assert main(["evaluate", "detection", "--pred", str(tmp_path / "pred.json"), "--gt",
                 str(tmp_path / "gt.json")]) == 1
    error = capsys.readouterr().err
    assert message in error and "pred.json" in error and "Traceback" not in error


def test_the_command_scores_a_converted_vindr_download(tmp_path, capsys):
    import csv

    from tests.preprocess.vindr_download import make_download

    make_download(tmp_path / "src", "kaggle")
    assert main(["convert", "vindr-cxr", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "cxr")]) == 1
    gt_path = tmp_path / "cxr" / "annotations" / "instances_train.json"
    gt = json.loads(gt_path.read_text())
    perfect = [{"image_id": next(i["image_id"] for i in gt["images"] if i["id"] == a["image_id"]),
                "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]
    (tmp_path / "pred.json").write_text(json.dumps(perfect))
    assert main(["evaluate", "detection", "--pred", str(tmp_path / "pred.json"), "--gt", str(gt_path), "--out",
                 str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "hit rate" in printed and "a recall" in printed
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["mean_ap"] == 1.0 and summary["hit_rate_total"] == 1.0
    rows = {row["name"]: row for row in csv.DictReader(open(tmp_path / "eval" / "detection.csv"))}
    assert rows["Cardiomegaly"]["gt_boxes"] == "2" and rows["Pneumothorax"]["ap"] == ""  # no boxes: no AP
    # the raw readers' boxes as separate ground truths: one prediction per finding hits half of a's boxes
    single = [p for p in perfect if p["category_id"] != 3] + [next(p for p in perfect if p["category_id"] == 3)]
    (tmp_path / "single.json").write_text(json.dumps(single))
    report = evaluate_detection(tmp_path / "single.json", gt_path)
    cardio = next(row for row in report.classes if row["name"] == "Cardiomegaly")
    assert cardio["ap"] == pytest.approx(0.5) and cardio["hit_rate"] == 1.0  # the other reader's box overlaps too
