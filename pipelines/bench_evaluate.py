"""``medattn bench evaluate``: medattn's evaluation against calling medpy directly.

Synthetic CT-sized label pairs (default 2 cases of 512 x 512 x 200 voxels at
0.78 x 0.78 x 2 mm) hold eight abdominal organs of realistic size (liver, spleen,
kidneys, gallbladder, stomach, aorta, pancreas; BTCV numbering) with irregular
boundaries; the predictions move, rescale and reshape every organ a little and add two
false-positive blobs.

Both sides start from the NIfTI files, in one process:

* medpy direct: ``read_image`` both files, then per label ``medpy.metric.binary.dc`` and
  ``hd95`` (the TransUNet / Swin-Unet loop, with the image spacing); ``--medpy-assd``
  adds ``assd``;
* medattn: ``evaluate_folders(..., jobs=1)``, which also computes ASSD and the volumes and
  validates the files; then the same with ``-j 2`` (more workers) for reference.

The run fails unless every Dice and HD95 (and ASSD with ``--medpy-assd``) is
bit-identical (``==``) between the two.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

DESCRIPTION = __doc__.split("\n", 1)[1].strip().replace("``", "")
DESCRIPTION = "medattn evaluate vs calling medpy directly, on CT-sized synthetic label pairs\n\n" + DESCRIPTION

#: (label, name, centre (z, y, x) in mm, semi-axes (z, y, x) in mm) of the phantom organs,
#: for a 400 mm field of view (512 x 0.78 mm, 200 x 2 mm); other grids scale them.
ORGANS = (
    (6, "liver", (230, 180, 140), (75, 70, 85)),
    (1, "spleen", (240, 220, 290), (50, 35, 40)),
    (2, "right kidney", (170, 250, 140), (50, 25, 28)),
    (3, "left kidney", (175, 250, 260), (50, 25, 28)),
    (4, "gallbladder", (190, 160, 160), (35, 15, 18)),
    (7, "stomach", (240, 170, 250), (55, 40, 60)),
    (8, "aorta", (200, 230, 205), (140, 12, 12)),
    (11, "pancreas", (195, 210, 210), (15, 15, 65)),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", type=int, default=2, help="number of synthetic cases (default: 2)")
    parser.add_argument(
        "--shape", type=int, nargs=3, default=(200, 512, 512), metavar=("Z", "Y", "X"),
        help="volume shape in voxels (default: 200 512 512)",
    )
    parser.add_argument(
        "--spacing", type=float, nargs=3, default=(2.0, 0.78, 0.78), metavar=("Z", "Y", "X"),
        help="voxel size in mm (default: 2.0 0.78 0.78)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="workers of the parallel medattn run (default: 2)")
    parser.add_argument("--medpy-assd", action="store_true", help="let medpy also compute ASSD (doubles its time)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--workdir", help="where to write the synthetic files (default: a temporary folder)")


def run(args) -> int:
    """Run the benchmark in ``--workdir`` or a temporary folder removed afterwards.

    Returns:
        0 when every compared value is bit-identical, 1 otherwise (the differences listed).
    """
    import tempfile
    from pathlib import Path

    if args.workdir:
        return _run(args, Path(args.workdir))
    with tempfile.TemporaryDirectory(prefix="bench_evaluate_") as tmp:
        return _run(args, Path(tmp))


def _run(args, workdir) -> int:
    """Write the synthetic cases under ``workdir``, time both sides, compare, print the report."""
    shape, spacing_zyx = tuple(args.shape), tuple(args.spacing)
    gt_dir, pred_dir = write_cases(workdir, args.cases, shape, spacing_zyx, args.seed)
    measured = measure(pred_dir, gt_dir, args.jobs, args.medpy_assd)
    mismatches = find_mismatches(measured.reference, measured.medattn, measured.compared)
    print(_report(args, shape, spacing_zyx, measured, len(mismatches)))
    if mismatches:
        print("NOT bit-identical:\n  " + "\n  ".join(mismatches))
        return 1
    return 0


@dataclass
class Measurement:
    """What one benchmark run measured.

    Attributes:
        reference: medpy's values, ``{(case, label): {metric: value}}``.
        medpy_seconds: ``(wall, CPU)`` seconds of the medpy loop.
        medattn: ``{jobs: evaluate_folders' metrics table}`` (one row per case and label).
        timings: ``{jobs: (wall, CPU) seconds}`` of each medattn run.
        compared: the metrics compared with ``==`` (``dice``, ``hd95`` and maybe ``assd``).
    """

    reference: dict
    medpy_seconds: tuple[float, float]
    medattn: dict
    timings: dict
    compared: list[str]


def write_cases(workdir, cases: int, shape, spacing_zyx, seed: int):
    """Write ``cases`` synthetic pairs as ``gt/case_NN.nii.gz`` and ``pred/case_NN.nii.gz``.

    Returns:
        ``(gt_dir, pred_dir)``.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from medattn.data.io import Geometry, write_image

    geometry = Geometry(shape=shape, spacing=tuple(reversed(spacing_zyx)), origin=(0.0, 0.0, 0.0),
                        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    rng = np.random.default_rng(seed)
    gt_dir, pred_dir = workdir / "gt", workdir / "pred"
    for i in tqdm(range(cases), desc="writing synthetic cases", unit="case"):
        truth, prediction = phantom_pair(shape, spacing_zyx, rng)
        write_image(truth, geometry, gt_dir / f"case_{i:02d}.nii.gz")
        write_image(prediction, geometry, pred_dir / f"case_{i:02d}.nii.gz")
        del truth, prediction  # CT-sized volumes: keep one pair in memory at a time
    return gt_dir, pred_dir


def measure(pred_dir, gt_dir, jobs: int, medpy_assd: bool) -> Measurement:
    """Time the medpy loop, then ``evaluate_folders`` with one worker and with ``jobs``."""
    from medattn.evaluation.api import evaluate_folders

    reference, medpy_seconds = _timed(lambda: medpy_direct(pred_dir, gt_dir, medpy_assd))
    tables, timings = {}, {}
    # One worker is the like-for-like comparison with the single-process medpy loop;
    # ``jobs`` workers show what parallelism adds (with ``--jobs 1`` the second run
    # replaces the first).
    for n in (1, jobs):
        result, timings[n] = _timed(lambda: evaluate_folders(pred_dir, gt_dir, jobs=n, progress=True))
        tables[n] = result.metrics
    compared = ["dice", "hd95"] + (["assd"] if medpy_assd else [])
    return Measurement(reference, medpy_seconds, tables, timings, compared)


def find_mismatches(reference: dict, tables: dict, compared) -> list[str]:
    """Every value of every medattn table that is not ``==`` medpy's, one line each.

    Args:
        reference: medpy's ``{(case, label): {metric: value}}``.
        tables: ``{jobs: metrics table}`` of the medattn runs.
        compared: the metric columns to compare.
    """
    mismatches = []
    for jobs, table in tables.items():
        indexed = table.set_index(["case", "label"])
        for key, values in reference.items():
            for metric in compared:
                if indexed.loc[key, metric] != values[metric]:
                    mismatches.append(f"-j {jobs} {key} {metric}: medattn {indexed.loc[key, metric]!r} "
                                      f"vs medpy {values[metric]!r}")
    return mismatches


def _timed(function):
    """``(result, (wall seconds, CPU seconds))``; CPU counts this process and its finished
    children, so it stays meaningful when other jobs share the machine."""
    import os
    import time

    cpu_before, wall_before = os.times(), time.perf_counter()
    result = function()
    wall, cpu_after = time.perf_counter() - wall_before, os.times()
    cpu = sum(getattr(cpu_after, f) - getattr(cpu_before, f)
              for f in ("user", "system", "children_user", "children_system"))
    return result, (wall, cpu)


def medpy_direct(pred_dir, gt_dir, with_assd: bool) -> dict:
    """The usual loop: read each pair, then medpy per label. Returns {(case, label): metrics}."""
    import numpy as np
    from medpy.metric import binary
    from tqdm.auto import tqdm

    from medattn.data.io import case_name, list_images, read_image

    values = {}
    for gt_path in tqdm(list_images(gt_dir), desc="medpy direct", unit="case"):
        case = case_name(gt_path)
        gt, geometry = read_image(gt_path)
        pred, _ = read_image(pred_dir / gt_path.name)
        for label in [int(v) for v in np.unique(gt) if v != 0]:
            p, g = pred == label, gt == label
            entry = {"dice": binary.dc(p, g), "hd95": binary.hd95(p, g, voxelspacing=geometry.spacing_zyx)}
            if with_assd:
                entry["assd"] = binary.assd(p, g, voxelspacing=geometry.spacing_zyx)
            values[(case, label)] = entry
    return values


def phantom_pair(shape, spacing_zyx, rng):
    """Ground-truth organ labels and a plausible prediction of them.

    Each organ is an ellipsoid with smooth random bumps. The prediction moves it by about
    1.5 mm, rescales its axes by up to 4 %, adds one more bump, and two organs get a
    small false-positive blob beside them.
    """
    import numpy as np

    gt = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros(shape, dtype=np.uint8)
    spacing = np.asarray(spacing_zyx, dtype=float)
    scale = np.asarray(shape) * spacing / 400.0
    for label, _, centre, axes in ORGANS:
        centre, axes = np.asarray(centre, float) * scale, np.asarray(axes, float) * scale
        bumps = [_random_bump(rng, 0.08) for _ in range(3)]
        _paint(gt, label, centre, axes, spacing, bumps)
        moved = centre + rng.normal(0.0, 1.5, size=3)
        resized = axes * rng.uniform(0.96, 1.04, size=3)
        _paint(pred, label, moved, resized, spacing, bumps + [_random_bump(rng, 0.05)])
    for label, _, centre, axes in (ORGANS[0], ORGANS[5]):
        blob = (np.asarray(centre, float) + np.asarray(axes, float) * np.array([0.0, 1.3, 1.3])) * scale
        _paint(pred, label, blob, 8.0 * scale, spacing, [])
    return gt, pred


def _random_bump(rng, amplitude: float):
    """A plane wave (unit direction, wave number per mm, phase, amplitude); 6-15 cm long."""
    import numpy as np

    direction = rng.normal(size=3)
    return direction / np.linalg.norm(direction), 2 * np.pi / rng.uniform(60.0, 150.0), rng.uniform(0, 2 * np.pi), amplitude


def _paint(volume, label, centre, axes, spacing, bumps) -> None:
    import numpy as np

    reach = axes * (1.0 + 2.0 * sum(b[3] for b in bumps))
    lo = np.maximum(np.floor((centre - reach) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((centre + reach) / spacing).astype(int) + 1, volume.shape)
    if np.any(hi <= lo):
        return
    grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi))]
    coords = [g * s for g, s in zip(grids, spacing)]  # mm
    field = sum(((c - m) / a) ** 2 for c, m, a in zip(coords, centre, axes))
    for direction, wave_number, phase, amplitude in bumps:
        # Anchored at the organ centre, so a moved organ keeps its shape.
        field = field + amplitude * np.sin(
            sum((c - m) * d * wave_number for c, m, d in zip(coords, centre, direction)) + phase
        )
    region = volume[tuple(slice(a, b) for a, b in zip(lo, hi))]
    region[field < 1.0] = label


def _report(args, shape, spacing_zyx, measured: Measurement, n_mismatches: int) -> str:
    """Machine and data lines, the markdown table and the verdict (docs/benchmarks.md's format)."""
    table = measured.medattn[1]
    lines = [
        _machine_line(),
        f"data: {args.cases} case(s) of {shape[2]} x {shape[1]} x {shape[0]} voxels (x y z) at "
        f"{spacing_zyx[2]} x {spacing_zyx[1]} x {spacing_zyx[0]} mm, {table['label'].nunique()} labels "
        f"(mean Dice {table['dice'].mean():.3f}, mean HD95 {table['hd95'].mean():.1f} mm)",
        "",
        *_table_lines(args, measured),
        "",
        _verdict_line(len(measured.reference), measured.compared, n_mismatches),
    ]
    return "\n".join(lines)


def _machine_line() -> str:
    """CPU model, logical CPUs and the versions that decide the speed of both sides."""
    import os
    import platform

    import numpy as np
    import scipy

    return (f"machine: {_cpu_name()}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, "
            f"numpy {np.__version__}, scipy {scipy.__version__}, medpy {_medpy_version()}")


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _medpy_version() -> str:
    # Some medpy releases have no ``__version__``; the installed distribution's does.
    import medpy

    version = getattr(medpy, "__version__", None)
    if version is None:
        from importlib.metadata import version as distribution_version

        version = distribution_version("medpy")
    return version


def _table_lines(args, measured: Measurement) -> list[str]:
    """The markdown table: the medpy row, then one row per medattn run, speed-ups against medpy."""
    medpy_wall, medpy_cpu = measured.medpy_seconds
    medpy_what = "dc + hd95" + (" + assd" if args.medpy_assd else "")
    lines = [
        "| method | processes | wall s | wall s / case | CPU s | speed-up (wall) | speed-up (CPU) |",
        "|---|---|---|---|---|---|---|",
        f"| medpy direct (read, {medpy_what} per label) | 1 | {medpy_wall:.1f} | "
        f"{medpy_wall / args.cases:.1f} | {medpy_cpu:.1f} | 1.0x | 1.0x |",
    ]
    for jobs, (wall, cpu) in measured.timings.items():
        lines.append(f"| medattn evaluate_folders (Dice, HD95, ASSD, volumes) | {jobs} | {wall:.1f} | "
                     f"{wall / args.cases:.1f} | {cpu:.1f} | {medpy_wall / wall:.1f}x | "
                     f"{medpy_cpu / cpu:.1f}x |")
    return lines


def _verdict_line(n_pairs: int, compared, n_mismatches: int) -> str:
    verdict = "all bit-identical" if n_mismatches == 0 else f"{n_mismatches} DIFFER"
    return (f"values: {n_pairs} (case, label) pairs x {', '.join(compared)}, every medattn run compared "
            f"with medpy using == : {verdict}")
