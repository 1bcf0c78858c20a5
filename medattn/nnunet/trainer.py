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

from medattn.nnunet.network import build_network


class nnUNetTrainerAttention(nnUNetTrainer):
    """nnUNetTrainer with the blocks of :attr:`attention` in its encoder.

    Subclasses set :attr:`attention`, a placement in the text form of
    :mod:`medattn.placement` (``"dsm"``, ``"sna@stage"``, ...); with ``None`` the network
    is the stock one. :attr:`legacy` is ``(placement, trainer)``: what this trainer name
    placed in medattn < 0.2 when that differs, and the trainer that places it now (the
    checkpoint check names it).
    """

    attention: str | None = None
    legacy: tuple[str, str | None] | None = None

    @classmethod
    def build_network_architecture(
        cls,
        plans_manager,
        configuration_manager,
        num_input_channels: int,
        num_output_channels: int,
        enable_deep_supervision: bool = True,
    ) -> torch.nn.Module:
        cls.check_available()
        return build_network(
            plans_manager,
            configuration_manager,
            num_input_channels,
            num_output_channels,
            enable_deep_supervision,
            placement=cls.attention,
            trainer=cls.__name__,
            legacy=cls.legacy,
        )

    @classmethod
    def check_available(cls) -> None:
        """Raise ``ValueError`` for a trainer that cannot build its network (retired names)."""

    def on_train_start(self):
        super().on_train_start()  # builds the network (nnU-Net initialises here)
        if self.attention is not None:
            from medattn.nnunet.network import PLACEMENT_KEY

            network = self.network.module if self.is_ddp else self.network
            network = getattr(network, "_orig_mod", network)  # torch.compile's wrapper
            placed = bytes(getattr(network, PLACEMENT_KEY).tolist()).decode()
            self.print_to_log_file(f"medattn attention: {placed}")


class RetiredTrainer(nnUNetTrainerAttention):
    """A trainer name that no longer exists: building its network fails with a message
    naming the replacement (nnU-Net's own lookup would only say that it is not found)."""

    replacement = "nnUNetTrainerAttention"
    reason = ""

    @classmethod
    def check_available(cls) -> None:
        raise ValueError(f"{cls.__name__} was retired in medattn 0.2: {cls.reason} Use {cls.replacement} instead "
                         "(medattn nnunet list shows every trainer and where it places its blocks)")


class TrainingSchedule:
    """Base of the schedule mixins: after nnU-Net's ``__init__`` (whose exact signature
    it keeps, since nnU-Net rebuilds its init arguments from it) it sets the epochs and
    iterations that :meth:`budget` returns. Put a schedule first in the bases:
    ``class X_smoke(SmokeSchedule, X)``.
    """

    #: How ``medattn nnunet list`` describes the schedule.
    schedule_name = "nnU-Net default"
    #: nnU-Net's initial learning rate for this schedule (None: nnU-Net's own, 1e-2).
    schedule_lr: float | None = None

    def __init__(
        self,
        plans: dict,
        configuration: str,
        fold: int,
        dataset_json: dict,
        device: torch.device = torch.device("cuda"),
    ):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = self.budget()
        if self.schedule_lr is not None:
            self.initial_lr = self.schedule_lr

    @classmethod
    def budget(cls) -> tuple[int, int, int]:
        """``(epochs, training iterations per epoch, validation iterations per epoch)``."""
        raise NotImplementedError


def positive_int_from_env(name: str, default: int, environ=None) -> int:
    """An integer budget from the environment.

    Raises:
        ValueError: if the variable is set but is not a positive integer (names both).
    """
    import os

    text = (os.environ if environ is None else environ).get(name, str(default)).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return int(text)


class SmokeSchedule(TrainingSchedule):
    """Mixin: 1 epoch of 2 training iterations and 1 validation iteration, for CI and
    quick checks.

    Mirroring is switched off (augmentation and test-time), because nnU-Net's final
    validation with 8-fold mirroring dominates a smoke run's time on CPU.
    """

    schedule_name = "smoke: 1 epoch x 2 it., no mirroring"

    @classmethod
    def budget(cls) -> tuple[int, int, int]:
        return 1, 2, 1

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, do_dummy_2d, patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, do_dummy_2d, patch_size, None


# --- Benchmark schedule (medattn bench nnunet) -------------------------------------------

#: Environment variables that set :class:`BenchSchedule`'s budget, with their defaults.
BENCH_SCHEDULE_ENV = {
    "MEDATTN_BENCH_EPOCHS": 4,
    "MEDATTN_BENCH_ITERATIONS": 50,
    "MEDATTN_BENCH_VAL_ITERATIONS": 2,
}

#: File, in the trainer's output folder, holding the timed training steps.
BENCH_STEP_TIMES_FILE = "bench_step_times.json"


def bench_schedule_from_env(environ=None) -> dict[str, int]:
    """The :class:`BenchSchedule` budget read from :data:`BENCH_SCHEDULE_ENV`.

    Raises:
        ValueError: if a variable is not a positive integer (names the variable and value).
    """
    return {name: positive_int_from_env(name, default, environ) for name, default in BENCH_SCHEDULE_ENV.items()}


class BenchSchedule(TrainingSchedule):
    """Mixin: the short, identical schedule of ``medattn bench nnunet``.

    The budget (epochs, training and validation iterations per epoch) comes from
    :data:`BENCH_SCHEDULE_ENV`, so that the benchmark sets it for every trainer at once.
    Each ``train_step`` (forward, backward, optimiser step on an already loaded batch)
    is timed with ``time.perf_counter`` and the times are written as JSON to
    :data:`BENCH_STEP_TIMES_FILE` in the output folder. nnU-Net's final validation is
    skipped: the benchmark predicts the validation cases itself, timed. Augmentation is
    nnU-Net's, mirroring included. Put it first in the bases:
    ``class X_bench(BenchSchedule, X)``.
    """

    schedule_name = "bench: MEDATTN_BENCH_* budget, timed steps"
    bench_step_seconds: list[float]

    @classmethod
    def budget(cls) -> tuple[int, int, int]:
        return tuple(bench_schedule_from_env().values())

    def on_train_start(self):
        self.bench_step_seconds = []
        super().on_train_start()

    def train_step(self, batch: dict) -> dict:
        import time

        start = time.perf_counter()
        result = super().train_step(batch)  # returns the loss as a numpy value: synchronised
        self.bench_step_seconds.append(time.perf_counter() - start)
        return result

    def on_train_end(self):
        import os

        super().on_train_end()
        if self.local_rank == 0:
            from medattn.data.io import write_json_atomic

            record = {
                "trainer": type(self).__name__,
                "step_seconds": self.bench_step_seconds,
                "num_parameters": sum(p.numel() for p in self.network.parameters()),
                "num_epochs": self.num_epochs,
                "num_iterations_per_epoch": self.num_iterations_per_epoch,
                "batch_size": self.batch_size,
                "patch_size": list(self.configuration_manager.patch_size),
                "torch_threads": torch.get_num_threads(),
            }
            write_json_atomic(os.path.join(self.output_folder, BENCH_STEP_TIMES_FILE), record, indent=1)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("BenchSchedule: nnU-Net's final validation skipped (the benchmark predicts itself)")


# --- The study schedule (medattn bench study --engine nnunet) ----------------------------

#: Environment variables that set :class:`StudySchedule`'s budget, with their defaults.
STUDY_SCHEDULE_ENV = {
    "MEDATTN_STUDY_EPOCHS": 5,
    "MEDATTN_STUDY_ITERATIONS": 50,
    "MEDATTN_STUDY_VAL_ITERATIONS": 2,
}
#: The environment variable holding a study run's seed.
STUDY_SEED_ENV = "MEDATTN_STUDY_SEED"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (what nnU-Net's loaders use)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StudySchedule(TrainingSchedule):
    """Mixin: one run of ``medattn bench study --engine nnunet``.

    The budget (epochs, training and validation iterations per epoch) comes from
    :data:`STUDY_SCHEDULE_ENV` and the seed from :data:`STUDY_SEED_ENV`, so that the study
    sets them for every variant at once. The seed is applied twice:

    - before nnU-Net builds the network (``initialize``): the stock network is built
      first and the blocks are inserted after it, so every variant of a seed starts from
      the same stock weights;
    - before nnU-Net creates its data loaders (``get_dataloaders``): with
      ``nnUNet_n_proc_DA=0`` (the study's default) nnU-Net augments in this process from
      these generators, so every variant of a seed sees the same batches. With worker
      processes nnU-Net seeds each worker itself and the streams differ.

    nnU-Net's final validation runs (its Dice on the validation cases is what a study may
    choose by). Put it first in the bases: ``class X_study(StudySchedule, X)``.
    """

    schedule_name = "study: MEDATTN_STUDY_* budget and seed"

    @classmethod
    def budget(cls) -> tuple[int, int, int]:
        return tuple(positive_int_from_env(name, default) for name, default in STUDY_SCHEDULE_ENV.items())

    @staticmethod
    def study_seed() -> int:
        import os

        text = os.environ.get(STUDY_SEED_ENV, "0").strip()
        if not text.isdigit():
            raise ValueError(f"{STUDY_SEED_ENV} must be a non-negative integer, got {text!r}")
        return int(text)

    def initialize(self):
        seed_everything(self.study_seed())
        super().initialize()

    def get_dataloaders(self):
        seed_everything(self.study_seed() * 100_003 + 1)
        return super().get_dataloaders()


# --- The demo's short schedule (medattn demo, issue 7) -----------------------------------


class DemoSchedule(TrainingSchedule):
    """Mixin: the short schedule of ``medattn demo`` (``make demo``): 6 epochs of 8
    iterations, 2 validation iterations each, nnU-Net's augmentation and mirroring kept,
    nnU-Net's SGD with a shorter momentum memory (:attr:`demo_momentum`).

    ``MEDATTN_DEMO_EPOCHS`` and ``MEDATTN_DEMO_ITERATIONS`` override the budget (the tests
    run the demo with 1 epoch of 2 iterations). nnU-Net's final validation is skipped: the
    demo predicts held-out cases with ``medattn predict`` and scores them with
    ``medattn evaluate`` instead. Put it first in the bases: ``class X_demo(DemoSchedule, X)``.
    """

    schedule_name = "demo: 6 epochs x 8 it., SGD 0.05 / momentum 0.95 (MEDATTN_DEMO_*)"
    demo_epochs = 6
    demo_iterations = 8
    demo_val_iterations = 2
    #: nnU-Net's SGD keeps its steady-state step ``lr / (1 - momentum)`` = 1 but with a
    #: 20-iteration memory instead of 100: at momentum 0.99 the demo's 48 iterations end
    #: before the momentum has built up, and the network learnt one organ of three
    #: (measured on the enhanced phantom: 0, 0.02 and 0.74 Dice for stock nnU-Net).
    schedule_lr = 0.05
    demo_momentum = 0.95

    def configure_optimizers(self):
        optimizer, scheduler = super().configure_optimizers()
        for group in optimizer.param_groups:
            group["momentum"] = self.demo_momentum
        return optimizer, scheduler

    @classmethod
    def budget(cls) -> tuple[int, int, int]:
        return (
            positive_int_from_env("MEDATTN_DEMO_EPOCHS", cls.demo_epochs),
            positive_int_from_env("MEDATTN_DEMO_ITERATIONS", cls.demo_iterations),
            cls.demo_val_iterations,
        )

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("DemoSchedule: final validation skipped (the demo scores held-out cases itself)")
