"""``medattn predict``'s command line, model detection and option checks (no trained model)."""

from __future__ import annotations

import json

import pytest

from medattn.cli import main
from medattn.inference.batch import detect_model
from tests.cli_help import help_text


def _fake_nnunet_model(root, folds=(0,)):
    model = root / "nnUNetTrainerDSM__nnUNetPlans__3d_fullres"
    model.mkdir(parents=True)
    (model / "plans.json").write_text("{}")
    (model / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}}))
    for fold in folds:
        (model / f"fold_{fold}").mkdir()
        (model / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"")
    return model


def test_help_describes_and_gives_examples(capsys):
    text = help_text(capsys, "predict")
    for expected in ("--model", "--folds", "--no-tta", "--save-probabilities", "--overwrite", "-j", "examples:",
                     "CASE_0000.nii.gz"):
        assert expected in text


def test_detects_nnunet_folders_and_monai_checkpoints(tmp_path):
    model = _fake_nnunet_model(tmp_path / "results")
    assert detect_model(model).kind == "nnunet" and detect_model(model).fold is None
    fold = detect_model(model / "fold_0")
    assert (fold.kind, fold.path, fold.fold) == ("nnunet", model, 0)

    run = tmp_path / "runs" / "dsm"
    run.mkdir(parents=True)
    (run / "checkpoint_last.pt").write_bytes(b"")
    assert detect_model(run).path == run / "checkpoint_last.pt"
    (run / "checkpoint_best.pt").write_bytes(b"")
    assert (detect_model(run).kind, detect_model(run).path) == ("monai", run / "checkpoint_best.pt")
    assert detect_model(run, checkpoint="checkpoint_last.pt").path == run / "checkpoint_last.pt"
    assert detect_model(run / "checkpoint_last.pt").kind == "monai"


def test_unusable_models_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        detect_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="plans.json"):
        detect_model(tmp_path / "empty")
    (tmp_path / "weights.txt").write_text("")
    with pytest.raises(ValueError, match="not a model"):
        detect_model(tmp_path / "weights.txt")


def test_missing_fold_names_the_available_ones(tmp_path, capsys):
    model = _fake_nnunet_model(tmp_path / "results", folds=(0, 2))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a_0000.nii.gz").write_bytes(b"")
    code = main(["predict", "--model", str(model), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--folds", "1", "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err
    assert "fold(s) 1" in err and "available: 0, 2" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["-j", "0"], "positive integer"),
        (["--folds", "x"], "invalid fold"),
        (["--num-parts", "0"], "positive integer"),
        (["--part-id", "-1"], "non-negative integer"),
    ],
)
def test_bad_options_are_rejected(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--model", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "o"), *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_output_folder_must_not_be_an_input_folder(tmp_path, capsys):
    model = _fake_nnunet_model(tmp_path / "results")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a_0000.nii.gz").write_bytes(b"")
    code = main(["predict", "--model", str(model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "in")])
    assert code == 2
    assert "is also an input folder" in capsys.readouterr().err


def test_missing_input_is_an_error(tmp_path, capsys):
    model = _fake_nnunet_model(tmp_path / "results")
    code = main(["predict", "--model", str(model), "--input", str(tmp_path / "nothing.nii.gz"), "--output",
                 str(tmp_path / "out")])
    assert code == 2
    assert "nothing.nii.gz: no such file" in capsys.readouterr().err


def test_unknown_or_absent_device_is_an_error(tmp_path, capsys):
    import torch

    model = _fake_nnunet_model(tmp_path / "results")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a_0000.nii.gz").write_bytes(b"")
    args = ["predict", "--model", str(model), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main([*args, "--device", "tpu9"]) == 2
    assert "unknown device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*args, "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_part_id_must_name_one_of_the_parts(tmp_path, capsys):
    code = main(["predict", "--model", str(tmp_path), "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--num-parts", "2", "--part-id", "2"])
    assert code == 2
    assert "0 <= part_id < num_parts, got num_parts=2, part_id=2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
