"""Case pictures of the evaluation report: which cases, which slice, what they show."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medattn.evaluation.api import evaluate_folders
from medattn.evaluation.pictures import _slice_index, case_pictures, chosen_cases

from .conftest import GEOMETRY, SHAPE, box_labels, write_labels
from .test_report import render


def _metrics(dice: dict[str, float], label=1) -> pd.DataFrame:
    return pd.DataFrame({"case": list(dice), "label": label, "dice": list(dice.values())})


def test_best_median_and_worst_are_ranked_by_dice_without_undefined_cases():
    metrics = _metrics({"a": 0.5, "b": 0.9, "c": np.nan, "d": 0.1, "e": 0.7})
    # four defined values: the median is the lower of the middle two (0.7, 0.5)
    assert chosen_cases(metrics, 1) == [(("best",), "b"), (("median",), "a"), (("worst",), "d")]
    assert chosen_cases(_metrics({"a": 0.4, "b": 0.8}), 1) == [(("best",), "b"), (("median", "worst"), "a")]
    assert chosen_cases(_metrics({"a": np.nan}), 1) == []


def test_the_slice_is_where_the_truth_is_largest_else_the_prediction():
    truth = np.zeros((5, 4, 4), bool)
    truth[1, :2, :2] = True
    truth[3] = True
    prediction = np.zeros_like(truth)
    prediction[4, 0, 0] = True
    assert _slice_index(truth, prediction) == 3
    assert _slice_index(np.zeros_like(truth), prediction) == 4
    assert _slice_index(np.zeros_like(truth), np.zeros_like(truth)) == 2


@pytest.fixture
def scored(tmp_path):
    """Three cases of one label with Dice 1, about 0.6 and 0, and their intensity images."""
    gt, pred, images = tmp_path / "gt", tmp_path / "pred", tmp_path / "images"
    box = (slice(2, 8), slice(4, 12), slice(4, 14))
    for case, shift in (("good", 0), ("fair", 3), ("bad", 20)):
        truth = box_labels({1: box})
        moved = box_labels({1: (box[0], box[1], slice(4 + shift, 14 + shift))}) if shift < 20 else box_labels({})
        write_labels(gt, case, truth)
        write_labels(pred, case, moved)
        intensity = np.random.default_rng(0).normal(100, 20, SHAPE).astype(np.float32) + 300 * (truth > 0)
        write_labels(images, f"{case}_0000", intensity)
    return gt, pred, images


def test_pictures_show_the_chosen_cases_with_their_dice(scored, tmp_path):
    gt, pred, images = scored
    result = evaluate_folders(pred, gt, labels="1=organ", progress=False, images=images)
    pictures = case_pictures(result, images)
    assert [(p.ranks, p.case) for p in pictures] == [(("best",), "good"), (("median",), "fair"), (("worst",), "bad")]
    by_case = result.metrics.set_index("case")["dice"]
    for picture in pictures:
        assert picture.dice == (pytest.approx(by_case[picture.case]),)
        assert Image.open(io.BytesIO(picture.png)).size[0] > 100


def test_intensity_images_change_the_picture(scored):
    gt, pred, images = scored
    result = evaluate_folders(pred, gt, labels="1=organ", progress=False)
    plain = np.asarray(Image.open(io.BytesIO(case_pictures(result)[0].png)).convert("L"), dtype=float)
    with_image = np.asarray(Image.open(io.BytesIO(case_pictures(result, images)[0].png)).convert("L"), dtype=float)
    # A blank background with contours is mostly white; the MRI-like slice is mostly grey.
    assert plain.mean() > 200 and with_image.mean() < plain.mean() - 40


def test_report_with_pictures_renders_in_chromium(scored, tmp_path):
    gt, pred, images = scored
    out = tmp_path / "out"
    evaluate_folders(pred, gt, labels="1=organ", compare=pred, progress=False, images=images, out_dir=out)
    page = (out / "report.html").read_text()
    alts = re.findall(r'<img alt="organ, ([a-z /]+) case (\w+)', page)
    assert alts == [("best", "good"), ("median", "fair"), ("worst", "bad")]
    pixels, console = render(out / "report.html", tmp_path)
    assert console == [] and pixels.std() > 20


def test_cli_images_must_be_a_folder(scored, tmp_path, capsys):
    from medattn.cli import main

    gt, pred, _ = scored
    code = main(["evaluate", "--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "o"),
                 "--images", str(tmp_path / "nope"), "--no-progress"])
    assert code != 0
    assert "--images" in capsys.readouterr().err and not (tmp_path / "o").exists()
