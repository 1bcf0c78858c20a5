"""A synthetic CT-like dataset in nnU-Net raw layout, for tests, the demo and quick checks.

Each case is a torso-like ellipsoid of soft tissue in air holding three organ-like
ellipsoids. Two contrasts (``contrast=``):

- ``"low"`` (the default): the organs' mean intensities differ by only a few HU, well
  below the 20 HU noise: the inter-class similarity that DSM targets, where shape and
  position must carry the decision. A short schedule learns only the largest organ.
- ``"enhanced"``: the organs as in a portal-venous contrast-enhanced CT (liver-like
  100 HU, spleen-like 140 HU, kidney-like 190 HU, against 20 HU soft tissue and the same
  noise), the two smaller ones enlarged: every organ is learnable in a few minutes of
  CPU training (``make demo``).

Voxels are anisotropic (thick slices), the direction matrices are not the
identity (a rotation about the slice axis and a flipped axis) and the origins vary, so
code that ignores geometry fails visibly. Generation is deterministic for a given seed.

Example:
    >>> from medattn.data.phantom import make_phantom_dataset
    >>> root = make_phantom_dataset("nnUNet_raw", n_cases=6, seed=0)  # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['dataset.json', 'imagesTr', 'labelsTr']
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medattn.data.io import Geometry, write_image, write_json_atomic

#: Label names in label order (0 is background).
LABELS = ("background", "organ_a", "organ_b", "organ_c")


@dataclass(frozen=True)
class _Organ:
    label: int
    hu: float  # mean intensity
    center: tuple[float, float, float]  # relative (z, y, x) position inside the body, in [-1, 1]
    radii: tuple[float, float, float]  # relative semi-axes


#: The organs per contrast. At "low" the three lie within 15 HU of each other; "enhanced"
#: also makes the spleen- and kidney-like organs larger (a few hundred voxels at the default
#: shape are too few for a short schedule to find).
_ORGANS = {
    "low": (
        _Organ(1, 58.0, (0.0, -0.15, -0.35), (0.55, 0.40, 0.30)),  # large, liver-like
        _Organ(2, 50.0, (0.1, -0.10, 0.45), (0.35, 0.22, 0.18)),  # spleen-like
        _Organ(3, 65.0, (-0.2, 0.40, 0.05), (0.30, 0.16, 0.16)),  # kidney-like
    ),
    "enhanced": (
        _Organ(1, 100.0, (0.0, -0.15, -0.35), (0.55, 0.40, 0.30)),
        _Organ(2, 140.0, (0.1, -0.10, 0.45), (0.45, 0.30, 0.25)),
        _Organ(3, 190.0, (-0.2, 0.40, 0.05), (0.45, 0.26, 0.24)),
    ),
}
#: The phantom's contrasts (see the module docstring).
CONTRASTS = tuple(_ORGANS)


def make_phantom_case(
    shape: tuple[int, int, int] = (32, 48, 48), seed: int = 0, contrast: str = "low"
) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """One phantom case.

    Args:
        shape: array shape in (z, y, x) order.
        seed: seed of this case; the same seed gives the same case.
        contrast: one of :data:`CONTRASTS`: the organs' intensities and sizes change;
            noise, body and geometry of a seed stay the same.

    Returns:
        ``(image, label, geometry)``: int16 HU-like image, uint8 label map (values
        0..3, see :data:`LABELS`) and the :class:`~medattn.data.io.Geometry` to write them with.
    """
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes of at least 8 voxels, got {shape!r}")
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {CONTRASTS}, got {contrast!r}")
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))

    body_radii = np.array([0.95, 0.75, 0.9]) * rng.uniform(0.92, 1.0, 3)
    body = _ellipsoid(grid, np.zeros(3), body_radii)
    image = np.where(body, 20.0, -1000.0)  # fat/soft tissue vs air
    label = np.zeros(shape, dtype=np.uint8)
    for organ in _ORGANS[contrast]:
        center = np.array(organ.center) * body_radii + rng.normal(0, 0.05, 3)
        radii = np.array(organ.radii) * body_radii * rng.uniform(0.85, 1.15, 3)
        mask = _ellipsoid(grid, center, radii) & body & (label == 0)
        label[mask] = organ.label
        image[mask] = organ.hu + rng.normal(0, 3)
    # Noise well above the organ contrast, plus a smooth bias field like beam hardening.
    image += rng.normal(0, 20.0, shape) * body
    image += 15.0 * grid[1] * body
    geometry = _random_geometry(shape, rng)
    return np.round(image).astype(np.int16), label, geometry


def _ellipsoid(grid: np.ndarray, center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    offsets = (grid - center[:, None, None, None]) / radii[:, None, None, None]
    return (offsets**2).sum(axis=0) <= 1.0


def _random_geometry(shape: tuple[int, int, int], rng: np.random.Generator) -> Geometry:
    """Anisotropic spacing (thick slices), a rotated and flipped frame, a random origin."""
    spacing_xy = rng.uniform(0.7, 0.9)
    spacing = (spacing_xy, spacing_xy, rng.uniform(2.0, 3.0))  # (x, y, z) in mm
    angle = math.radians(rng.uniform(5, 20))
    cos, sin = math.cos(angle), math.sin(angle)
    # Rotation about z, with the y axis flipped (as in LPS vs RAS confusions).
    direction = (cos, sin, 0.0, sin, -cos, 0.0, 0.0, 0.0, 1.0)
    origin = tuple(float(v) for v in rng.uniform(-200, 200, 3))
    return Geometry(shape=tuple(shape), spacing=spacing, origin=origin, direction=direction)


def make_phantom_dataset(
    out_dir: str | Path,
    n_cases: int = 6,
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 48, 48),
    dataset_id: int = 990,
    name: str = "Phantom",
    n_test: int = 0,
    contrast: str = "low",
) -> Path:
    """Write an nnU-Net v2 raw dataset of phantom cases.

    Args:
        out_dir: the nnU-Net raw folder (``nnUNet_raw``) to write into.
        n_cases: number of training cases (``imagesTr``/``labelsTr``).
        seed: dataset seed; case ``i`` uses seed ``(seed, i)``.
        shape: array shape of every case in (z, y, x) order.
        dataset_id: nnU-Net dataset id (three digits).
        name: dataset name; the folder is ``Dataset{id:03d}_{name}``.
        n_test: number of held-out cases written to ``imagesTs``/``labelsTs``.
        contrast: the organs' contrast, one of :data:`CONTRASTS`.

    Returns:
        The dataset folder. Existing case files are rewritten identically (idempotent).
    """
    if n_cases < 1 or n_test < 0:
        raise ValueError(f"need n_cases >= 1 and n_test >= 0, got {n_cases!r} and {n_test!r}")
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset_id must be in 1..999, got {dataset_id!r}")
    root = Path(out_dir) / f"Dataset{dataset_id:03d}_{name}"
    for index in range(n_cases + n_test):
        split = "Tr" if index < n_cases else "Ts"
        case = f"{name.lower()}_{index:03d}"
        image, label, geometry = make_phantom_case(shape, seed=_case_seed(seed, index), contrast=contrast)
        write_image(image, geometry, root / f"images{split}" / f"{case}_0000.nii.gz")
        write_image(label, geometry, root / f"labels{split}" / f"{case}.nii.gz")
    write_json_atomic(
        root / "dataset.json",
        {
            "channel_names": {"0": "CT"},
            "labels": {name_: value for value, name_ in enumerate(LABELS)},
            "numTraining": n_cases,
            "file_ending": ".nii.gz",
            "name": name,
            "description": "medattn synthetic CT-like phantom (medattn.data.phantom), seed "
            f"{seed}, shape {list(shape)}, {contrast} contrast",
        },
    )
    return root


def _case_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medattn.data.phantom",
        description="Write the medattn phantom (CT-like, anisotropic, rotated and flipped grids) "
        "as an nnU-Net v2 raw dataset: OUT_DIR/Dataset{ID}_Phantom with imagesTr, labelsTr, "
        "imagesTs/labelsTs (held-out cases) and dataset.json. Prints the dataset folder.",
    )
    parser.add_argument("out_dir", help="nnU-Net raw folder to write into (e.g. $nnUNet_raw)")
    parser.add_argument("--cases", type=int, default=6, help="training cases (default: 6)")
    parser.add_argument("--test-cases", type=int, default=0, help="held-out cases in imagesTs/labelsTs (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; the same seed writes the same files")
    parser.add_argument("--dataset-id", type=int, default=990, help="nnU-Net dataset id, 1-999 (default: 990)")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 48, 48), metavar=("Z", "Y", "X"),
                        help="voxels per case in (z, y, x) order (default: 32 48 48)")
    parser.add_argument("--contrast", choices=CONTRASTS, default="low",
                        help="organ contrast: low (within 15 HU of each other, under 20 HU noise; the default) or "
                        "enhanced (portal-venous CT: 100, 140 and 190 HU against 20 HU soft tissue)")
    args = parser.parse_args(argv)
    try:
        root = make_phantom_dataset(args.out_dir, args.cases, args.seed, shape=tuple(args.shape),
                                    dataset_id=args.dataset_id, n_test=args.test_cases, contrast=args.contrast)
    except ValueError as err:
        parser.error(str(err))
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
