"""``medattn.devices.resolve_device``: the one reading of ``--device`` for every command."""

from __future__ import annotations

import pytest
import torch

from medattn.devices import resolve_device


def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cpu", "cuda:1", "mps"])
def test_explicit_devices_are_torch_devices(name, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(name) == torch.device(name)


def test_unknown_device_names_the_value():
    with pytest.raises(ValueError, match=r"--device 'gpu0': unknown device"):
        resolve_device("gpu0")


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"--device 'cuda:0': CUDA is not available"):
        resolve_device("cuda:0")


def test_the_engines_share_it():
    from medattn.inference import batch
    from medattn.networks import training

    assert batch.resolve_device is resolve_device and training.resolve_device is resolve_device
