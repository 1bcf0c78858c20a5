"""``medattn bench evaluate`` on a tiny generated case set: the values it reports against
medpy computed here on the files it wrote, its table lines against what it measured, the
check that fails a run when one value differs, and the command line.

No test looks at a timing value, only at how the printed table follows from the timings.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from medattn.cli import main
from medattn.pipelines import bench_evaluate as bench
from tests.cli_help import help_text

# A 400 mm field of view like the CT-sized default, so the organs keep their size in mm,
# on a coarse grid (20 x 64 x 64 voxels) that takes a second.
SHAPE, SPACING = ("20", "64", "64"), ("20.0", "6.25", "6.25")
CASES = 2


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One run with ``-j 2``: (exit code, stdout, the Measurement it compared, work folder)."""
    import contextlib
    import io

    work = tmp_path_factory.mktemp("bench_evaluate")
    measured = []

    def spy(*args, **kwargs):
        measured.append(measure(*args, **kwargs))
        return measured[-1]

    measure = bench.measure
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(bench, "measure", spy)
        code = main(["bench", "evaluate", "--cases", str(CASES), "--shape", *SHAPE, "--spacing", *SPACING,
                     "--jobs", "2", "--seed", "3", "--workdir", str(work)])
    (measurement,) = measured
    return code, out.getvalue(), measurement, work


@pytest.fixture(scope="module")
def medpy_here(bench_run):
    """``{(case, label): (dc, hd95)}`` by medpy on the written files, read here with SimpleITK."""
    import SimpleITK as sitk
    from medpy.metric import binary

    *_, work = bench_run
    values = {}
    for gt_path in sorted((work / "gt").glob("*.nii.gz")):
        gt_image = sitk.ReadImage(str(gt_path))
        gt = sitk.GetArrayFromImage(gt_image)
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(work / "pred" / gt_path.name)))
        spacing_zyx = tuple(reversed(gt_image.GetSpacing()))
        for label in np.unique(gt)[1:]:
            p, g = pred == label, gt == label
            values[(gt_path.name.split(".")[0], int(label))] = (
                binary.dc(p, g), binary.hd95(p, g, voxelspacing=spacing_zyx))
    return values


def test_help_lists_the_options(capsys):
    text = help_text(capsys, "bench", "evaluate")
    assert "medpy" in text
    for option in ("--cases", "--shape", "--spacing", "--jobs", "--medpy-assd", "--seed", "--workdir"):
        assert option in text


def test_written_cases_have_the_asked_grid_and_every_organ(bench_run, medpy_here):
    import SimpleITK as sitk

    code, _, _, work = bench_run
    assert code == 0
    for folder in ("gt", "pred"):
        paths = sorted((work / folder).glob("*.nii.gz"))
        assert [p.name for p in paths] == [f"case_{i:02d}.nii.gz" for i in range(CASES)]
        for path in paths:
            image = sitk.ReadImage(str(path))
            assert image.GetSize() == tuple(int(n) for n in reversed(SHAPE))
            assert image.GetSpacing() == pytest.approx([float(s) for s in reversed(SPACING)])
    assert sorted({label for _, label in medpy_here}) == sorted(organ[0] for organ in bench.ORGANS)


def test_medattn_values_equal_medpy_computed_here(bench_run, medpy_here):
    """The benchmark's claim, checked independently: every Dice and HD95 of both medattn
    runs is == medpy's on the same arrays."""
    _, _, measured, _ = bench_run
    assert sorted(measured.medattn) == [1, 2]
    for jobs, table in measured.medattn.items():
        indexed = table.set_index(["case", "label"])
        assert sorted(indexed.index) == sorted(medpy_here)
        for key, (dice, hd95) in medpy_here.items():
            assert (indexed.loc[key, "dice"], indexed.loc[key, "hd95"]) == (dice, hd95), (jobs, key)
    assert {key: (v["dice"], v["hd95"]) for key, v in measured.reference.items()} == medpy_here


def test_printed_summary_matches_medpy_computed_here(bench_run, medpy_here):
    code, out, _, _ = bench_run
    assert code == 0
    dice = np.mean([d for d, _ in medpy_here.values()])
    hd95 = np.mean([h for _, h in medpy_here.values()])
    assert (f"data: {CASES} case(s) of 64 x 64 x 20 voxels (x y z) at 6.25 x 6.25 x 20.0 mm, 8 labels "
            f"(mean Dice {dice:.3f}, mean HD95 {hd95:.1f} mm)") in out
    assert out.rstrip().endswith(f"values: {len(medpy_here)} (case, label) pairs x dice, hd95, every medattn run "
                                 "compared with medpy using == : all bit-identical")
    assert out.startswith("machine: ") and "medpy " in out.splitlines()[0]


def test_table_rows_follow_from_the_measured_times(bench_run):
    _, out, measured, _ = bench_run
    lines = out.splitlines()
    header = lines.index("| method | processes | wall s | wall s / case | CPU s | speed-up (wall) | speed-up (CPU) |")
    assert lines[header + 1] == "|---|---|---|---|---|---|---|"
    medpy_wall, medpy_cpu = measured.medpy_seconds
    assert lines[header + 2] == (f"| medpy direct (read, dc + hd95 per label) | 1 | {medpy_wall:.1f} | "
                                 f"{medpy_wall / CASES:.1f} | {medpy_cpu:.1f} | 1.0x | 1.0x |")
    rows = lines[header + 3:header + 5]
    for row, (jobs, (wall, cpu)) in zip(rows, measured.timings.items(), strict=True):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells == ["medattn evaluate_folders (Dice, HD95, ASSD, volumes)", str(jobs), f"{wall:.1f}",
                         f"{wall / CASES:.1f}", f"{cpu:.1f}", f"{medpy_wall / wall:.1f}x", f"{medpy_cpu / cpu:.1f}x"]
    assert [row.split(" | ")[1] for row in rows] == ["1", "2"]
    assert lines[header + 5] == ""


def test_one_value_off_by_one_ulp_fails_the_run(monkeypatch, capsys):
    """medpy's values nudged by the smallest step: the run's == comparison catches it (no
    --workdir: the cases go to a temporary folder)."""
    real_medpy_direct = bench.medpy_direct

    def nudged(*args, **kwargs):
        values = real_medpy_direct(*args, **kwargs)
        first = values[min(values)]
        first["dice"] = np.nextafter(first["dice"], 0.0)
        return values

    monkeypatch.setattr(bench, "medpy_direct", nudged)
    code = main(["bench", "evaluate", "--cases", "1", "--shape", *SHAPE, "--spacing", *SPACING, "--jobs", "1"])
    assert code == 1
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-3:-1] == [
        "values: 8 (case, label) pairs x dice, hd95, every medattn run compared with medpy using == : 1 DIFFER",
        "NOT bit-identical:",
    ]
    assert re.fullmatch(r"  -j 1 \('case_00', 1\) dice: medattn .+ vs medpy .+", out.rstrip().splitlines()[-1])
