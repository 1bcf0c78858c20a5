"""medattn predict on ``medattn train image`` runs: predictions.csv, label PNGs of the input's
size, metrics.json equal to the trainer's validation metrics on the same images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from medattn.cli import main
from medattn.images.metrics import multilabel_metrics


def test_classification_predictions_and_metrics_on_the_validation_folder(classification_run, texture_folder,
                                                                         tmp_path, capsys):
    out, summary = classification_run
    assert main(["predict", "--model", str(out / "checkpoint_last.pt"), "--input", str(texture_folder / "val"),
                 "--output", str(tmp_path), "--device", "cpu", "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["accuracy"], abs=1e-9)
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(rows) == 36 and rows[0]["path"].startswith("brick/")
    probabilities = np.array([[float(r[f"prob_{c}"]) for c in ("brick", "grass", "gravel")] for r in rows])
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    accuracy = np.mean([r["prediction"] == r["path"].split("/")[0] for r in rows])
    assert accuracy == pytest.approx(metrics["accuracy"], abs=1e-9)


def test_segmentation_label_pngs_have_the_input_size(segmentation_run, voc_folder, tmp_path):
    out, summary = segmentation_run
    assert main(["predict", "--model", str(out), "--checkpoint", "checkpoint_last.pt", "--input", str(voc_folder),
                 "--output", str(tmp_path), "--device", "cpu", "--no-progress"]) == 0
    labels = sorted(tmp_path.glob("*.png"))
    assert len(labels) == 16  # val.txt
    image = Image.open(labels[0])
    assert image.mode == "P" and image.size == Image.open(voc_folder / "JPEGImages" / f"{labels[0].stem}.jpg").size
    assert set(np.unique(np.asarray(image)).tolist()) <= {0, 1, 2}
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx(summary["miou"], abs=1e-9)


def test_multilabel_auroc_matches_scikit_learn_and_a_brute_force_count(tmp_path):
    """AUROC = P(score of a positive > score of a negative), ties counting 1/2."""
    import torch

    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (40, 3))
    targets[:, 2] = 1  # a class that is never negative: no AUROC, reported as None
    scores = targets * 0.7 + rng.normal(0, 0.5, targets.shape)
    result = multilabel_metrics(torch.tensor(scores), torch.tensor(targets), ["a", "b", "c"])
    for index, name in enumerate("ab"):
        pos, neg = scores[targets[:, index] == 1, index], scores[targets[:, index] == 0, index]
        brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
        assert result["auroc"][name] == pytest.approx(brute)
    assert result["auroc"]["c"] is None
    assert result["auroc_mean"] == pytest.approx((result["auroc"]["a"] + result["auroc"]["b"]) / 2)


def test_image_model_options_that_belong_to_volumes_are_refused(classification_run, texture_folder, tmp_path, capsys):
    out, _ = classification_run
    assert main(["predict", "--model", str(out), "--input", str(texture_folder / "val"), "--output", str(tmp_path),
                 "--folds", "0", "--no-progress"]) == 2
    assert "--folds: not for image models" in capsys.readouterr().err
