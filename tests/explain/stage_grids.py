"""The check of a ``--stage-grids`` volume: SimpleITK resamples it, in physical space, onto
the input's grid, where it must match the map ``medattn explain`` wrote there better than
any mirrored copy of it does."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk


def _correlation_on_input(stage: sitk.Image, on_input: sitk.Image) -> tuple[float | None, float]:
    """(correlation where the stage grid covers the input or None for a constant map, coverage)."""
    resampled = sitk.GetArrayFromImage(sitk.Resample(stage, on_input, sitk.Transform(), sitk.sitkLinear,
                                                     float("nan")))
    reference = sitk.GetArrayFromImage(on_input)
    covered = np.isfinite(resampled)  # nnU-Net's stage grids cover its crop only
    if not covered.any() or np.ptp(reference[covered]) < 1e-6 * max(1.0, float(np.abs(reference).max())):
        return None, float(covered.mean())
    return float(np.corrcoef(resampled[covered], reference[covered])[0, 1]), float(covered.mean())


def assert_aligned(stage_path, input_grid_path, min_correlation: float = 0.8) -> float | None:
    """The two maps agree where the stage grid covers the input; a misplaced, flipped or
    transposed grid decorrelates them. Returns the correlation, or None for a constant map
    (DSM's M adds nothing at its identity start), which cannot show an alignment. Grids at
    least 4 voxels wide must also beat each of their mirror images."""
    on_input = sitk.ReadImage(str(input_grid_path), sitk.sitkFloat64)
    stage = sitk.ReadImage(str(stage_path), sitk.sitkFloat64)
    correlation, coverage = _correlation_on_input(stage, on_input)
    assert coverage > 0.3, f"{stage_path}: covers {coverage:.0%} of the input"
    if correlation is None:
        return None
    assert correlation > min_correlation, f"{stage_path}: correlation {correlation:.3f} with the input-grid map"
    if min(stage.GetSize()) >= 4:
        values = sitk.GetArrayFromImage(stage)
        for axis in range(values.ndim):
            mirrored = sitk.GetImageFromArray(np.flip(values, axis).copy())
            mirrored.CopyInformation(stage)
            other, _ = _correlation_on_input(mirrored, on_input)
            assert other is None or other < correlation - 0.05, (
                f"{stage_path}: mirrored along array axis {axis} it matches as well ({other:.3f} vs {correlation:.3f})")
    return correlation
