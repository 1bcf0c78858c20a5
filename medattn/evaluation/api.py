"""Evaluate folders of label images: :func:`evaluate_folders`.

Cases are paired by file name without its image suffix (``case_01.nii.gz`` in the
prediction folder goes with ``case_01.nii.gz`` or ``case_01.nrrd`` in the ground-truth
folder). Every file SimpleITK reads is accepted (NIfTI, NRRD, MHA).

With a region-based label map (nnU-Net's region-based training, see
:mod:`medattn.evaluation.labels`), every region is scored like a label on the masks of
its values, and the ``label`` column holds its values joined by ``+`` (``"1+2+3"``).

With an ignore label in the map (nnU-Net's sparse annotation, the entry named
``"ignore"``), the ground-truth voxels holding it are left out of both masks of every
label and region (see :func:`medattn.evaluation.metrics.label_metrics`). The ground truth
may hold the value; a prediction that holds it fails, naming the file and the value, as
nnU-Net never predicts it.

Before any metric is computed, all pairs are checked: missing predictions, and shape,
spacing, origin and direction of every pair (from the file headers). Then the cases are
evaluated, in parallel with ``jobs > 1``. Every problem found is collected, and the run
fails with one :class:`EvaluationError` that lists them all; outputs are only written
when every case succeeded, each file atomically.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from medattn.data.io import (
    Geometry,
    ImageReadError,
    NonFiniteImageError,
    case_name,
    check_nifti_file,
    check_same_geometry,
    image_suffix,
    list_images,
    read_header,
    read_image,
)
from medattn.evaluation.conventions import DESCRIPTIONS, check_convention, empty_case_scores, grid_diagonal
from medattn.evaluation.labels import LabelMap, Region, default_name, label_column_value, parse_label_map
from medattn.evaluation.metrics import METRIC_COLUMNS, label_metrics
from medattn.evaluation.stats import overall_means, paired_comparison, per_class_summary

if TYPE_CHECKING:
    import pandas as pd

SPACING_MODES = ("image", "voxel")

#: Columns of ``metrics.csv``, in order.
CSV_COLUMNS = ("case", "label", "name") + METRIC_COLUMNS

# Label values above this are looked up with np.unique rather than find_objects, whose
# result has one entry per value up to the maximum.
_MAX_DENSE_LABEL = 100_000


class EvaluationError(ValueError):
    """One or more cases could not be evaluated; ``problems`` lists one message per problem."""

    def __init__(self, summary: str, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{summary}:\n{lines}" if self.problems else summary)


class MissingPredictionsError(EvaluationError):
    """Ground-truth cases have no prediction (and ``missing_as_empty`` is off)."""


class LabelValueError(ValueError):
    """A label image holds values that are not valid labels; the message names the file."""


@dataclass
class EvaluationResult:
    """Tables of one evaluation, the same as the files written to ``out_dir``.

    Attributes:
        metrics: long table, one row per case and label (or region), columns
            :data:`CSV_COLUMNS`; ``label`` holds the label value, or for a region its
            values joined by ``+`` (``"1+2+3"``).
        per_class: one row per label or region with ``<metric>_mean/_std/_n/_excluded``.
        mean: mean over classes of the per-class means, per metric.
        summary: everything above plus the settings, as written to ``summary.json``.
        compare_metrics: ``metrics`` of the ``compare`` folder, or None.
        compare_per_class: ``per_class`` of the ``compare`` folder, or None.
        comparison: paired comparison (see :func:`medattn.evaluation.stats.paired_comparison`),
            or None.
        written: output name to path, filled by :meth:`write`.
    """

    metrics: pd.DataFrame
    per_class: pd.DataFrame
    mean: dict[str, float]
    summary: dict
    compare_metrics: pd.DataFrame | None = None
    compare_per_class: pd.DataFrame | None = None
    comparison: pd.DataFrame | None = None
    written: dict[str, Path] = field(default_factory=dict)

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write metrics.csv, summary.json, report.md and report.html (and the comparison
        tables) into ``out_dir``, each atomically; returns name to path."""
        from medattn.evaluation.report import write_outputs

        self.written = write_outputs(self, out_dir)
        return self.written


@dataclass(frozen=True)
class _Scored:
    """A label or region as the tables show it."""

    column_value: int | str  # the "label" column: a label's value, a region's "1+2+3"
    name: str
    metric_key: int | tuple[int, ...]  # what label_metrics takes and keys its result by

    @classmethod
    def of(cls, entry: int | Region, name: str) -> "_Scored":
        metric_key = entry.values if isinstance(entry, Region) else entry
        return cls(label_column_value(entry), name, metric_key)


@dataclass(frozen=True)
class _CaseTask:
    case: str
    gt_path: Path
    pred_paths: tuple[Path | None, ...]  # the predictions, then the compared predictions
    scored: tuple[int | tuple[int, ...], ...] | None  # labels and regions; None: the values found
    valid_values: frozenset[int] | None  # None: no label map, checked after all cases
    voxel_units: bool
    convention: str
    ignore_label: int | None = None  # valid in the ground truth, an error in a prediction


@dataclass
class _CaseResult:
    case: str
    gt_values: set[int]
    pred_values: list[set[int]]
    metrics: list[dict[int | tuple[int, ...], dict[str, float]]]
    diagonal: float


def evaluate_folders(
    pred_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    labels: "str | os.PathLike | Mapping[int, str] | LabelMap | None" = None,
    convention: str = "nnunet",
    spacing: str = "image",
    compare: str | os.PathLike | None = None,
    jobs: int = 1,
    missing_as_empty: bool = False,
    out_dir: str | os.PathLike | None = None,
    progress: bool = True,
    images: str | os.PathLike | None = None,
) -> EvaluationResult:
    """Score every prediction in ``pred_dir`` against ``gt_dir`` (Dice, HD95, ASSD, volumes).

    Args:
        pred_dir: folder of predicted label images.
        gt_dir: folder of ground-truth label images; every case in it is scored.
        labels: label map (``dataset.json``-style path, inline ``"1=aorta,2=liver"``, a
            ``{value: name}`` mapping or a :class:`LabelMap`), or a region-based one
            (``dataset.json`` with regions, inline ``"whole_tumor=1+2+3,tumor_core=2+3"``).
            An entry named ``"ignore"`` is nnU-Net's ignore label: the ground-truth voxels
            holding it are left out of every metric.
            None: the union of the non-zero values of the ground truth, named ``label_<k>``.
        convention: empty-mask convention, "transunet", "nnunet" or "strict"
            (see :mod:`medattn.evaluation.conventions`).
        spacing: "image" for distances in mm and volumes in mm³ from the image spacing,
            "voxel" for both in voxels (as TransUNet did).
        compare: a second prediction folder scored against the same ground truth and
            compared with ``pred_dir`` case by case (A = ``pred_dir``, B = ``compare``).
        jobs: worker processes; 0 uses every CPU.
        missing_as_empty: score a missing prediction as an empty mask instead of failing.
        out_dir: if given, write metrics.csv, summary.json, report.md and report.html there.
        progress: show a tqdm progress bar on stderr.
        images: folder of the intensity images (``CASE.nii.gz`` or ``CASE_0000.nii.gz``)
            under the report's case pictures (:mod:`medattn.evaluation.pictures`); None
            draws the label contours alone.

    Returns:
        The :class:`EvaluationResult`.

    Raises:
        ValueError: for a bad argument.
        LabelMapError: for a malformed label map.
        MissingPredictionsError: listing the cases without a prediction.
        EvaluationError: listing every case that failed (unreadable file, geometry
            mismatch naming the field and both values, label values outside the map, a
            prediction holding the ignore label).
    """
    check_convention(convention)
    if spacing not in SPACING_MODES:
        raise ValueError(f"unknown spacing mode {spacing!r}; choose one of {list(SPACING_MODES)}")
    if not isinstance(jobs, int) or jobs < 0:
        raise ValueError(f"jobs must be a non-negative integer, got {jobs!r}")
    if images is not None and not Path(images).is_dir():
        raise ValueError(f"--images {images}: not a folder")
    if out_dir is not None:  # an unusable --out is found before any metric is computed
        from medattn.data.io import check_output_folder, remove_stale_temporaries

        remove_stale_temporaries(check_output_folder(out_dir, "--out"))
    label_map = parse_label_map(labels) if labels is not None else None
    pred_folders = [Path(pred_dir)] + ([Path(compare)] if compare is not None else [])
    tasks, unmatched, missing = _pair_cases(pred_folders, gt_dir, label_map, spacing, convention, missing_as_empty)
    problems = _check_headers(tasks)
    if problems:
        raise EvaluationError(f"{len(problems)} case(s) do not match their ground truth", problems)
    results, problems = _run(tasks, jobs, progress)
    if problems:
        raise EvaluationError(f"{len(problems)} case(s) failed", problems)
    scored = _scored_labels(label_map, tasks, results, gt_dir)

    tables = [_long_table(results, i, scored, convention) for i in range(len(pred_folders))]
    per_class, comparison = _class_statistics(tables, scored, compare is not None)
    means = [overall_means(table) for table in per_class]
    units = {"distance": "voxels" if spacing == "voxel" else "mm", "volume": "voxels" if spacing == "voxel" else "mm3"}
    summary = _summary(
        pred_folders, gt_dir, label_map, scored, convention, spacing, units,
        [r.case for r in results], per_class, means, comparison, unmatched, missing,
    )
    summary["images_dir"] = None if images is None else str(images)
    result = EvaluationResult(
        metrics=tables[0],
        per_class=per_class[0],
        mean=means[0],
        summary=summary,
        compare_metrics=tables[1] if compare is not None else None,
        compare_per_class=per_class[1] if compare is not None else None,
        comparison=comparison,
    )
    if out_dir is not None:
        result.write(out_dir)
    return result


def _pair_cases(pred_folders, gt_dir, label_map, spacing, convention, missing_as_empty):
    """One task per ground-truth case, the predictions that have no ground truth, and per
    folder the ground-truth cases it has no prediction for."""
    gt_cases = _cases_in(gt_dir, "ground-truth")
    if not gt_cases:
        raise EvaluationError(f"{gt_dir}: no ground-truth images found", [])
    pred_cases = [_cases_in(folder, "prediction") for folder in pred_folders]
    for folder, cases in zip(pred_folders, pred_cases):
        missing = sorted(set(gt_cases) - set(cases))
        if missing and not missing_as_empty:
            raise MissingPredictionsError(
                f"{folder}: {len(missing)} of {len(gt_cases)} ground-truth cases have no prediction "
                "(use --missing-as-empty to score them as empty masks)",
                missing,
            )
    unmatched = {str(folder): sorted(set(cases) - set(gt_cases)) for folder, cases in zip(pred_folders, pred_cases)}
    # With --missing-as-empty, which cases were scored as empty masks (summary.json, console).
    missing = {str(folder): sorted(set(gt_cases) - set(cases)) for folder, cases in zip(pred_folders, pred_cases)}
    tasks = [
        _CaseTask(
            case=case,
            gt_path=gt_path,
            pred_paths=tuple(cases.get(case) for cases in pred_cases),
            scored=tuple(entry.metric_key for entry in _scored_of_map(label_map)) if label_map else None,
            valid_values=label_map.valid_values if label_map else None,
            voxel_units=spacing == "voxel",
            convention=convention,
            ignore_label=label_map.ignore_label if label_map else None,
        )
        for case, gt_path in sorted(gt_cases.items())
    ]
    return tasks, unmatched, missing


def _scored_labels(label_map, tasks, results, gt_dir) -> list[_Scored]:
    """The labels or regions to report, in order; without a map, the ground truth's
    values, and then a prediction value that no ground truth holds is an error."""
    if label_map is not None:
        return _scored_of_map(label_map)
    scored = sorted(set().union(*(r.gt_values for r in results)))
    if not scored:
        raise EvaluationError(f"{gt_dir}: the ground truth holds no foreground label; pass a label map", [])
    problems = [
        f"{task.pred_paths[i]}: label values {sorted(extra)} do not occur in any ground truth "
        "(pass a label map to score them)"
        for task, result in zip(tasks, results)
        for i, values in enumerate(result.pred_values)
        if (extra := values - set(scored))
    ]
    if problems:
        raise EvaluationError("predictions hold labels outside the ground truth", problems)
    return [_Scored.of(k, default_name(k)) for k in scored]


def _scored_of_map(label_map: LabelMap) -> list[_Scored]:
    return [_Scored.of(entry, label_map.name_of(entry)) for entry in label_map.scored]


def read_label_image(path: str | os.PathLike) -> tuple[np.ndarray, Geometry]:
    """Read a label image and check that it is complete and holds non-negative integers.

    Float images are accepted when every value is a whole number (some tools store
    labels as float32) and converted to the smallest integer type that holds them.

    Returns:
        ``(labels, geometry)`` with an unsigned or signed integer array.

    Raises:
        ImageReadError: if the file cannot be read or is truncated.
        LabelValueError: for NaN, infinite, fractional or negative values, naming the file.
    """
    array, geometry = read_image(path)
    if image_suffix(path) in (".nii", ".nii.gz"):
        _check_nifti(Path(path))
    return as_label_array(array, str(path)), geometry


def _check_nifti(path: Path) -> None:
    """Truncated files (read as zeros) and NaN voxels (read as 0) would score silently as
    background: :func:`medattn.data.io.check_nifti_file` catches both."""
    try:
        check_nifti_file(path)
    except NonFiniteImageError as err:
        raise LabelValueError(f"{err}; a label image holds whole numbers") from err


def as_label_array(array: np.ndarray, source: str) -> np.ndarray:
    """``array`` as non-negative integer labels; ``source`` names it in errors.

    Raises:
        LabelValueError: for NaN, infinite, fractional or negative values or a non-numeric dtype.
    """
    kind = array.dtype.kind
    if kind == "b":
        return array.view(np.uint8)
    if kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            n_nan = int(np.isnan(array).sum())
            raise LabelValueError(
                f"{source}: {n_nan} NaN and {int((~finite).sum()) - n_nan} infinite voxels; "
                "a label image holds whole numbers"
            )
        fractional = array != np.floor(array)
        if fractional.any():
            examples = np.unique(array[fractional])[:5].tolist()
            raise LabelValueError(f"{source}: non-integer label values, e.g. {examples}")
        low, high = float(array.min()), float(array.max())
        if low < 0:
            raise LabelValueError(f"{source}: negative label values, e.g. {np.unique(array[array < 0])[:5].tolist()}")
        return array.astype(np.min_scalar_type(int(high)))
    if kind not in "iu":
        raise LabelValueError(f"{source}: a label image holds integers, got dtype {array.dtype}")
    if kind == "i" and array.size and array.min() < 0:
        raise LabelValueError(f"{source}: negative label values, e.g. {np.unique(array[array < 0])[:5].tolist()}")
    return array


def _cases_in(folder, role: str) -> dict[str, Path]:
    images = list_images(folder)
    cases: dict[str, Path] = {}
    for path in images:
        name = case_name(path)
        if name in cases:
            raise EvaluationError(
                f"{folder}: two {role} files for case {name!r}", [str(cases[name]), str(path)]
            )
        cases[name] = path
    return cases


def _check_headers(tasks: Sequence[_CaseTask]) -> list[str]:
    """Geometry of every pair, from the headers only, so mismatches show before any work."""
    problems = []
    for task in tasks:
        try:
            gt_geometry = read_header(task.gt_path)
            for pred_path in task.pred_paths:
                if pred_path is not None:
                    check_same_geometry(
                        gt_geometry, read_header(pred_path), names=("ground truth", "prediction"),
                        context=f"{task.case}: {pred_path} vs {task.gt_path}",
                    )
        except ValueError as err:
            problems.append(str(err))
    return problems


def _run(tasks: Sequence[_CaseTask], jobs: int, progress: bool) -> tuple[list[_CaseResult], list[str]]:
    from tqdm.auto import tqdm

    jobs = (os.cpu_count() or 1) if jobs == 0 else jobs
    results: dict[str, _CaseResult] = {}
    problems: list[str] = []
    bar = tqdm(total=len(tasks), desc="evaluate", unit="case", disable=not progress)
    try:
        if jobs == 1 or len(tasks) == 1:
            for task in tasks:
                _collect(task.case, lambda t=task: _evaluate_case(t), results, problems)
                bar.update()
        else:
            import multiprocessing

            # spawn, not fork: the caller may hold torch threads (medattn predict).
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context) as pool:
                futures = {pool.submit(_evaluate_case, task): task.case for task in tasks}
                for future in as_completed(futures):
                    _collect(futures[future], future.result, results, problems)
                    bar.update()
    finally:
        bar.close()
    order = [task.case for task in tasks]
    return [results[c] for c in order if c in results], sorted(problems)


def _collect(case: str, get_result, results: dict, problems: list) -> None:
    try:
        results[case] = get_result()
    except (ValueError, OSError) as err:  # bad input: report it with the others
        problems.append(str(err))


def _evaluate_case(task: _CaseTask) -> _CaseResult:
    """Read one ground truth and its predictions and score every label (runs in a worker)."""
    from scipy.ndimage import find_objects

    gt, gt_geometry = read_label_image(task.gt_path)
    gt_boxes, gt_values = _boxes_and_values(gt, find_objects)
    _check_values(gt_values, task.valid_values, task.gt_path)
    sampling = None if task.voxel_units else gt_geometry.spacing_zyx
    pred_values, metrics = [], []
    for pred_path in task.pred_paths:
        if pred_path is None:  # missing, scored as empty
            pred = np.zeros(gt.shape, dtype=np.uint8)
            boxes, values = [], set()
        else:
            pred, geometry = read_label_image(pred_path)
            check_same_geometry(
                gt_geometry, geometry, names=("ground truth", "prediction"),
                context=f"{task.case}: {pred_path} vs {task.gt_path}",
            )
            boxes, values = _boxes_and_values(pred, find_objects)
            _check_values(values, task.valid_values, pred_path)
            _check_no_ignore_label(values, task.ignore_label, pred_path)
        scored = task.scored if task.scored is not None else sorted(gt_values | values)
        pred_values.append(values)
        metrics.append(
            label_metrics(
                pred, gt, scored, sampling, task.convention, pred_boxes=boxes, gt_boxes=gt_boxes,
                ignore_label=task.ignore_label,
            )
        )
    return _CaseResult(task.case, gt_values, pred_values, metrics, grid_diagonal(gt.shape, sampling))


def _boxes_and_values(labels: np.ndarray, find_objects) -> tuple[list | None, set[int]]:
    top = int(labels.max()) if labels.size else 0
    if top > _MAX_DENSE_LABEL:
        values = {int(v) for v in np.unique(labels) if v != 0}
        return None, values  # label_metrics finds the boxes of the scored labels itself
    boxes = find_objects(labels, max_label=top) if top else []
    return boxes, {i + 1 for i, box in enumerate(boxes) if box is not None}


def _check_values(values: set[int], valid: frozenset[int] | None, path: Path) -> None:
    if valid is None:
        return
    unknown = sorted(values - valid)
    if unknown:
        raise LabelValueError(
            f"{path}: label values {unknown} are not in the label map (valid: {sorted(valid)})"
        )


def _check_no_ignore_label(values: set[int], ignore_label: int | None, path: Path) -> None:
    """A prediction holding the ignore label is not an nnU-Net prediction (nnU-Net never
    predicts it); scoring it as background would hide the mistake."""
    if ignore_label is not None and ignore_label in values:
        raise LabelValueError(
            f"{path}: holds the ignore label {ignore_label}, which marks unannotated ground-truth "
            "voxels; a prediction cannot hold it"
        )


def _long_table(results: Sequence[_CaseResult], index: int, scored: Sequence[_Scored], convention):
    import pandas as pd

    rows = []
    for result in results:
        computed = result.metrics[index]
        for entry in scored:
            values = computed.get(entry.metric_key)
            if values is None:  # absent from this case's images: both masks empty
                empty = empty_case_scores(convention, True, True, result.diagonal)
                values = {"dice": empty.dice, "hd95": empty.hd95, "assd": empty.assd,
                          "vol_pred": 0.0, "vol_gt": 0.0, "vol_diff": 0.0, "rvd": math.nan}
            rows.append({"case": result.case, "label": entry.column_value, "name": entry.name, **values})
    return pd.DataFrame(rows, columns=list(CSV_COLUMNS))


def _class_statistics(tables, scored: Sequence[_Scored], compare: bool):
    """:func:`per_class_summary` of every table and, with ``compare``, the
    :func:`paired_comparison` of the first two."""
    values = [entry.column_value for entry in scored]
    names = {entry.column_value: entry.name for entry in scored}
    per_class = [per_class_summary(table, values, names) for table in tables]
    comparison = paired_comparison(tables[0], tables[1], values, names) if compare else None
    return per_class, comparison


def _summary(pred_folders, gt_dir, label_map, scored, convention, spacing, units, cases,
             per_class, means, comparison, unmatched, missing) -> dict:
    from medattn import __version__

    def class_block(table):
        block = {}
        for row in table.to_dict(orient="records"):
            entry = {"label": row["label"]}
            for key, value in row.items():
                if key in ("label", "name"):
                    continue
                metric, _, stat = key.rpartition("_")
                entry.setdefault(metric, {})[stat] = value
            block[row["name"]] = entry
        return block

    summary = {
        "medattn_version": __version__,
        "pred_dir": str(pred_folders[0]),
        "gt_dir": str(gt_dir),
        "convention": convention,
        "convention_rule": DESCRIPTIONS[convention],
        "spacing": spacing,
        "units": units,
        "label_map": label_map.source if label_map else "ground-truth values",
        "labels": {str(entry.column_value): entry.name for entry in scored},
        "ignore_label": label_map.ignore_label if label_map else None,
        "n_cases": len(cases),
        "cases": cases,
        "per_class": class_block(per_class[0]),
        "mean": means[0],
        "unmatched_predictions": unmatched,
        "missing_scored_as_empty": missing,
    }
    if comparison is not None:
        summary["compare"] = {
            "pred_dir": str(pred_folders[1]),
            "per_class": class_block(per_class[1]),
            "mean": means[1],
            "paired": comparison.to_dict(orient="records"),
        }
    return summary
