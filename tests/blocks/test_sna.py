"""Tests for the SNA block and its linear-algebra core (medattn.blocks.sna).

References used: torch.linalg.svd / svdvals (singular triplets, truncated reconstructions,
SVD autograd), torch.autograd.gradcheck (finite differences), and loops written out from
the paper's formula y = x * N * softmax(M_hat).
"""

from __future__ import annotations

import math

import pytest
import torch

from medattn.blocks import create
from medattn.blocks.sna import (
    SpectralNormAttention,
    low_rank_reconstruction,
    tensor_reconstruction,
    top_singular_triplets,
    top_tensor_rank1_terms,
)

# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal(rows: int, cols: int, gen: torch.Generator, dtype=torch.float32) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=gen, dtype=torch.float64))
    return q.to(dtype)


def _matrix_with_spectrum(m: int, n: int, sigmas, gen, dtype=torch.float32) -> torch.Tensor:
    """A random m x n matrix whose singular values are exactly ``sigmas``."""
    k = len(sigmas)
    u, v = _orthonormal(m, k, gen, torch.float64), _orthonormal(n, k, gen, torch.float64)
    return ((u * torch.tensor(sigmas, dtype=torch.float64)) @ v.T).to(dtype)


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in radians between unit vectors along the last axis, up to sign."""
    cos = (a * b).sum(-1).abs() / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.acos(cos.clamp(max=1.0))


def _input_with_channel_mean(mean_map: torch.Tensor, channels: int, gen) -> torch.Tensor:
    """(B, C, *spatial) input whose channel average is exactly ``mean_map`` (B, *spatial)."""
    noise = torch.randn(mean_map.shape[0], channels, *mean_map.shape[1:], generator=gen, dtype=mean_map.dtype)
    return mean_map.unsqueeze(1) + noise - noise.mean(dim=1, keepdim=True)


def _well_conditioned_maps(batch: int, m: int, n: int, gen, dtype=torch.float32) -> torch.Tensor:
    """(batch, m, n) maps with sigma_2 / sigma_1 = 0.4 and a positive offset, like GAP maps."""
    return torch.stack([_matrix_with_spectrum(m, n, [5.0, 2.0, 1.0, 0.5], gen, dtype) for _ in range(batch)])


def _brute_force_slices(x: torch.Tensor, rank: int, slice_axis: int = 0) -> torch.Tensor:
    """y = x * N * softmax(rank-k SVD truncation of mean_C(x)), one torch.linalg.svd call
    per matrix: per sample in 2D, per sample and slice along ``slice_axis`` in 3D."""
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        feature_map = x[b].mean(dim=0)
        if feature_map.ndim == 2:
            approx = _truncated_svd(feature_map, rank)
        else:
            slices = [_truncated_svd(s, rank) for s in feature_map.unbind(slice_axis)]
            approx = torch.stack(slices, dim=slice_axis)
        weights = torch.softmax(approx.flatten(), dim=0).view(approx.shape) * approx.numel()
        out[b] = x[b] * weights
    return out


def _truncated_svd(matrix: torch.Tensor, rank: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(matrix)
    k = min(rank, s.numel())
    return u[:, :k] @ torch.diag(s[:k]) @ vh[:k]


# ----------------------------------------------------------------------------------------
# power iteration against torch.linalg.svd
# ----------------------------------------------------------------------------------------


def test_power_iteration_matches_svd_on_separated_spectra_in_float32():
    # sigma_2 / sigma_1 = 0.5: the angle shrinks ~0.25 per iteration, 10 reach float32 precision.
    gen = _generator(1)
    matrices = torch.stack(
        [_matrix_with_spectrum(m, n, [4.0, 2.0, 1.0, 0.25], gen) for m, n in [(16, 24)] * 6]
    ).view(2, 3, 16, 24)
    sigma, u, v = top_singular_triplets(matrices, n_iter=10)
    ref_u, ref_s, ref_vh = torch.linalg.svd(matrices)
    assert sigma.shape == (2, 3, 1) and u.shape == (2, 3, 16, 1) and v.shape == (2, 3, 24, 1)
    torch.testing.assert_close(sigma[..., 0], ref_s[..., 0], rtol=1e-4, atol=0)
    assert _angle(u[..., 0], ref_u[..., 0]).max() < 1e-3
    assert _angle(v[..., 0], ref_vh[..., 0, :]).max() < 1e-3
    torch.testing.assert_close(u.norm(dim=-2), torch.ones_like(sigma))


@pytest.mark.parametrize("shape", [(32, 12, 20), (32, 20, 12)], ids=["wide", "tall"])
def test_power_iteration_matches_svd_on_random_gaussian_matrices(shape):
    # Gaussian matrices have sigma_2 / sigma_1 up to ~0.99 here, so the angle error
    # (~ratio^(2t)) needs ~1000 iterations; float64 keeps rounding out of the comparison.
    matrices = torch.randn(*shape, generator=_generator(2), dtype=torch.float64)
    sigma, u, v = top_singular_triplets(matrices, n_iter=1000)
    ref_u, ref_s, ref_vh = torch.linalg.svd(matrices)
    ratio = ref_s[:, 1] / ref_s[:, 0]
    assert ratio.max() > 0.9  # the test really covers poorly separated spectra
    torch.testing.assert_close(sigma[:, 0], ref_s[:, 0], rtol=1e-4, atol=0)
    assert _angle(u[..., 0], ref_u[..., 0]).max() < 1e-3
    assert _angle(v[..., 0], ref_vh[:, 0, :]).max() < 1e-3


def test_rank_k_deflation_matches_truncated_svd_reconstruction():
    gen = _generator(3)
    matrices = torch.stack([_matrix_with_spectrum(20, 14, [8.0, 4.0, 2.0, 1.0, 0.5, 0.25], gen) for _ in range(4)])
    ref_u, ref_s, ref_vh = torch.linalg.svd(matrices)
    for rank in (1, 2, 4):
        sigma, u, v = top_singular_triplets(matrices, n_iter=30, rank=rank)
        torch.testing.assert_close(sigma, ref_s[:, :rank], rtol=1e-4, atol=1e-5)
        expected = (ref_u[..., :rank] * ref_s[:, None, :rank]) @ ref_vh[:, :rank]
        torch.testing.assert_close(low_rank_reconstruction(sigma, u, v), expected, rtol=0, atol=1e-4)
        # deflated vectors stay orthonormal
        torch.testing.assert_close(u.transpose(-1, -2) @ u, torch.eye(rank).expand(4, rank, rank), atol=1e-4, rtol=0)


def test_deflation_reconstructs_an_exactly_low_rank_matrix():
    gen = _generator(4)
    matrix = _matrix_with_spectrum(15, 11, [3.0, 1.5, 0.75], gen)
    sigma, u, v = top_singular_triplets(matrix, n_iter=25, rank=3)
    torch.testing.assert_close(sigma, torch.linalg.svdvals(matrix)[:3], rtol=1e-4, atol=0)
    torch.testing.assert_close(low_rank_reconstruction(sigma, u, v), matrix, rtol=0, atol=1e-5)


def test_rank_one_matrix_with_zero_mean_vectors_is_exact_after_one_iteration():
    # A ones-vector start is orthogonal to v here and would return zero; the documented
    # largest-row start hits v at once.
    v_true = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0, -2.0])
    u_true = torch.tensor([0.5, -1.0, 2.0, 0.0, -1.5])
    matrix = torch.outer(u_true, v_true)
    sigma, u, v = top_singular_triplets(matrix, n_iter=1)
    torch.testing.assert_close(sigma[0], u_true.norm() * v_true.norm())
    torch.testing.assert_close(low_rank_reconstruction(sigma, u, v), matrix)


def test_start_is_deterministic_without_rng():
    matrices = torch.randn(3, 9, 7, generator=_generator(5))
    state = torch.random.get_rng_state()
    first = top_singular_triplets(matrices, n_iter=3, rank=2)
    second = top_singular_triplets(matrices, n_iter=3, rank=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # no global RNG draw
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_tol_stops_early_at_algorithm_1_criterion():
    matrices = torch.randn(4, 12, 20, generator=_generator(6), dtype=torch.float64)
    tol, n_iter = 1e-4, 500
    early = top_singular_triplets(matrices, n_iter=n_iter, tol=tol)
    full = top_singular_triplets(matrices, n_iter=n_iter, impl="reference")
    # tol runs the reference iterations; the early result is the fixed-count result after the first t where every v moved
    # less than tol: v_t . v_(t-1) > 1 - tol.
    previous_v = None
    for t in range(1, n_iter + 1):
        _, _, v_t = top_singular_triplets(matrices, n_iter=t, impl="reference")
        if previous_v is not None and bool(((v_t * previous_v).sum(-2) > 1 - tol).all()):
            break
        previous_v = v_t
    assert t < n_iter
    stopped = top_singular_triplets(matrices, n_iter=t, impl="reference")
    for a, b in zip(early, stopped):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(early[0], full[0])
    torch.testing.assert_close(early[0], full[0], rtol=1e-2, atol=0)


def test_zero_matrix_gives_zero_factors_and_finite_gradients():
    matrices = torch.zeros(2, 6, 5, requires_grad=True)
    sigma, u, v = top_singular_triplets(matrices, n_iter=5, rank=2, tol=1e-6)
    assert torch.equal(sigma, torch.zeros(2, 2)) and not u.any() and not v.any()
    (low_rank_reconstruction(sigma, u, v).sum() + sigma.sum()).backward()
    assert torch.isfinite(matrices.grad).all()


def test_gradient_through_iterations_matches_svd_autograd():
    gen = _generator(7)
    matrix = _matrix_with_spectrum(10, 8, [3.0, 1.0, 0.5], gen, torch.float64).requires_grad_(True)
    weight = torch.randn(10, 8, generator=gen, dtype=torch.float64)

    def loss_from(sigma, u, v):
        return (low_rank_reconstruction(sigma, u, v) * weight).sum()

    (grad_power,) = torch.autograd.grad(loss_from(*top_singular_triplets(matrix, n_iter=40)), matrix)
    ref_u, ref_s, ref_vh = torch.linalg.svd(matrix, full_matrices=False)
    ref_loss = loss_from(ref_s[:1], ref_u[:, :1], ref_vh[:1].T)
    (grad_svd,) = torch.autograd.grad(ref_loss, matrix)
    torch.testing.assert_close(grad_power, grad_svd, rtol=1e-6, atol=1e-8)

    # detach=True: only sigma = u^T M v is differentiated, so the gradient of
    # <W, sigma u v^T> is (u^T W v) u v^T.
    sigma, u, v = top_singular_triplets(matrix, n_iter=40, detach=True)
    (grad_detached,) = torch.autograd.grad(loss_from(sigma, u, v), matrix)
    u0, v0 = u[:, 0].detach(), v[:, 0].detach()
    torch.testing.assert_close(grad_detached, (u0 @ weight @ v0) * torch.outer(u0, v0))
    assert not torch.allclose(grad_detached, grad_svd, atol=1e-3)


def test_matrix_functions_reject_bad_arguments():
    matrices = torch.randn(3, 4, 5)
    for kwargs, needle in [
        ({"n_iter": 0}, "n_iter"),
        ({"n_iter": 3, "rank": 5}, "rank must be at most min(m, n) = 4"),
        ({"n_iter": 3, "rank": 0}, "rank"),
        ({"n_iter": 3, "tol": 1.5}, "tol"),
        ({"n_iter": 3, "eps": 0.0}, "eps"),
    ]:
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            top_singular_triplets(matrices, **kwargs)
    with pytest.raises(ValueError, match="floating tensor"):
        top_singular_triplets(torch.ones(4, 5, dtype=torch.long), n_iter=2)
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        top_tensor_rank1_terms(torch.ones(4, 5), n_iter=2)


# ----------------------------------------------------------------------------------------
# HOPM
# ----------------------------------------------------------------------------------------


def test_hopm_recovers_an_exactly_rank_one_tensor():
    gen = _generator(8)
    a, b, c = (torch.nn.functional.normalize(torch.randn(3, n, generator=gen), dim=-1) for n in (7, 9, 5))
    sigma_true = torch.tensor([2.0, 0.5, 7.0])
    tensors = sigma_true[:, None, None, None] * torch.einsum("bi,bj,bk->bijk", a, b, c)
    sigma, fa, fb, fc = top_tensor_rank1_terms(tensors, n_iter=3)
    torch.testing.assert_close(sigma[:, 0].abs(), sigma_true)
    for found, true in ((fa, a), (fb, b), (fc, c)):
        assert _angle(found[..., 0], true).max() < 1e-3
    torch.testing.assert_close(tensor_reconstruction(sigma, fa, fb, fc), tensors, rtol=0, atol=1e-5)


def test_hopm_on_a_matrix_slab_is_the_matrix_power_iteration():
    # For K = 1 the tensor spectral norm is the matrix spectral norm.
    matrices = _well_conditioned_maps(3, 11, 8, _generator(9))
    sigma, a, b, c = top_tensor_rank1_terms(matrices.unsqueeze(-1), n_iter=15)
    ref_u, ref_s, ref_vh = torch.linalg.svd(matrices)
    torch.testing.assert_close(sigma[:, 0].abs(), ref_s[:, 0], rtol=1e-4, atol=0)
    assert _angle(a[..., 0], ref_u[..., 0]).max() < 1e-3
    assert _angle(b[..., 0], ref_vh[:, 0]).max() < 1e-3


def test_hopm_deflation_recovers_an_orthogonally_decomposable_tensor():
    # Orthogonal factors with distinct weights: greedy rank-1 deflation is exact for such
    # tensors (Zhang & Golub 2001), so rank-3 terms rebuild the tensor.
    gen = _generator(10)
    a, b, c = (_orthonormal(n, 3, gen) for n in (6, 8, 5))
    weights = torch.tensor([5.0, 2.0, 1.0])
    tensor = torch.einsum("r,ir,jr,kr->ijk", weights, a, b, c)
    sigma, fa, fb, fc = top_tensor_rank1_terms(tensor, n_iter=30, rank=3)
    torch.testing.assert_close(sigma.abs(), weights, rtol=1e-4, atol=0)
    torch.testing.assert_close(tensor_reconstruction(sigma, fa, fb, fc), tensor, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------
# the block
# ----------------------------------------------------------------------------------------

BLOCK_CONFIGS = [
    pytest.param(2, {}, id="2d"),
    pytest.param(2, {"rank": 2}, id="2d-rank2"),
    pytest.param(2, {"method": "svd"}, id="2d-svd"),
    pytest.param(3, {}, id="3d-slices"),
    pytest.param(3, {"slice_axis": 2, "rank": 2}, id="3d-slices-w-rank2"),
    pytest.param(3, {"volume_mode": "tensor"}, id="3d-tensor"),
    pytest.param(3, {"volume_mode": "tensor", "rank": 2, "detach": True}, id="3d-tensor-rank2-detach"),
]


def _shape(spatial_dims: int) -> tuple[int, ...]:
    return (2, 4, 9, 13) if spatial_dims == 2 else (2, 4, 5, 7, 6)


@pytest.mark.parametrize("spatial_dims, kwargs", BLOCK_CONFIGS)
def test_block_is_registered_parameter_free_and_shape_preserving(spatial_dims, kwargs):
    block = create("sna", 4, spatial_dims=spatial_dims, **kwargs)
    assert isinstance(block, SpectralNormAttention)
    assert sum(p.numel() for p in block.parameters()) == 0
    assert len(block.state_dict()) == 0
    x = torch.randn(_shape(spatial_dims), generator=_generator(11))
    assert block(x).shape == x.shape


@pytest.mark.parametrize("spatial_dims, kwargs", BLOCK_CONFIGS)
def test_attention_weights_have_mean_gain_one(spatial_dims, kwargs):
    block = SpectralNormAttention(4, spatial_dims=spatial_dims, **kwargs)
    x = 3.0 * torch.randn(_shape(spatial_dims), generator=_generator(12)) + 1.0
    weights = block.attention_map(x)
    assert weights.shape == (x.shape[0], 1, *x.shape[2:])
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.mean(dim=tuple(range(1, x.ndim))), torch.ones(x.shape[0]))
    # A spatially uniform channel mean gives uniform weights: the block is the identity
    # (the paper's plain softmax would divide x by N here).
    uniform = torch.randn(x.shape[:2], generator=_generator(13)).view(*x.shape[:2], *[1] * (x.ndim - 2)).expand_as(x)
    torch.testing.assert_close(block(uniform), uniform)


@pytest.mark.parametrize("rank", [1, 2])
def test_2d_block_equals_brute_force_svd_formula(rank):
    gen = _generator(14)
    x = _input_with_channel_mean(_well_conditioned_maps(3, 10, 13, gen), channels=5, gen=gen)
    expected = _brute_force_slices(x, rank)
    torch.testing.assert_close(SpectralNormAttention(5, rank=rank, method="svd")(x), expected)
    torch.testing.assert_close(SpectralNormAttention(5, rank=rank, method="power")(x), expected, rtol=1e-4, atol=1e-5)
    # In 2D the tensor mode is the paper's block too.
    torch.testing.assert_close(SpectralNormAttention(5, rank=rank, volume_mode="tensor")(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_3d_slices_block_equals_brute_force_per_slice_svd(slice_axis):
    gen = _generator(15 + slice_axis)
    maps = _well_conditioned_maps(2 * 4, 6, 7, gen).view(2, 4, 6, 7).movedim(1, 1 + slice_axis)
    x = _input_with_channel_mean(maps, channels=3, gen=gen)
    expected = _brute_force_slices(x, rank=1, slice_axis=slice_axis)
    for method in ("svd", "power"):
        block = SpectralNormAttention(3, spatial_dims=3, method=method, slice_axis=slice_axis)
        torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)


def test_full_rank_gives_softmax_of_the_channel_mean():
    x = torch.randn(2, 3, 4, 6, 5, generator=_generator(18))
    expected_weights = torch.softmax(x.mean(1).flatten(1), 1).view(2, 1, 4, 6, 5) * (4 * 6 * 5)
    block = SpectralNormAttention(3, spatial_dims=3, method="svd", rank=99)
    torch.testing.assert_close(block(x), x * expected_weights)


def test_3d_tensor_block_is_exact_for_a_rank_one_channel_mean():
    gen = _generator(19)
    factors = [torch.rand(2, n, generator=gen) + 0.5 for n in (5, 6, 4)]
    mean_map = torch.einsum("bi,bj,bk->bijk", *factors)
    x = _input_with_channel_mean(mean_map, channels=4, gen=gen)
    weights = torch.softmax(mean_map.flatten(1), 1).view(2, 1, 5, 6, 4) * mean_map[0].numel()
    block = SpectralNormAttention(4, spatial_dims=3, volume_mode="tensor", n_iter=3)
    torch.testing.assert_close(block.approximation(x), mean_map)
    torch.testing.assert_close(block(x), x * weights)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_svd_mode_equals_power_mode_on_well_conditioned_input(spatial_dims):
    gen = _generator(20)
    if spatial_dims == 2:
        maps = _well_conditioned_maps(2, 12, 9, gen)
    else:
        maps = _well_conditioned_maps(2 * 3, 8, 9, gen).view(2, 3, 8, 9)
    x = _input_with_channel_mean(maps, channels=6, gen=gen)
    power = SpectralNormAttention(6, spatial_dims=spatial_dims, method="power")
    exact = SpectralNormAttention(6, spatial_dims=spatial_dims, method="svd")
    torch.testing.assert_close(power(x), exact(x), rtol=1e-4, atol=1e-5)


def test_block_tol_applies_in_eval_only():
    x = torch.randn(2, 3, 12, 20, generator=_generator(21), dtype=torch.float64)
    with_tol = SpectralNormAttention(3, n_iter=500, tol=1e-3)
    without_tol = SpectralNormAttention(3, n_iter=500)
    assert torch.equal(with_tol.train()(x), without_tol.train()(x))
    early = with_tol.eval().approximation(x)
    sigma, u, v = top_singular_triplets(x.mean(1), n_iter=500, tol=1e-3)
    torch.testing.assert_close(early, low_rank_reconstruction(sigma, u, v), rtol=0, atol=0)
    assert not torch.equal(early, without_tol.eval().approximation(x))


@pytest.mark.parametrize("spatial_dims, kwargs", [c for c in BLOCK_CONFIGS if "svd" not in c.id])
@pytest.mark.parametrize("fill", [0.0, 2.5], ids=["zeros", "constant"])
def test_zero_and_constant_inputs_are_finite_forward_and_backward(spatial_dims, kwargs, fill):
    block = SpectralNormAttention(4, spatial_dims=spatial_dims, **kwargs)
    x = torch.full(_shape(spatial_dims), fill, requires_grad=True)
    y = block(x)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, x.detach())  # uniform weights: identity
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("fill", [0.0, 2.5], ids=["zeros", "constant"])
def test_svd_mode_is_finite_forward_on_degenerate_inputs(fill):
    # svd mode's backward is NaN for repeated singular values (torch.linalg.svd's limit,
    # documented in the class); its forward must still be finite.
    x = torch.full((2, 3, 6, 5), fill)
    torch.testing.assert_close(SpectralNormAttention(3, method="svd")(x), x)


@pytest.mark.parametrize("spatial_dims, kwargs", BLOCK_CONFIGS)
def test_bf16_autocast_computes_the_attention_in_float32(spatial_dims, kwargs):
    block = SpectralNormAttention(4, spatial_dims=spatial_dims, **kwargs)
    x = torch.randn(_shape(spatial_dims), generator=_generator(22))
    reference = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weights = block.attention_map(x)
        y = block(x)
    assert weights.dtype == torch.float32
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, reference, rtol=0, atol=0)
    # bf16 tensors in, bf16 out, close to the float32 result
    y_bf16 = block(x.bfloat16())
    assert y_bf16.dtype == torch.bfloat16
    scale = reference.abs().max()
    torch.testing.assert_close(y_bf16.float(), reference, rtol=5e-2, atol=5e-2 * scale)


# detach=True deliberately drops the iterations' gradient, so it is not the exact one.
@pytest.mark.parametrize(
    "spatial_dims, kwargs", [c for c in BLOCK_CONFIGS if "svd" not in c.id and "detach" not in c.id]
)
def test_block_gradcheck_against_finite_differences(spatial_dims, kwargs):
    block = SpectralNormAttention(2, spatial_dims=spatial_dims, n_iter=4, **kwargs)
    shape = (1, 2, 4, 5) if spatial_dims == 2 else (1, 2, 3, 4, 3)
    x = torch.randn(shape, generator=_generator(23), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


def test_block_rejects_bad_arguments_and_inputs():
    bad = [
        ({"method": "qr"}, "unknown method 'qr'; choose one of \\['power', 'svd'\\]"),
        ({"volume_mode": "cube"}, "unknown volume_mode 'cube'"),
        ({"slice_axis": 3}, "slice_axis must be 0 \\(D\\), 1 \\(H\\) or 2 \\(W\\), got 3"),
        ({"rank": 0}, "rank must be a positive int, got 0"),
        ({"n_iter": 0}, "n_iter must be a positive int, got 0"),
        ({"tol": 0.0}, "tol must be None or in \\(0, 1\\), got 0.0"),
        ({"method": "svd", "volume_mode": "tensor"}, "method='svd' needs volume_mode='slices'"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            SpectralNormAttention(4, spatial_dims=3, **kwargs)
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        SpectralNormAttention(4, spatial_dims=1)
    with pytest.raises(ValueError, match="C=4, got shape \\(2, 3, 8, 8\\)"):
        SpectralNormAttention(4)(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown argument"):
        create("sna", 4, temperature=2.0)


def test_block_output_depends_only_on_the_current_input():
    block = SpectralNormAttention(3, spatial_dims=3, volume_mode="tensor")
    x1, x2 = torch.randn(2, 2, 3, 5, 4, 6, generator=_generator(24)).unbind(0)
    first = block(x1)
    block(x2)
    assert torch.equal(block(x1), first)


def test_default_iterations_converge_on_real_ct_slices(shared_data):
    """The paper reports < 10 iterations on images; check the default n_iter on a real CT."""
    from medattn.data.io import read_image

    array, _ = read_image(shared_data / "ct-abdomen-example" / "ct.nii.gz")
    # Every third axial slice keeps the SVD reference cheap.
    slices = torch.from_numpy(array[::3].astype("float32")).clamp(-200, 300) / 100.0
    n_iter = SpectralNormAttention(1).n_iter
    sigma, u, v = top_singular_triplets(slices, n_iter=n_iter)
    torch.testing.assert_close(sigma[:, 0], torch.linalg.svdvals(slices.double())[:, 0].float(), rtol=1e-4, atol=0)
    block_power = SpectralNormAttention(1)(slices[:, None])
    block_svd = SpectralNormAttention(1, method="svd")(slices[:, None])
    torch.testing.assert_close(block_power, block_svd, rtol=1e-3, atol=1e-3 * block_svd.abs().max().item())


@pytest.mark.slow
@pytest.mark.parametrize("spatial_dims, kwargs", [(2, {"rank": 2, "detach": True}), (3, {"volume_mode": "tensor"})], ids=["2d-rank2-detach", "3d-tensor"])
def test_block_compiles_with_inductor(spatial_dims, kwargs):
    # Few iterations: the loop is unrolled into the graph and compile time grows with it.
    block = SpectralNormAttention(4, spatial_dims=spatial_dims, n_iter=3, **kwargs).train()
    compiled = torch.compile(block, backend="inductor", fullgraph=True)
    x = torch.randn(_shape(spatial_dims), generator=_generator(25), requires_grad=True)
    y = compiled(x)
    torch.testing.assert_close(y, block(x), rtol=1e-4, atol=1e-5)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_paper_rank_one_attention_is_not_a_uniform_map_on_structured_input():
    # Sanity of the mechanism: a bright square in the channel mean gets weights > 1 and
    # the background < 1 (Sec. 3.1: informative features are enhanced).
    mean_map = torch.zeros(1, 16, 16)
    mean_map[:, 4:8, 6:10] = 2.0
    x = _input_with_channel_mean(mean_map, channels=3, gen=_generator(26))
    weights = SpectralNormAttention(3).attention_map(x)[0, 0]
    assert weights[4:8, 6:10].min() > 1.0 > weights[0, 0]
    assert math.isclose(weights.mean().item(), 1.0, rel_tol=1e-5)


# ----------------------------------------------------------------------------------------
# the start vector: two separate objects (regression, medattn < 0.2 started from the largest row)
# ----------------------------------------------------------------------------------------


def _streak_and_blob(leak: float, size: int = 32) -> torch.Tensor:
    """A bright short streak (sigma 6, the largest row) beside a dimmer, larger blob (sigma 8):
    the largest row is orthogonal to the blob's right singular vector."""
    matrix = torch.full((size, size), leak)
    matrix[3, 0:4] += 3.0  # rank 1, sigma = 3 * 2 = 6, row norm 6
    matrix[10:26, 10:26] += 0.5  # rank 1, sigma = 0.5 * 16 = 8, row norm 2
    return matrix


@pytest.mark.parametrize("leak", [0.0, 1e-4])
def test_power_iteration_finds_the_larger_object_of_two(leak):
    matrix = _streak_and_blob(leak)
    reference = torch.linalg.svd(matrix.double())
    sigma, u, v = top_singular_triplets(matrix, n_iter=10)
    torch.testing.assert_close(sigma[0].double(), reference.S[0], rtol=1e-5, atol=0)
    assert _angle(v[:, 0].double(), reference.Vh[0]) < 1e-3
    assert _angle(u[:, 0].double(), reference.U[:, 0]) < 1e-3


@pytest.mark.parametrize("leak", [0.0, 1e-4])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_block_weights_favour_the_object_svd_favours(leak, spatial_dims):
    """The default (power, 10 iterations) block gives the exact-SVD attention on the
    two-object map, in 2D and on every slice of a 3D volume. sigma_2 / sigma_1 = 0.75 leaves
    about 1e-3 of relative error after 10 iterations; the largest-row start gave weights of
    15.5 on the streak and 0.77 on the blob, where SVD gives 0.70 and 1.90."""
    mean_map = _streak_and_blob(leak)
    if spatial_dims == 3:  # three slices along the default slice axis, each with both objects
        mean_map = torch.stack([mean_map, 2 * mean_map, mean_map.flip(-1)])
    x = _input_with_channel_mean(mean_map.unsqueeze(0), channels=4, gen=_generator(40))
    block = SpectralNormAttention(4, spatial_dims=spatial_dims)
    expected = _brute_force_slices(x, rank=1)
    torch.testing.assert_close(block(x), expected, rtol=5e-3, atol=1e-4)
    own = mean_map[None, None].expand(1, 4, *mean_map.shape)  # every channel the map itself
    weights = block(own)[0, 0] / mean_map.clamp_min(1e-6)
    first = weights if spatial_dims == 2 else weights[0]
    objects = _streak_and_blob(0.0)
    blob, streak = first[objects == 0.5].mean(), first[objects == 3.0].mean()
    assert blob > 1 > streak  # SVD: about 1.90 on the blob, 0.70 on the streak


def test_hopm_start_finds_the_larger_of_two_separate_rank_one_objects():
    tensor = torch.zeros(6, 20, 20)
    tensor[0, 1, 0:4] = 3.0  # sigma 6
    tensor[2:6, 8:16, 8:16] = 0.25  # sigma 0.25 * sqrt(4 * 8 * 8) = 4
    tensor[2:6, 8:16, 8:16] *= 2.5  # sigma 10
    sigma, *_ = top_tensor_rank1_terms(tensor, n_iter=20)
    torch.testing.assert_close(sigma[0], torch.tensor(10.0), rtol=1e-5, atol=0)


def test_start_falls_back_to_the_largest_row_where_column_sums_vanish():
    # Columns summing to zero (a signed, zero-mean map): M^T 1 = 0 carries no direction.
    matrix = torch.randn(12, 9, generator=_generator(41))
    matrix = matrix - matrix.mean(0, keepdim=True)
    reference = torch.linalg.svdvals(matrix.double())[0]
    sigma, _, _ = top_singular_triplets(matrix, n_iter=500)
    torch.testing.assert_close(sigma[0].double(), reference, rtol=1e-4, atol=0)


# ----------------------------------------------------------------------------- fast path vs the reference


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("shape", [(3, 12, 20), (3, 20, 12), (2, 32, 32), (2, 4, 40, 48), (2, 40, 33)])
@pytest.mark.parametrize("n_iter", [1, 2, 10, 17])
@pytest.mark.parametrize("rank", [1, 2])
def test_fast_triplets_equal_the_reference_forward_and_backward(shape, n_iter, rank):
    """Small maps take the Gram-squaring path (17 iterations: the rescaled one), larger ones
    the rescaled alternating path; rank 1 equals the reference iterations to 1e-5 in
    float32. Rank 2 (deflation) runs the reference itself."""
    gen = _generator(n_iter + rank)
    matrices = torch.relu(torch.randn(*shape, generator=gen)).requires_grad_()
    weights = [torch.randn(s, generator=gen) for s in ((*shape[:-2], rank), (*shape[:-1], rank),
                                                        (*shape[:-2], shape[-1], rank))]

    def run(impl, inputs):
        triplets = top_singular_triplets(inputs, n_iter, rank=rank, impl=impl)
        grad = torch.autograd.grad(sum((t * w.to(t.dtype)).sum() for t, w in zip(triplets, weights)), inputs)[0]
        return [*triplets, grad]

    fast, reference = run("fast", matrices), run("reference", matrices)
    for ours, theirs in zip(fast, reference):
        assert _relative(ours, theirs) < (1e-5 if rank == 1 else 1e-12)


@pytest.mark.parametrize("spatial_dims, shape", [(2, (2, 6, 9, 14)), (2, (2, 4, 40, 36)), (3, (2, 5, 4, 7, 9)),
                                                 (3, (1, 3, 6, 36, 40))])
@pytest.mark.parametrize("training", [True, False])
def test_fast_block_equals_the_reference_block(spatial_dims, shape, training):
    gen = _generator(sum(shape))
    x = torch.randn(*shape, generator=gen).requires_grad_()
    fast = SpectralNormAttention(shape[1], spatial_dims=spatial_dims).train(training)
    reference = SpectralNormAttention(shape[1], spatial_dims=spatial_dims, impl="reference").train(training)
    out_fast, out_reference = fast(x), reference(x)
    assert _relative(out_fast, out_reference) < 1e-5
    grad = torch.randn(out_fast.shape, generator=gen)
    assert _relative(torch.autograd.grad((out_fast * grad).sum(), x)[0],
                     torch.autograd.grad((out_reference * grad).sum(), x)[0]) < 1e-5


def test_fast_block_keeps_zero_maps_finite():
    x = torch.zeros(2, 3, 5, 6, requires_grad=True)
    out = SpectralNormAttention(3)(x)
    out.sum().backward()
    assert torch.equal(out, x.detach()) and torch.isfinite(x.grad).all()


def test_impl_is_checked():
    with pytest.raises(ValueError, match="unknown impl 'quick'"):
        SpectralNormAttention(4, impl="quick")
    with pytest.raises(ValueError, match="unknown impl 'quick'"):
        top_singular_triplets(torch.ones(2, 3, 3), 2, impl="quick")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_identity_init_starts_as_the_identity_and_opens_to_the_paper_block(spatial_dims):
    x = torch.randn(2, 6, *([7] * spatial_dims), generator=_generator(3), requires_grad=True)
    block = SpectralNormAttention(6, spatial_dims=spatial_dims, identity_init=True)
    assert sum(p.numel() for p in block.parameters()) == 6  # one scale per channel
    out = block(x)
    assert torch.equal(out, x)
    out.square().sum().backward()
    assert block.gamma.grad is not None and block.gamma.grad.abs().sum() > 0
    with torch.no_grad():
        block.gamma.fill_(1.0)
    paper = SpectralNormAttention(6, spatial_dims=spatial_dims)
    torch.testing.assert_close(block(x), paper(x), rtol=1e-6, atol=1e-6)
    assert sum(p.numel() for p in paper.parameters()) == 0
