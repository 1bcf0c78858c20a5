"""`medattn train monai`, checkpoints and resume, the predictor, and the MONAI bundle."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medattn import insertion
from medattn.cli import main
from medattn.data.io import check_same_geometry, read_image
from medattn.networks import training
from medattn.networks.builders import create
from medattn.networks.training import TrainConfig, load_checkpoint, save_checkpoint
from medattn.networks.transforms import TransformConfig, val_transforms

from tests.cli_help import help_text
from .conftest import PHANTOM_ROI, TINY_DYNUNET

REPO_ROOT = Path(__file__).resolve().parents[2]


def train_argv(data, out, *extra):
    return ["train", "monai", "--data", str(data), "--out", str(out), "--roi", PHANTOM_ROI,
            "--no-progress", "--val-fraction", "0.25", *extra]


def read_csv(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


# ----------------------------------------------------------------------------- CLI surface


def test_help_has_description_and_example(capsys):
    text = help_text(capsys, "train", "monai")
    assert "examples:" in text and "--resume" in text and "nnU-Net raw or MSD" in text
    assert main(["train"]) == 2  # the group alone prints its help


def test_bad_input_is_reported_not_raised(tmp_path, phantom, capsys):
    assert main(train_argv(tmp_path / "missing", tmp_path / "out")) == 2
    assert "dataset.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage_error:  # a malformed placement is a usage error
        main(train_argv(phantom, tmp_path / "out", "--attention", "nope"))
    assert usage_error.value.code == 2 and "unknown block 'nope'" in capsys.readouterr().err
    assert main(train_argv(phantom, tmp_path / "out", "--network", "basicunet", "--attention", "sna@before_add")) == 2
    assert "no position 'before_add'; it has ['stage', 'after_conv1', 'after_conv2', 'shared']" in capsys.readouterr().err
    assert main(train_argv(phantom, tmp_path / "out", "--attention", "se", "--attention-stages", "0")) == 2
    assert "--attention-stages is part of --attention now" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(train_argv(phantom, tmp_path / "out", "--roi", "32,x,16"))
    with pytest.raises(SystemExit):
        main(train_argv(phantom, tmp_path / "out", "--network-kwargs", "[1, 2]"))


def test_errors_wrapped_by_monai_transforms_are_unwrapped():
    from medattn.networks.cli import _user_error

    try:
        try:
            raise ValueError("case7.nii.gz: bad")
        except ValueError as inner:
            raise RuntimeError("applying transform <LoadImageSITKd>") from inner
    except RuntimeError as wrapped:
        assert str(_user_error(wrapped)) == "case7.nii.gz: bad"
    assert _user_error(RuntimeError("a genuine bug")) is None


def test_roi_that_does_not_fit_the_network_is_refused(phantom, tmp_path, capsys):
    argv = train_argv(phantom, tmp_path / "out", "--network", "basicunet", "--epochs", "1")
    argv[argv.index("--roi") + 1] = "24,32,16"
    assert main(argv) == 2
    assert "roi [24, 32, 16] does not fit basicunet: 24 (multiple of 16 needed)" in capsys.readouterr().err


def test_train_config_checks_values(tmp_path):
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        TrainConfig(data=tmp_path, out=tmp_path, epochs=0)
    with pytest.raises(ValueError, match="unknown network"):
        TrainConfig(data=tmp_path, out=tmp_path, network="vnet9")
    with pytest.raises(ValueError, match="sw_overlap"):
        TrainConfig(data=tmp_path, out=tmp_path, sw_overlap=1.0)
    assert TrainConfig(data=tmp_path, out=tmp_path, attention="None").attention is None


def test_a_fixed_split_is_checked(tmp_path):
    with pytest.raises(ValueError, match="both in 'train' and in 'val'"):
        TrainConfig(data=tmp_path, out=tmp_path, split={"train": ["a", "b"], "val": ["b"]})
    with pytest.raises(ValueError, match="keys 'train' and 'val'"):
        TrainConfig(data=tmp_path, out=tmp_path, split={"train": ["a"]})
    with pytest.raises(ValueError, match="non-empty list"):
        TrainConfig(data=tmp_path, out=tmp_path, split={"train": "a", "val": ["b"]})
    with pytest.raises(ValueError, match="not both"):
        TrainConfig(data=tmp_path, out=tmp_path, split={"train": ["a"], "val": ["b"]}, limit_cases=4)
    assert TrainConfig(data=tmp_path, out=tmp_path, split={"train": ["b", "a"], "val": ["c"]}).split == {
        "train": ["a", "b"], "val": ["c"]}


def test_a_fixed_split_naming_unknown_cases_is_refused(phantom, tmp_path):
    config = TrainConfig(data=phantom, out=tmp_path / "run", split={"train": ["phantom_000", "nope_1"],
                                                                    "val": ["phantom_001"]}, progress=False)
    with pytest.raises(ValueError, match=r"\['nope_1'\] are not labelled cases"):
        training.Trainer(config).run()


# ----------------------------------------------------------------------------- checkpoints


def _tiny_checkpoint(path, attention="dia_light"):
    network = create("dynunet", 3, 1, 4, attention=attention, filters=[4, 8, 16, 32], patch_size=[32, 32, 16],
                     spacing=[0.87, 0.87, 2.68])
    transforms = TransformConfig(spacing=[0.87, 0.87, 2.68], intensity="ct", roi=[32, 32, 16])
    save_checkpoint(path, network, transforms, labels={0: "background", 1: "a", 2: "b", 3: "c"},
                    channel_names=["CT"], epoch=3)
    return network


def test_checkpoint_round_trip(tmp_path):
    network = _tiny_checkpoint(tmp_path / "ckpt.pt").eval()
    loaded, config = load_checkpoint(tmp_path / "ckpt.pt")
    assert type(loaded) is type(network) and not loaded.training
    assert config["network"]["attention"] == "dia_light@shared" and config["epoch"] == 3
    assert config["transforms"]["roi"] == [32, 32, 16] and config["labels"][2] == "b"
    assert "state_dict" not in config
    assert sorted(insertion.attached_blocks(loaded)) == sorted(insertion.attached_blocks(network))
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network(x))
    # Plain weights_only loading works: the file holds tensors and plain Python values only.
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["format"] == training.CHECKPOINT_FORMAT
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary file left


@pytest.mark.parametrize("old_network, placement", [
    ({"attention": "dsm", "attention_stages": [0, -1], "attention_kwargs": {"rd_ratio": 0.25}},
     'dsm@stage:0,-1{"rd_ratio": 0.25}'),
    ({"attention": "dia_lstm", "attention_stages": None, "attention_kwargs": {}}, "dia@shared"),
    ({"attention": "sna", "attention_stages": "last", "attention_kwargs": {}}, "sna@stage:last"),
])
def test_a_checkpoint_in_the_format_before_placements_loads_and_predicts_the_same(tmp_path, old_network, placement):
    """medattn < 0.2 wrote ``attention`` as a bare name with ``attention_stages`` and
    ``attention_kwargs`` and put every block on the stage output; such a file must rebuild
    the same network with the same keys."""
    torch.manual_seed(3)
    network = create("dynunet", 3, 1, 4, attention=placement, filters=[4, 8, 16, 32], patch_size=[32, 32, 16])
    with torch.no_grad():  # non-identity blocks, so that a misplaced block would change the output
        for name, parameter in network.named_parameters():
            if name.endswith("gamma"):
                parameter.normal_()
    old_config = {k: v for k, v in network.medattn_config.items() if k != "attention"} | old_network
    state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    if old_network["attention"] == "dsm":  # the stage-output layout of medattn < 0.2
        assert {"input_block.attention.gamma", "bottleneck.attention.gamma"} <= set(state)
    checkpoint = {"format": training.CHECKPOINT_FORMAT, "format_version": 1, "network": old_config,
                  "state_dict": state, "transforms": TransformConfig(spacing=[1.0, 1.0, 1.0], intensity="zscore",
                                                                     roi=[32, 32, 16]).to_dict(),
                  "labels": {0: "background", 1: "a", 2: "b", 3: "c"}, "channel_names": ["MRI"], "epoch": 1}
    torch.save(checkpoint, tmp_path / "old.pt")
    loaded, _ = load_checkpoint(tmp_path / "old.pt")
    assert loaded.medattn_config["attention"] == placement
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), network.eval()(x))


def test_bad_checkpoints_are_named(tmp_path):
    truncated = tmp_path / "truncated.pt"
    _tiny_checkpoint(truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated.pt: not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="foreign.pt: not a medattn MONAI checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_predictions_map_back_to_the_input_grid(phantom, tmp_path):
    """One-hot ground truth on the resampled grid, inverted by the predictor, gives back the
    original label map: orientation, resampling and axis order all undone."""
    from medattn.networks.data import discover_dataset
    from medattn.networks.inference import Predictor

    _tiny_checkpoint(tmp_path / "ckpt.pt")
    predictor = Predictor(tmp_path / "ckpt.pt", device="cpu", progress=False)
    case = discover_dataset(phantom).cases[2]
    prepared = predictor.preprocess({"image": list(case.images)})
    resampled_label = val_transforms(predictor.transforms)(case.as_dict())["label"][0].long()
    assert resampled_label.shape == prepared["image"].shape[1:]
    one_hot = torch.nn.functional.one_hot(resampled_label, 4).permute(3, 0, 1, 2).float()
    labels = predictor.to_input_grid(prepared, one_hot)
    original, _ = read_image(case.label)
    assert labels.shape == original.shape
    for value in (1, 2, 3):
        a, b = labels == value, original == value
        # Resampled there and back, so not exact on these tiny organs (25-300 voxels);
        # a flipped or permuted axis gives at most 0.62 here, and 0 for organ_c.
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8
    assert (labels == original).mean() > 0.99


# ----------------------------------------------------------------------------- training runs


@pytest.mark.slow
def test_cli_trains_two_epochs_and_the_checkpoint_predicts(phantom, tmp_path):
    from medattn.networks.inference import Predictor

    out = tmp_path / "run"
    # --resume without a checkpoint to continue starts a new run (as nnU-Net's --c does).
    assert main(train_argv(phantom, out, "--network", "dynunet", "--attention", "dsm", "--epochs", "2",
                           "--network-kwargs", TINY_DYNUNET, "--resume")) == 0
    rows = read_csv(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert set(rows[0]) >= {"train_loss", "val_mean_dice", "dice_organ_a", "dice_organ_c", "lr"}
    assert all(0 <= float(r["val_mean_dice"]) <= 1 and float(r["train_loss"]) > 0 for r in rows)
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])  # poly decay
    network, config = load_checkpoint(out / "checkpoint_last.pt")
    assert config["epoch"] == 2 and config["network"]["attention"] == "dsm@after_conv2"
    assert len(insertion.attached_blocks(network)) == 4  # every DynUNet encoder stage
    assert config["transforms"]["intensity"] == "ct" and config["transforms"]["roi"] == [32, 32, 16]
    assert len(config["split"]["val"]) == 1 and len(config["split"]["train"]) == 3
    assert (out / "checkpoint_best.pt").is_file()
    assert json.loads((out / "config.json").read_text())["network"]["name"] == "dynunet"

    written = Predictor(out / "checkpoint_best.pt", device="cpu", progress=False).predict_folder(
        phantom / "imagesTr", tmp_path / "pred")
    assert [p.name for p in written] == [f"phantom_{i:03d}.nii.gz" for i in range(4)]
    for path in written:
        labels, geometry = read_image(path)
        _, reference = read_image(phantom / "labelsTr" / path.name)
        check_same_geometry(reference, geometry)
        assert set(np.unique(labels)) <= {0, 1, 2, 3}


@pytest.mark.slow
def test_resume_after_an_interrupted_run_matches_an_uninterrupted_one(phantom, tmp_path, monkeypatch):
    argv = ["--network", "segresnet", "--attention", "dia", "--epochs", "2",
            "--network-kwargs", '{"init_filters": 8, "blocks_down": [1, 2, 2], "blocks_up": [1, 1]}']
    assert main(train_argv(phantom, tmp_path / "reference", *argv)) == 0

    # Interrupt the second run in the first step of epoch 2 (3 training cases, batch 2: 2 steps per epoch).
    calls = {"n": 0}
    real_loss = training.deep_supervision_loss

    def interrupting_loss(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(training, "deep_supervision_loss", interrupting_loss)
    out = tmp_path / "interrupted"
    assert main(train_argv(phantom, out, *argv)) == 130
    assert load_checkpoint(out / "checkpoint_last.pt")[1]["epoch"] == 1
    assert [r["epoch"] for r in read_csv(out / "metrics.csv")] == ["1"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["checkpoint_best.pt", "checkpoint_last.pt", "config.json", "metrics.csv"])  # no temporary files
    monkeypatch.setattr(training, "deep_supervision_loss", real_loss)

    # Without --resume the folder is protected; with it, network and split come from the checkpoint.
    assert main(train_argv(phantom, out, *argv)) == 2
    assert main(train_argv(phantom, out, "--epochs", "2", "--resume")) == 0
    resumed = read_csv(out / "metrics.csv")
    reference = read_csv(tmp_path / "reference" / "metrics.csv")
    assert [r["epoch"] for r in resumed] == ["1", "2"]
    for ours, theirs in zip(resumed, reference):
        for column in ("lr", "train_loss", "val_mean_dice", "dice_organ_b"):
            assert float(ours[column]) == pytest.approx(float(theirs[column]), rel=1e-4, abs=1e-6), column
    resumed_weights = torch.load(out / "checkpoint_last.pt", weights_only=True)["state_dict"]
    reference_weights = torch.load(tmp_path / "reference" / "checkpoint_last.pt", weights_only=True)["state_dict"]
    assert resumed_weights.keys() == reference_weights.keys()
    for key in reference_weights:
        torch.testing.assert_close(resumed_weights[key], reference_weights[key], rtol=1e-4, atol=1e-5)
    # Continuing an already finished run is a no-op, not an error.
    assert main(train_argv(phantom, out, "--epochs", "2", "--resume")) == 0


@pytest.mark.slow
def test_bundle_trains_and_infers_with_monai_bundle_run(phantom_msd, tmp_path):
    models, predictions = tmp_path / "models", tmp_path / "predictions"
    common = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(REPO_ROOT)]
    train = common + [
        "--config_file", str(REPO_ROOT / "configs" / "train.json"),
        "--dataset_dir", str(phantom_msd), "--output_dir", str(models), "--epochs", "2",
        "--network_name", "basicunet", "--attention", "sna", "--roi", "[32, 32, 16]",
        "--network_kwargs", '{"features": [4, 4, 8, 8, 16, 4]}', "--progress", "False",
    ]
    result = subprocess.run(train, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [r["epoch"] for r in read_csv(models / "metrics.csv")] == ["1", "2"]
    _, config = load_checkpoint(models / "checkpoint_best.pt")
    assert config["network"]["name"] == "basicunet" and config["transforms"]["intensity"] == "zscore"

    infer = common + [
        "--config_file", str(REPO_ROOT / "configs" / "inference.json"),
        "--checkpoint", str(models / "checkpoint_best.pt"), "--input_dir", str(phantom_msd / "imagesTr"),
        "--output_dir", str(predictions), "--progress", "False", "--device", "cpu",
    ]
    result = subprocess.run(infer, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for image in sorted((phantom_msd / "imagesTr").iterdir()):
        _, expected = read_image(image)
        _, written = read_image(predictions / image.name)
        check_same_geometry(expected, written)
