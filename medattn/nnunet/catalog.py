"""The catalogue of medattn trainers, and checkpoint adaptation for fine-tuning."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from medattn.data.io import atomic_write
from medattn.nnunet.network import load_stock_weights
from medattn.nnunet.trainer import TrainingSchedule, nnUNetTrainerAttention
from medattn.safe_loading import load_checkpoint
from medattn.nnunet.trainers import medattn_trainers


def trainer_classes() -> dict[str, type[nnUNetTrainerAttention]]:
    """Every trainer class of the trainers folder, by name, in definition order."""
    return {
        name: cls
        for name, cls in vars(medattn_trainers).items()
        if inspect.isclass(cls) and issubclass(cls, nnUNetTrainerAttention) and cls.__module__ == medattn_trainers.__name__
    }


def get_trainer_class(name: str) -> type[nnUNetTrainerAttention]:
    """The medattn trainer called ``name``.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
    """
    classes = trainer_classes()
    if name not in classes:
        raise ValueError(f"unknown medattn trainer {name!r}; choose one of {sorted(classes)}")
    return classes[name]


def trainer_table() -> str:
    """A Markdown table: trainer, inserted blocks, schedule, description."""
    from medattn.nnunet.network import describe
    from medattn.nnunet.trainer import RetiredTrainer

    rows = ["| trainer | inserts | schedule | what it does |", "|---|---|---|---|"]
    for name, cls in trainer_classes().items():
        plan = f"retired: use `{cls.replacement}`" if issubclass(cls, RetiredTrainer) else describe(cls.attention)
        schedule = cls.schedule_name if issubclass(cls, TrainingSchedule) else TrainingSchedule.schedule_name
        summary = " ".join((cls.__doc__ or "").split())
        rows.append(f"| `{name}` | {plan} | {schedule} | {summary} |")
    return "\n".join(rows)


def adapt_stock_checkpoint(checkpoint: str | Path, trainer_name: str, output: str | Path,
                           trust: bool = False) -> list[str]:
    """Write a checkpoint for ``trainer_name`` holding a stock checkpoint's weights.

    nnU-Net's ``-pretrained_weights`` requires every key of the new network in the file;
    this fills the attention keys with their initial values and keeps every stock tensor.

    Args:
        trust: read the checkpoint with full pickle support (``--trust-model``); without
            it, :func:`medattn.safe_loading.load_checkpoint` refuses code in the file.

    Returns:
        The attention keys that were initialised rather than loaded.

    Raises:
        ValueError: for a file that is not a stock nnU-Net checkpoint, or that names a
            refused global, naming it; for an unknown trainer.
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    saved = load_checkpoint(checkpoint, trust=trust)
    if "init_args" not in saved or "network_weights" not in saved:
        raise ValueError(f"{checkpoint}: not an nnU-Net checkpoint (needs 'init_args' and 'network_weights')")
    init_args = saved["init_args"]
    plans_manager = PlansManager(init_args["plans"])
    configuration_manager = plans_manager.get_configuration(init_args["configuration"])
    dataset_json = init_args["dataset_json"]
    network = get_trainer_class(trainer_name).build_network_architecture(
        plans_manager,
        configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads,
        True,
    )
    missing = load_stock_weights(network, saved)
    adapted = dict(saved, network_weights=network.state_dict(), trainer_name=trainer_name)
    with atomic_write(output) as tmp:
        torch.save(adapted, tmp)
    return missing
