"""StudySchedule: the seed of a study run reaches nnU-Net's network build and its loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medattn.nnunet.trainer import STUDY_SEED_ENV, StudySchedule


class _Draws:
    """Stands in for nnUNetTrainer: what it draws from the global generators."""

    def initialize(self):
        self.weights = torch.rand(4)

    def get_dataloaders(self):
        return np.random.rand(4), torch.rand(4)


class _Run(StudySchedule, _Draws):
    def __init__(self):  # nnU-Net's __init__ is not needed to test the seeding
        pass


def _draws(monkeypatch, seed: int, noise: int):
    monkeypatch.setenv(STUDY_SEED_ENV, str(seed))
    run = _Run()
    run.initialize()
    torch.rand(noise)  # a block's initialisation draws a variant-specific amount in between
    np.random.rand(noise)
    return run.weights, run.get_dataloaders()


def test_a_seed_fixes_the_initial_weights_and_the_batches_whatever_draws_in_between(monkeypatch):
    weights_a, (np_a, torch_a) = _draws(monkeypatch, 3, noise=1)
    weights_b, (np_b, torch_b) = _draws(monkeypatch, 3, noise=1000)
    assert torch.equal(weights_a, weights_b)
    assert np.array_equal(np_a, np_b) and torch.equal(torch_a, torch_b)
    weights_c, (np_c, _) = _draws(monkeypatch, 4, noise=1)
    assert not torch.equal(weights_a, weights_c) and not np.array_equal(np_a, np_c)


def test_a_bad_seed_is_named(monkeypatch):
    monkeypatch.setenv(STUDY_SEED_ENV, "x1")
    with pytest.raises(ValueError, match=f"{STUDY_SEED_ENV} must be a non-negative integer, got 'x1'"):
        _Run().initialize()


@pytest.mark.slow
def test_demo_trainers_keep_nnunets_sgd_with_the_demo_momentum(demo_out):
    """What the smoke demo's nnU-Net training saved: nnU-Net's Nesterov SGD, weight decay and
    poly schedule, with DemoSchedule's learning rate and momentum."""
    from medattn.nnunet.trainer import DemoSchedule
    from tests.inference.shared import model_dir

    checkpoint = torch.load(model_dir(demo_out) / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    (group,) = checkpoint["optimizer_state"]["param_groups"]
    assert group["momentum"] == DemoSchedule.demo_momentum == 0.95 and group["nesterov"]
    assert group["lr"] == pytest.approx(DemoSchedule.schedule_lr)  # the poly schedule's first epoch
    assert group["weight_decay"] == pytest.approx(3e-5)  # nnU-Net's own
