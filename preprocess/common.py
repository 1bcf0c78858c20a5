"""Building blocks shared by every converter in :mod:`medattn.preprocess`.

A converter (Synapse/BTCV, TransUNet, DICOM, and later VinDr-CXR) is a thin layer over
these pieces:

* :class:`ConversionError`: every problem with one case or file, as a ``ValueError`` whose
  message names the case and the file.
* Case discovery (:func:`discover_numbered`) and label handling (:func:`label_values`,
  :func:`remap_labels`, :func:`check_volume`).
* :func:`map_cases`: runs one function per case on a thread (or process) pool with a tqdm progress bar,
  collecting failures instead of stopping at the first one, so the run ends with a summary
  of the skipped cases (:class:`ConversionReport`).
* nnU-Net v2 raw dataset helpers: :func:`dataset_folder`, :func:`write_dataset_json`,
  :func:`prune_stale_outputs` (which makes re-runs idempotent) and
  :func:`verify_with_nnunet`, which runs nnU-Net's own ``--verify_dataset_integrity``.

Threads rather than processes do the parallel work: SimpleITK, zlib and numpy release the
GIL during reading, compression and array arithmetic, and threads need no ``__main__``
guard, pickling or start method, so the Python API behaves the same from a script, a
notebook or stdin. The exception is work that holds the GIL, such as
pylibjpeg-openjpeg's JPEG 2000 decoder (VinDr-CXR): ``processes=True`` forks workers.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from medattn.data.io import CaseFailure

#: nnU-Net v2 raw datasets in medattn use compressed NIfTI.
FILE_ENDING = ".nii.gz"


class ConversionError(ValueError):
    """A case or file cannot be converted; the message names it and says why."""


# --------------------------------------------------------------------------- reporting


def warn(message: str, report: "ConversionReport | None" = None) -> None:
    """Print ``message`` as a warning on stderr (above any progress bar) and record it."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)
    if report is not None:
        report.warnings.append(message)


@dataclass
class ConversionReport:
    """What a conversion run did.

    Attributes:
        output: the dataset folder or file written.
        converted: names of the cases written, sorted.
        failed: the skipped cases with their error messages.
        warnings: non-fatal problems (missing split cases, assumed spacing, ...).
        removed: stale files from an earlier run that were deleted.
    """

    output: Path
    converted: list[str] = field(default_factory=list)
    failed: list[CaseFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no case was skipped."""
        return not self.failed

    def summary(self) -> str:
        """A human-readable summary: counts, then every skipped case and its reason."""
        lines = [f"converted {len(self.converted)} case(s) into {self.output}"]
        if self.removed:
            lines.append(f"removed {len(self.removed)} stale file(s) left by an earlier run")
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s), printed above")
        if self.failed:
            lines.append(f"skipped {len(self.failed)} case(s):")
            lines.extend(f"  {f.message}" for f in sorted(self.failed, key=lambda f: f.case))
        return "\n".join(lines)


def map_cases(
    function: Callable[[Any], Any],
    cases: Mapping[str, Any],
    *,
    jobs: int = 1,
    desc: str = "converting",
    processes: bool = False,
    on_done: Callable[[str, Any], None] | None = None,
) -> tuple[dict[str, Any], list[CaseFailure]]:
    """Run ``function(item)`` for every case, in parallel, with a progress bar.

    A case whose function raises ``ValueError`` (including :class:`ConversionError`) or
    ``OSError`` is recorded as a failure and the others go on; any other exception is a
    bug and propagates.

    Args:
        function: called once per case with the case's item.
        cases: case name -> item.
        jobs: number of workers (1 runs in the calling thread).
        desc: label of the progress bar.
        processes: workers are processes instead of threads, for work that holds the GIL
            (pylibjpeg-openjpeg's JPEG 2000 decoder does). ``function`` and the items must
            then be picklable (a module-level function). Linux forks them, so no
            ``__main__`` guard is needed; elsewhere they are spawned.
        on_done: called in the calling thread with (name, result) as each case succeeds
            (a journal of finished cases, for resuming a killed run).

    Returns:
        ``(results, failures)``: case name -> return value for the cases that worked, and
        the failures sorted by case name.

    Raises:
        ValueError: if ``jobs`` is smaller than 1.
    """
    from tqdm import tqdm

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    results: dict[str, Any] = {}
    failures: list[CaseFailure] = []

    def finished(name: str) -> None:
        if on_done is not None and name in results:
            on_done(name, results[name])

    with tqdm(total=len(cases), desc=desc, unit="case", file=sys.stderr) as bar:
        if jobs == 1 or len(cases) <= 1:
            for name, item in cases.items():
                _run_one(function, name, item, results, failures)
                finished(name)
                bar.update()
        else:
            with _pool(jobs, processes) as pool:
                futures = {pool.submit(function, item): name for name, item in cases.items()}
                try:
                    for future in as_completed(futures):
                        _collect(futures[future], future.result, results, failures)
                        finished(futures[future])
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return results, sorted(failures, key=lambda f: f.case)


def _pool(jobs: int, processes: bool):
    if not processes:
        return ThreadPoolExecutor(max_workers=jobs)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(method))


def _run_one(function, name, item, results, failures) -> None:
    _collect(name, lambda: function(item), results, failures)


def _collect(name: str, call: Callable[[], Any], results: dict, failures: list) -> None:
    try:
        results[name] = call()
    except (ValueError, OSError) as err:
        message = str(err)
        failures.append(CaseFailure(name, message if message.startswith(name) else f"{name}: {message}"))


# --------------------------------------------------------------------------- discovery


def discover_numbered(folder: Path, pattern: str) -> dict[int, Path]:
    """Files in ``folder`` whose name fully matches ``pattern``, keyed by its number.

    Args:
        folder: the folder to list (not recursive).
        pattern: a regular expression with one group capturing the case number,
            e.g. ``r"img(\\d{4})\\.nii\\.gz"``.

    Returns:
        case number -> path, sorted by number.

    Raises:
        ConversionError: if two files map to the same number (e.g. ``img0001.nii`` and
            ``img0001.nii.gz``).
    """
    regex = re.compile(pattern)
    found: dict[int, Path] = {}
    for path in sorted(Path(folder).iterdir()):
        match = regex.fullmatch(path.name)
        if not match or not path.is_file():
            continue
        number = int(match.group(1))
        if number in found:
            raise ConversionError(f"{folder}: two files for case {number}: {found[number].name} and {path.name}")
        found[number] = path
    return dict(sorted(found.items()))


# --------------------------------------------------------------------------- volumes and labels


def check_volume(array: np.ndarray, context: str, *, ndim: int = 3) -> None:
    """Check that an image is ``ndim``-dimensional and free of NaN/inf.

    Raises:
        ConversionError: naming ``context`` and the problem.
    """
    if array.ndim != ndim:
        raise ConversionError(f"{context}: expected a {ndim}D volume, got a {array.ndim}D array of shape {array.shape}")
    if array.size == 0:
        raise ConversionError(f"{context}: the volume is empty (shape {array.shape})")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        count = int(np.count_nonzero(~np.isfinite(array)))
        raise ConversionError(f"{context}: {count} voxel(s) are NaN or infinite")


def check_nifti_file(path: str | os.PathLike, context: str) -> None:
    """:func:`medattn.data.io.check_nifti_file` (truncated/corrupt NIfTI, NaN voxels),
    reported as a :class:`ConversionError` naming ``context``."""
    from medattn.data.io import ImageReadError
    from medattn.data.io import check_nifti_file as check

    try:
        check(path)
    except ImageReadError as err:
        raise ConversionError(f"{context}: {err}") from err


def label_values(label: np.ndarray, context: str, *, max_label: int) -> np.ndarray:
    """The label values present in ``label`` as int64, checked against ``0..max_label``.

    Uses a bincount (linear time) rather than ``np.unique`` (a sort), which matters for
    512 x 512 x 200 CT label maps.

    Raises:
        ConversionError: for NaN, non-integer, negative or too-large values, naming
            ``context`` and the offending values.
    """
    integral = as_integer_labels(label, context)
    low, high = int(integral.min()), int(integral.max())
    if low < 0 or high > max_label:
        bad = np.unique(integral[(integral < 0) | (integral > max_label)])
        raise ConversionError(
            f"{context}: unexpected label value(s) {_short_list(bad)}; expected integers in 0..{max_label}"
        )
    return np.flatnonzero(np.bincount(integral.ravel(), minlength=max_label + 1))


def as_integer_labels(label: np.ndarray, context: str) -> np.ndarray:
    """``label`` as an integer array; float labels must hold whole numbers.

    Raises:
        ConversionError: for NaN/inf or fractional values, naming ``context``.
    """
    if np.issubdtype(label.dtype, np.integer) or label.dtype == bool:
        return label.astype(np.int64, copy=False)
    if not np.issubdtype(label.dtype, np.floating):
        raise ConversionError(f"{context}: label array has unsupported dtype {label.dtype}")
    if not np.isfinite(label).all():
        raise ConversionError(f"{context}: label contains NaN or infinite values")
    rounded = np.rint(label)
    fractional = rounded != label
    if fractional.any():
        raise ConversionError(
            f"{context}: unexpected non-integer label value(s) {_short_list(np.unique(label[fractional]))}"
        )
    return rounded.astype(np.int64)


def remap_labels(label: np.ndarray, mapping: Mapping[int, int], context: str, *, max_label: int) -> np.ndarray:
    """Map source label ids to new ids through a lookup table; unmapped ids become 0.

    Args:
        label: integer-valued label array (any shape).
        mapping: source id -> new id; ids absent from it become background.
        context: names the case in error messages.
        max_label: largest source id allowed.

    Returns:
        The remapped array as uint8, same shape as ``label``.

    Raises:
        ConversionError: for label values outside ``0..max_label`` or non-integer values.
    """
    label_values(label, context, max_label=max_label)
    table = np.zeros(max_label + 1, dtype=np.uint8)
    for source, target in mapping.items():
        table[source] = target
    return table[as_integer_labels(label, context)]


def _short_list(values: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:limit].tolist())
    more = f", ... ({len(values)} distinct)" if len(values) > limit else ""
    return f"[{shown}{more}]"


# --------------------------------------------------------------------------- nnU-Net raw datasets


def dataset_folder(root: str | os.PathLike, dataset_id: int, name: str) -> Path:
    """``root/DatasetXXX_name``, checked against nnU-Net's naming rules.

    Raises:
        ValueError: for an id outside 1..999, a name with characters nnU-Net cannot use,
            or another dataset in ``root`` already using this id (nnU-Net finds datasets
            by id, so two folders with one id make the id ambiguous).
    """
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ValueError(f"dataset id must be an integer in 1..999, got {dataset_id!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name or ""):
        raise ValueError(f"dataset name must be letters, digits, '_' or '-', got {name!r}")
    from medattn.data.io import check_output_folder, remove_stale_temporaries

    root = check_output_folder(root, "--out")
    folder = root / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("", "imagesTr", "labelsTr", "imagesTs", "labelsTs"):  # what a killed run left
        remove_stale_temporaries(folder / sub)
    if root.is_dir():
        clashes = [p.name for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir() and p != folder]
        if clashes:
            raise ValueError(
                f"{root}: dataset id {dataset_id} is already used by {', '.join(sorted(clashes))}; "
                f"choose another --dataset-id or remove that folder"
            )
    return folder


def write_dataset_json(
    folder: Path,
    *,
    channel_names: Mapping[str, str],
    labels: Mapping[str, int],
    num_training: int,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write nnU-Net v2's ``dataset.json`` into ``folder`` atomically.

    Args:
        folder: the ``DatasetXXX_Name`` folder.
        channel_names: channel index (as a string) -> modality name, e.g. ``{"0": "CT"}``.
        labels: label name -> id, background first, ids consecutive from 0.
        num_training: number of cases in ``imagesTr``.
        extra: more keys (``name``, ``description``, ``reference``, ...), which nnU-Net ignores.

    Raises:
        ValueError: if the label ids are not 0, 1, 2, ... (nnU-Net requires that).
    """
    from medattn.data.io import write_json_atomic

    ids = sorted(labels.values())
    if ids != list(range(len(ids))):
        raise ValueError(f"label ids must be consecutive from 0, got {ids}")
    content = {
        "channel_names": dict(channel_names),
        "labels": dict(labels),
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        **dict(extra or {}),
    }
    return write_json_atomic(folder / "dataset.json", content)


def prune_stale_outputs(folder: Path, keep: Iterable[Path], pattern: str) -> list[Path]:
    """Delete files in ``folder`` that match ``pattern`` but were not written by this run.

    This is what makes a re-run idempotent: converting again with another split, label set
    or fewer cases leaves no case from the earlier run behind (a test case left in
    ``imagesTr`` would silently leak into training). Only names matching ``pattern`` (the
    converter's own naming scheme) are ever touched.

    Returns:
        The deleted paths.
    """
    if not folder.is_dir():
        return []
    keep = {Path(p).resolve() for p in keep}
    regex = re.compile(pattern)
    removed = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and regex.fullmatch(path.name) and path.resolve() not in keep:
            path.unlink()
            removed.append(path)
    return removed


@dataclass
class VerifyResult:
    """Outcome of nnU-Net's dataset integrity check.

    Attributes:
        ok: nnU-Net exited with status 0.
        output: its combined stdout and stderr.
        warnings: nnU-Net's "Warning: ... mismatch" lines (geometry that does not agree).
    """

    ok: bool
    output: str
    warnings: list[str]


def verify_with_nnunet(
    dataset_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    timeout: float = 600.0,
    processes: int = 1,
) -> VerifyResult:
    """Run nnU-Net's ``--verify_dataset_integrity`` check on converted datasets.

    Runs nnU-Net's own ``verify_dataset_integrity`` (what
    ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` calls first) through
    :mod:`medattn.preprocess.nnunet_check` in a subprocess, because nnU-Net's spawn pool
    hangs when started from a process without a ``__main__`` guard. The fingerprint
    extraction that nnU-Net's commands run afterwards is skipped: it checks nothing more
    and takes most of their time. ``nnUNet_raw`` points at the datasets' parent and
    ``nnUNet_preprocessed``/``nnUNet_results`` at throw-away folders, so the user's nnU-Net
    folders are never touched. Several datasets are checked in one nnU-Net start-up.

    Args:
        dataset_dirs: one ``DatasetXXX_Name`` folder, or several in one parent folder.
        timeout: seconds before the check is abandoned.
        processes: worker processes nnU-Net may use.

    Returns:
        A :class:`VerifyResult`; ``ok`` is False when nnU-Net reports an error.

    Raises:
        ValueError: if a folder is not named ``DatasetXXX_Name`` or the folders do not
            share one parent.
        subprocess.TimeoutExpired: if nnU-Net runs past ``timeout``.
    """
    if isinstance(dataset_dirs, (str, os.PathLike)):
        dataset_dirs = [dataset_dirs]
    folders = [Path(d).resolve() for d in dataset_dirs]
    for folder in folders:
        if not re.fullmatch(r"Dataset\d{3}_.+", folder.name):
            raise ValueError(f"{folder}: not an nnU-Net dataset folder (expected DatasetXXX_Name)")
    parents = {folder.parent for folder in folders}
    if len(parents) != 1:
        raise ValueError(f"datasets to verify must share one nnUNet_raw folder, got {sorted(map(str, parents))}")
    with tempfile.TemporaryDirectory(prefix="medattn-verify-") as scratch:
        env = {
            **os.environ,
            "nnUNet_raw": str(parents.pop()),
            "nnUNet_preprocessed": str(Path(scratch) / "preprocessed"),
            "nnUNet_results": str(Path(scratch) / "results"),
            "nnUNet_def_n_proc": str(processes),
            "nnUNet_compile": "0",
        }
        completed = subprocess.run(
            [sys.executable, "-m", "medattn.preprocess.nnunet_check", str(processes), *map(str, folders)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    output = completed.stdout
    warnings = [line for line in output.splitlines() if line.startswith("Warning:") and "mismatch" in line]
    return VerifyResult(ok=completed.returncode == 0, output=output, warnings=warnings)
