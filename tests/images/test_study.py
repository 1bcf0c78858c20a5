"""--seeds / --compare: every (network, seed) run, mean ± std and paired differences
checked against the per-run summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medattn.cli import main


def test_two_networks_two_seeds_mean_std_and_paired_differences(texture_folder, tmp_path, capsys):
    out = tmp_path / "study"
    args = ["train", "image", "--task", "classification", "--data", str(texture_folder), "--out", str(out),
            "--backbone", "resnet20", "--compare", "dsm@after_conv2", "--seeds", "0", "1", "--epochs", "1",
            "--batch-size", "48", "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["reference"] == "resnet20"
    runs = {name: [json.loads((out / name / f"seed_{s}" / "summary.json").read_text())["accuracy"] for s in (0, 1)]
            for name in ("resnet20", "resnet20+dsm-after_conv2")}
    for name, values in runs.items():
        stats = comparison["networks"][name]["metrics"]["accuracy"]
        assert stats["mean"] == pytest.approx(np.mean(values)) and stats["std"] == pytest.approx(np.std(values, ddof=1))
    paired = comparison["networks"]["resnet20+dsm-after_conv2"]["paired_difference"]["accuracy"]
    diffs = np.subtract(runs["resnet20+dsm-after_conv2"], runs["resnet20"])
    assert paired["mean"] == pytest.approx(diffs.mean()) and paired["improved"] == int((diffs > 0).sum())
    assert "| `resnet20+dsm-after_conv2` | 2 |" in (out / "comparison.md").read_text()
    # a rerun resumes every finished run instead of refusing or retraining
    before = (out / "resnet20" / "seed_0" / "checkpoint_last.pt").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "resnet20" / "seed_0" / "checkpoint_last.pt").stat().st_mtime_ns == before


def test_unknown_networks_are_refused_before_training(texture_folder, tmp_path, capsys):
    assert main(["train", "image", "--task", "classification", "--data", str(texture_folder), "--out",
                 str(tmp_path / "s"), "--preset", "resnet20", "--compare", "dsm", "--device", "cpu"]) == 2
    assert "placements need --backbone" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
