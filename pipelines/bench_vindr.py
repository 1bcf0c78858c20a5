"""``medattn bench vindr``: convert vindr-cxr against the common Kaggle-notebook pipeline.

The files are pydicom-data's real PA chest CR (1955 x 1841, MONOCHROME1, 15-bit, window
15000/30000), as a Kaggle-layout download of ``--images`` files alternating its JPEG 2000
lossless and uncompressed twins (VinDr-CXR holds both kinds).

Both sides read the same files, decode through the same pydicom plugins and write
``--size`` letterboxed 8-bit PNGs:

* notebook: the loop copied into most VinDr-CXR notebooks, single process: ``dcmread``,
  ``apply_voi_lut``, MONOCHROME1 as ``np.amax(x) - x``, per-image min-max to 0..255, PIL
  ``thumbnail`` (Lanczos), PNG;
* medattn: ``medattn convert vindr-cxr --resize SIZE`` with ``-j 1`` and ``-j JOBS``
  (threads), which also writes labels.csv, COCO, splits.json and the manifest, journals
  each image and writes atomically.

Throughput is images per second of wall time, all sides in one process, one after
another. The pixel comparison fits medattn's PNG to the notebook's with one affine map
per image: what is left after the fit is what differs beyond the per-image stretch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = __doc__.split("\n", 1)[1].strip().replace("``", "")
DESCRIPTION = "medattn convert vindr-cxr vs the Kaggle-notebook pipeline, on real chest radiographs\n\n" + DESCRIPTION
TWINS = ("RG1_J2KR.dcm", "RG1_UNCI.dcm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=8, help="files in the download (default 8)")
    parser.add_argument("--size", type=int, default=512, help="output side (default 512)")
    parser.add_argument("--jobs", type=int, default=2, help="threads of the parallel medattn run (default 2)")
    parser.add_argument("--quick", action="store_true", help="2 images, for a smoke test")
    parser.add_argument("--markdown", help="also write the table to this Markdown file")
    parser.add_argument("--workdir", help="where to write the files (default: a temporary folder)")


def run(args) -> int:
    import tempfile

    if args.quick:
        args.images = 2
    if args.images < 1 or args.jobs < 1 or args.size < 8:
        raise ValueError(f"--images and --jobs must be >= 1 and --size >= 8, got {args.images}, {args.jobs}, "
                         f"{args.size}")
    if args.workdir:
        return _run(args, Path(args.workdir))
    with tempfile.TemporaryDirectory(prefix="medattn-bench-vindr-") as workdir:
        return _run(args, Path(workdir))


def make_download(root: Path, images: int) -> list[Path]:
    """A Kaggle-layout download of ``images`` real radiographs ("No finding" by 3 readers)."""
    import shutil

    from pydicom.data import get_testdata_file

    try:
        sources = [Path(get_testdata_file(name)) for name in TWINS]
    except (ValueError, OSError) as err:  # pydicom-data missing
        raise ValueError(f"the radiographs come from pydicom-data (pip install pydicom-data): {err}") from err
    (root / "train").mkdir(parents=True, exist_ok=True)
    files, rows = [], ["image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"]
    for k in range(images):
        path = root / "train" / f"cr{k:04d}.dicom"
        shutil.copyfile(sources[k % len(sources)], path)
        files.append(path)
        rows += [f"cr{k:04d},No finding,14,R{r},,,," for r in (1, 2, 3)]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return files


def notebook_pipeline(files: list[Path], out: Path, size: int) -> None:
    """The Kaggle notebooks' loop (module docstring), single process."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_voi_lut

    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        ds = pydicom.dcmread(path)
        data = apply_voi_lut(ds.pixel_array, ds)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            data = np.amax(data) - data
        data = data - np.min(data)
        data = (data / np.max(data) * 255).astype(np.uint8)
        image = Image.fromarray(data)
        image.thumbnail((size, size), Image.LANCZOS)
        image.save(out / f"{path.stem}.png")


def compare_pixels(ours_dir: Path, notebook_dir: Path, manifest: Path) -> dict:
    """Mean |difference| in 8-bit levels, before and after one affine fit per image."""
    import numpy as np
    from PIL import Image

    from medattn.preprocess.vindr_boxes import read_manifest

    geometries = read_manifest(manifest)
    raw, fitted, slopes = [], [], []
    for path in sorted(notebook_dir.glob("*.png")):
        theirs = np.asarray(Image.open(path), dtype=np.float64)
        g = geometries[path.stem]
        ours = np.asarray(Image.open(ours_dir / "images" / "train" / path.name), dtype=np.float64)
        ours = ours[g.pad_y:g.pad_y + theirs.shape[0], g.pad_x:g.pad_x + theirs.shape[1]]
        if ours.shape != theirs.shape:  # thumbnail and our letterbox round a side differently
            rows, cols = min(ours.shape[0], theirs.shape[0]), min(ours.shape[1], theirs.shape[1])
            ours, theirs = ours[:rows, :cols], theirs[:rows, :cols]
        raw.append(np.abs(ours - theirs).mean())
        slope, intercept = np.polyfit(ours.ravel(), theirs.ravel(), 1)
        fitted.append(np.abs(ours * slope + intercept - theirs).mean())
        slopes.append(slope)
    return {"mean_abs": float(np.mean(raw)), "mean_abs_after_fit": float(np.mean(fitted)),
            "slope": float(np.mean(slopes))}


def _run(args, workdir: Path) -> int:
    import os

    from medattn.pipelines.bench_evaluate import _cpu_name, _timed
    from medattn.preprocess.vindr_cxr import ConvertOptions, convert_vindr_cxr

    files = make_download(workdir / "src", args.images)
    load_before = os.getloadavg()
    _, (notebook_wall, _) = _timed(lambda: notebook_pipeline(files, workdir / "notebook", args.size))
    walls = {}
    for jobs in sorted({1, args.jobs}):
        options = ConvertOptions(jobs=jobs, resize=args.size, overwrite=True)
        report, (walls[jobs], _) = _timed(lambda: convert_vindr_cxr(workdir / "src", workdir / f"ours{jobs}",
                                                                     options))
        if not report.ok:
            raise ValueError(report.summary())
    pixels = compare_pixels(workdir / f"ours{args.jobs}", workdir / "notebook", workdir / f"ours{args.jobs}" /
                            "manifest.csv")
    load_after = os.getloadavg()
    rate = {name: args.images / wall for name, wall in [("notebook", notebook_wall), *walls.items()]}
    lines = [f"{args.images} radiographs (pydicom-data RG1, 1955 x 1841, J2K lossless and uncompressed "
             f"alternating) -> {args.size} x {args.size} 8-bit PNG", "",
             "| pipeline | wall | images/s | throughput vs notebook |", "|---|---|---|---|",
             f"| notebook loop (1 process) | {notebook_wall:.2f} s | {rate['notebook']:.2f} | 1.00 |"]
    for jobs, wall in walls.items():
        lines.append(f"| medattn convert vindr-cxr -j {jobs} | {wall:.2f} s | {rate[jobs]:.2f} | "
                     f"{rate[jobs] / rate['notebook']:.2f} |")
    lines += ["", f"pixels (medattn -j {args.jobs} vs notebook, 8-bit levels): mean |difference| "
              f"{pixels['mean_abs']:.2f}; after one affine fit per image {pixels['mean_abs_after_fit']:.2f} "
              f"(slope {pixels['slope']:.3f})", "",
              f"machine: {_cpu_name()}, {os.cpu_count()} logical CPUs; load average "
              f"{load_before[0]:.2f} before, {load_after[0]:.2f} after",
              f"command: medattn bench vindr --images {args.images} --size {args.size} --jobs {args.jobs}"]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        from medattn.data.io import write_text_atomic

        write_text_atomic(args.markdown, text + "\n")
    return 0
