"""Run as a script by test_end_to_end: compare the logits of a trainer's in-memory network
(restored by nnU-Net's trainer from a checkpoint) with those of nnU-Net's predictor loading
the same checkpoint. Prints the maximum absolute difference as JSON."""

import json
import sys

import torch


def main(model_folder: str, trainer_name: str) -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    checkpoint_path = f"{model_folder}/fold_0/checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    init = checkpoint["init_args"]
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    # nnunetv2 2.8 expects run_training's "continue_training" flag inside the plans dict.
    plans = {**init["plans"], "continue_training": False}
    trainer = trainer_class(plans, init["configuration"], init["fold"], init["dataset_json"], device=torch.device("cpu"))
    trainer.initialize()
    trainer.load_checkpoint(checkpoint_path)
    trainer.network.eval()

    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(model_folder, (0,), "checkpoint_final.pth")
    predictor.network.load_state_dict(predictor.list_of_parameters[0])
    predictor.network.eval()

    torch.manual_seed(0)
    x = torch.randn(1, 1, *predictor.configuration_manager.patch_size)
    with torch.no_grad():
        in_memory = trainer.network(x)[0]  # deep supervision: full resolution first
        reloaded = predictor.network(x)
    print(json.dumps({
        "network": (in_memory - reloaded).abs().max().item(),
        "scale": in_memory.abs().max().item(),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:3])
