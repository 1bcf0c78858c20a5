"""The base of medattn's nnU-Net trainers.

A medattn trainer is an ``nnUNetTrainer`` whose class attribute :attr:`attention` says
which blocks go where; :meth:`build_network_architecture` builds nnU-Net's stock network
from the plans and inserts them. Everything else (data loading, augmentation, AMP, the
schedule, deep supervision, validation, checkpoints) is nnU-Net's, untouched.

``build_network_architecture`` is a classmethod rather than nnU-Net's staticmethod so that
one implementation serves every variant; it has the v2.7+ call signature
``(plans_manager, configuration_manager, num_input_channels, num_output_channels,
enable_deep_supervision)`` that both ``nnUNetTrainer.initialize`` and nnU-Net's predictor
use, on the class or on an instance.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from medattn.nnunet.network import AttentionPlan, build_network


class nnUNetTrainerAttention(nnUNetTrainer):
    """nnUNetTrainer with the blocks of :attr:`attention` in its encoder.

    Subclasses set :attr:`attention`; with ``None`` the network is the stock one.
    """

    attention: AttentionPlan | None = None

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager,
        configuration_manager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> torch.nn.Module:
        return build_network(
            plans_manager,
            configuration_manager,
            num_input_channels,
            num_output_channels,
            enable_deep_supervision,
            plan=cls.attention,
        )

    def on_train_start(self):
        if self.attention is not None:
            self.print_to_log_file(f"medattn attention: {self.attention.describe()}")
        super().on_train_start()


class SmokeSchedule:
    """Mixin: 1 epoch of 2 training iterations and 1 validation iteration, for CI and
    quick checks. Put it first in the bases: ``class X_smoke(SmokeSchedule, X)``.

    Mirroring is switched off (augmentation and test-time), because nnU-Net's final
    validation with 8-fold mirroring dominates a smoke run's time on CPU.
    """

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 2
        self.num_val_iterations_per_epoch = 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, do_dummy_2d, patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, do_dummy_2d, patch_size, None
