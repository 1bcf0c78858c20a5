"""Properties every registered block must have, in 2D and 3D, in train and eval mode."""

from __future__ import annotations

import pytest
import torch

from medattn import blocks

CHANNELS = 16
SHAPES = {2: (2, CHANNELS, 12, 9), 3: (2, CHANNELS, 6, 7, 5)}  # odd, non-square sizes
NAMES = blocks.available()


def _make(name: str, spatial_dims: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    block = blocks.create(name, CHANNELS, spatial_dims=spatial_dims)
    _jitter(block)
    return block


def _jitter(block: torch.nn.Module) -> None:
    """Perturb every parameter so zero-initialised layers (identity start) do not hide
    broken gradient paths."""
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))


def _input(spatial_dims: int, batch: int | None = None) -> torch.Tensor:
    shape = list(SHAPES[spatial_dims])
    if batch is not None:
        shape[0] = batch
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1))


def test_registry_lists_the_papers_blocks():
    assert {"dsm", "sna", "se", "eca", "cbam", "gc"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("batch", [2, 1])
def test_shape_is_preserved_and_output_finite(name, spatial_dims, training, batch):
    block = _make(name, spatial_dims).train(training)
    x = _input(spatial_dims, batch)
    y = block(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradients_reach_every_parameter_and_the_input(name, spatial_dims, training):
    block = _make(name, spatial_dims).train(training)
    x = _input(spatial_dims).requires_grad_(True)
    # A random projection of the output, so that no gradient cancels by symmetry.
    weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    (block(x) * weights).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for parameter_name, parameter in block.named_parameters():
        assert parameter.grad is not None, f"{name}: no gradient for {parameter_name}"
        assert parameter.grad.abs().sum() > 0, f"{name}: zero gradient for {parameter_name}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_bf16_autocast_is_finite_and_close_to_fp32(name, spatial_dims):
    block = _make(name, spatial_dims).eval()
    x = _input(spatial_dims)
    with torch.no_grad():
        reference = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = block(x)
    assert torch.isfinite(low).all()
    scale = reference.abs().max().item() + 1e-6
    torch.testing.assert_close(low.float(), reference, atol=5e-2 * scale, rtol=5e-2)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_state_dict_round_trip_gives_the_same_output(name, spatial_dims):
    source = _make(name, spatial_dims, seed=0).eval()
    target = _make(name, spatial_dims, seed=1).eval()
    target.load_state_dict(source.state_dict())
    x = _input(spatial_dims)
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))


@pytest.mark.parametrize("name", NAMES)
def test_float64_input_runs_in_float64(name):
    block = _make(name, 3).double().eval()
    x = _input(3).double()
    assert block(x).dtype == torch.float64


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_torch_compile_matches_eager(name):
    block = _make(name, 3).eval()
    x = _input(3)
    compiled = torch.compile(block)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), block(x), atol=1e-4, rtol=1e-4)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match="dsm"):
        blocks.create("nope", 8)


def test_unknown_keyword_lists_the_valid_ones():
    with pytest.raises(ValueError, match="not_an_option"):
        blocks.create("se", 8, not_an_option=3)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8"])
def test_bad_channels_raise_value_error(bad):
    with pytest.raises(ValueError, match="channels"):
        blocks.create("se", bad)


@pytest.mark.parametrize("bad", [1, 4, "3"])
def test_bad_spatial_dims_raise_value_error(bad):
    with pytest.raises(ValueError, match="spatial_dims"):
        blocks.create("se", 8, spatial_dims=bad)
