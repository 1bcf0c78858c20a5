"""Phantom -> nnUNetv2_plan_and_preprocess -> nnUNetv2_train (each smoke trainer) ->
nnUNetv2_predict -> Dice, all through nnU-Net's own commands in subprocesses, with the
trainers found through nnUNet_extTrainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medattn.data.io import check_same_geometry, list_images, read_image, case_name
from medattn.nnunet.commands import run_nnunet

from .conftest import DATASET, DATASET_ID

pytestmark = pytest.mark.slow

# The three papers' blocks. The other trainers (SE, ECA, CBAM, GC and the position
# variants) go through the same trainer lookup, build and checkpoint code; their networks
# are built, loaded and run on nnU-Net's plans in test_network.py, and the DSNet positions
# train and predict below.
SMOKE_TRAINERS = ["nnUNetTrainerDSM_smoke", "nnUNetTrainerSNA_smoke", "nnUNetTrainerDIA_smoke"]


def _dice(prediction: np.ndarray, truth: np.ndarray, label: int) -> float:
    p, t = prediction == label, truth == label
    denominator = p.sum() + t.sum()
    return float(2 * np.logical_and(p, t).sum() / denominator) if denominator else float("nan")


@pytest.fixture(scope="module", params=SMOKE_TRAINERS)
def trained(request, preprocessed_phantom):
    trainer = request.param
    env = preprocessed_phantom["env"]
    run_nnunet("nnUNetv2_train", [DATASET_ID, "3d_fullres", 0, "-tr", trainer, "-device", "cpu"], env, timeout=900)
    model_folder = preprocessed_phantom["results"] / DATASET / f"{trainer}__nnUNetPlans__3d_fullres"
    return trainer, model_folder, preprocessed_phantom


def test_training_writes_a_final_checkpoint_named_after_the_trainer(trained):
    trainer, model_folder, _ = trained
    assert (model_folder / "fold_0" / "checkpoint_final.pth").is_file()
    log = "".join(p.read_text() for p in (model_folder / "fold_0").glob("training_log_*.txt"))
    assert "medattn attention:" in log


def test_nnunet_predict_finds_the_trainer_and_keeps_geometry(trained, tmp_path):
    trainer, model_folder, dirs = trained
    images = dirs["raw"] / DATASET / "imagesTs"
    labels = dirs["raw"] / DATASET / "labelsTs"
    out = tmp_path / "pred"
    run_nnunet(
        "nnUNetv2_predict",
        ["-i", images, "-o", out, "-d", DATASET_ID, "-c", "3d_fullres", "-f", 0, "-tr", trainer,
         "-chk", "checkpoint_final.pth", "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_tta"],
        dirs["env"],
        timeout=600,
    )
    truths = list_images(labels)
    assert [p.name for p in list_images(out)] == [p.name for p in truths]
    for truth_path in truths:
        prediction, predicted_geometry = read_image(out / truth_path.name)
        truth, truth_geometry = read_image(truth_path)
        check_same_geometry(truth_geometry, predicted_geometry, context=case_name(truth_path))
        assert set(np.unique(prediction)) <= {0, 1, 2, 3}
        dice = [_dice(prediction, truth, label) for label in (1, 2, 3)]
        assert all(0.0 <= d <= 1.0 for d in dice), dice


def test_checkpoint_reloaded_by_the_predictor_gives_the_in_memory_logits(trained):
    trainer, model_folder, dirs = trained
    script = Path(__file__).with_name("reload_logits.py")
    result = subprocess.run(
        [sys.executable, str(script), str(model_folder), trainer],
        env=dirs["env"], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    differences = json.loads(result.stdout.strip().splitlines()[-1])
    tolerance = 1e-4 * max(1.0, differences["scale"])
    assert differences["network"] <= tolerance, differences


def test_stock_checkpoint_fine_tunes_an_attention_trainer(preprocessed_phantom, tmp_path):
    """Stock training -> `medattn nnunet adapt-checkpoint` -> nnUNetv2_train -pretrained_weights."""
    import torch

    from medattn.cli import main

    env = preprocessed_phantom["env"]
    run_nnunet("nnUNetv2_train", [DATASET_ID, "3d_fullres", 0, "-tr", "nnUNetTrainerStock_smoke", "-device", "cpu"],
               env, timeout=900)
    stock = (preprocessed_phantom["results"] / DATASET / "nnUNetTrainerStock_smoke__nnUNetPlans__3d_fullres"
             / "fold_0" / "checkpoint_final.pth")
    adapted = tmp_path / "dsm_init.pth"
    assert main(["nnunet", "adapt-checkpoint", str(stock), "--trainer", "nnUNetTrainerDSM_smoke", "-o", str(adapted)]) == 0
    stock_weights = torch.load(stock, map_location="cpu", weights_only=False)["network_weights"]
    adapted_weights = torch.load(adapted, map_location="cpu", weights_only=False)["network_weights"]
    assert set(stock_weights) < set(adapted_weights)
    for key, value in stock_weights.items():
        assert torch.equal(adapted_weights[key], value), key
    result = run_nnunet(
        "nnUNetv2_train",
        [DATASET_ID, "3d_fullres", 1, "-tr", "nnUNetTrainerDSM_smoke", "-device", "cpu", "-pretrained_weights", adapted],
        env, timeout=900,
    )
    assert "Loading pretrained weights" in result.stdout


@pytest.mark.parametrize("trainer, expected", [
    ("nnUNetTrainerDSM_A_smoke", 'dsm@after_conv2:last{"rd_ratio": 0.5}'),
    ("nnUNetTrainerDSM_B_smoke", 'dsm@after_conv1{"rd_ratio": 0.0625}'),
])
def test_dsnet_position_trainers_train_and_predict_on_resenc_plans(preprocessed_resenc, tmp_path, trainer, expected):
    """`nnUNetv2_train ... -p nnUNetResEncUNetMPlans -tr nnUNetTrainerDSM_A/_B`: DSM inside the
    residual blocks, trained and predicted by nnU-Net's own commands."""
    env = preprocessed_resenc["env"]
    run_nnunet("nnUNetv2_train", [DATASET_ID, "3d_fullres", 0, "-p", "nnUNetResEncUNetMPlans", "-tr", trainer,
                                  "-device", "cpu"], env, timeout=900)
    model_folder = preprocessed_resenc["results"] / DATASET / f"{trainer}__nnUNetResEncUNetMPlans__3d_fullres"
    log = "".join(p.read_text() for p in (model_folder / "fold_0").glob("training_log_*.txt"))
    assert f"medattn attention: {expected}" in log
    out = tmp_path / "pred"
    run_nnunet("nnUNetv2_predict",
               ["-i", preprocessed_resenc["raw"] / DATASET / "imagesTs", "-o", out, "-d", DATASET_ID, "-c",
                "3d_fullres", "-f", 0, "-p", "nnUNetResEncUNetMPlans", "-tr", trainer, "-chk",
                "checkpoint_final.pth", "-device", "cpu", "-npp", 0, "-nps", 0, "--disable_tta"], env, timeout=600)
    assert len(list_images(out)) == len(list_images(preprocessed_resenc["raw"] / DATASET / "labelsTs"))


def test_postprocessing_found_by_nnunet_loads_safely_and_predicts(trained, tmp_path):
    """`nnUNetv2_find_best_configuration` on the trained fold writes postprocessing.pkl; medattn
    reads it with its restricted unpickler (no --trust-model) and applies it."""
    from medattn.cli import main
    from medattn.inference.nnunet_backend import load_postprocessing

    trainer, model_folder, dirs = trained
    if trainer != "nnUNetTrainerDSM_smoke":
        pytest.skip("one trainer is enough for the postprocessing round trip")
    run_nnunet("nnUNetv2_find_best_configuration",
               [DATASET_ID, "-c", "3d_fullres", "-tr", trainer, "-f", 0, "-np", 1], dirs["env"], timeout=900)
    pickles = list(model_folder.glob("crossval_results_folds_0/postprocessing.pkl"))
    assert pickles, f"nnU-Net wrote no postprocessing.pkl under {model_folder}"
    functions, keywords = load_postprocessing(pickles[0])
    assert len(functions) == len(keywords)
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model_folder), "--input", str(dirs["raw"] / DATASET / "imagesTs"),
                 "--output", str(out), "--device", "cpu", "--no-tta", "--no-progress",
                 "--postprocessing", str(pickles[0])]) == 0
    assert len(list_images(out)) == len(list_images(dirs["raw"] / DATASET / "imagesTs"))
