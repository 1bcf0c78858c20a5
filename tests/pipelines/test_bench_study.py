"""``medattn bench study`` on a generated phantom: a smoke budget, end to end, resumed.

The run records, through the real training path, the initial weights and every training
batch of each (variant, seed), so the tests can check what the study promises: the same
stock weights and the same augmentation stream for every variant of a seed.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medattn.cli import main
from medattn.pipelines.bench_study import parse_variants, split_variant_list
from tests.cli_help import help_text

SMOKE = ["--roi", "16,16,16", "--network-kwargs", '{"filters": [8, 16, 32]}', "--batch-size", "2",
         "--steps", "2", "--timing-steps", "1", "--device", "cpu", "--no-progress", "--no-tta"]
VARIANTS = ["stock,dsm", 'sna{"identity_init": true}']


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from medattn.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("raw"), n_cases=6, shape=(16, 24, 24), dataset_id=992)


def test_help_lists_the_options(capsys):
    text = help_text(capsys, "bench", "study")
    for option in ("--data", "--variants", "--seeds", "--steps", "--test-images", "--test-labels", "--engine",
                   "--checkpoint"):
        assert option in text


@pytest.mark.parametrize("text, expected", [
    ("stock,dsm,sna,dia", ["stock", "dsm", "sna", "dia"]),
    ("dsm:0,1,sna", ["dsm:0,1", "sna"]),
    ('sna{"identity_init": true, "iterations": 2},dia_light:first,last', ['sna{"identity_init": true, "iterations": 2}',
                                                                        "dia_light:first,last"]),
    ("dsm@after_conv1:-1, se", ["dsm@after_conv1:-1", "se"]),
])
def test_variant_lists_split_between_placements_only(text, expected):
    assert split_variant_list(text) == expected


def test_variants_start_with_stock_and_refuse_repeats():
    variants = parse_variants(["dsm", "sna,dia"])
    assert [v.name for v in variants][0] == "stock"
    assert variants[0].placement is None and len(variants) == 4
    with pytest.raises(ValueError, match="repeats"):
        parse_variants(["dsm,dsm"])
    with pytest.raises(ValueError, match="besides stock"):
        parse_variants(["stock"])


def test_unknown_variant_is_refused_before_any_training(phantom, tmp_path, capsys):
    code = main(["bench", "study", "--data", str(phantom), "--work", str(tmp_path / "w"), "--variants", "stock,dsx",
                 *SMOKE])
    assert code == 2
    assert "dsx" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_test_images_without_labels_are_named(phantom, tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    for case in ("phantom_000", "phantom_001"):
        (images / f"{case}_0000.nii.gz").symlink_to(phantom / "imagesTr" / f"{case}_0000.nii.gz")
    (labels / "phantom_000.nii.gz").symlink_to(phantom / "labelsTr" / "phantom_000.nii.gz")
    code = main(["bench", "study", "--data", str(phantom), "--work", str(tmp_path / "w"), "--variants", "dsm",
                 "--test-images", str(images), "--test-labels", str(labels), *SMOKE])
    assert code == 2
    err = capsys.readouterr().err
    assert "images without labels" in err and "phantom_001" in err
    assert not (tmp_path / "w").exists()


def test_test_label_on_another_grid_is_named(phantom, tmp_path, capsys):
    import SimpleITK as sitk

    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    (images / "phantom_000_0000.nii.gz").symlink_to(phantom / "imagesTr" / "phantom_000_0000.nii.gz")
    label = sitk.ReadImage(str(phantom / "labelsTr" / "phantom_000.nii.gz"))
    label.SetOrigin([v + 5.0 for v in label.GetOrigin()])
    sitk.WriteImage(label, str(labels / "phantom_000.nii.gz"))
    code = main(["bench", "study", "--data", str(phantom), "--work", str(tmp_path / "w"), "--variants", "dsm",
                 "--test-images", str(images), "--test-labels", str(labels), *SMOKE])
    assert code == 2
    err = capsys.readouterr().err
    assert "origin differs" in err and "phantom_000_0000.nii.gz" in err


@pytest.fixture(scope="module")
def study(phantom, tmp_path_factory):
    """The smoke study, with the initial weights and training batches of every run recorded."""
    from medattn.networks import training

    work = tmp_path_factory.mktemp("study")
    initial, batches, current = {}, {}, {}
    build, train_epoch, loss = training.Trainer._build_network, training.Trainer._train_epoch, training.deep_supervision_loss

    def recording_build(self, *args):
        network = build(self, *args)
        initial[(self.config.attention, self.config.seed)] = {k: v.clone() for k, v in network.state_dict().items()}
        return network

    def recording_epoch(self, *args):
        current["key"] = (self.config.attention, self.config.seed)
        try:
            return train_epoch(self, *args)
        finally:
            current["key"] = None  # the cost measurement's steps are not training batches

    def recording_loss(output, labels, loss_fn):
        if current.get("key") is not None:
            batches.setdefault(current["key"], []).append(labels.clone())
        return loss(output, labels, loss_fn)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training.Trainer, "_build_network", recording_build)
        patch.setattr(training.Trainer, "_train_epoch", recording_epoch)
        patch.setattr(training, "deep_supervision_loss", recording_loss)
        code = main(["bench", "study", "--data", str(phantom), "--work", str(work), "--variants", *VARIANTS,
                     "--seeds", "0", "1", *SMOKE])
    assert code == 0
    return {"work": work, "initial": initial, "batches": batches,
            "json": json.loads((work / "study.json").read_text(encoding="utf-8"))}


@pytest.mark.slow
def test_every_variant_of_a_seed_starts_from_the_same_stock_weights(study):
    for seed in (0, 1):
        stock = study["initial"][(None, seed)]
        for (attention, s), state in study["initial"].items():
            if s == seed:
                assert all(torch.equal(stock[k], state[k]) for k in stock), attention
    assert not torch.equal(study["initial"][(None, 0)]["input_block.conv1.conv.weight"],
                           study["initial"][(None, 1)]["input_block.conv1.conv.weight"])


@pytest.mark.slow
def test_every_variant_of_a_seed_sees_the_same_batches(study):
    for seed in (0, 1):
        runs = {a: b for (a, s), b in study["batches"].items() if s == seed}
        assert len(runs) == 3
        reference = runs[None]
        for attention, batches in runs.items():
            assert len(batches) == len(reference) == 2  # 3 training cases in batches of 2: one epoch
            assert all(torch.equal(a, b) for a, b in zip(reference, batches)), attention
    assert not all(torch.equal(a, b) for a, b in zip(study["batches"][(None, 0)], study["batches"][(None, 1)]))


@pytest.mark.slow
def test_the_split_keeps_test_cases_out_of_training(study):
    split = study["json"]["split"]
    test_ids = set(split["test"])
    assert test_ids and not test_ids & (set(split["train"]) | set(split["val"]))
    assert len(split["train"]) + len(split["val"]) + len(test_ids) == 6
    for variant in ("stock", "dsm", "sna-identity_init_true"):
        for seed in (0, 1):
            config = json.loads((study["work"] / "runs" / variant / f"seed_{seed}" / "config.json").read_text())
            assert config["split"] == {"train": split["train"], "val": split["val"]}
            predicted = sorted(p.name for p in (study["work"] / "predictions" / variant / f"seed_{seed}").glob("*.nii.gz"))
            assert predicted == sorted(f"{case}.nii.gz" for case in test_ids)


@pytest.mark.slow
def test_study_json_holds_what_the_evaluations_measured(study):
    result = study["json"]
    assert list(result["variants"]) == ["stock", "dsm", "sna-identity_init_true"]
    assert result["budget"]["steps"] == 2 * result["budget"]["epochs"] == 2
    for variant in result["variants"]:
        per_seed = []
        for seed in (0, 1):
            metrics = pd.read_csv(study["work"] / "evaluation" / variant / f"seed_{seed}" / "metrics.csv")
            per_seed.append(metrics.groupby("label")["dice"].mean().mean())
            assert result["runs"][variant][str(seed)]["steps"] == 2
        entry = result["results"]["classes"][variant]["dice"]["mean"]
        assert entry["mean"] == pytest.approx(np.mean(per_seed), abs=1e-9)
        assert entry["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-9)
    assert result["results"]["cost"]["dsm"]["step_s_ratio"] > 0
    assert result["results"]["cost"]["dsm"]["peak_bytes_ratio"] > 1  # DSM's maps cost memory
    assert "validation split only" in result["selection"]["rule"]
    html = (study["work"] / "report.html").read_text(encoding="utf-8")
    assert "Verdicts" in html and "sna-identity_init_true" in html


@pytest.mark.slow
def test_running_again_resumes_and_refuses_other_settings(study, phantom, capsys):
    work = study["work"]
    checkpoint = work / "runs" / "dsm" / "seed_0" / "checkpoint_last.pt"
    mtime = checkpoint.stat().st_mtime_ns
    assert main(["bench", "study", "--data", str(phantom), "--work", str(work), "--variants", *VARIANTS,
                 "--seeds", "0", "1", *SMOKE]) == 0
    assert checkpoint.stat().st_mtime_ns == mtime
    again = json.loads((work / "study.json").read_text(encoding="utf-8"))
    assert again["results"]["classes"] == study["json"]["results"]["classes"]
    capsys.readouterr()
    other = [*SMOKE]
    other[other.index("--steps") + 1] = "4"
    assert main(["bench", "study", "--data", str(phantom), "--work", str(work), "--variants", *VARIANTS,
                 "--seeds", "0", *other]) == 2
    assert "other settings" in capsys.readouterr().err


def test_nnunet_engine_refuses_a_placement_without_a_study_trainer(phantom, tmp_path, capsys):
    code = main(["bench", "study", "--engine", "nnunet", "--data", str(phantom), "--work", str(tmp_path / "w"),
                 "--variants", "sna@stage", *SMOKE])
    assert code == 2
    err = capsys.readouterr().err
    assert "no study trainer for 'sna@stage'" in err and "dsm" in err
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_nnunet_engine_trains_study_trainers_on_the_study_split(phantom, tmp_path):
    from medattn.data.io import case_name, list_images

    work = tmp_path / "nn"
    code = main(["bench", "study", "--engine", "nnunet", "--data", str(phantom), "--work", str(work),
                 "--variants", 'sna{"identity_init": true}', "--seeds", "0", "--iterations", "2", *SMOKE])
    assert code == 0
    study = json.loads((work / "study.json").read_text(encoding="utf-8"))
    trainers = {name: runs["0"]["trainer"] for name, runs in study["runs"].items()}
    assert trainers == {"stock": "nnUNetTrainerStock_study", "sna-identity_init_true": "nnUNetTrainerSNAIdentity_study"}
    split = study["split"]
    staged = sorted(case_name(p).removesuffix("_0000") for p in list_images(work / "nnunet_raw" / "Dataset977_Study" / "imagesTr"))
    assert staged == sorted(split["train"] + split["val"])  # nnU-Net never plans on the test cases
    folds = json.loads((work / "nnunet_preprocessed" / "Dataset977_Study" / "splits_final.json").read_text())
    assert folds == [{"train": split["train"], "val": split["val"]}]
    for name, trainer in trainers.items():
        log = next((work / "runs" / name / "seed_0").rglob("training_log_*.txt")).read_text()
        assert "epoch 0" in log.lower() and "epoch 1\n" not in log.lower()  # one epoch of 2 iterations
        predicted = sorted(p.name for p in (work / "predictions" / name / "seed_0").glob("*.nii.gz"))
        assert predicted == sorted(f"{case}.nii.gz" for case in split["test"])
        assert study["runs"][name]["0"]["validation_mean_dice"] is not None
    assert study["results"]["cost"]["sna-identity_init_true"]["peak_bytes_ratio"] >= 1
